"""Prometheus metrics of one engine instance, an optional HTTP exporter and a periodic log line.

Every :class:`EngineMetrics` owns its own :class:`prometheus_client.CollectorRegistry` (never
the process-global one), so tests and benchmarks can create as many engines as they like.
Names carry the ``sevo_`` prefix; counters get Prometheus' ``_total`` suffix on the wire:

=================================== =========================================================
metric                              meaning
=================================== =========================================================
``sevo_events_applied_total``       events learned by this process (``learn_many`` returned)
``sevo_records_consumed_total``     records read from the source (events + dead letters)
``sevo_dead_letters_total{reason}`` invalid records, by reason code
``sevo_consumer_lag{partition}``    records behind the log end, per owned partition
``sevo_broker_up``                  1 while the Kafka broker is reachable, 0 during an outage
                                    (NaN: no broker, e.g. ``sevo replay``)
``sevo_batch_seconds``              processing time of one micro-batch (parse, dead letters,
                                    learn; not the wait for records)
``sevo_step_seconds``               time of one ``learn_many`` call (graph + state + training)
``sevo_event_freshness_seconds``    wall clock when an event's effect is in the trainer minus
                                    the event's own timestamp (meaningful for live streams)
``sevo_checkpoints_total``          checkpoints written
``sevo_checkpoint_seconds``         time to write one checkpoint
``sevo_checkpoint_age_seconds``     seconds since the newest durable checkpoint (NaN: none yet)
``sevo_checkpoint_failures_total``  checkpoint writes that failed (directory full or read-only)
``sevo_unsaved_records``            records applied since the newest durable checkpoint
``sevo_rebalances_total``           partition revocations handled (flush + checkpoint)
``sevo_graph_nodes``                rows of the item graph (items + padding)
``sevo_graph_nnz``                  stored entries of the item graph (both directions)
``sevo_prequential_hr10``           test-then-train HR@10 so far (``sevo run --prequential``);
                                    ``sevo_prequential_ndcg10`` likewise
``sevo_publishes_total{kind,        publishes to Redis: kind full|delta|none, outcome
outcome}``                          ok|error|paused
``sevo_publish_seconds{kind}``      time of one successful publish (rows + user vectors)
``sevo_published_rows_total{kind}`` item rows written to Redis
``sevo_redis_up``                   1 after a successful publish, 0 after a failed one
``sevo_served_version``             version (and ``sevo_served_delta_seq``: delta sequence)
                                    of the snapshot this engine published last
``sevo_publish_age_seconds``        seconds since the last successful publish (NaN: none)
``sevo_quality_guard_paused``       1 while the quality guard holds publishing paused
``sevo_quality_live_ndcg10``        the quality guard's NDCG@10 of the newest window of events
                                    (``sevo_quality_reference_ndcg10``: its reference; NaN:
                                    none yet)
``sevo_quality_rollbacks_total``    rollbacks of the served snapshot by the quality guard
=================================== =========================================================

Counters count this process only (Prometheus handles restarts); the trainer's lifetime totals
live in the checkpoint (``sevo inspect``).

Example:
    >>> m = EngineMetrics()
    >>> m.record_batch(records=3, events=2, dead_reasons=["invalid_json"], batch_s=0.01,
    ...                step_s=0.008)
    >>> m.value("events_applied_total"), m.value("dead_letters_total", reason="invalid_json")
    (2.0, 1.0)
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter as _Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

__all__ = ["EngineMetrics"]

log = logging.getLogger(__name__)

_SECONDS_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
_FRESHNESS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600)


class EngineMetrics:
    """The metrics of one engine (consumer) instance.

    Thread-safe (prometheus-client metrics are); the exporter serves them from its own thread.

    Args:
        namespace: metric name prefix.
        log_every_s: period of :meth:`maybe_log` (one INFO line per period).
        clock: wall clock (unix seconds), injectable for tests.
    """

    def __init__(
        self,
        *,
        namespace: str = "sevo",
        log_every_s: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not log_every_s > 0:
            raise ValueError(f"log_every_s must be > 0, got {log_every_s!r}")
        self.registry = CollectorRegistry(auto_describe=True)
        self.namespace = namespace
        self.log_every_s = float(log_every_s)
        self._clock = clock
        kw: dict[str, Any] = {"namespace": namespace, "registry": self.registry}
        self.events_applied = Counter("events_applied", "Events learned by this process", **kw)
        self.records_consumed = Counter(
            "records_consumed", "Records read from the source (events + dead letters)", **kw
        )
        self.dead_letters = Counter(
            "dead_letters", "Invalid records sent to the dead-letter sink", ["reason"], **kw
        )
        self.consumer_lag = Gauge(
            "consumer_lag", "Records behind the log end per owned partition", ["partition"], **kw
        )
        self.batch_seconds = Histogram(
            "batch_seconds",
            "Processing time of one micro-batch (not the wait for records)",
            buckets=_SECONDS_BUCKETS,
            **kw,
        )
        self.step_seconds = Histogram(
            "step_seconds", "Time of one learn_many call", buckets=_SECONDS_BUCKETS, **kw
        )
        self.event_freshness_seconds = Histogram(
            "event_freshness_seconds",
            "Wall clock when an event's effect is in the trainer minus the event time",
            buckets=_FRESHNESS_BUCKETS,
            **kw,
        )
        self.checkpoints = Counter("checkpoints", "Checkpoints written", **kw)
        self.checkpoint_seconds = Histogram(
            "checkpoint_seconds", "Time to write one checkpoint", buckets=_SECONDS_BUCKETS, **kw
        )
        self.checkpoint_age_seconds = Gauge(
            "checkpoint_age_seconds", "Seconds since the newest durable checkpoint", **kw
        )
        self.checkpoint_age_seconds.set_function(self._checkpoint_age)
        self.rebalances = Counter("rebalances", "Partition revocations handled", **kw)
        self.graph_nodes = Gauge("graph_nodes", "Rows of the item graph", **kw)
        self.graph_nnz = Gauge("graph_nnz", "Stored entries of the item graph", **kw)
        self.prequential_hr = Gauge(
            "prequential_hr10", "Test-then-train HR@10 over all events ranked", **kw
        )
        self.prequential_ndcg = Gauge(
            "prequential_ndcg10", "Test-then-train NDCG@10 over all events ranked", **kw
        )
        self.publishes = Counter(
            "publishes", "Publishes to Redis by kind and outcome", ["kind", "outcome"], **kw
        )
        self.publish_seconds = Histogram(
            "publish_seconds",
            "Time of one successful publish",
            ["kind"],
            buckets=_SECONDS_BUCKETS,
            **kw,
        )
        self.published_rows = Counter(
            "published_rows", "Item rows written to Redis", ["kind"], **kw
        )
        self.checkpoint_failures = Counter(
            "checkpoint_failures", "Checkpoint writes that failed (full or read-only)", **kw
        )
        self.unsaved_records = Gauge(
            "unsaved_records", "Records applied since the newest durable checkpoint", **kw
        )
        self.broker_up = Gauge(
            "broker_up", "1 while the Kafka broker is reachable, 0 during an outage", **kw
        )
        self.broker_up.set(math.nan)
        self.redis_up = Gauge("redis_up", "1 after a successful publish, 0 after a failure", **kw)
        self.served_version = Gauge("served_version", "Version this engine published last", **kw)
        self.served_delta_seq = Gauge(
            "served_delta_seq", "Delta sequence this engine published last", **kw
        )
        self.publish_age_seconds = Gauge(
            "publish_age_seconds", "Seconds since the last successful publish", **kw
        )
        self.publish_age_seconds.set_function(self._publish_age)
        self.quality_guard_paused = Gauge(
            "quality_guard_paused", "1 while the quality guard holds publishing paused", **kw
        )
        self.quality_live = Gauge(
            "quality_live_ndcg10", "Quality guard: NDCG@10 of the newest window of events", **kw
        )
        self.quality_reference = Gauge(
            "quality_reference_ndcg10", "Quality guard: the reference NDCG@10", **kw
        )
        self.quality_live.set(math.nan)
        self.quality_reference.set(math.nan)
        self.quality_rollbacks = Counter(
            "quality_rollbacks", "Rollbacks of the served snapshot by the quality guard", **kw
        )
        self._last_publish: float | None = None
        self._redis_down: bool | None = None  # None: never published
        self._last_checkpoint: float | None = None
        self._lag_partitions: set[str] = set()
        self._lock = threading.Lock()
        self._server: Any = None
        self._server_thread: threading.Thread | None = None
        self._last_log: tuple[float, float, float, float] | None = None  # t, events, n, sum

    # ------------------------------------------------------------------ recording
    def record_batch(
        self,
        *,
        records: int,
        events: int,
        dead_reasons: Iterable[str] = (),
        batch_s: float,
        step_s: float | None = None,
        event_times: Iterable[float] | None = None,
        applied_at: float | None = None,
    ) -> None:
        """Count one processed micro-batch.

        Args:
            records: records read (events + dead letters).
            events: events learned.
            dead_reasons: the reason code of every dead letter of the batch.
            batch_s: processing time of the batch.
            step_s: ``learn_many`` time (None when nothing was learned).
            event_times: the learned events' timestamps (unix s), for the freshness histogram.
            applied_at: wall clock when ``learn_many`` returned (default: now).
        """
        self.records_consumed.inc(records)
        if events:
            self.events_applied.inc(events)
        for reason, n in _Counter(dead_reasons).items():
            self.dead_letters.labels(reason=reason).inc(n)
        self.batch_seconds.observe(batch_s)
        if step_s is not None:
            self.step_seconds.observe(step_s)
        if event_times is not None:
            now = self._clock() if applied_at is None else applied_at
            for t in event_times:
                self.event_freshness_seconds.observe(max(0.0, now - t))

    def record_checkpoint(self, seconds: float, *, at: float | None = None) -> None:
        """A checkpoint became durable ``seconds`` after it was started."""
        self.checkpoints.inc()
        self.checkpoint_seconds.observe(seconds)
        with self._lock:
            self._last_checkpoint = self._clock() if at is None else at

    def restored_checkpoint(self, created: float) -> None:
        """The engine resumed from a checkpoint written at ``created`` (unix s)."""
        with self._lock:
            self._last_checkpoint = created

    def set_prequential(self, hits: float, ndcg: float, count: int) -> None:
        """Overall test-then-train HR@10 / NDCG@10 from the evaluator's sums."""
        if count:
            self.prequential_hr.set(hits / count)
            self.prequential_ndcg.set(ndcg / count)

    def record_publish(self, outcome: str, result: Any = None) -> None:
        """Count one publish attempt (``outcome`` ok|error|paused); ``result`` is the
        :class:`~streaming.serving.PublishResult` of a successful one."""
        kind = result.kind if result is not None else "none"
        self.publishes.labels(kind=kind, outcome=outcome).inc()
        if outcome == "error":
            self.redis_up.set(0)
            self._redis_down = True
        elif outcome == "ok" and result is not None:
            self.redis_up.set(1)
            self._redis_down = False
            self.publish_seconds.labels(kind=kind).observe(result.seconds)
            self.published_rows.labels(kind=kind).inc(result.rows)
            self.served_version.set(result.version)
            self.served_delta_seq.set(result.seq)
            with self._lock:
                self._last_publish = self._clock()

    def _publish_age(self) -> float:
        with self._lock:
            last = self._last_publish
        return math.nan if last is None else max(0.0, self._clock() - last)

    def record_quality(
        self, *, live: float | None, reference: float | None, paused: bool, rollback: bool = False
    ) -> None:
        """The quality guard's view (:mod:`streaming.serving.guard`): the newest window's
        NDCG@10, the reference (None: none yet), whether it holds publishing paused, and
        whether it just rolled the served snapshot back."""
        self.quality_live.set(math.nan if live is None else live)
        self.quality_reference.set(math.nan if reference is None else reference)
        self.quality_guard_paused.set(1 if paused else 0)
        if rollback:
            self.quality_rollbacks.inc()

    def record_checkpoint_failure(self) -> None:
        self.checkpoint_failures.inc()

    def set_unsaved(self, records: int) -> None:
        self.unsaved_records.set(records)

    def set_broker_up(self, up: bool) -> None:
        self.broker_up.set(1 if up else 0)

    def record_rebalance(self) -> None:
        self.rebalances.inc()

    def set_lag(self, lag: Mapping[str, int | None]) -> None:
        """Per-partition lag (None: unknown, not exported); partitions no longer owned vanish."""
        known = {p: int(v) for p, v in lag.items() if v is not None}
        with self._lock:
            for gone in self._lag_partitions - set(known):
                self.consumer_lag.remove(gone)
            for partition, value in known.items():
                self.consumer_lag.labels(partition=partition).set(value)
            self._lag_partitions = set(known)

    def set_graph(self, nodes: int, nnz: int) -> None:
        self.graph_nodes.set(nodes)
        self.graph_nnz.set(nnz)

    def _checkpoint_age(self) -> float:
        with self._lock:
            last = self._last_checkpoint
        return math.nan if last is None else max(0.0, self._clock() - last)

    # ------------------------------------------------------------------ reading
    def value(self, name: str, **labels: str) -> float | None:
        """The current value of one sample, e.g. ``value("dead_letters_total", reason="x")``
        (the name without the namespace prefix); None when it does not exist."""
        return self.registry.get_sample_value(f"{self.namespace}_{name}", labels or None)

    def total_lag(self) -> int | None:
        with self._lock:
            partitions = set(self._lag_partitions)
        if not partitions:
            return None
        return int(sum(self.value("consumer_lag", partition=p) or 0 for p in partitions))

    def _totals(self) -> tuple[float, float, float, float]:
        return (
            time.monotonic(),
            self.value("events_applied_total") or 0.0,
            self.value("step_seconds_count") or 0.0,
            self.value("step_seconds_sum") or 0.0,
        )

    def log_line(self) -> str:
        """One line: applied events and rate since the previous line, dead letters, lag,
        mean step time, checkpoint age and graph size."""
        now, applied, n, total = current = self._totals()
        prev = self._last_log or (now, 0.0, 0.0, 0.0)
        self._last_log = current
        dt = now - prev[0]
        rate = (applied - prev[1]) / dt if dt > 0 else math.nan
        steps = n - prev[2]
        step_ms = 1000 * (total - prev[3]) / steps if steps else math.nan
        dead = sum(
            s.value
            for metric in self.dead_letters.collect()
            for s in metric.samples
            if s.name.endswith("_total")
        )
        lag = self.total_lag()
        age = self._checkpoint_age()
        return (
            f"applied {int(applied)} events ({rate:.0f}/s), dead letters {int(dead)}, "
            f"lag {'?' if lag is None else lag}, step {step_ms:.1f} ms, "
            f"checkpoint age {'-' if math.isnan(age) else f'{age:.1f} s'}, graph "
            f"{int(self.value('graph_nodes') or 0)} nodes / {int(self.value('graph_nnz') or 0)} nnz"
            f"{self._serving_note()}"
        )

    def _serving_note(self) -> str:
        """``", served v12.3 0.4 s ago"`` (plus ``", REDIS DOWN"`` after a failed publish);
        empty for engines that never tried to publish."""
        if self._redis_down is None:
            return ""
        note = ", nothing served yet"
        age = self._publish_age()
        if not math.isnan(age):
            version = int(self.value("served_version") or 0)
            seq = int(self.value("served_delta_seq") or 0)
            note = f", served v{version}.{seq} {age:.1f} s ago"
        return note + (", REDIS DOWN" if self._redis_down else "")

    def maybe_log(self, logger: logging.Logger = log) -> bool:
        """Log :meth:`log_line` at INFO if ``log_every_s`` passed since the last one."""
        if self._last_log is None:
            self._last_log = self._totals()
            return False
        if time.monotonic() - self._last_log[0] < self.log_every_s:
            return False
        logger.info("%s", self.log_line())
        return True

    # ------------------------------------------------------------------ exporter
    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Serve ``/metrics`` over HTTP on ``host:port`` from a daemon thread; returns the
        port (useful with ``port=0``, which picks a free one)."""
        if self._server is not None:
            raise RuntimeError("the metrics exporter is already running")
        server, thread = start_http_server(port, addr=host, registry=self.registry)
        self._server, self._server_thread = server, thread
        actual = int(server.server_port)
        log.info("metrics on http://%s:%d/metrics", host, actual)
        return actual

    def close(self) -> None:
        """Stop the exporter (idempotent)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            if self._server_thread is not None:
                self._server_thread.join(5)
            self._server = self._server_thread = None

    def __enter__(self) -> EngineMetrics:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
