"""Disk faults: the checkpoint directory full or read-only.

Tests run as root, which ignores file modes, so the faults are real filesystems: a small tmpfs
that a filler file fills up (ENOSPC) and a tmpfs remounted read-only (EROFS). The behaviour
under test: a periodic checkpoint the directory refuses leaves no partial files, training goes
on with retries up to ``max_unsaved_records``, offsets are never committed past a durable
checkpoint, and a run that stops (or a restart) resumes exactly from the last durable one.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from devtools.disk import fill, read_only_over, remount, tmpfs, unmount
from engine.online import OnlineConfig, OnlineTrainer
from streaming.checkpoint import CheckpointStore
from streaming.config import PipelineConfig
from streaming.errors import CheckpointWriteError
from streaming.metrics import EngineMetrics
from streaming.pipeline import BatchReport, Pipeline
from streaming.sources.log import LogSource

REPO = Path(__file__).resolve().parents[2]
EVENTS, BATCH, EVERY = 3000, 100, 500
TINY = {"model": "mf", "maxlen": 5, "model_overrides": {"dim": 8}, "steps_per_batch": 1}

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root"),
]


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs (about six checkpoints of the tiny trainer), unmounted after the test."""
    with tmpfs(tmp_path / "disk", "2m") as mount:
        yield mount


class CommitLog(LogSource):
    """The replay source, recording what the pipeline commits (a file has no group to tell)."""

    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self.commits: list[dict[str, int]] = []

    def commit(self, positions):
        self.commits.append(dict(positions))
        return super().commit(positions)


def make(store: CheckpointStore, on_batch=None, **config) -> tuple[Pipeline, CommitLog]:
    """The replay pipeline of the first EVENTS ML-100K events (tiny MF trainer)."""
    source = CommitLog("ml-100k", batch_size=BATCH, limit=EVENTS)
    settings = {"max_batch": BATCH, "checkpoint_every_events": EVERY, "progress": False}
    pipe = Pipeline(
        OnlineTrainer(OnlineConfig(**TINY)),
        store,
        PipelineConfig.for_replay(**{**settings, **config}),
        metrics=EngineMetrics(),
        on_batch=on_batch,
        clock=FastClock(),
    )
    return pipe, source


def replay(store: CheckpointStore, on_batch=None, **config) -> tuple[dict, Pipeline, CommitLog]:
    pipe, source = make(store, on_batch, **config)
    return pipe.run(source), pipe, source


class FastClock:
    """Monotonic time that moves 10 s per reading: every backoff has expired at the next batch."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        self.t += 10.0
        return self.t


def straight_state(tmp_path: Path) -> dict:
    summary, pipe, _ = replay(CheckpointStore(tmp_path / "straight"))
    return {"events_applied": summary["events_applied"], **_graph(pipe)}


def _graph(pipe: Pipeline) -> dict:
    info = pipe.trainer.summary()
    return {k: info[k] for k in ("graph_nnz", "graph_total_weight", "num_items", "num_users")}


def assert_no_partial_files(directory: Path) -> None:
    names = sorted(p.name for p in directory.iterdir())
    assert not [n for n in names if n.endswith(".tmp")], names
    stems = {n.rsplit(".", 1)[0] for n in names if n.startswith("ckpt-")}
    for stem in stems:
        assert f"{stem}.pt" in names and f"{stem}.json" in names, names


def committed_within_durable(source: CommitLog, store: CheckpointStore) -> None:
    """Every commit names positions some durable checkpoint of this run reached."""
    durable = {v: store.load(v).offsets for v in store.versions()}
    newest = max(o[next(iter(o))] for o in durable.values())
    for positions in source.commits:
        assert all(p <= newest for p in positions.values()), (positions, durable)


@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_checkpoint_refused_mid_run_training_goes_on_and_recovers(
    small_disk, tmp_path, caplog, fault
):
    store = CheckpointStore(small_disk / "ckpt")
    state: dict = {"filler": None, "faulted": False}

    def on_batch(report: BatchReport) -> None:
        if not state["faulted"] and store.versions():
            state["faulted"] = True
            if fault == "full":
                state["filler"] = fill(small_disk)
            else:
                read_only_over(store.directory)
                state["read_only"] = True
        elif state["faulted"] and pipe.checkpoint_failures >= 2:  # recover after 2 failures
            if state["filler"] is not None:
                state["filler"].unlink()
                state["filler"] = None
            elif state.get("read_only"):
                unmount(store.directory)
                state["read_only"] = False

    pipe, source = make(store, on_batch)
    try:
        with caplog.at_level(logging.INFO, logger="streaming.pipeline"):
            summary = pipe.run(source)
    finally:
        if state.get("read_only"):
            unmount(store.directory)
    assert summary["events_applied"] == EVENTS and summary["stopped_by"] == "end"
    failures = pipe.metrics.value("checkpoint_failures_total")
    assert failures >= 2
    reason = "No space left on device" if fault == "full" else "Read-only file system"
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and reason in errors[0].getMessage(), [r.getMessage() for r in errors]
    assert any("written again after" in r.getMessage() for r in caplog.records)
    assert_no_partial_files(store.directory)
    assert store.latest_checkpoint().offsets == {source.key: EVENTS}
    committed_within_durable(source, store)
    assert pipe.metrics.value("unsaved_records") == 0
    assert {"events_applied": EVENTS, **_graph(pipe)} == straight_state(tmp_path)


def test_full_disk_past_the_bound_stops_and_a_restart_resumes_exactly(small_disk, tmp_path):
    store = CheckpointStore(small_disk / "ckpt")
    filler: list[Path] = []

    def on_batch(report: BatchReport) -> None:
        if not filler and store.versions():
            filler.append(fill(small_disk))

    with pytest.raises(CheckpointWriteError) as info:
        replay(store, on_batch, max_unsaved_records=1000)
    message = str(info.value)
    assert "No space left on device" in message and "stopping with" in message
    assert "restart resumes from" in message
    assert_no_partial_files(store.directory)
    durable = store.latest_checkpoint()
    assert 0 < sum(durable.offsets.values()) < EVENTS

    filler[0].unlink()
    summary, pipe, _ = replay(store)
    assert summary["resumed_from_version"] == durable.version
    assert summary["start_position"] == sum(durable.offsets.values())
    assert summary["events_applied"] == EVENTS
    assert {"events_applied": EVENTS, **_graph(pipe)} == straight_state(tmp_path)


def test_final_checkpoint_refused_is_an_error_not_a_silent_exit(small_disk):
    store = CheckpointStore(small_disk / "ckpt")
    filler: list[Path] = []

    def on_batch(report: BatchReport) -> None:
        if not filler and store.versions():
            filler.append(fill(small_disk))

    # Unsaved work stays under the bound, so only the final checkpoint decides.
    with pytest.raises(CheckpointWriteError, match="stopping with"):
        replay(store, on_batch, max_unsaved_records=10 * EVENTS)
    assert_no_partial_files(store.directory)


def test_read_only_directory_fails_before_training(small_disk):
    (small_disk / "ckpt").mkdir()
    remount(small_disk, "ro")
    try:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "streaming.cli",
                "replay",
                "ml-100k",
                "--max-events",
                "500",
                "--model",
                "mf",
                "--dim",
                "8",
                "--threads",
                "1",
                "--no-progress",
                "--checkpoint-dir",
                str(small_disk / "ckpt"),
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        remount(small_disk, "rw")
    assert done.returncode == 1, done.stderr[-2000:]
    assert "does not take writes: Read-only file system" in done.stderr
    assert "Traceback" not in done.stderr
    assert "throughput" not in done.stdout  # nothing was trained
