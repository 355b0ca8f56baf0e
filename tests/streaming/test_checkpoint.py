"""Checkpoints: atomic, versioned, verified; a corrupt newest one falls back to the previous."""

from __future__ import annotations

import hashlib
import json
import logging
import pickle

import pytest
import torch

from streaming.checkpoint import CheckpointError, CheckpointStore


def _state(value: float) -> dict:
    return {"w": torch.full((4, 3), value), "ids": ["a", "b"], "n": 3, "nested": {"t": (1, 2.5)}}


def test_save_and_latest_round_trip(tmp_path):
    store = CheckpointStore(tmp_path / "ckpt")
    assert store.latest() is None and store.latest_version() is None
    path = store.save(_state(1.0), {"events:0": 10, "events:1": 4}, {"events_applied": 14})
    assert path.name == "ckpt-00000001.pt" and path.exists()
    state, offsets, meta = store.latest()
    assert torch.equal(state["w"], torch.full((4, 3), 1.0))
    assert state["ids"] == ["a", "b"] and state["nested"] == {"t": (1, 2.5)}
    assert offsets == {"events:0": 10, "events:1": 4} and meta == {"events_applied": 14}
    sidecar = json.loads((tmp_path / "ckpt" / "ckpt-00000001.json").read_text())
    assert sidecar["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert sidecar["offsets"] == offsets and sidecar["version"] == 1


def test_versions_increase_and_old_ones_are_pruned(tmp_path):
    store = CheckpointStore(tmp_path, keep=2)
    for i in range(5):
        store.save(_state(float(i)), {"file:x": i}, {})
    assert store.versions() == [4, 5]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ckpt-00000004.json",
        "ckpt-00000004.pt",
        "ckpt-00000005.json",
        "ckpt-00000005.pt",
    ]
    assert store.latest()[1] == {"file:x": 4}


def _corrupt_truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _corrupt_flip(path):
    data = bytearray(path.read_bytes())
    for i in range(100, len(data), 997):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _corrupt_sidecar_missing(path):
    path.with_suffix(".json").unlink()


def _corrupt_payload_missing(path):
    path.unlink()


def _corrupt_sidecar_garbage(path):
    path.with_suffix(".json").write_text("{not json")


@pytest.mark.parametrize(
    "corrupt",
    [
        _corrupt_truncate,
        _corrupt_flip,
        _corrupt_sidecar_missing,
        _corrupt_payload_missing,
        _corrupt_sidecar_garbage,
    ],
)
def test_corrupt_newest_checkpoint_falls_back_to_the_previous(tmp_path, caplog, corrupt):
    store = CheckpointStore(tmp_path)
    store.save(_state(1.0), {"file:x": 100}, {"v": 1})
    newest = store.save(_state(2.0), {"file:x": 200}, {"v": 2})
    corrupt(newest)
    with caplog.at_level(logging.WARNING, logger="streaming.checkpoint"):
        state, offsets, meta = store.latest()
    assert offsets == {"file:x": 100} and meta == {"v": 1}
    assert torch.equal(state["w"], torch.full((4, 3), 1.0))
    assert any("skipping checkpoint 2" in r.getMessage() for r in caplog.records)
    # The next save never reuses the broken version number.
    assert store.save(_state(3.0), {"file:x": 300}, {}).name == "ckpt-00000003.pt"
    assert store.latest()[1] == {"file:x": 300}


def test_every_checkpoint_corrupt_gives_none(tmp_path):
    store = CheckpointStore(tmp_path)
    _corrupt_truncate(store.save(_state(1.0), {}, {}))
    assert store.latest() is None
    with pytest.raises(CheckpointError, match="truncated"):
        store.load(1)


class _Evil:
    def __reduce__(self):
        return (exec, ("raise SystemExit('pwned')",))


def test_loading_never_unpickles_code(tmp_path):
    """A payload with a valid checksum but a pickled callable is refused, not executed."""
    store = CheckpointStore(tmp_path)
    store.save(_state(1.0), {"file:x": 1}, {})
    pt = tmp_path / "ckpt-00000002.pt"
    payload = pickle.dumps(
        {"format": 1, "version": 2, "state": _Evil(), "offsets": {}, "meta": {}}, protocol=2
    )
    pt.write_bytes(payload)
    sidecar = {"sha256": hashlib.sha256(payload).hexdigest(), "size": len(payload)}
    pt.with_suffix(".json").write_text(json.dumps(sidecar))
    with pytest.raises(CheckpointError, match="does not load"):
        store.load(2)
    assert store.latest()[1] == {"file:x": 1}


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="keep"):
        CheckpointStore(tmp_path, keep=0)
    store = CheckpointStore(tmp_path)
    with pytest.raises(ValueError, match="non-negative integer"):
        store.save({}, {"file:x": -1}, {})
    with pytest.raises(ValueError, match="JSON"):
        store.save({}, {}, {"x": object()})
    assert store.versions() == []


def test_temp_files_of_a_crashed_write_are_ignored_and_cleaned(tmp_path):
    store = CheckpointStore(tmp_path)
    (tmp_path / ".ckpt-00000001.pt.abc.tmp").write_bytes(b"half a checkpoint")
    assert store.latest() is None
    store.save(_state(1.0), {}, {})
    assert not list(tmp_path.glob(".ckpt-*.tmp"))
