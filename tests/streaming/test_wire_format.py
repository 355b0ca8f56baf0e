"""One parser for the JSON event format: the engine loader, `sevo data stats` and the replay source
read the same file the same way; only the policy for a bad record differs."""

from __future__ import annotations

import json
import logging

import pytest

from engine.data import DataFormatError, load_dataset
from streaming.cli import main
from streaming.sources.log import LogSource

ISO_EVENTS = [
    {"user_id": "u1", "item_id": "a", "timestamp": "2024-05-01T12:00:00Z"},
    {"user_id": "u1", "item_id": "b", "timestamp": "2024-05-01T14:30:00+02:00"},
    {"user_id": "u2", "item_id": "a", "timestamp": "2024-05-02T08:00:00"},  # no offset: UTC
    {"user_id": 3, "item_id": 7, "timestamp": "2024-05-03", "weight": 0.5},
    {"user_id": "u2", "item_id": "c", "timestamp": 1714650000, "event_type": "buy"},
]


def _write_jsonl(path, records):
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    return path


def test_iso_timestamps_give_the_same_count_everywhere(tmp_path, capsys):
    path = _write_jsonl(tmp_path / "iso.jsonl", ISO_EVENTS)

    inter = load_dataset(path)
    assert main(["data", "stats", str(path), "--core", "0", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    source = LogSource(path)

    assert inter.num_interactions == stats["interactions"] == len(source) == len(ISO_EVENTS)
    assert source.dead_letters == []
    # Same times too: the replay serves events in time order, the loader sorts by (user, time).
    (batch,) = list(source)
    assert sorted(inter.times.tolist()) == batch.times.tolist()


def test_an_invalid_timestamp_gets_the_same_reason_in_both_policies(tmp_path, caplog):
    records = [*ISO_EVENTS[:2], {"user_id": "u9", "item_id": "z", "timestamp": "2024-02-30T10:00Z"}]
    path = _write_jsonl(tmp_path / "bad.jsonl", records)

    # The engine loader rejects the file as a whole, naming the line and the reason.
    with pytest.raises(DataFormatError, match=r"bad\.jsonl, line 3: .*\[bad_timestamp\]") as info:
        load_dataset(path)
    with caplog.at_level(logging.ERROR):
        assert main(["data", "stats", str(path), "--core", "0"]) == 2
    assert "line 3" in caplog.text and "[bad_timestamp]" in caplog.text

    # The replay source keeps the good events and turns the bad line into a dead letter.
    source = LogSource(path)
    assert len(source) == 2
    (letter,) = source.dead_letters
    assert letter.reason == "bad_timestamp"
    assert letter.position == f"{path}:3"
    assert letter.detail in str(info.value)
