"""Log replay: sources, dead letters, prequential metrics, checkpoints and exact resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from engine.online import OnlineConfig, OnlineTrainer
from engine.prequential import Prequential
from streaming.checkpoint import CheckpointStore
from streaming.cli import main
from streaming.config import PipelineConfig
from streaming.events import JsonlDeadLetterSink
from streaming.pipeline import Pipeline
from streaming.sources.log import LogSource

TINY = {
    "maxlen": 5,
    "model_overrides": {"dim": 8, "num_blocks": 1},
    "seed": 0,
    "lr": 1e-3,  # the training settings these tests were written for
    "steps_per_batch": 1,
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _run(source, trainer, *, prequential=False, dead_letters=None):
    """``sevo replay``'s pipeline without checkpoints or a progress bar."""
    config = PipelineConfig.for_replay(prequential=prequential, progress=False)
    return Pipeline(trainer, config=config, dead_letters=dead_letters).run(source)


def _write_jsonl(path, records):
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    path.write_text("\n".join(lines) + "\n")
    return path


def _event(u, i, t, **kw):
    return {"user_id": u, "item_id": i, "timestamp": t, **kw}


# ---------------------------------------------------------------------- LogSource
def test_jsonl_source_sorts_by_time_and_turns_bad_lines_into_dead_letters(tmp_path):
    path = _write_jsonl(
        tmp_path / "log.jsonl",
        [
            _event("u1", "a", 30),
            "not json",
            _event("u2", "b", 10),
            "",
            _event("u1", "c", 10),  # same time as line 3: file order kept
            _event("u3", "d", -5),
            _event("u2", "e", 20, weight=2.5),
        ],
    )
    source = LogSource(path, batch_size=2)
    assert len(source) == 4 and source.key == f"file:{path.resolve()}"
    assert [(d.position, d.reason) for d in source.dead_letters] == [
        (f"{path}:2", "invalid_json"),
        (f"{path}:6", "bad_timestamp"),
    ]
    batches = list(source)
    assert [b.items.tolist() for b in batches] == [["b", "c"], ["e", "a"]]
    assert [(b.start, b.end) for b in batches] == [(0, 2), (2, 4)]
    assert len(batches[0].dead_letters) == 2 and batches[1].dead_letters == []
    assert batches[1].weights.tolist() == [2.5, 1.0]
    assert source.position() == 4 and source.next_batch() is None
    source.seek(1)
    assert [b.items.tolist() for b in source] == [["c", "e"], ["a"]]
    with pytest.raises(ValueError, match="outside"):
        source.seek(5)


def test_source_limit_and_rate(tmp_path):
    path = _write_jsonl(tmp_path / "log.jsonl", [_event("u", str(i), i) for i in range(10)])
    slept = []
    source = LogSource(path, batch_size=4, limit=6, rate=100.0, sleep=slept.append)
    assert [len(b) for b in source] == [4, 2]
    assert len(slept) == 1 and 0.0 < slept[0] <= 0.04  # 4 events at 100/s before the 2nd batch
    with pytest.raises(ValueError, match="rate"):
        LogSource(path, rate=0)
    with pytest.raises(FileNotFoundError):
        LogSource(tmp_path / "missing.jsonl")


def test_named_dataset_source_is_in_event_time_order():
    source = LogSource("ml-100k", batch_size=5000, limit=20_000)
    times = np.concatenate([b.times for b in source])
    assert times.size == 20_000 and np.all(np.diff(times) >= 0)
    assert source.key == "file:ml-100k"


# ---------------------------------------------------------------------- prequential
def test_prequential_ranks_before_learning_so_first_sightings_are_misses(tmp_path):
    """Eight items, each consumed once: ranked *after* learning, every known item would be a hit
    at K=10 (the catalogue is smaller than K); ranked before, every event is a miss."""
    records = [_event(f"u{i % 2}", f"item{i}", i) for i in range(8)]
    source = LogSource(_write_jsonl(tmp_path / "log.jsonl", records), batch_size=3)
    summary = _run(source, OnlineTrainer(OnlineConfig(**TINY)), prequential=True)
    preq = summary["prequential"]
    assert preq["events"] == 8 and preq["HR@10"] == 0.0 and preq["NDCG@10"] == 0.0
    assert preq["by_item_age"]["0"]["events"] == 8
    # Repeats of known items can be hits: the same log again, now every item has age >= 1.
    source = LogSource(_write_jsonl(tmp_path / "log2.jsonl", records + records), batch_size=3)
    preq = _run(source, OnlineTrainer(OnlineConfig(**TINY)), prequential=True)["prequential"]
    assert preq["by_item_age"]["1-9"]["events"] == 8 and preq["by_item_age"]["1-9"]["HR@10"] > 0


def test_prequential_windows_and_state_round_trip():
    p = Prequential(k=2, window=3)
    p.update(np.array([1, 3, 2, 1]), num_known=5, ages=np.array([0, 1, 10, 200]))
    p.update(np.array([6, 1]), num_known=5, ages=np.array([0, 0]))  # 6 = unknown item
    s = p.summary()
    assert s["events"] == 6 and s["HR@2"] == pytest.approx(4 / 6)
    assert [w["events"] for w in s["windows"]] == [3, 3]
    assert s["windows"][0]["HR@2"] == pytest.approx(2 / 3)
    assert s["by_item_age"]["0"]["events"] == 3 and s["by_item_age"]["100+"]["HR@2"] == 1.0
    assert Prequential.from_state(json.loads(json.dumps(p.state()))).summary() == s
    # A rank within K still misses when the catalogue had fewer items (unknown target).
    q = Prequential(k=10)
    q.update(np.array([4]), num_known=3, ages=np.array([0]))
    assert q.summary()["HR@10"] == 0.0


# ---------------------------------------------------------------------- end to end
ARGS = [
    "--batch-size",
    "250",
    "--dim",
    "8",
    "--maxlen",
    "8",
    "--checkpoint-every",
    "1000",
    "--prequential",
    "--window",
    "1000",
    "--no-progress",
    "--json",
]


def _replay(capsys, *argv) -> dict:
    assert main(["replay", *argv]) == 0
    return json.loads(capsys.readouterr().out)


def _inspect(capsys, directory) -> dict:
    assert main(["inspect", str(directory), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_replay_cli_checkpoints_inspects_and_resumes_exactly_once(tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    first = _replay(capsys, "ml-100k", "--max-events", "2000", "--checkpoint-dir", str(ckpt), *ARGS)
    assert first["events"] == 2000 and first["events_applied"] == 2000
    assert first["prequential"]["events"] == 2000
    assert len(first["prequential"]["windows"]) == 2
    assert 0.0 <= first["prequential"]["NDCG@10"] <= first["prequential"]["HR@10"] <= 1.0
    assert first["graph"]["nnz"] > 0 and first["dead_letters_total"] == 0

    info = _inspect(capsys, ckpt)
    source = LogSource("ml-100k", batch_size=2000, limit=2000)
    (batch,) = list(source)
    assert info["events_applied"] == 2000 and info["dead_letters"] == 0
    assert info["offsets"] == {"file:ml-100k": 2000}
    assert info["num_items"] == np.unique(batch.items).size
    assert info["num_users"] == np.unique(batch.users).size
    assert info["graph_nnz"] == first["graph"]["nnz"]
    assert info["graph_total_weight"] == pytest.approx(first["graph"]["total_weight"])
    assert info["checkpoint_version"] == 2  # at 1000 events and at the end
    assert info["prequential"]["events"] == 2000

    # Same command again: resumes at 2000, applies nothing, writes no checkpoint.
    again = _replay(capsys, "ml-100k", "--max-events", "2000", "--checkpoint-dir", str(ckpt), *ARGS)
    assert again["events"] == 0 and again["events_applied"] == 2000
    assert again["resumed_from_version"] == 2 and _inspect(capsys, ckpt)["checkpoint_version"] == 2

    # Extending the log resumes after event 2000; the result equals one uninterrupted run.
    more = _replay(capsys, "ml-100k", "--max-events", "3000", "--checkpoint-dir", str(ckpt), *ARGS)
    assert (more["start_position"], more["events"], more["events_applied"]) == (2000, 1000, 3000)
    straight_dir = tmp_path / "straight"
    straight = _replay(
        capsys, "ml-100k", "--max-events", "3000", "--checkpoint-dir", str(straight_dir), *ARGS
    )
    assert straight["prequential"] == more["prequential"]
    resumed_state = CheckpointStore(ckpt).latest()[0]
    straight_state = CheckpointStore(straight_dir).latest()[0]
    for name, value in straight_state["model"].items():
        assert torch.equal(value, resumed_state["model"][name]), name
    assert torch.equal(straight_state["generator"], resumed_state["generator"])

    # A different config on the same directory is refused with a clear error.
    assert main(["replay", "ml-100k", "--checkpoint-dir", str(ckpt), "--lr", "0.5", *ARGS]) == 2


def test_replay_of_a_jsonl_log_with_bad_lines_keeps_going(tmp_path, capsys):
    rng = np.random.default_rng(0)
    records = [_event(f"u{rng.integers(5)}", f"i{rng.integers(12)}", 1000 + i) for i in range(60)]
    records[7] = "{broken"
    records[20] = _event("u1", "", 5)
    records[33] = _event("u1", "i1", float("nan"))
    log = _write_jsonl(tmp_path / "events.jsonl", records)
    dlq = tmp_path / "dead.jsonl"
    ckpt = tmp_path / "ckpt"
    summary = _replay(
        capsys, str(log), "--dead-letters", str(dlq), "--checkpoint-dir", str(ckpt), *ARGS
    )
    assert summary["events"] == 57 and summary["events_applied"] == 57
    assert summary["dead_letters"] == {"invalid_json": 1, "bad_id": 1, "bad_timestamp": 1}
    letters = [json.loads(line) for line in dlq.read_text().splitlines()]
    assert [d["position"] for d in letters] == [f"{log}:8", f"{log}:21", f"{log}:34"]
    info = _inspect(capsys, ckpt)
    assert info["dead_letters"] == 3 and info["events_applied"] == 57
    assert info["offsets"] == {f"file:{log.resolve()}": 57}
    # Resuming does not count (or write) the dead letters again.
    again = _replay(
        capsys, str(log), "--dead-letters", str(dlq), "--checkpoint-dir", str(ckpt), *ARGS
    )
    assert again["events"] == 0 and again["dead_letters_total"] == 3
    assert len(dlq.read_text().splitlines()) == 3


def test_replay_pipeline_writes_dead_letters_to_a_sink(tmp_path):
    log = _write_jsonl(tmp_path / "e.jsonl", [_event("u", "a", 1), "[]", _event("u", "b", 2)])
    with JsonlDeadLetterSink(tmp_path / "dlq.jsonl") as sink:
        summary = _run(LogSource(log), OnlineTrainer(OnlineConfig(**TINY)), dead_letters=sink)
    assert summary["dead_letters"] == {"not_object": 1} and summary["events"] == 2
    assert summary["checkpoint"] is None


def test_replay_cli_unsampled_rows_option_reaches_the_optimizer(capsys):
    paper = ("--sevo-smooth", "update")  # the correction belongs to the paper's update smoothing
    carried = _replay(capsys, "ml-100k", "--max-events", "1500", *paper, *ARGS)
    decayed = _replay(
        capsys, "ml-100k", "--max-events", "1500", "--unsampled-rows", "decay", *paper, *ARGS
    )
    assert carried["config"]["carry_unsampled"] is True
    assert decayed["config"]["carry_unsampled"] is False
    # same data and seed: the only difference is how unsampled item rows move
    assert carried["prequential"]["events"] == decayed["prequential"]["events"] == 1500
    assert carried["prequential"] != decayed["prequential"]


def test_replay_cli_sevo_smooth_option_reaches_the_optimizer(capsys):
    default = _replay(capsys, "ml-100k", "--max-events", "1500", *ARGS)
    paper = _replay(capsys, "ml-100k", "--max-events", "1500", "--sevo-smooth", "update", *ARGS)
    assert default["config"]["sevo_smooth"] == "gradient"
    assert paper["config"]["sevo_smooth"] == "update"
    assert default["prequential"]["events"] == paper["prequential"]["events"] == 1500
    assert default["prequential"] != paper["prequential"]


def test_a_replay_of_only_dead_letters_warns_and_exits_non_zero(tmp_path, capsys, caplog):
    """Every record a dead letter: a warning at the first batch, exit 1 with the reasons; a
    resume that finds nothing new still exits 0."""
    bad = [
        _event("u", "a", "yesterday"),  # not a timestamp
        '{"user_id": "u"}',  # missing fields
        "not json",
    ]
    log = _write_jsonl(tmp_path / "bad.jsonl", bad)
    ckpt = tmp_path / "ckpt"
    argv = ["replay", str(log), "--checkpoint-dir", str(ckpt), "--no-progress", "--json"]
    with caplog.at_level("WARNING"):
        assert main(argv) == 1
    summary = json.loads(capsys.readouterr().out)
    assert summary["only_dead_letters"] is True and summary["events"] == 0
    assert summary["dead_letters_total"] == 3
    messages = [r.getMessage() for r in caplog.records]
    assert any("every record read so far is a dead letter" in m for m in messages)
    assert any("every one was a dead letter" in m for m in messages)
    # Resuming: nothing new is read, nothing to complain about.
    assert main(argv) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["records"] == 0 and again["only_dead_letters"] is False


def test_replay_stops_cleanly_on_a_stop_request_with_a_checkpoint(tmp_path):
    """A stop (what SIGINT/SIGTERM set) ends the replay after the current batch with a
    checkpoint, and the next run resumes exactly there."""
    import threading

    from streaming.pipeline import BatchReport

    stop = threading.Event()

    def after(report: BatchReport) -> None:
        stop.set()  # asked to stop during the first batch

    records = [_event(f"u{i % 3}", f"i{i % 7}", i) for i in range(40)]
    log = _write_jsonl(tmp_path / "log.jsonl", records)
    store = CheckpointStore(tmp_path / "ckpt")
    config = PipelineConfig.for_replay(max_batch=10, progress=False)
    trainer = OnlineTrainer(OnlineConfig(**TINY))
    summary = Pipeline(trainer, store, config, on_batch=after).run(
        LogSource(log, batch_size=10), stop=stop
    )
    assert summary["stopped_by"] == "stop" and summary["events"] == 10
    assert store.latest_checkpoint().offsets == {f"file:{log.resolve()}": 10}
    rest = Pipeline(OnlineTrainer(OnlineConfig(**TINY)), store, config).run(
        LogSource(log, batch_size=10)
    )
    assert rest["start_position"] == 10 and rest["events"] == 30
    assert rest["events_applied"] == 40 and rest["stopped_by"] == "end"


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_replay_checkpoints_and_exits_0_on_a_signal(tmp_path, signame):
    """``sevo replay`` stops after the current batch on SIGINT/SIGTERM, writes a checkpoint and
    exits 0; the rerun resumes there and applies each event once."""
    import signal
    import subprocess
    import sys
    import time

    ckpt = tmp_path / "ckpt"
    argv = [
        sys.executable,
        "-m",
        "streaming.cli",
        "replay",
        "ml-100k",
        "--max-events",
        "3000",
        "--checkpoint-dir",
        str(ckpt),
        *ARGS,
    ]
    proc = subprocess.Popen([*argv, "--rate", "1000"], stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not any(ckpt.glob("ckpt-*.pt")) and time.monotonic() < deadline:
        time.sleep(0.05)  # the first periodic checkpoint (every 1000 records) is written
    proc.send_signal(getattr(signal, signame))
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    first = json.loads(out)
    assert first["stopped_by"] == "stop" and 1000 <= first["end_position"] < 3000
    assert first["checkpoint"]["position"] == {"file:ml-100k": first["end_position"]}
    rest = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert rest.returncode == 0, rest.stderr
    second = json.loads(rest.stdout)
    assert second["start_position"] == first["end_position"]
    assert second["events_applied"] == 3000 and second["stopped_by"] == "end"
