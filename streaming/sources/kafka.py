"""The Kafka event source: a topic read in micro-batches, resuming from a checkpoint.

**Offsets.** The checkpoint is the source of truth. :class:`KafkaEventSource` is given the
checkpoint's positions (``{"topic:partition": next_offset}``) and, whenever a partition is
assigned to it, seeks there; **a partition the checkpoint does not know starts at the
beginning of the log**, whatever offset the consumer group has committed. Group offsets are
committed (:meth:`KafkaEventSource.commit`) only after a checkpoint is durable and serve lag
monitoring, never resumption: if a checkpoint is lost, the state it held is lost too, and
replaying the log from the start is the only way to rebuild it with every event counted once.

**Rebalances.** Before partitions are taken away, ``on_revoke(positions)`` is called with the
resume positions of the revoked partitions; the pipeline flushes and checkpoints there. Records
fetched but not yet returned for those partitions are dropped (the next owner reads them from
the checkpoint). A partition assigned again later resumes from the newest durable position this
source knows: the one passed to ``on_revoke`` or to :meth:`~KafkaEventSource.commit`, or the
checkpoint given at construction (a callable ``positions`` is asked first, for checkpoints
shared between workers).

**Threads.** With kafka-python >= 3 the rebalance callbacks run on the client's IO thread
while the caller's thread is blocked in :meth:`~KafkaEventSource.poll_records`; they must not
call blocking consumer APIs. :meth:`~KafkaEventSource.commit` knows this and commits
asynchronously when called from ``on_revoke``.

**Broker outages.** A broker lost mid-run is waited for: kafka-python reconnects on its own,
with the configured backoff (``retry_backoff_s`` doubling up to ``retry_backoff_max_s``), and
the source resumes fetching where it stopped, so nothing is lost or read twice. While no records
arrive the source checks at most every ``probe_every_s`` whether a bootstrap broker accepts
TCP connections (:meth:`~KafkaEventSource.broker_up`, the ``sevo_broker_up`` gauge) and logs one
WARNING when an outage begins and one INFO line when it ends; kafka-python's per-attempt
connection errors are filtered out of the log, so an outage does not flood it. A broker down at
start is different: the constructor retries for ``connect_timeout_s`` and then raises.

**Broker quirks** (Tansu, the broker the tests start): ListOffsets LATEST under-reports the
log end, so lag comes from the fetch high-water mark (:meth:`~KafkaEventSource.lag`); a group
join takes about ``session_timeout_ms / 2``.

Example:
    >>> cfg = KafkaConfig(bootstrap="127.0.0.1:9092", topic="events", group="trainer")
    >>> src = KafkaEventSource(cfg, positions={"events:0": 120}, on_revoke=flush)  # doctest: +SKIP
    >>> batch = src.next_batch(500, timeout_ms=200)  # doctest: +SKIP
    >>> batch[0].position, src.positions()  # doctest: +SKIP
    ('events:0:120', {'events:0': 120 + len(batch)})
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from streaming.errors import ServiceUnavailableError, StreamingError
from streaming.events import MAX_RECORD_BYTES, EventBatch, parse_records
from streaming.kafka_client import (
    check_topic,
    connect_with_retry,
    format_position,
    parse_bootstrap,
    parse_position,
)
from streaming.retry import Backoff, ExponentialBackoff

__all__ = [
    "KafkaConfig",
    "KafkaEventSource",
    "ServiceUnavailableError",
    "SourceRecord",
    "format_position",
    "parse_position",
]

log = logging.getLogger(__name__)

#: kafka-python loggers that report each failed connection attempt (ERROR / WARNING lines,
#: several a second while a broker is down).
_CLIENT_LOGGERS = (
    "kafka.net.manager",
    "kafka.net.connection",
    "kafka.cluster",
    "kafka.coordinator",
    "kafka.consumer.fetcher",
)
_CONNECTION_NOISE = (
    "KafkaConnectionError",
    "ECONNREFUSED",
    "No node available",
    "Marking the coordinator dead",
    "NodeNotReadyError",
    "socket disconnected",
)


class _ConnectionNoise(logging.Filter):
    """Drops kafka-python's per-attempt connection errors: the source logs each outage once."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is not ours to judge
            return True
        return not any(marker in message for marker in _CONNECTION_NOISE)


_NOISE_FILTER = _ConnectionNoise()


def _mute_connection_noise() -> None:
    for name in _CLIENT_LOGGERS:
        logger = logging.getLogger(name)
        if _NOISE_FILTER not in logger.filters:
            logger.addFilter(_NOISE_FILTER)


def _accepts_connections(server: str, timeout_s: float) -> bool:
    """Whether ``host:port`` accepts a TCP connection within ``timeout_s``."""
    host, _, port = server.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            return True
    except OSError:
        return False


Positions = Mapping[str, int]
PositionsArg = Positions | Callable[[], Positions] | None


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class KafkaConfig:
    """Settings of the Kafka event source (validated once, immutable).

    Args:
        bootstrap: comma-separated ``host:port`` list.
        topic: the event topic.
        group: consumer group id; ``None`` reads every partition without a group (replay,
            tools): no rebalances, no commits.
        client_id: Kafka client id (shows up in broker logs and metrics).
        max_poll_records: default and upper bound of records per :meth:`poll_records`.
        fetch_max_wait_ms: how long the broker may hold a fetch waiting for data; small keeps
            event-to-model latency low (≈4 ms p50 at 10 ms on the test broker).
        fetch_max_bytes: most bytes one fetch response may carry (all partitions).
        max_partition_fetch_bytes: most bytes one fetch may carry per partition. kafka-python
            fetches a partition again only after the records of its previous fetch have been
            handed out, so the consumer buffers about two fetches per partition at most: these
            two settings bound its memory (kafka-python's own defaults are 50 MiB and 1 MiB; a
            wire-format event is ~100 bytes, so 1 MiB is ~10k events). A single record larger
            than the limit is still delivered (the broker returns at least one record batch).
            The default equals the producers' ``max_request_size``
            (:data:`streaming.kafka_client.PRODUCER_MAX_REQUEST_BYTES`).
        session_timeout_ms: group liveness timeout (Apache Kafka accepts 6 000–300 000 by
            default). Tansu completes a join after about half of it.
        heartbeat_interval_ms: group heartbeat period (< session timeout).
        max_poll_interval_ms: longest allowed gap between polls before the member is evicted
            (covers a slow training step or checkpoint).
        request_timeout_ms: per-request timeout (> ``fetch_max_wait_ms``).
        connect_timeout_s: total time to keep retrying an unreachable broker at start.
        connect_attempt_timeout_s: bound of one connection attempt.
        retry_backoff_s: first delay between connection attempts (doubles each failure), at
            start and when reconnecting to a broker lost mid-run.
        retry_backoff_max_s: largest delay between connection attempts.
        probe_every_s: while no records arrive, how often :meth:`KafkaEventSource.broker_up`
            checks that a bootstrap broker accepts connections.
        max_future_s: an event time more than this after now is a dead letter.
        max_record_bytes: a record larger than this is a dead letter (``too_large``),
            undecoded (default :data:`streaming.events.MAX_RECORD_BYTES`).
        rank, world_size: a rank of a data-parallel group reads the partitions ``p`` with
            ``p % world_size == rank``, assigned directly (no group membership, so no
            rebalance ever stalls a collective step); ``group`` then only names the offsets
            committed for lag monitoring. ``world_size=1`` (the default) joins ``group``.

    Raises:
        ValueError: on any invalid setting, naming it.
    """

    bootstrap: str
    topic: str
    group: str | None = "sevo-engine"
    client_id: str = "sevo-engine"
    max_poll_records: int = 500
    fetch_max_wait_ms: int = 10
    fetch_max_bytes: int = 16 * 2**20
    max_partition_fetch_bytes: int = 2**20
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 3_000
    max_poll_interval_ms: int = 300_000
    request_timeout_ms: int = 30_000
    connect_timeout_s: float = 30.0
    connect_attempt_timeout_s: float = 5.0
    retry_backoff_s: float = 0.2
    retry_backoff_max_s: float = 5.0
    probe_every_s: float = 1.0
    max_future_s: float = 86_400.0
    max_record_bytes: int = MAX_RECORD_BYTES
    rank: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        parse_bootstrap(self.bootstrap)
        if (
            isinstance(self.world_size, bool)
            or not isinstance(self.world_size, int)
            or self.world_size < 1
            or isinstance(self.rank, bool)
            or not isinstance(self.rank, int)
            or not 0 <= self.rank < self.world_size
        ):
            raise ValueError(
                f"rank must be in 0..world_size-1 with world_size >= 1, got rank {self.rank!r} "
                f"of {self.world_size!r}"
            )
        check_topic(self.topic, "topic")
        if self.group is not None and (not isinstance(self.group, str) or not self.group.strip()):
            raise ValueError(f"group must be a non-empty string or None, got {self.group!r}")
        if not isinstance(self.client_id, str) or not self.client_id:
            raise ValueError(f"client_id must be a non-empty string, got {self.client_id!r}")
        for name in (
            "max_poll_records",
            "fetch_max_bytes",
            "max_partition_fetch_bytes",
            "session_timeout_ms",
            "heartbeat_interval_ms",
            "max_poll_interval_ms",
            "request_timeout_ms",
            "max_record_bytes",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if (
            isinstance(self.fetch_max_wait_ms, bool)
            or not isinstance(self.fetch_max_wait_ms, int)
            or self.fetch_max_wait_ms < 0
        ):
            raise ValueError(
                f"fetch_max_wait_ms must be a non-negative integer, got {self.fetch_max_wait_ms!r}"
            )
        if self.heartbeat_interval_ms >= self.session_timeout_ms:
            raise ValueError(
                f"heartbeat_interval_ms ({self.heartbeat_interval_ms}) must be below "
                f"session_timeout_ms ({self.session_timeout_ms})"
            )
        if self.fetch_max_wait_ms >= self.request_timeout_ms:
            raise ValueError(
                f"fetch_max_wait_ms ({self.fetch_max_wait_ms}) must be below "
                f"request_timeout_ms ({self.request_timeout_ms})"
            )
        for name in (
            "connect_timeout_s",
            "connect_attempt_timeout_s",
            "retry_backoff_s",
            "probe_every_s",
        ):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        if not self.retry_backoff_max_s >= self.retry_backoff_s:
            raise ValueError(
                f"retry_backoff_max_s ({self.retry_backoff_max_s}) must be >= "
                f"retry_backoff_s ({self.retry_backoff_s})"
            )

    @property
    def bootstrap_servers(self) -> list[str]:
        return parse_bootstrap(self.bootstrap)

    def backoff(self) -> ExponentialBackoff:
        """The connection backoff these settings describe."""
        return ExponentialBackoff(self.retry_backoff_s, 2.0, self.retry_backoff_max_s)


# --------------------------------------------------------------------------- source


class SourceRecord(NamedTuple):
    """One record as read: the raw value and its position ``"topic:partition:offset"``."""

    raw: bytes
    position: str


def _key(tp: Any) -> str:
    return f"{tp.topic}:{tp.partition}"


def _listener_class():
    from kafka import ConsumerRebalanceListener

    class _Listener(ConsumerRebalanceListener):
        def __init__(self, source: KafkaEventSource) -> None:
            self.source = source

        def on_partitions_revoked(self, revoked):
            self.source._handle_revoked(revoked, lost=False)

        def on_partitions_assigned(self, assigned):
            self.source._handle_assigned(assigned)

        def on_partitions_lost(self, lost):  # kafka-python >= 3 (KIP-429)
            self.source._handle_revoked(lost, lost=True)

    return _Listener


class KafkaEventSource:
    """Reads raw event records from a Kafka topic in micro-batches, resuming from a checkpoint.

    See the module docstring for the offset rule. Not thread-safe: use it from one thread.

    Args:
        config: connection and consumer settings.
        positions: the checkpoint's resume positions ``{"topic:partition": next_offset}``, or a
            callable returning them (asked at every assignment, for checkpoints shared between
            workers), or None (no checkpoint: every partition starts at the beginning).
        on_revoke: ``on_revoke(positions)`` before partitions are taken away (rebalance, or
            eviction from the group), with the resume positions of those partitions: flush
            pending work and write a checkpoint. Runs on the client's IO thread while
            :meth:`poll_records` is blocked; an exception in it is re-raised by
            :meth:`poll_records`. Not called by :meth:`close`.
        on_assign: optional ``on_assign(starts)`` after partitions are assigned, with the offset
            each starts from (None: the beginning of the log).
        on_lost: optional ``on_lost(positions) -> rewind`` when partitions are *lost* (this
            consumer was evicted from the group, KIP-429) instead of ``on_revoke``: another
            worker may already be reading them from the last durable checkpoint, so the
            callback should discard the work since that checkpoint (reload it) and return the
            positions the partitions still owned must rewind to (or None). Without it, a loss
            is handled like a revocation.
        backoff: connection backoff (default from ``config``).
        clock, sleep: injectable for tests.

    Raises:
        ServiceUnavailableError: the broker stayed unreachable for ``config.connect_timeout_s``.
        StreamingError: without a group, the topic does not exist.
    """

    def __init__(
        self,
        config: KafkaConfig,
        *,
        positions: PositionsArg = None,
        on_revoke: Callable[[dict[str, int]], None] | None = None,
        on_assign: Callable[[dict[str, int | None]], None] | None = None,
        on_lost: Callable[[dict[str, int]], dict[str, int] | None] | None = None,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        from kafka import KafkaConsumer

        self.config = config
        self._provider = positions if callable(positions) else None
        self._durable: dict[str, int] = (
            {} if positions is None or callable(positions) else _clean_positions(positions)
        )
        self._on_revoke = on_revoke
        self._on_assign = on_assign
        self._on_lost = on_lost
        self._clock = clock
        # Next offset after the last record returned, per owned partition (None: not known yet,
        # the partition starts at the beginning of the log).
        self._positions: dict[Any, int | None] = {}
        self._pending: list[tuple[Any, int, bytes]] = []  # fetched, not returned yet
        self._in_callback = False
        self._callback_error: BaseException | None = None
        self._closing = False
        self._closed = False
        self._down_since: float | None = None  # clock() when the current outage was noticed
        self._last_probe = -float("inf")
        self.outages = 0  # outages noticed (a broker that stopped accepting connections)
        _mute_connection_noise()

        def make_consumer(bootstrap_timeout_ms: int) -> KafkaConsumer:
            return KafkaConsumer(
                bootstrap_servers=config.bootstrap_servers,
                client_id=config.client_id,
                group_id=config.group,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                fetch_max_wait_ms=config.fetch_max_wait_ms,
                fetch_max_bytes=config.fetch_max_bytes,
                max_partition_fetch_bytes=config.max_partition_fetch_bytes,
                max_poll_records=config.max_poll_records,
                session_timeout_ms=config.session_timeout_ms,
                heartbeat_interval_ms=config.heartbeat_interval_ms,
                max_poll_interval_ms=config.max_poll_interval_ms,
                request_timeout_ms=config.request_timeout_ms,
                bootstrap_timeout_ms=bootstrap_timeout_ms,
                reconnect_backoff_ms=int(config.retry_backoff_s * 1000),
                reconnect_backoff_max_ms=int(config.retry_backoff_max_s * 1000),
            )

        self._consumer = connect_with_retry(
            make_consumer,
            config.bootstrap,
            timeout_s=config.connect_timeout_s,
            attempt_timeout_s=config.connect_attempt_timeout_s,
            backoff=backoff or config.backoff(),
            clock=clock,
            sleep=sleep,
        )
        try:
            if config.group is None or config.world_size > 1:
                self._assign_all()
                self._raise_callback_error()
            else:
                self._consumer.subscribe([config.topic], listener=_listener_class()(self))
        except BaseException:
            self._consumer.close()
            raise
        log.info(
            "kafka source on %s topic %s group %s (checkpoint: %s)",
            config.bootstrap,
            config.topic,
            config.group,
            "callable" if self._provider else (self._durable or "none"),
        )

    # ------------------------------------------------------------------ assignment

    def _assign_all(self) -> None:
        from kafka import TopicPartition

        partitions = self._consumer.partitions_for_topic(self.config.topic)
        if not partitions:
            raise StreamingError(
                f"topic {self.config.topic!r} not found on {self.config.bootstrap}"
            )
        world, rank = self.config.world_size, self.config.rank
        if len(partitions) < world:
            raise StreamingError(
                f"topic {self.config.topic!r} has {len(partitions)} partition(s) for "
                f"{world} ranks: each rank needs at least one (add partitions or use fewer ranks)"
            )
        tps = [
            TopicPartition(self.config.topic, p) for p in sorted(partitions) if p % world == rank
        ]
        self._consumer.assign(tps)
        self._handle_assigned(tps)

    def _start_offset(self, key: str, provided: Positions) -> int | None:
        if key in provided:
            return int(provided[key])
        return self._durable.get(key)

    def _handle_assigned(self, assigned) -> None:
        if self._closing:
            return
        try:
            provided = _clean_positions(self._provider()) if self._provider else {}
        except Exception as exc:  # re-raised by next_batch before any record is used
            log.exception("reading the checkpoint positions failed")
            if self._callback_error is None:
                self._callback_error = exc
            return
        starts: dict[str, int | None] = {}
        for tp in sorted(assigned):
            key = _key(tp)
            offset = self._start_offset(key, provided)
            if offset is None:
                self._consumer.seek_to_beginning(tp)
            else:
                self._consumer.seek(tp, offset)
            self._positions[tp] = offset
            starts[key] = offset
        log.info(
            "assigned %s",
            ", ".join(
                f"{k} from {'the beginning (no checkpoint)' if v is None else f'offset {v}'}"
                for k, v in starts.items()
            )
            or "no partitions",
        )
        if self._on_assign is not None and starts:
            self._call(self._on_assign, starts)

    def _handle_revoked(self, revoked, *, lost: bool) -> None:
        revoked = set(revoked)
        if self._closing or not revoked:
            return
        # Records fetched for these partitions but not yet returned belong to the next owner.
        self._pending = [r for r in self._pending if r[0] not in revoked]
        resume = {
            _key(tp): pos for tp in sorted(revoked) if (pos := self._positions.get(tp)) is not None
        }
        if lost:
            log.warning(
                "partitions %s lost (evicted from group %s; a poll came too late?)",
                sorted(_key(tp) for tp in revoked),
                self.config.group,
            )
        else:
            log.info("partitions %s revoked", sorted(_key(tp) for tp in revoked))
        if lost and self._on_lost is not None:
            # Evicted: another worker may already own these partitions and resume them from
            # the last durable checkpoint, so what was applied since must be discarded, not
            # checkpointed. The callback reloads that checkpoint and says where the partitions
            # still owned resume from.
            for tp in revoked:
                self._positions.pop(tp, None)
            self._in_callback = True
            try:
                rewind = self._on_lost(dict(resume))
            except BaseException as exc:
                log.exception("lost-partitions callback %r failed", self._on_lost)
                if self._callback_error is None:
                    self._callback_error = exc
                return
            finally:
                self._in_callback = False
            self._pending = []
            for tp in list(self._positions):
                key = _key(tp)
                if rewind is not None and key in rewind:
                    self._consumer.seek(tp, rewind[key])
                    self._positions[tp] = rewind[key]
            return
        if self._on_revoke is not None:
            ok = self._call(self._on_revoke, dict(resume))
            if not ok:
                return  # keep positions: the checkpoint did not happen
        self._durable.update(resume)
        for tp in revoked:
            self._positions.pop(tp, None)

    def _call(self, callback: Callable[[Any], None], arg: Any) -> bool:
        self._in_callback = True
        try:
            callback(arg)
        except BaseException as exc:
            log.exception("rebalance callback %r failed", callback)
            if self._callback_error is None:
                self._callback_error = exc
            return False
        finally:
            self._in_callback = False
        return True

    def _raise_callback_error(self) -> None:
        if self._callback_error is not None:
            exc, self._callback_error = self._callback_error, None
            raise exc

    # ------------------------------------------------------------------ reading

    def poll_records(
        self, max_records: int | None = None, timeout_ms: int = 100
    ) -> list[SourceRecord]:
        """Up to ``max_records`` records, waiting at most about ``timeout_ms`` to fill the batch.

        Returns early when the batch is full; otherwise when the time is up (possibly with no
        records). A rebalance inside the call can make it block longer (group joins take
        seconds). Positions advance past the returned records only.

        Args:
            max_records: batch size bound (default and maximum: ``config.max_poll_records``).
            timeout_ms: time bound of the batch (0: return what is ready now).

        Returns:
            ``[(raw, "topic:partition:offset"), ...]`` in offset order within each partition.
            A null value (tombstone) is returned as ``b""`` (it will become a dead letter).

        Raises:
            Exception: whatever ``on_revoke`` / ``on_assign`` raised during this call.
        """
        self._check_open()
        limit = self.config.max_poll_records if max_records is None else int(max_records)
        if limit <= 0:
            raise ValueError(f"max_records must be positive, got {max_records!r}")
        if timeout_ms < 0:
            raise ValueError(f"timeout_ms must be >= 0, got {timeout_ms!r}")
        deadline = self._clock() + timeout_ms / 1000.0
        self._pending = []
        while True:
            remaining_ms = max(0, int((deadline - self._clock()) * 1000))
            polled = self._consumer.poll(
                timeout_ms=remaining_ms, max_records=limit - len(self._pending)
            )
            self._raise_callback_error()
            for tp, messages in polled.items():
                if tp not in self._positions:  # revoked while in flight
                    continue
                self._pending.extend((tp, m.offset, m.value) for m in messages)
            if len(self._pending) >= limit or self._clock() >= deadline:
                break
        batch, self._pending = self._pending, []
        if batch:  # records prove the broker up: no probe is due while they flow
            self._last_probe = self._clock()
            if self._down_since is not None:
                self._broker_back()
        out = []
        for tp, offset, value in batch:
            self._positions[tp] = offset + 1
            out.append(SourceRecord(value if value is not None else b"", f"{_key(tp)}:{offset}"))
        return out

    # ------------------------------------------------------------------ broker health

    def broker_up(self, *, force: bool = False) -> bool:
        """Whether the broker is reachable: records arrived, or a bootstrap broker accepted a
        TCP connection at the latest probe (at most one every ``probe_every_s``; each probe
        tries the bootstrap list with ``connect_attempt_timeout_s``, capped at 1 s per
        address; ``force`` probes now). Logs one WARNING when an outage begins and one INFO
        line when it ends."""
        now = self._clock()
        if not force and now - self._last_probe < self.config.probe_every_s:
            return self._down_since is None
        self._last_probe = now
        timeout = min(1.0, self.config.connect_attempt_timeout_s)
        reachable = any(
            _accepts_connections(server, timeout)
            for server in parse_bootstrap(self.config.bootstrap)
        )
        if reachable and self._down_since is not None:
            self._broker_back()
        elif not reachable:
            self._outage_begins(now)
        return self._down_since is None

    def _outage_begins(self, now: float) -> None:
        if self._down_since is not None:
            return
        self._down_since = now
        self.outages += 1
        log.warning(
            "broker %s unreachable: waiting for it (reconnecting with backoff up to %.0f s; "
            "positions stay at the last records read, nothing is skipped)",
            self.config.bootstrap,
            self.config.retry_backoff_max_s,
        )

    def _broker_back(self) -> None:
        assert self._down_since is not None
        log.info(
            "broker %s reachable again after %.1f s",
            self.config.bootstrap,
            self._clock() - self._down_since,
        )
        self._down_since = None

    def next_batch(self, max_records: int | None = None, timeout_ms: int = 100) -> EventBatch:
        """The next micro-batch, validated: up to ``max_records`` records parsed by the one
        wire-format parser; invalid ones become the batch's dead letters with their position
        ``"topic:partition:offset"``. An empty batch means nothing arrived in time (a topic
        never ends, so this never returns None)."""
        records = self.poll_records(max_records, timeout_ms)
        if not records:
            return EventBatch.empty()
        events, dead = parse_records(
            [r.raw for r in records],
            [r.position for r in records],
            now=time.time(),
            max_future_s=self.config.max_future_s,
            max_record_bytes=self.config.max_record_bytes,
        )
        return EventBatch.from_events(events, dead)

    # ------------------------------------------------------------------ source contract

    @property
    def key(self) -> str:
        """The source's name in checkpoint metadata: ``"kafka:TOPIC"``."""
        return f"kafka:{self.config.topic}"

    @property
    def group(self) -> str | None:
        """The consumer group (recorded in checkpoint metadata)."""
        return self.config.group

    @property
    def total(self) -> None:
        """A topic has no known end."""
        return None

    def owns(self, position_key: str) -> bool:
        """Whether a checkpoint position key (``"topic:partition"``) belongs to this topic."""
        try:
            topic, _, offset = parse_position(position_key)
        except ValueError:
            return False
        return topic == self.config.topic and offset is None

    def attach(self, listener: Any) -> None:
        """Route the rebalance hooks to ``listener`` (the pipeline): ``resume_positions()`` is
        asked at every assignment, ``on_revoke``, ``on_assign`` and ``on_lost`` as in the
        constructor. Call before the first :meth:`next_batch`. Partitions assigned directly
        (no group, or a rank of a data-parallel group) were assigned in the constructor: the
        listener hears of them here."""
        self._provider = listener.resume_positions
        self._on_revoke = listener.on_revoke
        self._on_assign = listener.on_assign
        self._on_lost = listener.on_lost
        if self._positions and (self.config.group is None or self.config.world_size > 1):
            self._on_assign({_key(tp): pos for tp, pos in sorted(self._positions.items())})

    def seek(self, positions: Mapping[str, int]) -> None:
        """Resume the given partitions at ``positions`` (``{"topic:partition": offset}``): now
        for partitions owned, at assignment for the others."""
        clean = _clean_positions(positions)
        self._durable.update(clean)
        for tp in list(self._positions):
            key = _key(tp)
            if key in clean:
                self._consumer.seek(tp, clean[key])
                self._positions[tp] = clean[key]

    def positions(self, *, resolve: bool = True) -> dict[str, int]:
        """Resume positions ``{"topic:partition": next_offset}`` of the owned partitions.

        The next offset is the one after the last record returned by :meth:`poll_records`, or
        where the partition was started. A partition that started at the beginning of the log
        and has returned nothing yet is resolved through the consumer (skipped when called
        from a rebalance callback, where that would block: a checkpoint without the entry
        starts it from the beginning, which is the same place). ``resolve=False`` skips that
        always, for callers on a hot path that must not wait on the broker.
        """
        out: dict[str, int] = {}
        for tp, pos in sorted(self._positions.items()):
            if pos is None and resolve and not self._in_callback and not self._closed:
                try:
                    pos = self._consumer.position(tp, timeout_ms=self.config.request_timeout_ms)
                except Exception as exc:  # not resolvable now; the entry stays unknown
                    log.debug("position of %s unknown: %s", _key(tp), exc)
                    pos = None
            if pos is not None:
                out[_key(tp)] = int(pos)
        return out

    def lag(self, *, refresh: bool = False) -> dict[str, int | None]:
        """Records behind the log end per owned partition (None: not known yet).

        Uses the high-water mark of the last fetch response, which is right on every broker.
        With ``refresh``, also asks the broker for its end offsets and takes the larger of the
        two (ListOffsets LATEST is exact on Apache Kafka but under-reports on Tansu).
        """
        self._check_open()
        ends: dict[Any, int] = {}
        if refresh and not self._in_callback and self._positions:
            try:
                ends = self._consumer.end_offsets(list(self._positions))
            except Exception as exc:
                log.debug("end_offsets failed: %s", exc)
        current = self.positions()
        out: dict[str, int | None] = {}
        for tp in sorted(self._positions):
            key = _key(tp)
            high = self._consumer.highwater(tp)
            if tp in ends:
                high = ends[tp] if high is None else max(high, ends[tp])
            out[key] = None if high is None or key not in current else max(0, high - current[key])
        return out

    # ------------------------------------------------------------------ committing

    def commit(self, positions: Mapping[str, int]) -> bool:
        """Commit group offsets; call only once the checkpoint holding ``positions`` is durable.

        Group offsets are for lag monitoring; resumption always follows the checkpoint. Only
        partitions this source owns are committed. Called from ``on_revoke`` the commit is sent
        asynchronously (blocking calls are not allowed there).

        Returns:
            True when committed (or sent, from a callback); False without a group, when this
            source owns none of the partitions, while the broker is unreachable (skipped, so
            the loop never stalls on it), or when the broker refused or did not answer within
            5 s (logged; e.g. a rebalance in progress).
        """
        self._check_open()
        clean = _clean_positions(positions)
        self._durable.update(clean)
        if self.config.group is None:
            return False
        from kafka import OffsetAndMetadata

        owned = {_key(tp): tp for tp in self._positions}
        offsets = {
            owned[key]: _offset_and_metadata(OffsetAndMetadata, offset)
            for key, offset in clean.items()
            if key in owned
        }
        if not offsets:
            return False
        if self._in_callback:

            def done(_offsets, response):
                if isinstance(response, Exception):
                    log.warning("group offset commit failed: %s", response)

            self._consumer.commit_async(offsets, callback=done)
            return True
        if self._down_since is not None:
            # Advisory only (the checkpoint is the truth): while the broker is away a commit
            # would stall the loop for the request timeout; the next checkpoint commits again.
            log.debug("broker down: group offset commit of %s skipped", clean)
            return False
        from kafka.errors import KafkaConnectionError, KafkaError

        try:
            self._consumer.commit(offsets, timeout_ms=min(self.config.request_timeout_ms, 5000))
        except KafkaConnectionError:
            self._outage_begins(self._clock())  # the one line of this outage
            return False
        except KafkaError as exc:
            if not self.broker_up(force=True):  # a timeout because the broker went away
                return False
            log.warning("group offset commit of %s failed: %s", clean, exc)
            return False
        return True

    def committed(self) -> dict[str, int]:
        """The group's committed offsets for the topic's partitions (for monitoring)."""
        self._check_open()
        from kafka import TopicPartition

        if self.config.group is None:
            return {}
        partitions = self._consumer.partitions_for_topic(self.config.topic) or ()
        out = {}
        for p in sorted(partitions):
            tp = TopicPartition(self.config.topic, p)
            offset = self._consumer.committed(tp)
            if offset is not None:
                out[_key(tp)] = int(offset)
        return out

    def assignment(self) -> list[str]:
        """The partitions this source owns, as ``"topic:partition"``."""
        return [_key(tp) for tp in sorted(self._positions)]

    # ------------------------------------------------------------------ lifecycle

    def _check_open(self) -> None:
        if self._closed:
            raise StreamingError("KafkaEventSource is closed")

    def close(self) -> None:
        """Leave the group and close the consumer (idempotent). Does not call ``on_revoke``:
        checkpoint (and commit) before closing."""
        if self._closed:
            return
        self._closing = True
        try:
            self._consumer.close(autocommit=False)
        finally:
            self._closed = True
            self._positions.clear()

    def __enter__(self) -> KafkaEventSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _clean_positions(positions: Mapping[str, int]) -> dict[str, int]:
    out = {}
    for key, value in dict(positions).items():
        topic, partition, offset = parse_position(str(key))
        if offset is not None:
            raise ValueError(f"position keys are 'topic:partition', got {key!r}")
        if isinstance(value, bool) or int(value) != value or int(value) < 0:
            raise ValueError(f"position of {key!r} must be a non-negative integer, got {value!r}")
        out[format_position(topic, partition)] = int(value)
    return out


def _offset_and_metadata(cls: Any, offset: int) -> Any:
    # kafka-python >= 2.1 added leader_epoch to OffsetAndMetadata.
    if "leader_epoch" in getattr(cls, "_fields", ()):
        return cls(offset, "", -1)
    return cls(offset, "")
