"""The metrics time series (``metrics.jsonl``) of a run and ``sevo report``'s plots of it."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from engine.online import OnlineConfig, OnlineTrainer
from streaming.checkpoint import CheckpointStore
from streaming.cli import main
from streaming.config import PipelineConfig
from streaming.pipeline import Pipeline
from streaming.report import PLOTS, freshness_histogram
from streaming.sources.log import LogSource
from streaming.timeseries import METRICS_FILE, ROTATED_FILE, MetricsSeries, read_samples

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TINY = {"maxlen": 5, "model_overrides": {"dim": 8, "num_blocks": 1}, "seed": 0}
REPLAY_ARGS = [
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
FIELDS = {
    "t",
    "run",
    "reason",
    "elapsed_s",
    "events_applied",
    "events",
    "records",
    "batches",
    "events_per_s",
    "step_ms",
    "batch_ms",
    "positions",
    "lag",
    "watermark",
    "freshness",
    "publish_age_s",
    "prequential",
    "dead_letters",
    "dead_letters_total",
    "graph_nodes",
    "num_items",
    "num_users",
    "checkpoints",
    "rss_bytes",
    "peak_rss_bytes",
}


def _write_jsonl(path, records):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n")
    return path


def _events(n, *, users=4, items=9):
    return [
        {"user_id": f"u{i % users}", "item_id": f"i{(i * 7) % items}", "timestamp": 1000 + i}
        for i in range(n)
    ]


def _pipeline(store, **config):
    cfg = PipelineConfig.for_replay(progress=False, **config)
    return Pipeline(OnlineTrainer(OnlineConfig(**TINY)), store, cfg)


@pytest.fixture(scope="module")
def replayed(tmp_path_factory):
    """``sevo replay ml-100k`` with checkpoints and prequential: 3000 events, then a resumed
    run to 4000 (two runs in one directory)."""
    ckpt = tmp_path_factory.mktemp("run") / "ckpt"
    for n in ("3000", "4000"):
        assert (
            main(
                [
                    "replay",
                    "ml-100k",
                    "--max-events",
                    n,
                    "--checkpoint-dir",
                    str(ckpt),
                    *REPLAY_ARGS,
                ]
            )
            == 0
        )
    return ckpt


# ---------------------------------------------------------------------- metrics.jsonl
def test_a_replay_appends_samples_with_every_field_and_monotone_counts(replayed):
    samples, skipped = read_samples(replayed)
    assert skipped == 0
    for s in samples:
        assert set(s) == FIELDS, set(s) ^ FIELDS
    first, second = (
        [s for s in samples if s["run"] == r] for r in dict.fromkeys(s["run"] for s in samples)
    )
    assert len({s["run"] for s in samples}) == 2
    # start, then a sample at each checkpoint (every 1000 records); no "end" duplicating the last
    assert [s["reason"] for s in first] == ["start", "checkpoint", "checkpoint", "checkpoint"]
    assert [s["events"] for s in first] == [0, 1000, 2000, 3000]
    assert [s["reason"] for s in second] == ["start", "checkpoint"]
    assert [(s["events"], s["events_applied"]) for s in second] == [(0, 3000), (1000, 4000)]
    applied = [s["events_applied"] for s in samples]
    assert applied == sorted(applied) and applied[-1] == 4000
    assert [s["t"] for s in samples] == sorted(s["t"] for s in samples)
    for s in samples:
        assert s["positions"] == {"file:ml-100k": s["events_applied"]}
        assert s["lag"] == (3000 if s["run"] == first[0]["run"] else 4000) - s["events_applied"]
        assert s["records"] == s["events"] and s["batches"] == s["events"] // 250
        assert s["dead_letters"] == {} and s["dead_letters_total"] == 0
        assert s["freshness"] is None  # a replayed history has no freshness
        assert s["rss_bytes"] > 0 and s["peak_rss_bytes"] >= s["rss_bytes"] // 2
        assert s["checkpoints"] == s["events"] // 1000
        if s["reason"] == "start":
            assert s["events_per_s"] is None and s["step_ms"] is None
        else:
            assert s["events_per_s"] > 0 and s["step_ms"] > 0 and s["batch_ms"] >= s["step_ms"]
            assert s["watermark"] > 8e8 and s["num_items"] > 0 and s["graph_nodes"] > 1
    # prequential: the sums over all runs and the latest window
    last = samples[-1]["prequential"]
    assert last["events"] == 4000 and 0 <= last["NDCG@10"] <= last["HR@10"] <= 1
    assert last["window"] == {
        "index": 3,
        "start": 3000,
        "events": 1000,
        "HR@10": pytest.approx(last["window"]["HR@10"]),
        "NDCG@10": pytest.approx(last["window"]["NDCG@10"]),
    }
    assert first[1]["prequential"]["window"]["start"] == 0
    assert first[0]["prequential"] is None


def test_samples_are_taken_at_the_interval_between_checkpoints(tmp_path):
    log = _write_jsonl(tmp_path / "log.jsonl", _events(40))
    store = CheckpointStore(tmp_path / "ckpt")
    now = [0.0]

    def tick(report):  # one second per micro-batch
        now[0] += 1.0

    cfg = PipelineConfig.for_replay(progress=False, max_batch=10)
    pipeline = Pipeline(OnlineTrainer(OnlineConfig(**TINY)), store, cfg, on_batch=tick)
    pipeline.timeseries = MetricsSeries(store.directory, every_s=2.0, clock=lambda: now[0])
    summary = pipeline.run(LogSource(log, batch_size=10))
    samples, _ = read_samples(store.directory)
    assert summary["events"] == 40
    assert [(s["reason"], s["batches"]) for s in samples] == [
        ("start", 0),
        ("interval", 2),
        ("interval", 4),
        ("checkpoint", 4),  # the final checkpoint
    ]
    # without checkpoints nothing is written (the series lives in the checkpoint directory)
    assert _pipeline(None).timeseries is None


def test_a_torn_final_line_is_skipped_and_the_next_run_appends_whole_lines(tmp_path, caplog):
    log = _write_jsonl(tmp_path / "log.jsonl", _events(30))
    store = CheckpointStore(tmp_path / "ckpt")
    _pipeline(store, max_batch=10, max_records=20).run(LogSource(log, batch_size=10))
    path = store.directory / METRICS_FILE
    before, _ = read_samples(store.directory)
    with path.open("ab") as f:  # what kill -9 in the middle of a write can leave
        f.write(b'{"t": 1796000000.5, "run": "dead", "reason": "inter')
    samples, skipped = read_samples(store.directory)
    assert samples == before and skipped == 1
    _pipeline(store, max_batch=10).run(LogSource(log, batch_size=10))
    after, skipped = read_samples(store.directory)
    assert skipped == 1 and after[: len(before)] == before
    resumed = after[len(before) :]
    assert [s["reason"] for s in resumed] == ["start", "checkpoint"]
    assert resumed[-1]["events_applied"] == 30
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b""  # ends with a whole line
    # a line torn in the middle of the file (the run after a crash) is skipped too
    assert sum(1 for line in lines if line and not line.endswith(b"}")) == 1


def test_the_series_rotates_at_its_size_bound(tmp_path):
    log = _write_jsonl(tmp_path / "log.jsonl", _events(60))
    store = CheckpointStore(tmp_path / "ckpt")
    pipeline = _pipeline(store, max_batch=5)
    pipeline.timeseries = MetricsSeries(store.directory, every_s=1e-9, max_bytes=3000)
    pipeline.run(LogSource(log, batch_size=5))
    current, rotated = store.directory / METRICS_FILE, store.directory / ROTATED_FILE
    assert rotated.exists() and current.stat().st_size <= 3000 and rotated.stat().st_size <= 3000
    samples, skipped = read_samples(store.directory)
    assert skipped == 0 and pipeline.timeseries.samples > len(samples) > 2
    batches = [s["batches"] for s in samples]
    assert batches == sorted(batches) and samples[-1]["events"] == 60  # the newest are kept


def test_a_series_that_cannot_be_written_does_not_stop_training(tmp_path, caplog):
    log = _write_jsonl(tmp_path / "log.jsonl", _events(20))
    store = CheckpointStore(tmp_path / "ckpt")
    (store.directory / METRICS_FILE).mkdir()  # opening it for appending fails
    with caplog.at_level(logging.WARNING):
        summary = _pipeline(store, max_batch=10).run(LogSource(log, batch_size=10))
    assert summary["events_applied"] == 20 and store.latest_checkpoint() is not None
    assert sum("not writing" in r.getMessage() for r in caplog.records) == 1


# ---------------------------------------------------------------------- sevo report
def _check_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, path
    assert len(data) > 10_000, (path, len(data))  # axes, lines and labels, not an empty canvas
    from PIL import Image

    with Image.open(path) as image:
        width, height = image.size
    assert width >= 600 and height >= 300


def _report(capsys, run_dir, out) -> dict:
    capsys.readouterr()
    assert main(["report", str(run_dir), "--out", str(out), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_report_of_a_replay_with_prequential(replayed, tmp_path, capsys):
    out = tmp_path / "report"
    (out).mkdir()
    (out / "freshness.png").write_bytes(b"stale")  # from an earlier report: removed
    result = _report(capsys, replayed, out)
    written = {p.rsplit("/", 1)[-1] for p in result["plots"]}
    assert written == {"prequential.png", "throughput.png", "rss.png"}
    assert set(result["notes"]) == {"freshness.png", "dead_letters.png"}
    assert result["samples"] == 6 and result["skipped_lines"] == 0
    for name in written:
        _check_png(out / name)
    assert not (out / "freshness.png").exists()
    page = (out / "index.html").read_text()
    for name in PLOTS:
        assert (f'src="{name}"' in page) == (name in written), name
    assert "live sources" in page and "no dead letters" in page
    for text in ("ml-100k", "sasrec", "sevo-adamw", "4,000", "HR@10 0.", "2 run(s)"):
        assert text in page, text
    assert page.count("<tr><td>") == 4  # one row per prequential window


def test_report_of_a_run_with_dead_letters_and_no_series_or_prequential(tmp_path, capsys):
    records = _events(50)
    records[3], records[10], records[11] = "not json", "[1]", "{broken"
    log = _write_jsonl(tmp_path / "bad.jsonl", records)
    ckpt = tmp_path / "ckpt"
    argv = ["replay", str(log), "--checkpoint-dir", str(ckpt), "--dim", "8", "--no-progress"]
    assert main([*argv, "--json"]) == 0
    (ckpt / METRICS_FILE).unlink()
    capsys.readouterr()
    out = tmp_path / "out"
    result = _report(capsys, ckpt, out)
    assert [p.rsplit("/", 1)[-1] for p in result["plots"]] == ["dead_letters.png"]
    assert set(result["notes"]) == {"prequential.png", "throughput.png", "freshness.png", "rss.png"}
    _check_png(out / "dead_letters.png")
    page = (out / "index.html").read_text()
    assert 'src="dead_letters.png"' in page and "--prequential" in page
    assert "no metrics time series" in page
    # an empty series, and one with only a torn line, say so too
    (ckpt / METRICS_FILE).write_bytes(b'{"t": 17')
    result = _report(capsys, ckpt, out)
    assert result["skipped_lines"] == 1 and result["samples"] == 0
    assert "1 line(s) of metrics.jsonl skipped" in (out / "index.html").read_text()


def test_report_draws_freshness_of_live_runs_from_each_process(tmp_path, capsys):
    """The freshness histogram adds up the last sample of each run (each process counts from
    zero); the freshness fields here are what a live ``sevo run`` writes."""
    log = _write_jsonl(tmp_path / "log.jsonl", _events(20))
    store = CheckpointStore(tmp_path / "ckpt")
    _pipeline(store, max_batch=10).run(LogSource(log, batch_size=10))
    samples, _ = read_samples(store.directory)
    assert freshness_histogram(samples) is None  # a replay measures none
    buckets = {"0.1": 3, "1.0": 8, "+Inf": 10}
    with (store.directory / METRICS_FILE).open("a") as f:
        for run, scale in (("a", 1), ("a", 2), ("b", 1)):
            fresh = {"count": 10 * scale, "sum": 4.0 * scale}
            fresh["buckets"] = {k: v * scale for k, v in buckets.items()}
            f.write(json.dumps({**samples[-1], "run": run, "freshness": fresh}) + "\n")
    hist = freshness_histogram(read_samples(store.directory)[0])
    assert hist == {
        "bounds": ["0.1", "1.0", "+Inf"],
        "counts": [9, 15, 6],
        "count": 30,
        "sum": 12.0,
    }
    result = _report(capsys, store.directory, tmp_path / "out")
    assert "freshness.png" not in result["notes"]
    _check_png(tmp_path / "out" / "freshness.png")


def test_report_errors_are_one_line_and_exit_2(tmp_path, caplog):
    out = tmp_path / "out"
    with caplog.at_level(logging.ERROR):
        assert main(["report", str(tmp_path / "missing"), "--out", str(out)]) == 2
        (tmp_path / "empty").mkdir()
        assert main(["report", str(tmp_path / "empty"), "--out", str(out)]) == 2
        other = CheckpointStore(tmp_path / "other")
        other.save({"w": torch.zeros(2)}, {"file:x": 1}, {"note": "not the pipeline's"})
        assert main(["report", str(other.directory), "--out", str(out)]) == 2
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(messages) == 3
    assert "no checkpoint directory" in messages[0]
    assert "no valid checkpoint" in messages[1] and "--checkpoint-dir" in messages[1]
    assert "not a checkpoint of sevo replay or sevo run" in messages[2]
    assert not out.exists()  # nothing written
