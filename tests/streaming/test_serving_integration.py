"""Serving end to end against real services: concurrent readers, outages, restarts, the engine.

* A reader hammering the client while a writer publishes many full snapshots and deltas
  never sees a mixed state: every state it observes is byte-identical to one the writer
  published (sha256 of the whole matrix, per (snapshot uid, delta seq)).
* The background publisher keeps the trainer going while Redis is down and catches up with
  a full snapshot; an appendonly Redis restarted with ``kill -9`` still serves its data.
* ``sevo replay --redis-url`` and ``consume(..., publisher=...)`` publish what the
  trainer holds, with the source offsets; ``sevo recommend`` / ``sevo snapshots`` read it.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time

import numpy as np
import pytest

from engine.online import OnlineConfig, OnlineTrainer
from streaming.checkpoint import CheckpointStore
from streaming.cli import main
from streaming.config import PipelineConfig
from streaming.kafka_client import ensure_topic, produce_events
from streaming.metrics import EngineMetrics
from streaming.retry import ConstantBackoff
from streaming.serving import (
    EmbeddingClient,
    EmbeddingPublisher,
    PublishConfig,
    SnapshotStore,
    SnapshotWriter,
    connect,
)
from streaming.sources.kafka import KafkaConfig
from tests.streaming.helpers import consume
from tests.streaming.test_consumer import FAST_GROUP, ml100k_events

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _digest(matrix: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(matrix, dtype="<f4").tobytes()).hexdigest()


def test_concurrent_readers_never_see_a_mixed_snapshot(redis_server, unique_name):
    ns = unique_name("ns")
    rng = np.random.default_rng(0)
    writer = SnapshotWriter(
        connect(redis_server), ns, chunk_rows=64, keep_versions=2, grace_s=1.0,
        delta_tolerance=0.0, max_chain_factor=3.0,
    )  # fmt: skip
    published: dict[tuple[str, int], str] = {}
    n, dim = 600, 16
    ids = [f"i{k}" for k in range(n)]
    matrix = rng.standard_normal((n, dim)).astype(np.float32)
    writer.publish_full(ids, matrix)
    published[(writer._uid, 0)] = _digest(matrix)
    stop = threading.Event()
    observed: list[tuple[str, int, str]] = []
    errors: list[BaseException] = []

    def read() -> None:
        client = EmbeddingClient(redis_server, namespace=ns)
        try:
            while not stop.is_set():
                snap = client.snapshot()
                assert len(snap.item_ids) == snap.matrix.shape[0]
                observed.append((snap.pointer["uid"], snap.pointer["seq"], _digest(snap.matrix)))
        except BaseException as exc:  # surfaced in the main thread
            errors.append(exc)

    readers = [threading.Thread(target=read) for _ in range(2)]
    for t in readers:
        t.start()
    kinds = {"full": 0, "delta": 0}
    try:
        for step in range(150):
            matrix = matrix.copy()
            if step % 10 == 9:  # new items appended, as online training does
                ids = ids + [f"i{len(ids) + k}" for k in range(5)]
                matrix = np.vstack([matrix, rng.standard_normal((5, dim)).astype(np.float32)])
            rows = rng.choice(matrix.shape[0], size=int(rng.integers(1, 300)), replace=False)
            matrix[rows] += rng.standard_normal((rows.size, dim)).astype(np.float32)
            # Record the expected content before the pointer switch can be observed.
            if step % 25 == 24:
                result = writer.publish_full(ids, matrix)
            else:
                result = writer.publish_delta(ids, matrix)
            published[(writer._uid, result.seq)] = _digest(matrix)
            kinds[result.kind] += 1
    finally:
        stop.set()
        for t in readers:
            t.join(30)
    assert not errors, errors
    assert kinds["full"] >= 10 and kinds["delta"] >= 60  # both paths were exercised
    mixed = [o for o in observed if published.get((o[0], o[1])) != o[2]]
    assert not mixed, f"{len(mixed)} of {len(observed)} reads saw a state never published"
    distinct = {(o[0], o[1]) for o in observed}
    assert len(distinct) >= 20, f"readers saw only {len(distinct)} states: not concurrent"


def _events(n: int, seed: int = 0, users: int = 40, items: int = 120):
    rng = np.random.default_rng(seed)
    u = rng.integers(0, users, n).astype(str)
    i = rng.integers(0, items, n).astype(str)
    t = 1e9 + np.arange(n, dtype=np.float64)
    return u, i, t


def _trainer() -> OnlineTrainer:
    return OnlineTrainer(
        OnlineConfig(model="mf", maxlen=5, model_overrides={"dim": 8}, lr=1e-3, steps_per_batch=1)
    )


def _wait_for(predicate, timeout_s: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _served_equals(client: EmbeddingClient, trainer: OnlineTrainer) -> bool:
    snap = client.snapshot()
    ids, matrix = trainer.item_matrix()
    return snap is not None and snap.item_ids == ids and np.array_equal(snap.matrix, matrix)


def test_publisher_survives_an_outage_and_an_appendonly_restart(make_redis_service, unique_name):
    service = make_redis_service(appendonly=True)
    ns = unique_name("ns")
    metrics = EngineMetrics()
    config = PublishConfig(
        service.url, namespace=ns, publish_every_s=0.05, timeout_s=0.3,
        delta_tolerance=0.0, backoff=ConstantBackoff(0.1),
    )  # fmt: skip
    trainer = _trainer()
    users, items, times = _events(3000)
    client = EmbeddingClient(service.url, namespace=ns)
    with EmbeddingPublisher(config, metrics=metrics) as publisher:

        def learn(lo: int, hi: int) -> float:
            """Train events [lo, hi) in batches of 100; return the slowest observe() call."""
            slowest = 0.0
            for a in range(lo, hi, 100):
                b = slice(a, min(a + 100, hi))
                trainer.learn_many(users[b], items[b], times[b])
                t0 = time.perf_counter()
                publisher.observe(trainer, users[b], offsets={"log": b.stop}, watermark=times[a])
                slowest = max(slowest, time.perf_counter() - t0)
                time.sleep(0.02)
            return slowest

        learn(0, 1000)
        publisher.observe(trainer, offsets={"log": 1000}, force=True)
        assert publisher.flush(10)
        assert _served_equals(client, trainer)
        assert {r.kind for r in publisher.results} >= {"full", "delta"}
        assert metrics.value("redis_up") == 1.0
        user = str(users[999])
        np.testing.assert_allclose(
            client.user_vector(user), trainer.user_vectors([user])[0], rtol=1e-6
        )

        # kill -9 of an appendonly Redis: the served snapshot is still there after restart
        served = client.snapshot()
        service.kill()
        service.start()
        after = EmbeddingClient(service.url, namespace=ns).snapshot()
        assert after.pointer["uid"] == served.pointer["uid"]
        np.testing.assert_array_equal(after.matrix, served.matrix)

        # Redis down: training goes on, observe() never waits for Redis
        service.stop()
        slowest = learn(1000, 2000)
        assert slowest < config.timeout_s, f"observe blocked {slowest:.3f} s"
        _wait_for(lambda: publisher.errors > 0, what="a failed publish")
        assert metrics.value("redis_up") == 0.0
        assert metrics.value("publishes_total", kind="none", outcome="error") >= 1
        assert trainer.events_applied == 2000

        # Redis back: the publisher catches up with a full snapshot of the newest state
        service.start()
        learn(2000, 2900)
        last = slice(2900, 3000)  # learned without a hand-over, whatever learn()'s timing was
        trainer.learn_many(users[last], items[last], times[last])
        time.sleep(config.publish_every_s)
        assert publisher.observe(trainer, users[last], offsets={"log": 3000})  # due, learned
        _wait_for(
            lambda: publisher.flush(0) and _served_equals(client, trainer),
            what="the served snapshot to catch up",
        )
        recovered = [r for r in publisher.results if r.reason == "recovery"]
        assert recovered and recovered[0].kind == "full"
        assert metrics.value("redis_up") == 1.0
        assert client.pointer()["offsets"] == {"log": 3000}


def test_paused_publishing_holds_a_rollback_until_resume(redis_server, unique_name):
    ns = unique_name("ns")
    config = PublishConfig(redis_server, namespace=ns, publish_every_s=0.01)
    trainer = _trainer()
    users, items, times = _events(600)
    store = SnapshotStore(connect(redis_server), ns)
    with EmbeddingPublisher(config) as publisher:
        for a in (0, 200):
            trainer.learn_many(users[a : a + 200], items[a : a + 200], times[a : a + 200])
            publisher.observe(trainer, users[a : a + 200], force=True)
            assert publisher.flush(10)
            publisher.writer.publish_full(*trainer.item_matrix())  # one more version
        versions = [v["version"] for v in store.versions()]
        assert len(versions) >= 2
        store.rollback(versions[-1], pause=True)
        trainer.learn_many(users[400:], items[400:], times[400:])
        publisher.observe(trainer, users[400:], force=True)
        assert publisher.flush(10)
        assert store.pointer()["version"] == versions[-1]  # held: publishing is paused
        assert publisher.metrics is None  # no metrics given: nothing to record, no error
        store.resume()
        publisher.observe(trainer, users[400:], force=True)
        assert publisher.flush(10)
        assert publisher.results[-1].kind == "full"
        assert publisher.results[-1].reason == "resumed"
        assert store.pointer()["version"] > max(versions)

        # on demand: the next publish is full even though a delta would do
        trainer.learn_many(users[:50], items[:50], times[:50] + 1000)
        publisher.observe(trainer, users[:50], force=True)
        assert publisher.flush(10) and publisher.results[-1].kind == "delta"
        assert main(["snapshots", "publish-full", "--redis-url", redis_server,
                     "--namespace", ns]) == 0  # fmt: skip
        trainer.learn_many(users[50:100], items[50:100], times[50:100] + 1000)
        publisher.observe(trainer, users[50:100], force=True)
        assert publisher.flush(10)
        assert (publisher.results[-1].kind, publisher.results[-1].reason) == ("full", "requested")


def test_replay_cli_publishes_and_recommend_reads(redis_server, unique_name, tmp_path, capsys):
    ns = unique_name("ns")
    log = tmp_path / "events.jsonl"
    users, items, times = _events(1500, users=30, items=80)
    log.write_text(
        "\n".join(
            json.dumps({"user_id": u, "item_id": i, "timestamp": float(t)})
            for u, i, t in zip(users.tolist(), items.tolist(), times.tolist())
        )
        + "\n"
    )
    # maxlen 5: each user's ~50 events reach far beyond its recent window of 6 items
    args = ["replay", str(log), "--model", "mf", "--dim", "8", "--maxlen", "5", "--no-progress"]
    args += ["--redis-url", redis_server, "--namespace", ns, "--publish-every", "0.05"]
    assert main(args) == 0
    capsys.readouterr()

    client = EmbeddingClient(redis_server, namespace=ns)
    pointer = client.pointer()
    assert list(pointer["offsets"].values()) == [1500]
    assert pointer["watermark"] == float(times.max())
    assert sorted(client.item_ids()) == sorted(set(items.tolist()))

    assert main(["recommend", "--redis-url", redis_server, "--namespace", ns,
                 "--user", str(users[-1]), "-k", "3", "--json"]) == 0  # fmt: skip
    out = json.loads(capsys.readouterr().out)
    assert out["known"] and len(out["items"]) == 3
    state = client.user_state(str(users[-1]))
    seen = set(state["seen_items"])
    history = set(items[users == users[-1]].tolist())
    assert seen == history and len(seen) > len(state["recent_items"])
    assert not {x["item"] for x in out["items"]} & seen  # all seen items left out
    assert main(["recommend", "--redis-url", redis_server, "--namespace", ns, "--user",
                 str(users[-1]), "-k", "80", "--include-seen", "--json"]) == 0  # fmt: skip
    everything = json.loads(capsys.readouterr().out)["items"]
    assert seen <= {x["item"] for x in everything}
    assert main(["recommend", "--redis-url", redis_server, "--namespace", ns,
                 "--user", "no-such-user"]) == 1  # fmt: skip
    assert "no served vector" in capsys.readouterr().out

    assert main(["snapshots", "list", "--redis-url", redis_server, "--namespace", ns,
                 "--json"]) == 0  # fmt: skip
    listed = json.loads(capsys.readouterr().out)
    assert listed["versions"][0]["current"] and listed["paused"] is None
    assert main(["snapshots", "show", "--redis-url", redis_server, "--namespace", ns]) == 0
    assert json.loads(capsys.readouterr().out)["model"] == "mf"


def test_snapshot_commands_against_a_down_redis_fail_with_one_line(caplog):
    url = "redis://127.0.0.1:1/0"
    assert main(["snapshots", "list", "--redis-url", url, "--timeout", "0.2"]) == 1
    assert main(["recommend", "--redis-url", url, "--user", "u", "--timeout", "0.2"]) == 1
    assert sum("Redis unavailable" in r.message for r in caplog.records) == 2


def test_consumer_publishes_what_it_learned_with_offsets(
    kafka_broker, redis_server, unique_name, tmp_path
):
    topic, ns = unique_name("topic"), unique_name("ns")
    ensure_topic(kafka_broker, topic, partitions=2)
    events = ml100k_events(1200)
    assert produce_events(kafka_broker, topic, events) == 1200
    trainer = _trainer()
    config = PublishConfig(redis_server, namespace=ns, publish_every_s=0.1, delta_tolerance=0.0)
    publisher = EmbeddingPublisher(config)
    summary = consume(
        KafkaConfig(bootstrap=kafka_broker, topic=topic, group=unique_name("g"), **FAST_GROUP),
        trainer,
        CheckpointStore(tmp_path / "ckpt"),
        PipelineConfig(idle_exit_s=2.0, max_batch=200),
        publisher=publisher,
    )
    assert summary["events"] == 1200
    client = EmbeddingClient(redis_server, namespace=ns)
    assert _served_equals(client, trainer)
    pointer = client.pointer()
    assert pointer["offsets"] == summary["end_position"]
    assert sum(pointer["offsets"].values()) == 1200
    assert pointer["watermark"] == max(e.timestamp for e in events)


def test_user_vectors_per_hand_over_are_bounded_and_the_rest_follow(redis_server, unique_name):
    ns = unique_name("ns")
    config = PublishConfig(redis_server, namespace=ns, max_users_per_publish=7)
    trainer = _trainer()
    users, items, times = _events(400, users=30)
    trainer.learn_many(users, items, times)
    publisher = EmbeddingPublisher(config)
    assert publisher.observe(trainer, users, force=True)
    assert publisher.flush(10)
    assert publisher.results[-1].users == 7
    assert publisher.close(trainer)  # the other 23 users go with the final hand-overs
    assert sum(r.users for r in publisher.results) == 30
    client = EmbeddingClient(redis_server, namespace=ns)
    assert all(client.user_vector(u) is not None for u in set(users.tolist()))
