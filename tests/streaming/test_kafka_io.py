"""Kafka source, dead-letter sink and producer against a real Kafka-protocol broker (Tansu).

Group joins on Tansu take about session_timeout_ms / 2, so the group tests use a 3 s session.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import threading
import time

import pytest

from devtools.services import free_port
from streaming.errors import ServiceUnavailableError
from streaming.events import Event, parse_records
from streaming.kafka_client import (
    KafkaDeadLetterSink,
    ensure_topic,
    format_position,
    parse_position,
    produce_events,
)
from streaming.sources.kafka import KafkaConfig, KafkaEventSource

FAST_GROUP = {"session_timeout_ms": 3000, "heartbeat_interval_ms": 500}


def make_config(bootstrap: str, topic: str, group: str | None, **overrides) -> KafkaConfig:
    settings = {**FAST_GROUP, "connect_timeout_s": 10.0, **overrides}
    return KafkaConfig(bootstrap=bootstrap, topic=topic, group=group, **settings)


def make_events(n: int, users: int = 5, start: float = 1_700_000_000.0) -> list[Event]:
    return [
        Event(f"u{i % users}", f"i{i}", start + i, 1.0 + (i % 3), "view" if i % 2 else None)
        for i in range(n)
    ]


def drain(source: KafkaEventSource, n: int, timeout_s: float = 30.0, batch: int = 500):
    """Read until ``n`` records arrived (fails after ``timeout_s``)."""
    out = []
    deadline = time.monotonic() + timeout_s
    while len(out) < n:
        assert time.monotonic() < deadline, f"only {len(out)} of {n} records after {timeout_s} s"
        out.extend(source.poll_records(min(batch, n - len(out)), timeout_ms=200))
    return out


# --------------------------------------------------------------------------- no broker


def test_config_is_validated_with_pinned_messages():
    ok = KafkaConfig(bootstrap="127.0.0.1:9092, h2:9093", topic="events")
    assert ok.bootstrap_servers == ["127.0.0.1:9092", "h2:9093"]
    assert ok.group == "sevo-engine" and ok.fetch_max_wait_ms == 10
    with pytest.raises(ValueError, match="bootstrap server must be host:port"):
        KafkaConfig(bootstrap="localhost", topic="events")
    with pytest.raises(ValueError, match="valid port"):
        KafkaConfig(bootstrap="localhost:70000", topic="events")
    with pytest.raises(ValueError, match="a Kafka topic name"):
        KafkaConfig(bootstrap="h:1", topic="bad topic")
    with pytest.raises(ValueError, match="group must be a non-empty string or None"):
        KafkaConfig(bootstrap="h:1", topic="t", group=" ")
    with pytest.raises(ValueError, match="max_poll_records must be a positive integer"):
        KafkaConfig(bootstrap="h:1", topic="t", max_poll_records=0)
    with pytest.raises(ValueError, match=r"heartbeat_interval_ms \(3000\) must be below"):
        KafkaConfig(bootstrap="h:1", topic="t", session_timeout_ms=3000)
    with pytest.raises(ValueError, match="connect_timeout_s must be a positive number"):
        KafkaConfig(bootstrap="h:1", topic="t", connect_timeout_s=0)
    with pytest.raises(ValueError, match="retry_backoff_max_s"):
        KafkaConfig(bootstrap="h:1", topic="t", retry_backoff_s=2.0, retry_backoff_max_s=1.0)
    with pytest.raises(AttributeError):
        ok.topic = "other"  # frozen


def test_positions_round_trip():
    assert format_position("a.b-c", 3) == "a.b-c:3"
    assert parse_position(format_position("t", 1, 42)) == ("t", 1, 42)
    assert parse_position("t:0") == ("t", 0, None)
    with pytest.raises(ValueError, match="topic:partition"):
        parse_position("t")


def test_unreachable_broker_retries_with_backoff_then_gives_up(caplog):
    port = free_port()  # nothing listens here
    cfg = make_config(
        f"127.0.0.1:{port}",
        "events",
        "g",
        connect_timeout_s=1.5,
        retry_backoff_s=0.1,
        retry_backoff_max_s=0.4,
    )
    caplog.set_level(logging.WARNING, logger="streaming")
    start = time.monotonic()
    with pytest.raises(ServiceUnavailableError) as info:
        KafkaEventSource(cfg)
    elapsed = time.monotonic() - start
    err = info.value
    assert err.retriable is False
    assert f"kafka broker 127.0.0.1:{port} unreachable after" in str(err)
    assert err.attempts >= 3 and 1.5 <= err.waited_s < 3.0 and elapsed < 4.0
    lines = [r.getMessage() for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(lines) == err.attempts - 1, lines
    delays = [float(re.search(r"retrying in ([\d.]+) s", line).group(1)) for line in lines]
    assert delays[:3] == [0.1, 0.2, 0.4], lines  # exponential, capped at 0.4
    assert re.match(
        rf"kafka broker 127\.0\.0\.1:{port} unreachable \(ConnectionError: .*\), "
        r"retrying in 0\.1 s \(attempt 1 failed, giving up in 1\.\d s\)",
        lines[0],
    ), lines[0]


# --------------------------------------------------------------------------- real broker


def test_produce_then_consume_everything_with_advancing_positions(kafka_broker, unique_name):
    topic = unique_name("events")
    assert ensure_topic(kafka_broker, topic, partitions=1) is True
    assert ensure_topic(kafka_broker, topic, partitions=1) is False  # already there
    events = make_events(50)
    assert produce_events(kafka_broker, topic, events) == 50

    with KafkaEventSource(make_config(kafka_broker, topic, unique_name("g"))) as source:
        first = drain(source, 20, batch=20)  # includes the group join
        assert [r.position for r in first] == [f"{topic}:0:{i}" for i in range(20)]
        assert source.positions() == {f"{topic}:0": 20}
        assert source.lag() == {f"{topic}:0": 30}  # from the fetch high-water mark
        rest = drain(source, 30)
        assert source.positions() == {f"{topic}:0": 50}
        assert source.lag() == {f"{topic}:0": 0}
        assert source.lag(refresh=True) == {f"{topic}:0": 0}  # Tansu under-reports; max() wins
        assert source.poll_records(10, timeout_ms=100) == []  # nothing more
        assert source.assignment() == [f"{topic}:0"]

    records = first + rest
    assert [r.position for r in records] == [f"{topic}:0:{i}" for i in range(50)]
    parsed, dead = parse_records([r.raw for r in records], [r.position for r in records], now=2e9)
    assert dead == [] and parsed == events


def test_small_fetch_limits_reach_kafka_python_and_still_deliver_everything(
    kafka_broker, unique_name
):
    topic = unique_name("events")
    ensure_topic(kafka_broker, topic, partitions=1)
    events = make_events(300)
    assert produce_events(kafka_broker, topic, events) == 300
    config = make_config(
        kafka_broker, topic, None, fetch_max_bytes=4096, max_partition_fetch_bytes=1024
    )
    with KafkaEventSource(config) as source:
        assert source._consumer.config["fetch_max_bytes"] == 4096
        assert source._consumer.config["max_partition_fetch_bytes"] == 1024
        records = drain(source, 300)
    assert [r.position for r in records] == [f"{topic}:0:{i}" for i in range(300)]
    with pytest.raises(ValueError, match="max_partition_fetch_bytes must be a positive integer"):
        make_config(kafka_broker, topic, None, max_partition_fetch_bytes=0)


def test_produce_rate_limit(kafka_broker, unique_name):
    topic = unique_name("rate")
    ensure_topic(kafka_broker, topic)
    start = time.perf_counter()
    assert produce_events(kafka_broker, topic, make_events(30), rate=100.0) == 30
    assert time.perf_counter() - start >= 0.29 - 0.02  # 30 events at 100/s


@pytest.mark.parametrize("group", [True, False], ids=["group", "no-group"])
def test_assignment_seeks_to_checkpoint_positions(kafka_broker, unique_name, group):
    topic = unique_name("seek")
    ensure_topic(kafka_broker, topic)
    produce_events(kafka_broker, topic, make_events(10))
    assigned = []
    cfg = make_config(kafka_broker, topic, unique_name("g") if group else None)
    with KafkaEventSource(cfg, positions={f"{topic}:0": 5}, on_assign=assigned.append) as source:
        records = drain(source, 5)
        assert [r.position for r in records] == [f"{topic}:0:{i}" for i in range(5, 10)]
        assert assigned == [{f"{topic}:0": 5}]
        assert source.positions() == {f"{topic}:0": 10}
        assert source.commit({f"{topic}:0": 10}) is group  # no group: nothing to commit


def test_a_failing_checkpoint_reader_stops_the_source(kafka_broker, unique_name):
    topic = unique_name("bad-ckpt")
    ensure_topic(kafka_broker, topic)

    def broken() -> dict[str, int]:
        raise OSError("checkpoint store unreachable")

    with pytest.raises(OSError, match="checkpoint store unreachable"):
        KafkaEventSource(make_config(kafka_broker, topic, None), positions=broken)
    with pytest.raises(ValueError, match="non-negative integer"):
        KafkaEventSource(make_config(kafka_broker, topic, None), positions={f"{topic}:0": -1})


def test_new_consumer_follows_checkpoint_not_group_offsets(kafka_broker, unique_name):
    """Rule: group offsets are for monitoring; a partition the checkpoint does not know starts
    at the beginning of the log even if the group committed further."""
    topic, group = unique_name("ckpt"), unique_name("g")
    ensure_topic(kafka_broker, topic)
    produce_events(kafka_broker, topic, make_events(10))
    cfg = make_config(kafka_broker, topic, group)

    with KafkaEventSource(cfg) as first:
        assert len(drain(first, 10)) == 10
        assert first.commit(first.positions()) is True  # "after the checkpoint is durable"
        assert first.committed() == {f"{topic}:0": 10}
        assert first.commit({"other-topic:0": 3}) is False  # not owned: not committed

    with KafkaEventSource(cfg) as second:  # same group, no checkpoint
        records = drain(second, 10)
        assert records[0].position == f"{topic}:0:0"
        assert second.committed() == {f"{topic}:0": 10}  # the group's offset is untouched


def test_dead_letters_land_in_dead_letter_topic(kafka_broker, unique_name):
    dlq = unique_name("dlq")
    ensure_topic(kafka_broker, dlq)
    raws = [b"{not json", b"\xff\xfe\x00", b'{"user_id": "u", "timestamp": 5}', b"[1, 2]"]
    positions = [f"events:0:{i}" for i in range(4)]
    events, dead = parse_records(raws, positions, now=10.0)
    assert events == [] and len(dead) == 4

    with KafkaDeadLetterSink(kafka_broker, dlq) as sink:
        sink.write(dead)
        sink.write([])  # no-op

    with KafkaEventSource(make_config(kafka_broker, dlq, None)) as reader:
        records = drain(reader, 4)
    letters = [json.loads(r.raw) for r in records]
    assert [d["position"] for d in letters] == positions
    assert [d["reason"] for d in letters] == [d.reason for d in dead]
    assert [d["reason"] for d in letters][::3] == ["invalid_json", "not_object"]
    assert letters[0]["raw"] == "{not json" and "raw_base64" not in letters[0]
    assert base64.b64decode(letters[1]["raw_base64"]) == b"\xff\xfe\x00"
    assert all(d["detail"] and isinstance(d["time"], float) for d in letters)


def test_oversized_records_pass_the_producer_and_reach_the_dead_letter_topic_cut(
    kafka_broker, unique_name
):
    """A record between the parser's limit and the producer's is produced, consumed, and its
    dead letter (prefix only) fits the dead-letter producer; one above the producer's limit is
    refused by the producer with a DeliveryError, the rest still delivered."""
    from streaming.errors import DeliveryError
    from streaming.events import DEAD_LETTER_RAW_PREFIX, MAX_RECORD_BYTES
    from streaming.kafka_client import PRODUCER_MAX_REQUEST_BYTES

    topic, dlq = unique_name("big"), unique_name("dlq")
    ensure_topic(kafka_broker, topic)
    ensure_topic(kafka_broker, dlq)
    big = b"\xff" * (PRODUCER_MAX_REQUEST_BYTES // 2)  # non-UTF-8: 3x as replacement chars
    with pytest.raises(DeliveryError, match="1 of 3 records"):
        produce_events(kafka_broker, topic, [big, b"\x00" * (2 * PRODUCER_MAX_REQUEST_BYTES), big])
    with KafkaEventSource(make_config(kafka_broker, topic, None)) as source:
        records = drain(source, 2)
    events, dead = parse_records([r.raw for r in records], [r.position for r in records], now=1)
    assert events == [] and [d.reason for d in dead] == ["too_large"] * 2
    assert MAX_RECORD_BYTES < len(big) < PRODUCER_MAX_REQUEST_BYTES
    with KafkaDeadLetterSink(kafka_broker, dlq) as sink:
        sink.write(dead)  # the whole raw would make a message of about 2 MiB
    with KafkaEventSource(make_config(kafka_broker, dlq, None)) as reader:
        letters = [json.loads(r.raw) for r in drain(reader, 2)]
    assert [d["reason"] for d in letters] == ["too_large"] * 2
    assert all(d["raw_truncated"] and d["raw_bytes"] == len(big) for d in letters)
    assert base64.b64decode(letters[0]["raw_base64"]) == big[:DEAD_LETTER_RAW_PREFIX]


def test_source_connects_once_a_late_broker_starts(make_kafka_service, unique_name, caplog):
    service = make_kafka_service(start=False)
    errors: list[BaseException] = []

    def start_later():
        time.sleep(1.5)
        try:
            service.start()
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    thread = threading.Thread(target=start_later, name="late-broker")
    caplog.set_level(logging.INFO, logger="streaming")
    topic = unique_name("late")
    cfg = make_config(
        service.bootstrap, topic, unique_name("g"), retry_backoff_s=0.2, retry_backoff_max_s=0.8
    )
    thread.start()
    try:
        source = KafkaEventSource(cfg)  # blocks, retrying, until the broker is up
    finally:
        thread.join()
    assert errors == []
    try:
        retries = [r.getMessage() for r in caplog.records if "retrying in" in r.getMessage()]
        assert len(retries) >= 2, retries
        assert all(f"kafka broker {service.bootstrap} unreachable" in line for line in retries)
        assert any("reachable after" in r.getMessage() for r in caplog.records)
        ensure_topic(service.bootstrap, topic)
        produce_events(service.bootstrap, topic, make_events(5))
        assert len(drain(source, 5)) == 5
    finally:
        source.close()


def test_two_consumers_share_partitions_and_consume_each_message_once(kafka_broker, unique_name):
    """A starts alone and owns both partitions; B joins; A checkpoints on revocation; the
    partitions are split and every message is consumed exactly once across both."""
    topic, group = unique_name("pair"), unique_name("g")
    ensure_topic(kafka_broker, topic, partitions=2)
    cfg = make_config(kafka_broker, topic, group)
    store: dict[str, int] = {}  # the shared "durable checkpoint"
    lock = threading.Lock()
    seen: dict[str, list[str]] = {"A": [], "B": []}
    sources: dict[str, KafkaEventSource] = {}
    revoked: dict[str, list[dict[str, int]]] = {"A": [], "B": []}
    stop = threading.Event()
    failures: list[BaseException] = []

    def run(name: str) -> None:
        def on_revoke(positions: dict[str, int]) -> None:
            with lock:
                store.update(positions)  # flush + checkpoint
                revoked[name].append(positions)

        try:
            with KafkaEventSource(
                cfg, positions=lambda: dict(store), on_revoke=on_revoke
            ) as source:
                sources[name] = source
                while not stop.is_set():
                    batch = source.poll_records(50, timeout_ms=100)
                    with lock:
                        seen[name].extend(r.position for r in batch)
                        store.update(source.positions())  # checkpoint after each batch
        except BaseException as exc:
            failures.append(exc)

    def wait_for(predicate, what: str, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            assert not failures, failures
            assert time.monotonic() < deadline, f"timed out waiting for {what}: {seen}"
            time.sleep(0.05)

    # 20 users hash onto both partitions; check that they did.
    produce_events(kafka_broker, topic, make_events(40, users=20))
    a = threading.Thread(target=run, args=("A",), name="consumer-A")
    b = threading.Thread(target=run, args=("B",), name="consumer-B")
    a.start()
    try:
        wait_for(lambda: len(seen["A"]) == 40, "A to read the first 40")
        assert {parse_position(p)[1] for p in seen["A"]} == {0, 1}
        b.start()
        wait_for(
            lambda: (
                "B" in sources
                and len(sources["A"].assignment()) == 1
                and len(sources["B"].assignment()) == 1
            ),
            "the rebalance",
        )
        produce_events(kafka_broker, topic, make_events(40, users=20, start=1_800_000_000.0))
        wait_for(lambda: len(seen["A"]) + len(seen["B"]) >= 80, "all 80 messages")
        time.sleep(0.5)  # would expose duplicates arriving late
    finally:
        stop.set()
        a.join(30)
        b.join(30)
    assert not failures, failures
    everything = seen["A"] + seen["B"]
    assert len(everything) == 80 and len(set(everything)) == 80  # exactly once
    assert revoked["A"] and set(revoked["A"][0]) == {f"{topic}:0", f"{topic}:1"}
    a_parts = {parse_position(p)[1] for p in seen["A"][40:]}
    b_parts = {parse_position(p)[1] for p in seen["B"]}
    assert seen["B"] and a_parts.isdisjoint(b_parts)  # each owned its own partition
