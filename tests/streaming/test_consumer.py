"""The Kafka consumer loop and ``sevo produce`` / ``sevo run`` against a real broker (Tansu).

Group joins on Tansu take about session_timeout_ms / 2, so every consumer here uses a 3 s
session. The trainer is tiny (MF, dim 8) where the model does not matter: the graph and the
counters prove exactly-once, and they do not depend on micro-batch boundaries.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from devtools.services import free_port
from devtools.services import scrape_metrics as scrape
from engine.online import OnlineConfig, OnlineTrainer
from streaming.checkpoint import CheckpointStore
from streaming.cli import main
from streaming.config import PipelineConfig
from streaming.events import Event, encode_event
from streaming.kafka_client import KafkaDeadLetterSink, ensure_topic, produce_events
from streaming.metrics import EngineMetrics
from streaming.report import write_report
from streaming.sources.kafka import KafkaConfig, KafkaEventSource
from streaming.sources.log import LogSource
from streaming.timeseries import read_samples
from tests.streaming.helpers import consume

REPO = Path(__file__).resolve().parents[2]
FAST_GROUP = {"session_timeout_ms": 3000, "heartbeat_interval_ms": 500, "connect_timeout_s": 10.0}
TINY_ARGS = ["--model", "mf", "--dim", "8", "--session-timeout-ms", "3000"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def kafka_config(bootstrap: str, topic: str, group: str | None) -> KafkaConfig:
    return KafkaConfig(bootstrap=bootstrap, topic=topic, group=group, **FAST_GROUP)


def tiny_trainer() -> OnlineTrainer:
    return OnlineTrainer(
        OnlineConfig(model="mf", maxlen=5, model_overrides={"dim": 8}, lr=1e-3, steps_per_batch=1)
    )


def ml100k_events(n: int) -> list[Event]:
    """The first ``n`` ML-100K events in the order ``sevo produce`` / ``sevo replay`` use."""
    source = LogSource("ml-100k", batch_size=n, limit=n)
    batch = source.next_batch()
    return [
        Event(u, i, t, w)
        for u, i, t, w in zip(
            batch.users.tolist(), batch.items.tolist(), batch.times.tolist(), batch.weights.tolist()
        )
    ]


def inspect(capsys, directory: Path) -> dict:
    capsys.readouterr()
    assert main(["inspect", str(directory), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def run_cli(capsys, *argv: str) -> dict:
    capsys.readouterr()
    assert main(["run", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def assert_same_state(a: dict, b: dict) -> None:
    for key in ("events_applied", "num_items", "num_users", "graph_nnz", "dead_letters"):
        assert a[key] == b[key], key
    assert math.isclose(a["graph_total_weight"], b["graph_total_weight"], rel_tol=1e-9)


def wait_for(predicate, what: str, timeout_s: float = 60.0, failures=()) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert not failures, failures
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def newest_sidecar(directory: Path) -> dict | None:
    """The newest checkpoint sidecar (read without loading the checkpoint)."""
    for path in sorted(directory.glob("ckpt-*.json"), reverse=True):
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            continue
    return None


# --------------------------------------------------------------------------- no broker


def test_consumer_config_is_validated_with_pinned_messages():
    assert PipelineConfig().max_batch == 500
    with pytest.raises(ValueError, match="checkpoint_every_events must be a positive integer"):
        PipelineConfig(checkpoint_every_events=0)
    with pytest.raises(ValueError, match="max_batch must be a positive integer"):
        PipelineConfig(max_batch=True)
    with pytest.raises(ValueError, match="batch_timeout_ms must be a non-negative integer"):
        PipelineConfig(batch_timeout_ms=-1)
    with pytest.raises(ValueError, match="max_records must be a non-negative integer or None"):
        PipelineConfig(max_records=-5)
    with pytest.raises(ValueError, match="checkpoint_every_s must be a positive number"):
        PipelineConfig(checkpoint_every_s=0)
    with pytest.raises(ValueError, match="idle_exit_s must be a positive number or None"):
        PipelineConfig(idle_exit_s=0)


def test_run_against_a_down_broker_fails_with_one_clear_line(tmp_path, caplog):
    port = free_port()
    code = main(
        [
            "run",
            "--bootstrap",
            f"127.0.0.1:{port}",
            "--topic",
            "t",
            "--checkpoint-dir",
            str(tmp_path / "ckpt"),
            "--connect-timeout",
            "1",
            *TINY_ARGS,
        ]
    )
    assert code == 1
    assert any(
        f"kafka broker 127.0.0.1:{port} unreachable" in r.getMessage() for r in caplog.records
    )


# --------------------------------------------------------------------------- exactly once


def test_kill_9_then_restart_applies_every_event_exactly_once(
    kafka_broker, unique_name, tmp_path, capsys, caplog
):
    """Run, SIGKILL at a random point after a checkpoint while events still arrive, restart;
    the result equals an uninterrupted run over the same topic (graph, counts, offsets)."""
    seed = int(os.environ.get("SEVO_KILL_SEED", time.time_ns() % 2**31))
    rng = random.Random(seed)
    kill_after_s = rng.uniform(0.1, 2.0)
    note = f"kill seed {seed} (SEVO_KILL_SEED): SIGKILL {kill_after_s:.2f} s after a checkpoint"
    with capsys.disabled():  # shown with -s, past the captured CLI output
        print(f"\n{note}")
    events = ml100k_events(3000)
    topic = unique_name("kill")
    ensure_topic(kafka_broker, topic, partitions=1)
    crashed = tmp_path / "crashed"
    argv = [
        "--bootstrap",
        kafka_broker,
        "--topic",
        topic,
        "--group",
        unique_name("g"),
        "--checkpoint-dir",
        str(crashed),
        "--checkpoint-every",
        "150",
        "--max-batch",
        "50",
        "--prequential",
        *TINY_ARGS,
    ]
    log_path = tmp_path / "run1.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streaming.cli", "run", *argv],
            cwd=REPO,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    producer = threading.Thread(
        target=produce_events, args=(kafka_broker, topic, events[600:]), kwargs={"rate": 600.0}
    )
    try:
        produce_events(kafka_broker, topic, events[:600])
        wait_for(
            lambda: newest_sidecar(crashed) is not None or proc.poll() is not None,
            "the first checkpoint",
        )
        assert proc.poll() is None, log_path.read_text()[-3000:]
        producer.start()
        time.sleep(kill_after_s)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if producer.is_alive():
            producer.join()
    at_kill = newest_sidecar(crashed)
    with capsys.disabled():
        print(f"killed with checkpoint offsets {at_kill['offsets']}")
    assert 0 < at_kill["offsets"][f"{topic}:0"] < 3000, note

    resumed = run_cli(capsys, *argv, "--idle-exit", "2")
    assert resumed["resumed_from_version"] is not None
    assert resumed["start_position"][f"{topic}:0"] >= at_kill["offsets"][f"{topic}:0"]
    assert resumed["end_position"] == {f"{topic}:0": 3000}

    straight = tmp_path / "straight"
    fresh = [*argv]
    fresh[fresh.index("--group") + 1] = unique_name("g2")
    fresh[fresh.index("--checkpoint-dir") + 1] = str(straight)
    run_cli(capsys, *fresh, "--idle-exit", "2")

    after_crash, uninterrupted = inspect(capsys, crashed), inspect(capsys, straight)
    assert after_crash["events_applied"] == 3000, note
    # test-then-train sums travel in the checkpoint: each event is ranked once in the end
    assert after_crash["prequential"]["events"] == uninterrupted["prequential"]["events"] == 3000
    assert after_crash["offsets"] == uninterrupted["offsets"] == {f"{topic}:0": 3000}
    assert_same_state(after_crash, uninterrupted)

    # Another trainer config on the same checkpoint is refused with a clear error.
    assert main(["run", *argv, "--lr", "0.5", "--idle-exit", "1"]) == 2
    assert any("written with other settings (lr)" in r.getMessage() for r in caplog.records)


def test_sigterm_stops_cleanly_with_a_final_checkpoint(kafka_broker, unique_name, tmp_path):
    """Only the final checkpoint can hold all 400 records (periodic ones are off); the
    process exports metrics, which say when it has read them all."""
    topic = unique_name("term")
    ensure_topic(kafka_broker, topic, partitions=1)
    events = [Event(f"u{i % 7}", f"i{i % 50}", 1_700_000_000.0 + i) for i in range(400)]
    produce_events(kafka_broker, topic, events)
    ckpt, port = tmp_path / "ckpt", free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streaming.cli",
            "run",
            "--bootstrap",
            kafka_broker,
            "--topic",
            topic,
            "--group",
            unique_name("g"),
            "--checkpoint-dir",
            str(ckpt),
            "--checkpoint-every",
            "1000000",
            "--checkpoint-interval",
            "3600",
            "--metrics-port",
            str(port),
            "--json",
            *TINY_ARGS,
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for(
            lambda: (
                scrape(port).get("sevo_records_consumed_total") == 400 or proc.poll() is not None
            ),
            "the consumer to read 400 records",
        )
        assert proc.poll() is None
        assert newest_sidecar(ckpt) is None  # nothing durable yet
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err.decode()[-3000:]
    summary = json.loads(out)
    assert summary["stopped_by"] == "stop" and summary["events_applied"] == 400
    assert b"SIGTERM received" in err
    assert newest_sidecar(ckpt)["offsets"] == summary["end_position"] == {f"{topic}:0": 400}


# --------------------------------------------------------------------------- dead letters


def test_malformed_messages_go_to_the_dead_letter_topic_with_reasons(
    kafka_broker, unique_name, tmp_path
):
    topic, dl_topic = unique_name("mixed"), unique_name("dead")
    ensure_topic(kafka_broker, topic, partitions=1)
    ensure_topic(kafka_broker, dl_topic, partitions=1)
    good = [Event(f"u{i % 5}", f"i{i % 17}", 1_700_000_000.0 + i) for i in range(60)]
    bad = {
        b"not json": "invalid_json",
        b"": "invalid_json",  # empty value
        b"[1, 2]": "not_object",
        b'{"user_id": "u1", "timestamp": 5}': "missing_field",
        b'{"user_id": "u1", "item_id": "a", "timestamp": NaN}': "bad_timestamp",
        b'{"user_id": "u1", "item_id": "a", "timestamp": -1}': "bad_timestamp",
        b'{"user_id": true, "item_id": "a", "timestamp": 5}': "bad_type",
        b'{"user_id": "u1", "item_id": "a", "timestamp": 9e12}': "future_timestamp",
        b'{"user_id": "u1", "item_id": "a", "timestamp": 5, "weight": -2}': "bad_weight",
    }
    records: list[bytes] = []
    expected: dict[int, str] = {}
    bad_items = list(bad.items())
    for i, event in enumerate(good):
        records.append(encode_event(event))
        if i % 6 == 5 and bad_items:
            raw, reason = bad_items.pop()
            expected[len(records)] = reason
            records.append(raw)
    assert not bad_items
    produce_events(kafka_broker, topic, records)

    metrics = EngineMetrics()
    store = CheckpointStore(tmp_path / "ckpt")
    with KafkaDeadLetterSink(kafka_broker, dl_topic) as sink:
        summary = consume(
            kafka_config(kafka_broker, topic, unique_name("g")),
            tiny_trainer(),
            store,
            PipelineConfig(idle_exit_s=1.5, max_batch=16),
            dead_letters=sink,
            metrics=metrics,
        )
    reasons: dict[str, int] = {}
    for reason in expected.values():
        reasons[reason] = reasons.get(reason, 0) + 1
    assert summary["events"] == summary["events_applied"] == len(good)
    assert summary["dead_letters"] == reasons and summary["records"] == len(records)
    assert summary["end_position"] == {f"{topic}:0": len(records)}
    _, offsets, meta = store.latest()
    assert offsets == summary["end_position"]
    assert meta["dead_letters"] == reasons and meta["dead_letters_total"] == len(bad)
    for reason, n in reasons.items():
        assert metrics.value("dead_letters_total", reason=reason) == n
    # the run's metrics time series: counters, lag and the freshness of live events
    samples, skipped = read_samples(store.directory)
    last = samples[-1]
    assert skipped == 0 and samples[0]["reason"] == "start"
    assert last["dead_letters"] == reasons and last["events"] == len(good)
    assert last["records"] == len(records) and last["positions"] == summary["end_position"]
    assert last["freshness"]["count"] == len(good)
    assert any(s["lag"] is not None for s in samples[1:])
    report = write_report(store.directory, tmp_path / "report")
    assert {Path(p).name for p in report["plots"]} >= {"freshness.png", "dead_letters.png"}

    with KafkaEventSource(kafka_config(kafka_broker, dl_topic, None)) as reader:
        letters = []
        deadline = time.monotonic() + 30
        while len(letters) < len(bad) and time.monotonic() < deadline:
            letters.extend(json.loads(r.raw) for r in reader.poll_records(100, timeout_ms=200))
    got = {letter["position"]: letter["reason"] for letter in letters}
    assert got == {f"{topic}:0:{offset}": reason for offset, reason in expected.items()}
    assert all(letter["detail"] for letter in letters)


# --------------------------------------------------------------------------- a group


def test_two_workers_in_one_group_apply_every_event_exactly_once(
    kafka_broker, unique_name, tmp_path
):
    """Each worker has its own checkpoint dir and reads the other's as a peer: A starts alone
    with both partitions, B joins, A checkpoints on revocation and B resumes A's partition
    where A's state ends."""
    topic, group = unique_name("pair"), unique_name("g")
    ensure_topic(kafka_broker, topic, partitions=2)
    dirs = {"A": tmp_path / "A", "B": tmp_path / "B"}
    stores = {name: CheckpointStore(d) for name, d in dirs.items()}
    metrics = {"A": EngineMetrics(), "B": EngineMetrics()}
    stops = {"A": threading.Event(), "B": threading.Event()}
    summaries: dict[str, dict] = {}
    failures: list[BaseException] = []

    def work(name: str) -> None:
        other = "B" if name == "A" else "A"
        try:
            summaries[name] = consume(
                kafka_config(kafka_broker, topic, group),
                tiny_trainer(),
                stores[name],
                PipelineConfig(max_batch=40, checkpoint_every_events=100),
                stop=stops[name],
                metrics=metrics[name],
                peers=[CheckpointStore(dirs[other])],
            )
        except BaseException as exc:
            failures.append(exc)

    def applied(name: str) -> float:
        return metrics[name].value("events_applied_total") or 0.0

    first = [Event(f"u{i % 20}", f"i{i % 31}", 1_700_000_000.0 + i) for i in range(300)]
    second = [Event(f"u{i % 20}", f"i{i % 31}", 1_700_001_000.0 + i) for i in range(300)]
    produce_events(kafka_broker, topic, first)
    threads = {n: threading.Thread(target=work, args=(n,), name=f"worker-{n}") for n in "AB"}
    threads["A"].start()
    try:
        wait_for(lambda: applied("A") == 300, "A to apply the first 300", failures=failures)
        threads["B"].start()
        wait_for(
            lambda: (metrics["A"].value("rebalances_total") or 0) >= 1,
            "A's revocation",
            failures=failures,
        )
        produce_events(kafka_broker, topic, second)
        wait_for(lambda: applied("A") + applied("B") >= 600, "all 600 events", failures=failures)
        time.sleep(0.5)  # would expose duplicates arriving late
    finally:
        for name in "AB":
            stops[name].set()
        for thread in threads.values():
            if thread.is_alive() or thread.ident:
                thread.join(60)
    assert not failures, failures
    total = summaries["A"]["events_applied"] + summaries["B"]["events_applied"]
    assert total == 600  # every event applied once, by one of the two
    assert summaries["B"]["events_applied"] > 0 and summaries["A"]["rebalances"] >= 1
    assert summaries["A"]["dead_letters_total"] == summaries["B"]["dead_letters_total"] == 0
    # The durable checkpoints agree: their newest positions cover both partitions to the end.
    states = {n: stores[n].latest() for n in "AB"}
    assert sum(int(s[0]["events_applied"]) for s in states.values()) == 600
    merged: dict[str, int] = {}
    for _, offsets, _ in states.values():
        for key, value in offsets.items():
            merged[key] = max(merged.get(key, 0), value)
    assert sum(merged.values()) == 600 and set(merged) == {f"{topic}:0", f"{topic}:1"}


# --------------------------------------------------------------------------- replay == run


def test_replay_equals_produce_then_run(kafka_broker, redis_server, unique_name, tmp_path, capsys):
    """The same log through ``sevo replay`` and through Kafka (1 partition, so the same order)
    gives the same graph and counts. The model weights are not compared: Kafka's micro-batch
    boundaries depend on fetch timing, and each batch is one optimizer step. ``sevo run``
    also evaluates test-then-train and publishes to Redis here."""
    n = "2000"
    model = ["--model", "sasrec", "--dim", "16", "--maxlen", "20"]
    replayed = tmp_path / "replay"
    capsys.readouterr()
    assert (
        main(
            [
                "replay",
                "ml-100k",
                "--max-events",
                n,
                "--checkpoint-dir",
                str(replayed),
                "--no-progress",
                "--json",
                *model,
            ]
        )
        == 0
    )
    topic = unique_name("same")
    capsys.readouterr()
    assert (
        main(
            [
                "produce",
                "ml-100k",
                "--bootstrap",
                kafka_broker,
                "--topic",
                topic,
                "--max-events",
                n,
                "--json",
            ]
        )
        == 0
    )
    produced = json.loads(capsys.readouterr().out)
    assert produced["events"] == 2000 and produced["events_per_s"] > 0
    consumed = tmp_path / "run"
    summary = run_cli(
        capsys,
        "--bootstrap",
        kafka_broker,
        "--topic",
        topic,
        "--group",
        unique_name("g"),
        "--checkpoint-dir",
        str(consumed),
        "--session-timeout-ms",
        "3000",
        "--idle-exit",
        "1.5",
        "--prequential",
        "--redis-url",
        redis_server,
        "--namespace",
        topic,
        *model,
    )
    assert summary["events"] == 2000 and summary["stopped_by"] == "idle"
    preq = summary["prequential"]
    assert preq["events"] == 2000 and 0 < preq["HR@10"] < 1
    assert sum(w["events"] for w in preq["windows"]) == 2000
    from streaming.serving import EmbeddingClient

    served = EmbeddingClient(redis_server, namespace=topic).pointer()
    assert served["offsets"] == {f"{topic}:0": 2000} and served["model"] == "sasrec"
    a, b = inspect(capsys, replayed), inspect(capsys, consumed)
    assert_same_state(a, b)
    assert a["config"] == b["config"]
    assert a["offsets"] == {"file:ml-100k": 2000} and b["offsets"] == {f"{topic}:0": 2000}
    # One pipeline: both commands write checkpoints with the same metadata schema.
    meta_replay = CheckpointStore(replayed).latest_checkpoint().meta
    meta_run = CheckpointStore(consumed).latest_checkpoint().meta
    assert set(meta_replay) == set(meta_run)
    assert meta_replay["source"] == "file:ml-100k" and meta_run["source"] == f"kafka:{topic}"
    assert meta_replay["group"] is None and meta_run["group"] is not None
    assert meta_replay["reason"] == "end" and meta_run["reason"] == "idle"


def test_lost_partitions_reload_the_checkpoint_so_the_next_owner_applies_the_rest(
    kafka_broker, unique_name, tmp_path
):
    """An evicted worker discards what it applied since its checkpoint (instead of
    checkpointing it), so together with the partition's next owner every event is applied
    exactly once. kafka-python's loss is simulated by calling the source's listener hooks in
    the order kafka-python does (lost, then assigned again after the rejoin)."""
    from streaming.config import PipelineConfig
    from streaming.events import EventBatch
    from streaming.pipeline import Pipeline

    topic, group = unique_name("topic"), unique_name("group")
    ensure_topic(kafka_broker, topic, partitions=1)
    events = ml100k_events(600)
    produce_events(kafka_broker, topic, events)
    kafka = kafka_config(kafka_broker, topic, group)
    trainer, store = tiny_trainer(), CheckpointStore(tmp_path / "ckpt")
    pipe = Pipeline(trainer, store, PipelineConfig(), metrics=EngineMetrics())
    source = KafkaEventSource(kafka)
    pipe.source = source
    pipe.restore()
    source.attach(pipe)

    def learn(count: int) -> int:
        done = 0
        deadline = time.monotonic() + 30
        while done < count and time.monotonic() < deadline:
            batch = source.next_batch(min(100, count - done), timeout_ms=200)
            assert not batch.dead_letters
            if len(batch):
                trainer.learn_many(batch.users, batch.items, batch.times, batch.weights)
            done += batch.records
            pipe.since_checkpoint += batch.records
        return done

    try:
        assert learn(200) == 200
        pipe.checkpoint_and_commit(why="test")
        assert learn(150) == 150
        assert trainer.events_applied == 350
        owned = set(source._consumer.assignment())
        key = f"{topic}:0"

        source._handle_revoked(owned, lost=True)  # evicted
        assert trainer.events_applied == 200  # back to the durable checkpoint
        assert pipe.durable == {key: 200} and pipe.reloads == 1
        assert store.latest_checkpoint().offsets == {key: 200}  # nothing was checkpointed

        source._handle_assigned(owned)  # rejoined: resumes from the checkpoint
        assert learn(400) == 400
    finally:
        source.close()
    assert trainer.events_applied == 600
    reference = tiny_trainer()
    b = EventBatch.from_events(events)
    reference.learn_many(b.users, b.items, b.times, b.weights)
    assert trainer.graph.nnz == reference.graph.nnz
    assert math.isclose(trainer.graph.total_weight(), reference.graph.total_weight(), rel_tol=1e-9)
