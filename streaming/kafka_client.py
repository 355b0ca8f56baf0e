"""Kafka connections and the producing side: bootstrap parsing, connecting with backoff,
topic creation, :func:`produce_events` and the dead-letter topic.

The consuming side (the event source the pipeline reads) is :mod:`streaming.sources.kafka`.
"""

from __future__ import annotations

import base64
import logging
import re
import socket
import time
from collections.abc import Callable, Iterable
from typing import Any

from streaming.errors import DeliveryError, ServiceUnavailableError, StreamingError
from streaming.events import DeadLetter, Event, encode_event
from streaming.retry import Backoff, ExponentialBackoff, retry_until

__all__ = [
    "PRODUCER_MAX_REQUEST_BYTES",
    "KafkaDeadLetterSink",
    "ServiceUnavailableError",
    "check_topic",
    "connect_with_retry",
    "ensure_topic",
    "format_position",
    "parse_bootstrap",
    "parse_position",
    "produce_events",
]

log = logging.getLogger(__name__)

PRODUCER_MAX_REQUEST_BYTES = 2**20
"""The producers' ``max_request_size`` (events and dead letters): Kafka's default message size
(1 MiB; the broker's ``message.max.bytes`` is about that by default), equal to the consumer's
``KafkaConfig.max_partition_fetch_bytes`` so one fetch holds any batch a producer writes, and
well above :data:`streaming.events.MAX_RECORD_BYTES`, so every record the engine would accept
can be produced; a larger one than this is refused by the producer (a ``DeliveryError``)."""

_TOPIC_RE = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_HOST_PORT_RE = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):(\d{1,5})$")


def parse_bootstrap(bootstrap: str) -> list[str]:
    """``"h1:9092,h2:9092"`` → ``["h1:9092", "h2:9092"]``; raises ValueError when malformed."""
    if not isinstance(bootstrap, str) or not bootstrap.strip():
        raise ValueError(f"bootstrap must be 'host:port[,host:port...]', got {bootstrap!r}")
    servers = [s.strip() for s in bootstrap.split(",")]
    for server in servers:
        match = _HOST_PORT_RE.match(server)
        if match is None or not 0 < int(match.group(2)) < 65536:
            raise ValueError(
                f"bootstrap server must be host:port with a valid port, got {server!r}"
            )
    return servers


def check_topic(topic: str, what: str) -> None:
    if not isinstance(topic, str) or not _TOPIC_RE.match(topic) or topic in (".", ".."):
        raise ValueError(
            f"{what} must be 1-249 characters of [A-Za-z0-9._-] (a Kafka topic name), got {topic!r}"
        )


def format_position(topic: str, partition: int, offset: int | None = None) -> str:
    """``"topic:partition"`` (a resume-position key) or ``"topic:partition:offset"``."""
    key = f"{topic}:{partition}"
    return key if offset is None else f"{key}:{offset}"


def parse_position(position: str) -> tuple[str, int, int | None]:
    """Inverse of :func:`format_position`: ``(topic, partition, offset or None)``."""
    parts = position.split(":")
    if len(parts) not in (2, 3) or not all(p.lstrip("-").isdigit() for p in parts[1:]):
        raise ValueError(f"expected 'topic:partition[:offset]', got {position!r}")
    offset = int(parts[2]) if len(parts) == 3 else None
    return parts[0], int(parts[1]), offset


# --------------------------------------------------------------------------- connecting


def _tcp_probe(servers: list[str], timeout_s: float) -> None:
    """Raise OSError unless at least one bootstrap server accepts a TCP connection."""
    errors = []
    for server in servers:
        host, _, port = server.rpartition(":")
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
                return
        except OSError as exc:
            errors.append(f"{server}: {exc.strerror or exc}")
    raise ConnectionError("; ".join(errors))


def _is_retriable(exc: BaseException) -> bool:
    import kafka.errors

    # kafka-python 2.x raises NoBrokersAvailable (not flagged retriable) when bootstrap fails;
    # 3.x raises KafkaTimeoutError (retriable).
    no_brokers = getattr(kafka.errors, "NoBrokersAvailable", ())
    return isinstance(exc, (OSError, no_brokers)) or getattr(exc, "retriable", False) is True


def connect_with_retry(
    make_client: Callable[[int], Any],
    bootstrap: str,
    *,
    timeout_s: float,
    attempt_timeout_s: float,
    backoff: Backoff,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Any:
    """Build a kafka-python client, retrying while the broker is unreachable.

    Each attempt first checks that a bootstrap server accepts TCP connections (cheap, and it
    avoids creating clients that cannot be closed when their own bootstrap fails), then calls
    ``make_client(bootstrap_timeout_ms)``.

    Raises:
        ServiceUnavailableError: still unreachable after ``timeout_s`` (``retriable=False``).
    """
    servers = parse_bootstrap(bootstrap)

    def attempt() -> Any:
        _tcp_probe(servers, min(attempt_timeout_s, 2.0))
        return make_client(int(attempt_timeout_s * 1000))

    return retry_until(
        attempt,
        service=f"kafka broker {bootstrap}",
        timeout_s=timeout_s,
        backoff=backoff,
        is_retriable=_is_retriable,
        clock=clock,
        sleep=sleep,
        logger=log,
    )


def _make_producer(
    bootstrap: str, *, client_id: str, timeout_s: float, backoff: Backoff | None, **extra: Any
) -> Any:
    from kafka import KafkaProducer

    def make(bootstrap_timeout_ms: int) -> KafkaProducer:
        return KafkaProducer(
            bootstrap_servers=parse_bootstrap(bootstrap),
            client_id=client_id,
            acks="all",
            linger_ms=5,
            max_request_size=PRODUCER_MAX_REQUEST_BYTES,
            bootstrap_timeout_ms=bootstrap_timeout_ms,
            **extra,
        )

    return connect_with_retry(
        make,
        bootstrap,
        timeout_s=timeout_s,
        attempt_timeout_s=min(5.0, timeout_s),
        backoff=backoff or ExponentialBackoff(0.2, 2.0, 5.0),
    )


def ensure_topic(
    bootstrap: str,
    topic: str,
    *,
    partitions: int = 1,
    replication_factor: int = 1,
    timeout_s: float = 30.0,
) -> bool:
    """Create ``topic`` unless it exists. Returns True if this call created it.

    An existing topic is left as it is (its partition count is not checked or changed).
    """
    check_topic(topic, "topic")
    if partitions < 1 or replication_factor < 1:
        raise ValueError("partitions and replication_factor must be >= 1")
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = connect_with_retry(
        lambda ms: KafkaAdminClient(
            bootstrap_servers=parse_bootstrap(bootstrap),
            client_id="sevo-admin",
            bootstrap_timeout_ms=ms,
        ),
        bootstrap,
        timeout_s=timeout_s,
        attempt_timeout_s=min(5.0, timeout_s),
        backoff=ExponentialBackoff(0.2, 2.0, 5.0),
    )
    try:
        admin.create_topics([NewTopic(topic, partitions, replication_factor)])
    except TopicAlreadyExistsError:
        return False
    finally:
        admin.close()
    log.info("created topic %s (%d partitions)", topic, partitions)
    return True


def produce_events(
    bootstrap: str,
    topic: str,
    events: Iterable[Event | bytes],
    *,
    rate: float | None = None,
    key: Callable[[Event], bytes | None] | None = None,
    client_id: str = "sevo-producer",
    connect_timeout_s: float = 30.0,
    clock: Callable[[], float] = time.perf_counter,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Write events to ``topic`` as JSON (``acks=all``, idempotent); returns how many.

    Args:
        bootstrap: ``host:port[,...]``.
        topic: destination topic.
        events: :class:`~streaming.events.Event` objects (encoded with
            :func:`~streaming.events.encode_event`) or raw ``bytes`` sent as they are (no key;
            for load and dead-letter tests).
        rate: events per second (None: as fast as possible), for demos and load tests.
        key: message key of an event (default: the user id, so that one user's events stay
            ordered within a partition).
        client_id: Kafka client id.
        connect_timeout_s: how long to retry an unreachable broker.

    Raises:
        ServiceUnavailableError: the broker stayed unreachable.
        DeliveryError: some records were not acknowledged (the count says how many).
    """
    check_topic(topic, "topic")
    if rate is not None and not rate > 0:
        raise ValueError(f"rate must be > 0 events/s, got {rate!r}")
    import kafka.errors as kafka_errors

    key_of = key or (lambda e: e.user_id.encode("utf-8"))
    producer = _make_producer(
        bootstrap, client_id=client_id, timeout_s=connect_timeout_s, backoff=None
    )
    failures: list[BaseException] = []
    count = 0
    start = clock()
    try:
        for item in events:
            if rate is not None:
                ahead = start + count / rate - clock()
                if ahead > 0:
                    sleep(ahead)
            try:
                if isinstance(item, (bytes, bytearray)):
                    future = producer.send(topic, value=bytes(item))
                else:
                    future = producer.send(topic, value=encode_event(item), key=key_of(item))
            except kafka_errors.MessageSizeTooLargeError as exc:  # above max_request_size
                failures.append(exc)
            else:
                future.add_errback(failures.append)
            count += 1
        producer.flush()
    finally:
        producer.close()
    if failures:
        raise DeliveryError(
            f"{len(failures)} of {count} records to {topic} were not acknowledged "
            f"(first error: {failures[0]!r})"
        )
    log.info("produced %d events to %s in %.2f s", count, topic, clock() - start)
    return count


class KafkaDeadLetterSink:
    """Writes dead letters to a Kafka topic, one JSON object per message, flushed per write.

    Each message is ``DeadLetter.to_json()`` — ``{"raw", "reason", "position", "detail",
    "time"}`` — plus ``"raw_base64"`` when the raw bytes are not valid UTF-8 (``raw`` then
    holds replacement characters). The message key is the record's position. Delivery is
    at-least-once, like the file sink.

    Args:
        bootstrap: ``host:port[,...]``.
        topic: the dead-letter topic.
        client_id: Kafka client id.
        connect_timeout_s: how long to retry an unreachable broker at construction.
        backoff: connection backoff.

    Raises:
        ServiceUnavailableError: the broker stayed unreachable (at construction).
        DeliveryError: from :meth:`write`, when letters were not acknowledged.
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        *,
        client_id: str = "sevo-dead-letters",
        connect_timeout_s: float = 30.0,
        backoff: Backoff | None = None,
    ) -> None:
        check_topic(topic, "dead-letter topic")
        self.topic = topic
        self._producer = _make_producer(
            bootstrap, client_id=client_id, timeout_s=connect_timeout_s, backoff=backoff
        )
        self._closed = False

    def write(self, letters: list[DeadLetter]) -> None:
        """Send ``letters`` and wait until the broker acknowledged all of them."""
        if not letters:
            return
        if self._closed:
            raise StreamingError("KafkaDeadLetterSink is closed")
        import json

        now = time.time()
        futures = []
        for letter in letters:
            obj = letter.to_json(now)
            raw = letter.sink_raw()  # at most MAX_RECORD_BYTES: the message fits a request
            if isinstance(raw, bytes):
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError:
                    obj["raw_base64"] = base64.b64encode(raw).decode("ascii")
            value = json.dumps(obj, ensure_ascii=False).encode("utf-8")
            futures.append(
                self._producer.send(self.topic, value=value, key=letter.position.encode("utf-8"))
            )
        self._producer.flush()
        failed = [f.exception for f in futures if f.failed()]
        if failed:
            raise DeliveryError(
                f"{len(failed)} of {len(letters)} dead letters to {self.topic} were not "
                f"acknowledged (first error: {failed[0]!r})"
            )

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._producer.close()

    def __enter__(self) -> KafkaDeadLetterSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
