"""The quality guard on publishing: its state machine, and the guard end to end against a real
``redis-server`` with an injected regression.

* The state machine (:class:`QualityGuard`): warm-up, trip after ``patience`` bad windows,
  the hysteresis band (no trip and no cleared streak from windows between the lines), no
  flapping, recovery reported once, the reference reset by an operator's resume.
* Against Redis: the newest state published before a moment (a version at one of its deltas)
  is found and restored exactly; retention keeps it while a bad streak is open.
* End to end: a prequential replay whose stream turns to random events for a while. The guard
  pauses publishing, points readers back at the exact state published before the burst,
  raises its metrics and one warning; training goes on; ``resume`` (the admin call or
  ``sevo snapshots resume``) publishes again with a fresh reference.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time

import numpy as np
import pytest

from engine.online import OnlineConfig, OnlineTrainer
from streaming.cli import build_parser, main
from streaming.config import PipelineConfig, QualityGuardConfig
from streaming.metrics import EngineMetrics
from streaming.pipeline import Pipeline
from streaming.serving import (
    EmbeddingClient,
    EmbeddingPublisher,
    PublishConfig,
    QualityGuard,
    SnapshotStore,
    SnapshotWriter,
    connect,
)
from streaming.serving.guard import GUARD
from streaming.sources import LogSource

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------------- the state machine
def _feed(guard: QualityGuard, values, *, window: int = 10, t0: float = 0.0):
    """One batch per window (``window`` events at NDCG ``value``), window i ranked at t0 + i;
    returns the verdicts, flattened."""
    out = []
    for i, value in enumerate(values):
        out += guard.observe(window, value * window, t0 + i)
    return out


def _guard(**kw) -> QualityGuard:
    defaults = {"drop": 0.3, "window_events": 10, "patience": 2, "warmup_windows": 2}
    return QualityGuard(QualityGuardConfig(**{**defaults, **kw}))


def test_warmup_builds_the_reference_and_never_trips():
    g = _guard(warmup_windows=3, reference_alpha=0.5)
    assert g.state == "warmup" and g.reference is None and g.thresholds() is None
    assert _feed(g, [0.4, 0.0, 0.0]) == []  # a collapse during warm-up trips nothing
    assert g.reference == pytest.approx(0.1)  # EMA: 0.4 -> 0.2 -> 0.1
    assert g.state == "healthy" and g.live == 0.0 and g.windows == 3 and g.events == 30


def test_trips_after_patience_bad_windows_and_remembers_when_the_streak_began():
    g = _guard()
    assert _feed(g, [0.5, 0.5, 0.5]) == []
    assert g.thresholds() == pytest.approx((0.35, 0.425))
    assert _feed(g, [0.2], t0=100.0) == []
    assert g.state == "suspect" and g.bad_since == 100.0
    (verdict,) = _feed(g, [0.1], t0=200.0)
    assert (verdict.kind, verdict.live, verdict.bad_since) == ("tripped", 0.1, 100.0)
    assert verdict.reference == pytest.approx(0.5)
    assert g.state == "tripped" and g.tripped
    assert _feed(g, [0.0, 0.0, 0.0]) == []  # trips once; reference frozen
    assert g.reference == pytest.approx(0.5)


def test_windows_close_at_batch_boundaries_and_start_with_their_first_batch():
    g = _guard(window_events=100, warmup_windows=1)
    assert g.observe(60, 30.0, 1.0) == [] and g.live is None
    assert g.observe(60, 30.0, 2.0) == []  # 120 events >= 100: one window of NDCG 0.5
    assert (g.live, g.events, g.reference) == (0.5, 120, 0.5)
    assert g.observe(0, 0.0, 3.0) == []  # an empty batch opens nothing
    g.observe(50, 0.0, 4.0)
    g.observe(50, 0.0, 5.0)  # bad window of events ranked from t=4
    assert g.state == "suspect" and g.bad_since == 4.0


def test_a_good_window_clears_the_streak_but_one_in_the_band_does_not():
    g = _guard()
    _feed(g, [1.0, 1.0])  # reference 1.0: bad < 0.7, good >= 0.85
    assert _feed(g, [0.6, 0.9, 0.6, 0.9, 0.6, 0.9]) == []  # alternating: never trips
    assert g.state == "healthy" and g.bad_since is None
    ref = g.reference
    assert _feed(g, [0.6, 0.8, 0.8, 0.8], t0=50.0) == []  # band windows keep the streak...
    assert g.state == "suspect" and g.reference == ref  # ...and never move the reference
    (verdict,) = _feed(g, [0.6], t0=60.0)
    assert verdict.kind == "tripped" and verdict.bad_since == 50.0


def test_a_slow_slide_within_the_band_does_not_drag_the_reference_down():
    g = _guard(reference_alpha=0.5)
    _feed(g, [1.0, 1.0])
    verdicts = _feed(g, [0.84, 0.80, 0.76, 0.72, 0.68, 0.64])  # each above the next bad line
    assert [v.kind for v in verdicts] == ["tripped"]
    assert g.reference == pytest.approx(1.0)


def test_recovery_needs_patience_good_windows_in_a_row_and_is_reported_once():
    g = _guard()
    _feed(g, [1.0, 1.0, 0.1, 0.1])
    assert g.tripped
    assert _feed(g, [0.9, 0.8, 0.9, 0.8, 0.9]) == []  # band windows reset the good streak
    (verdict,) = _feed(g, [0.9])
    assert verdict.kind == "recovered" and g.recovered and g.tripped
    assert _feed(g, [0.9, 0.9, 0.9]) == []  # once
    g.resume()  # auto-resume keeps the reference
    assert g.state == "healthy" and g.reference == pytest.approx(1.0)
    assert [v.kind for v in _feed(g, [0.1, 0.1])] == ["tripped"]


def test_reset_restarts_the_reference_so_the_new_level_is_accepted():
    g = _guard()
    _feed(g, [1.0, 1.0, 0.1, 0.1])
    g.observe(5, 0.5, 10.0)  # half a window, dropped by the reset
    g.reset()
    assert g.state == "warmup" and g.reference is None and not g.tripped
    assert _feed(g, [0.1, 0.1, 0.1, 0.1, 0.09]) == []  # the lower level is the new normal
    assert g.reference == pytest.approx(0.098) and g.state == "healthy"  # 0.09 was good
    assert g.windows == 9 and g.events == 90  # the half window was not counted


@pytest.mark.parametrize(
    "bad",
    [
        {"drop": 0.0},
        {"drop": 1.0},
        {"drop": True},
        {"drop": 0.3, "window_events": 0},
        {"drop": 0.3, "patience": 0},
        {"drop": 0.3, "warmup_windows": 0},
        {"drop": 0.3, "reference_alpha": 0.0},
        {"drop": 0.3, "auto_resume": 1},
    ],
)
def test_config_rejects_invalid_settings(bad):
    with pytest.raises(ValueError):
        QualityGuardConfig(**bad)
    with pytest.raises(ValueError, match="quality_guard"):
        PublishConfig("redis://h:1/0", quality_guard={"drop": 0.3})


def test_cli_defaults_are_the_config_defaults_and_the_guard_needs_prequential(
    tmp_path, caplog, monkeypatch
):
    from streaming.serving_cli import quality_guard_from_args

    monkeypatch.delenv("SEVO_REDIS_URL", raising=False)  # the parser's --redis-url default

    base = ["replay", "ml-100k", "--redis-url", "redis://127.0.0.1:1/0"]
    args = build_parser().parse_args([*base, "--prequential"])
    assert args.quality_guard_drop is None and quality_guard_from_args(args) is None
    args = build_parser().parse_args([*base, "--prequential", "--quality-guard-drop", "0.4"])
    assert quality_guard_from_args(args) == QualityGuardConfig(drop=0.4)
    args = build_parser().parse_args(
        ["run", "--bootstrap", "h:1", "--topic", "t", "--checkpoint-dir", "c", "--prequential",
         "--quality-guard-drop", "0.2", "--quality-guard-window", "800",
         "--quality-guard-patience", "3", "--quality-guard-auto-resume"]
    )  # fmt: skip
    assert quality_guard_from_args(args) == QualityGuardConfig(
        drop=0.2, window_events=800, patience=3, auto_resume=True
    )
    # asked for without what it needs: one clear line and exit code 2, before any training
    log = tmp_path / "one.jsonl"
    log.write_text('{"user_id": "u", "item_id": "i", "timestamp": 1}\n')
    for extra, wanted in (
        (["--redis-url", "redis://127.0.0.1:1/0"], "add --prequential"),
        (["--prequential"], "add --redis-url"),
    ):
        caplog.clear()
        argv = ["replay", str(log), "--no-progress", "--quality-guard-drop", "0.3", *extra]
        assert main(argv) == 2
        assert any(wanted in r.getMessage() for r in caplog.records), caplog.records


# ---------------------------------------------------------------------- Redis: states, retention
def test_state_before_finds_a_delta_and_restore_serves_it_exactly(redis_server, unique_name):
    ns = unique_name("ns")
    writer = SnapshotWriter(connect(redis_server), ns, delta_tolerance=0.0)
    rng = np.random.default_rng(0)
    ids = [f"i{k}" for k in range(50)]
    m0 = rng.standard_normal((50, 4)).astype(np.float32)
    writer.publish_full(ids, m0, model="mf", offsets={"log": 100}, quality={"ndcg10": 0.5})
    m1 = m0 + 1
    grown = [*ids, "new"]
    writer.publish_delta(grown, np.vstack([m1, m1[:1]]), offsets={"log": 200},
                         quality={"ndcg10": 0.6})  # fmt: skip
    time.sleep(0.01)
    cut = time.time()
    time.sleep(0.01)
    writer.publish_delta(grown, np.vstack([m1, m1[:1]]) * 3, offsets={"log": 300})
    store = SnapshotStore(connect(redis_server), ns)
    assert store.state_before(0.0) is None
    state = store.state_before(cut)
    assert (state["version"], state["seq"], state["rows"], state["offsets"]) == (
        1,
        1,
        51,
        {"log": 200},
    )
    assert state["quality"] == {"ndcg10": 0.6} and state["published_at"] < cut
    first = store.state_before(store.meta(1)["created"] + 1e-6)
    assert (first["seq"], first["rows"], first["quality"]) == (0, 50, {"ndcg10": 0.5})
    assert store.state_before(time.time())["seq"] == 2  # the head itself
    client = EmbeddingClient(redis_server, namespace=ns)
    assert client.snapshot().pointer["seq"] == 2
    store.restore(state)
    snap = client.snapshot()  # an older state of the same version: deltas 1..1 only
    assert snap.pointer["seq"] == 1 and snap.item_ids == grown
    np.testing.assert_array_equal(snap.matrix, np.vstack([m1, m1[:1]]))
    assert store.versions()[0]["quality"] is None  # the head (seq 2) recorded none


def test_retention_keeps_the_version_a_rollback_would_need(redis_server, unique_name):
    ns = unique_name("ns")
    writer = SnapshotWriter(connect(redis_server), ns, keep_versions=1, grace_s=60)
    ids, m = ["a", "b"], np.eye(2, dtype=np.float32)
    writer.publish_full(ids, m)
    writer.publish_full(ids, m * 2)
    time.sleep(0.01)
    writer.protect_before = time.time()  # a bad streak began after v2
    writer.publish_full(ids, m * 3)
    writer.publish_full(ids, m * 4)
    expiring = {v["version"]: v["expires_in_s"] is not None for v in writer.versions()}
    assert expiring == {1: True, 2: False, 3: True, 4: False}
    writer.protect_before = None
    writer.publish_full(ids, m * 5)
    assert {v["version"]: v["expires_in_s"] is not None for v in writer.versions()}[2]


def _guarded_publisher(redis_url, ns, metrics=None):
    from streaming.retry import ConstantBackoff

    guard = QualityGuardConfig(drop=0.5, window_events=10, patience=2, warmup_windows=1)
    config = PublishConfig(redis_url, namespace=ns, publish_every_s=1e-6, delta_tolerance=0.0,
                           backoff=ConstantBackoff(0.05), quality_guard=guard)  # fmt: skip
    return EmbeddingPublisher(config, metrics=metrics)


def _step(publisher, trainer, k: int, ndcg: float) -> None:
    """Learn a batch, hand over one window of NDCG ``ndcg``, wait for the publish."""
    rng = np.random.default_rng(k)
    users, items = rng.integers(0, 5, 20).astype(str), rng.integers(0, 30, 20).astype(str)
    trainer.learn_many(users, items, 1e9 + k * 100 + np.arange(20.0))
    publisher.observe_quality(10, 10 * ndcg)
    assert publisher.observe(trainer, users, offsets={"log": k}, force=True)
    assert publisher.flush(10)


def test_an_operator_pause_is_left_alone_and_resume_resets_the_guard(
    redis_server, unique_name, caplog
):
    ns = unique_name("ns")
    store = SnapshotStore(connect(redis_server), ns)
    trainer = _trainer()
    with _guarded_publisher(redis_server, ns) as publisher:
        for k in range(3):
            _step(publisher, trainer, k, 0.9)
        served = store.pointer()
        assert served["quality"]["ndcg10"] == 0.9 and served["quality"]["state"] == "healthy"
        store.pause("maintenance")
        with caplog.at_level(logging.WARNING, logger="streaming.serving"):
            for k in range(3, 6):
                _step(publisher, trainer, k, 0.1)
        assert publisher.guard.tripped and publisher.rollbacks == 0
        assert store.paused()["reason"] == "maintenance" and store.pointer() == served
        assert any("already paused" in r.getMessage() for r in caplog.records)
        store.resume()
        _step(publisher, trainer, 6, 0.1)
        assert (publisher.results[-1].kind, publisher.results[-1].reason) == ("full", "resumed")
        # reset: the one warm-up window after the resume is the whole new reference
        assert publisher.guard.reference == pytest.approx(0.1) and not publisher.guard.tripped
        assert store.pointer()["offsets"] == {"log": 6}


def test_a_trip_interrupted_by_a_redis_failure_still_rolls_back(
    redis_server, unique_name, monkeypatch
):
    import redis

    ns = unique_name("ns")
    store = SnapshotStore(connect(redis_server), ns)
    trainer = _trainer()
    metrics = EngineMetrics()
    with _guarded_publisher(redis_server, ns, metrics) as publisher:
        for k in range(3):
            _step(publisher, trainer, k, 0.9)
        good = store.pointer()
        real_restore, calls = publisher.writer.restore, []

        def restore_failing_once(pointer):
            calls.append(pointer["seq"])
            if len(calls) == 1:
                raise redis.ConnectionError("injected: Redis went away mid-rollback")
            return real_restore(pointer)

        monkeypatch.setattr(publisher.writer, "restore", restore_failing_once)
        _step(publisher, trainer, 3, 0.1)
        _step(publisher, trainer, 4, 0.1)  # trips: pause written, then the rollback fails
        deadline = time.monotonic() + 10
        while publisher.rollbacks == 0 and time.monotonic() < deadline:
            time.sleep(0.02)  # the thread retries the request after its backoff
        assert publisher.errors == 1 and len(calls) == 2 and publisher.rollbacks == 1
        rolled = store.pointer()
        # the newest state published before the first bad window was ranked: step 2's
        assert good["offsets"] == {"log": 2}
        assert (rolled["uid"], rolled["seq"], rolled["offsets"]) == (
            good["uid"], good["seq"], good["offsets"]
        )  # fmt: skip
        assert store.paused()["rolled_back_to"]["seq"] == rolled["seq"]
        assert metrics.value("quality_rollbacks_total") == 1.0
        assert metrics.value("quality_guard_paused") == 1.0


# ---------------------------------------------------------------------- end to end
WINDOW, BATCH = 500, 100
BEFORE, BURST, AFTER = 4000, 1000, 3000  # the burst starts and ends on window boundaries


def _burst_log(path, seed: int = 0) -> int:
    """A stream where users of 6 clusters consume their cluster's 8 items (easy to learn),
    interrupted by a burst of uniformly random events over 200 items; returns its size."""
    rng = np.random.default_rng(seed)
    users = 60
    cluster = rng.integers(0, 6, users)

    def structured(n):
        u = rng.integers(0, users, n)
        return u, cluster[u] * 8 + rng.integers(0, 8, n)

    parts = [structured(BEFORE), (rng.integers(0, users, BURST), rng.integers(0, 200, BURST))]
    parts.append(structured(AFTER))
    u = np.concatenate([p[0] for p in parts])
    i = np.concatenate([p[1] for p in parts])
    with open(path, "w") as fh:
        for k, (uu, ii) in enumerate(zip(u.tolist(), i.tolist())):
            fh.write(json.dumps({"user_id": f"u{uu}", "item_id": f"i{ii}", "timestamp": 1e9 + k}))
            fh.write("\n")
    return len(u)


def _trainer() -> OnlineTrainer:
    return OnlineTrainer(OnlineConfig(model="mf", maxlen=5, model_overrides={"dim": 16}))


def _digest(matrix: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(matrix, dtype="<f4").tobytes()).hexdigest()


def _replay(path, redis_url, ns, guard: QualityGuardConfig, on_batch, metrics=None):
    config = PublishConfig(redis_url, namespace=ns, publish_every_s=1e-6, delta_tolerance=0.0,
                           quality_guard=guard)  # fmt: skip
    publisher = EmbeddingPublisher(config, metrics=metrics)
    pipeline = Pipeline(
        _trainer(),
        config=PipelineConfig.for_replay(
            max_batch=BATCH, prequential=True, prequential_window=WINDOW, progress=False
        ),
        metrics=metrics,
        publisher=publisher,
        on_batch=lambda report: on_batch(publisher, report),
    )
    return pipeline, publisher, pipeline.run(LogSource(path, batch_size=BATCH))


def test_a_regression_pauses_rolls_back_and_resume_publishes_again(
    redis_server, unique_name, tmp_path, caplog
):
    ns = unique_name("ns")
    path = tmp_path / "burst.jsonl"
    total = _burst_log(path)
    key = f"file:{path.resolve()}"
    store = SnapshotStore(connect(redis_server), ns)
    client = EmbeddingClient(redis_server, namespace=ns)
    metrics = EngineMetrics()
    served: dict[tuple[str, int], str] = {}  # (uid, seq) -> digest of what readers got
    seen: list[dict] = []  # per batch: position, pointer, marker, metrics
    resume_at = BEFORE + BURST + 2 * WINDOW

    def on_batch(publisher, report):
        assert publisher.flush(10)  # one publish per batch: the test is deterministic
        snap = client.snapshot()
        digest = _digest(snap.matrix)
        served.setdefault((snap.pointer["uid"], snap.pointer["seq"]), digest)
        seen.append(
            {
                "end": report.batch.end,
                "pointer": snap.pointer,
                "digest": digest,
                "paused": store.paused(),
                "gauge": metrics.value("quality_guard_paused"),
                "live": metrics.value("quality_live_ndcg10"),
                "reference": metrics.value("quality_reference_ndcg10"),
                "result": publisher.results[-1] if publisher.results else None,
                "guard": publisher.guard.status(),
            }
        )
        if report.batch.end == resume_at:
            assert store.resume()  # the admin call `sevo snapshots resume` makes

    guard = QualityGuardConfig(drop=0.5, window_events=WINDOW, patience=2)
    with caplog.at_level(logging.INFO, logger="streaming.serving"):
        _pipeline, publisher, summary = _replay(path, redis_server, ns, guard, on_batch, metrics)

    # the engine kept training through the pause
    assert summary["events"] == total and summary["events_applied"] == total
    # paused exactly when the second bad window closed, and only until the resume
    paused_at = [s["end"] for s in seen if s["paused"]]
    assert paused_at[0] == BEFORE + 2 * WINDOW
    assert paused_at == list(range(BEFORE + 2 * WINDOW, resume_at + 1, BATCH))
    trip = next(s for s in seen if s["paused"])
    marker = trip["paused"]
    assert marker["by"] == GUARD and "quality guard" in marker["reason"]
    assert marker["live_ndcg10"] < 0.5 * marker["reference_ndcg10"]
    # rolled back to the exact state published before the burst: its offsets, its rows
    rolled = trip["pointer"]
    assert rolled["offsets"] == {key: BEFORE} and "rolled_back_at" in rolled
    assert rolled["published_at"] < marker["bad_since"]
    assert marker["rolled_back_to"] == {
        "version": rolled["version"], "seq": rolled["seq"],
        "published_at": rolled["published_at"],
    }  # fmt: skip
    assert rolled["quality"]["ndcg10"] > 0.5 * marker["reference_ndcg10"]  # a healthy state
    assert trip["digest"] == served[(rolled["uid"], rolled["seq"])]  # byte for byte
    while_paused = [s for s in seen if s["paused"]]
    assert all(s["pointer"] == rolled for s in while_paused)  # nothing published over it
    assert all(s["gauge"] == 1.0 for s in while_paused)
    assert trip["live"] < 0.5 * trip["reference"]
    assert metrics.value("quality_rollbacks_total") == 1.0
    assert metrics.value("publishes_total", kind="none", outcome="paused") >= len(while_paused)
    # resumed: a full snapshot of the live model, the reference restarted, no second trip
    after = next(s for s in seen if s["end"] == resume_at + BATCH)
    assert (after["result"].kind, after["result"].reason) == ("full", "resumed")
    assert after["pointer"]["version"] > rolled["version"] and after["gauge"] == 0.0
    assert after["guard"]["state"] == "warmup" and after["guard"]["reference"] is None
    assert store.meta(after["pointer"]["version"])["quality"]["state"] == "warmup"
    assert store.paused() is None and publisher.rollbacks == 1
    assert client.pointer()["offsets"] == {key: total}  # the final state was published
    assert seen[-1]["guard"]["state"] == "healthy"
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 2, warnings  # one line per pause, one on resume
    assert "rolled back to version" in warnings[0] and "paused" in warnings[0]
    assert "resumed" in warnings[1] and "reference starts over" in warnings[1]
    assert any("back near the reference" in r.getMessage() for r in caplog.records)


def test_auto_resume_publishes_again_once_the_metric_recovers(
    redis_server, unique_name, tmp_path, caplog
):
    ns = unique_name("ns")
    path = tmp_path / "burst.jsonl"
    total = _burst_log(path, seed=1)
    store = SnapshotStore(connect(redis_server), ns)
    marks: list[tuple[int, bool]] = []

    def on_batch(publisher, report):
        assert publisher.flush(10)
        marks.append((report.batch.end, store.paused() is not None))

    guard = QualityGuardConfig(drop=0.5, window_events=WINDOW, patience=2, auto_resume=True)
    with caplog.at_level(logging.WARNING, logger="streaming.serving"):
        _pipeline, publisher, summary = _replay(path, redis_server, ns, guard, on_batch)
    assert summary["events"] == total
    paused = [end for end, p in marks if p]
    # tripped when the burst's second window closed; two good windows later it resumed itself
    assert paused == list(range(BEFORE + 2 * WINDOW, BEFORE + BURST + 2 * WINDOW, BATCH))
    resumed = [r for r in publisher.results if r.reason == "resumed"]
    assert len(resumed) == 1 and resumed[0].kind == "full" and publisher.rollbacks == 1
    quality = store.meta(resumed[0].version)["quality"]
    assert quality["state"] == "healthy" and quality["reference"] > 0  # reference kept
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2 and "recovered" in warnings[1], warnings


def test_replay_cli_guard_and_snapshot_commands(redis_server, unique_name, tmp_path, capsys):
    ns = unique_name("ns")
    path = tmp_path / "burst.jsonl"
    _burst_log(path, seed=2)
    loc = ["--redis-url", redis_server, "--namespace", ns]
    args = ["replay", str(path), "--model", "mf", "--dim", "16", "--maxlen", "5"]
    args += ["--no-progress", "--batch-size", str(BATCH), "--prequential", "--json"]
    args += [*loc, "--publish-every", "0.001", "--delta-tolerance", "0"]
    args += ["--quality-guard-drop", "0.5", "--quality-guard-window", str(WINDOW)]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["events_applied"] == BEFORE + BURST + AFTER  # trained to the end
    store = SnapshotStore(connect(redis_server), ns)
    marker, pointer = store.paused(), store.pointer()
    assert marker["by"] == GUARD and marker["rolled_back_to"]["version"] == pointer["version"]
    # whatever the publishing thread's timing, the served state predates the burst
    assert sum(pointer["offsets"].values()) <= BEFORE and "rolled_back_at" in pointer

    assert main(["snapshots", "list", *loc]) == 0
    out = capsys.readouterr().out
    assert "publishing paused since" in out and "quality guard" in out
    assert "NDCG@10" in out and f"serving version {pointer['version']} at delta" in out
    assert main(["snapshots", "list", "--json", *loc]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["paused"]["by"] == GUARD
    recorded = [(v["quality"] or {}).get("ndcg10") for v in listed["versions"]]
    assert any(x is not None and x > 0 for x in recorded), recorded
    assert main(["snapshots", "resume", *loc]) == 0
    assert "paused by the quality guard" in capsys.readouterr().out
    assert store.paused() is None
    assert main(["snapshots", "resume", *loc]) == 0
    assert "was not paused" in capsys.readouterr().out
