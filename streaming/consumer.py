"""The engine's main job: Kafka events → validation → online training → checkpoints (DESIGN §4).

:func:`run_consumer` loops ``next_batch`` → :func:`~streaming.events.parse_records` (invalid
records go to the dead-letter sink with their reason and ``"topic:partition:offset"``) →
:meth:`OnlineTrainer.learn_many <engine.online.OnlineTrainer.learn_many>` on the valid events,
and every ``checkpoint_every_events`` records or ``checkpoint_every_s`` seconds writes a
checkpoint (trainer state + resume positions + counters) and only then commits the group
offsets.

**Exactly once.** The checkpoint is the source of truth for offsets. At start the newest valid
checkpoint is restored (trainer state, dead-letter counters) and its positions are what the
source seeks to when partitions are assigned; group offsets are only for lag monitoring. An
event's effect is in a checkpoint iff its offset is below the checkpoint's position for its
partition, so a restart after ``kill -9`` re-applies exactly the events after the last durable
checkpoint. Dead letters are written to the sink *before* the checkpoint that covers them:
they are delivered at least once (a crash in between writes them again); their counters, kept
in the checkpoint, count each once.

**Rebalances.** When partitions are revoked the source calls :meth:`_Pipeline.on_revoke`, which
checkpoints synchronously before returning, so the next owner starts where this worker's state
ends. With kafka-python >= 3 that callback runs on the client's IO thread while this thread is
blocked in ``next_batch``: the trainer is quiescent (every record returned so far has been
learned), so reading its state there is safe, but the callback must not call blocking consumer
APIs — the group commit is sent asynchronously (:meth:`KafkaEventSource.commit
<streaming.kafka_io.KafkaEventSource.commit>` knows), lag is not read, and heartbeats pause
while the checkpoint is written (keep it well under ``session_timeout_ms``; a slow one is
logged).

**Several workers in one group** each keep their own checkpoint directory (a directory has one
writer) holding their own model. A partition that moves between workers must resume where its
previous owner's state ends, so each worker is also given its peers' checkpoint directories
(``peers``) and resumes a newly assigned partition from the largest position any of these
checkpoints holds for it (positions only grow, and a revoked owner checkpoints before the
join completes). A worker's checkpoints carry the positions of partitions it owned earlier,
so a position is never forgotten. Limits: the peer directories must belong to the same topic
incarnation and group, and a "zombie" worker that was evicted without noticing (a stalled
process) can still apply records the new owner also applies — Kafka has no fencing for
consumers; keep ``max_poll_interval_ms`` and the checkpoint time well apart.

**Eviction.** A worker that was evicted (its partitions are *lost*, not revoked: the group
moved on without it, e.g. after a stall longer than the session timeout) must not checkpoint
what it applied since its last checkpoint — the next owner resumes from that checkpoint and
applies those records too. :meth:`_Pipeline.on_lost` therefore reloads the newest durable
checkpoint (or the initial state) and rewinds; the worker rejoins and resumes from there.

**Back-pressure.** Records are pulled, never pushed: at most ``max_batch`` records are in
hand at a time, and the next batch is asked for only after the previous one was learned (the
client's own fetch buffer is bounded by its fetch size settings).

Example:
    >>> from engine.online import OnlineConfig, OnlineTrainer
    >>> kafka = KafkaConfig(bootstrap="127.0.0.1:9092", topic="events", group="trainer")
    >>> summary = run_consumer(kafka, OnlineTrainer(OnlineConfig()), CheckpointStore("ckpt"),
    ...                        ConsumerConfig(idle_exit_s=5.0))  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from engine.online import OnlineTrainer
from streaming.checkpoint import CheckpointStore
from streaming.events import DeadLetter, DeadLetterSink, Event, EventBatch, parse_records
from streaming.kafka_io import KafkaConfig, KafkaEventSource, parse_position
from streaming.metrics import EngineMetrics
from streaming.replay import Prequential, check_checkpoint_config, summarize_run
from streaming.serving import EmbeddingPublisher

__all__ = ["BatchReport", "ConsumerConfig", "run_consumer"]

log = logging.getLogger(__name__)

_FIRST_JOIN_GRACE_S = 30.0
_GRAPH_EVERY_S = 5.0


@dataclass(frozen=True)
class ConsumerConfig:
    """Settings of the consumer loop (validated once, immutable).

    Args:
        checkpoint_every_events: checkpoint after this many records (events + dead letters)
            since the last checkpoint.
        checkpoint_every_s: ... or when this many seconds passed and something changed.
        max_batch: records per micro-batch at most (and in hand at any time).
        batch_timeout_ms: how long to wait to fill a micro-batch.
        max_records: stop after this many records in this run (None: no limit).
        idle_exit_s: stop after this many seconds without a record (None: run until
            stopped). Counted from the latest record or partition assignment; before the
            first assignment at least 30 s are allowed (a group join can take seconds).
        lag_every_s: how often to read the consumer lag for the metrics.
        max_future_s: records timestamped more than this after now are dead letters.
        prequential: rank each event before learning it (test-then-train) and report
            HR@10 / NDCG@10 overall, per window of ``prequential_window`` events and per item
            age; the sums travel in the checkpoint, so they survive restarts.

    Raises:
        ValueError: on any invalid setting, naming it.
    """

    checkpoint_every_events: int = 10_000
    checkpoint_every_s: float = 60.0
    max_batch: int = 500
    batch_timeout_ms: int = 100
    max_records: int | None = None
    idle_exit_s: float | None = None
    lag_every_s: float = 1.0
    max_future_s: float = 86_400.0
    prequential: bool = False
    prequential_window: int = 10_000

    def __post_init__(self) -> None:
        for name in ("checkpoint_every_events", "max_batch", "prequential_window"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        value = self.batch_timeout_ms
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"batch_timeout_ms must be a non-negative integer, got {value!r}")
        value = self.max_records
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 0
        ):
            raise ValueError(f"max_records must be a non-negative integer or None, got {value!r}")
        for name in ("checkpoint_every_s", "lag_every_s", "max_future_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        value = self.idle_exit_s
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0
        ):
            raise ValueError(f"idle_exit_s must be a positive number or None, got {value!r}")


@dataclass(frozen=True)
class BatchReport:
    """What one micro-batch did (given to ``on_batch``; benchmarks measure latency with it).

    Attributes:
        records: records read.
        events: the valid events, in the order learned.
        dead_letters: the invalid records.
        applied_at: wall clock (unix s) when ``learn_many`` returned (or the batch ended).
        step_s: ``learn_many`` time (0 when nothing was learned).
        batch_s: processing time of the batch.
        stats: ``learn_many``'s return value (None when nothing was learned).
    """

    records: int
    events: list[Event]
    dead_letters: list[DeadLetter]
    applied_at: float
    step_s: float
    batch_s: float
    stats: dict[str, Any] | None = None


class _Pipeline:
    """State shared by the loop and the rebalance callbacks of one :func:`run_consumer`."""

    def __init__(
        self,
        kafka: KafkaConfig,
        trainer: OnlineTrainer,
        store: CheckpointStore,
        peers: Sequence[CheckpointStore],
        metrics: EngineMetrics,
        clock: Callable[[], float],
    ) -> None:
        self.kafka = kafka
        self.trainer = trainer
        self.store = store
        self.peers = list(peers)
        self.metrics = metrics
        self.clock = clock
        self.source: KafkaEventSource | None = None
        self.counters: Counter[str] = Counter()
        self.durable: dict[str, int] = {}  # positions of this worker's newest checkpoint
        self.has_checkpoint = False
        self.since_checkpoint = 0  # records since the newest checkpoint
        self.last_checkpoint_t = clock()
        self.last_checkpoint: dict[str, Any] | None = None
        self.seconds: Counter[str] = Counter()
        self.checkpoints = 0
        self.rebalances = 0
        self.reloads = 0
        self.assigned_at: float | None = None
        self.initial_state: dict[str, Any] | None = None  # to reload without a checkpoint
        self.prequential_window: int | None = None  # set: evaluate test-then-train
        self.evaluator: Prequential | None = None

    # ------------------------------------------------------------------ checkpoints
    def _own_positions(self, offsets: dict[str, int], where: Any) -> dict[str, int]:
        out = {}
        for key, value in offsets.items():
            try:
                topic, _, offset = parse_position(key)
            except ValueError:
                topic, offset = None, None
            if topic != self.kafka.topic or offset is not None:
                raise ValueError(
                    f"{where} holds a checkpoint of {sorted(offsets)}, not of topic "
                    f"{self.kafka.topic!r}; use another checkpoint directory"
                )
            out[key] = int(value)
        return out

    def restore(self) -> int | None:
        """Load the newest valid checkpoint into the trainer; returns its version."""
        ckpt = self.store.latest_checkpoint()
        if ckpt is None:
            self.initial_state = self.trainer.state_dict()
            self._restore_evaluator(None)
            return None
        self._adopt(ckpt)
        self.has_checkpoint = True
        created = ckpt.meta.get("created_at")
        if isinstance(created, (int, float)):
            self.metrics.restored_checkpoint(float(created))
        log.info(
            "resuming from checkpoint %d in %s at %s (%d events applied)",
            ckpt.version,
            self.store.directory,
            self.durable or "the beginning",
            self.trainer.events_applied,
        )
        return ckpt.version

    def _adopt(self, ckpt: Any) -> None:
        """Make the trainer, counters, evaluator and durable positions those of ``ckpt`` (or
        of the initial state when it is None)."""
        if ckpt is None:
            self.trainer.load_state_dict(self.initial_state)
            self.counters, self.durable = Counter(), {}
        else:
            durable = self._own_positions(ckpt.offsets, self.store.directory)
            check_checkpoint_config(ckpt, self.trainer, self.store.directory)
            self.trainer.load_state_dict(ckpt.state)
            self.counters = Counter(ckpt.meta.get("dead_letters", {}))
            self.durable = durable
        self._restore_evaluator(ckpt)

    def _restore_evaluator(self, ckpt: Any) -> None:
        if self.prequential_window is None:
            return
        state = ckpt.meta.get("prequential") if ckpt is not None else None
        self.evaluator = (
            Prequential.from_state(state) if state else Prequential(window=self.prequential_window)
        )

    def resume_positions(self) -> dict[str, int]:
        """Where newly assigned partitions start: the largest position of each partition in
        this worker's newest checkpoint and its peers' (asked by the source at every
        assignment, on the client's IO thread)."""
        out = dict(self.durable)
        for peer in self.peers:
            ckpt = peer.latest_checkpoint()
            if ckpt is None:
                continue
            for key, value in self._own_positions(ckpt.offsets, peer.directory).items():
                out[key] = max(out.get(key, value), value)
        return out

    def checkpoint(self, extra: dict[str, int] | None = None, *, why: str) -> dict[str, int]:
        """Write a checkpoint of the trainer and the positions; returns the positions."""
        assert self.source is not None
        t = time.perf_counter()
        offsets = {**self.durable, **self.source.positions(), **(extra or {})}
        summary = self.trainer.summary()
        created = time.time()
        meta = {
            "source": f"kafka:{self.kafka.topic}",
            "group": self.kafka.group,
            "reason": why,
            "created_at": created,
            "dead_letters": dict(self.counters),
            "dead_letters_total": int(sum(self.counters.values())),
            "prequential": None if self.evaluator is None else self.evaluator.state(),
            **summary,
        }
        path = self.store.save(self.trainer.state_dict(), offsets, meta)
        seconds = time.perf_counter() - t
        self.durable = offsets
        self.has_checkpoint = True
        self.since_checkpoint = 0
        self.last_checkpoint_t = self.clock()
        self.last_checkpoint = {"path": str(path), "position": dict(offsets)}
        self.seconds["checkpoint"] += seconds
        self.checkpoints += 1
        self.metrics.record_checkpoint(seconds, at=created)
        self.metrics.set_graph(self.trainer.graph.num_nodes, summary["graph_nnz"])
        log.debug("checkpoint (%s) at %s in %.3f s", why, offsets, seconds)
        return offsets

    def checkpoint_and_commit(self, *, why: str) -> None:
        assert self.source is not None
        offsets = self.checkpoint(why=why)
        self.source.commit(offsets)  # group offsets only once the checkpoint is durable

    def dirty(self) -> bool:
        assert self.source is not None
        if self.since_checkpoint or not self.has_checkpoint:
            return True
        return any(self.durable.get(k) != v for k, v in self.source.positions().items())

    # ------------------------------------------------------------------ rebalance callbacks
    def on_revoke(self, positions: dict[str, int]) -> None:
        """Flush before partitions go: checkpoint synchronously, then commit (async).

        Runs on kafka-python's IO thread while the loop's thread is blocked in
        ``next_batch``; no blocking consumer call may happen here (see the module docstring).
        """
        assert self.source is not None
        self.rebalances += 1
        self.metrics.record_rebalance()
        t = time.perf_counter()
        offsets = self.checkpoint(positions, why="revoke")
        self.source.commit(offsets)  # sent asynchronously from a callback
        took = time.perf_counter() - t
        limit = self.kafka.session_timeout_ms / 1000.0 / 3
        if took > limit:
            log.warning(
                "checkpoint on partition revocation took %.1f s (heartbeats pause meanwhile; "
                "keep it under a third of session_timeout_ms = %.1f s)",
                took,
                self.kafka.session_timeout_ms / 1000.0,
            )
        log.info("flushed and checkpointed %s before revocation", positions)

    def on_lost(self, positions: dict[str, int]) -> dict[str, int]:
        """Evicted from the group: reload the newest durable checkpoint (or the initial state)
        so the events applied since are not kept — the partition's next owner resumes from
        that checkpoint and applies them. Returns the durable positions to rewind the
        partitions still owned to. Runs on the client's IO thread (the trainer is quiescent).
        """
        self.rebalances += 1
        self.metrics.record_rebalance()
        discarded = self.since_checkpoint
        ckpt = self.store.latest_checkpoint()
        self._adopt(ckpt)
        self.since_checkpoint = 0
        self.reloads += 1
        log.warning(
            "partitions %s lost: discarded %d records applied since the last checkpoint "
            "(their next owner applies them) and reloaded %s",
            sorted(positions),
            discarded,
            "checkpoint " + str(ckpt.version) if ckpt is not None else "the initial state",
        )
        return dict(self.durable)

    def on_assign(self, starts: dict[str, int | None]) -> None:
        self.assigned_at = self.clock()


def run_consumer(
    kafka: KafkaConfig,
    trainer: OnlineTrainer,
    store: CheckpointStore,
    config: ConsumerConfig | None = None,
    *,
    dead_letters: DeadLetterSink | None = None,
    stop: threading.Event | None = None,
    metrics: EngineMetrics | None = None,
    peers: Sequence[CheckpointStore] = (),
    on_batch: Callable[[BatchReport], None] | None = None,
    publisher: EmbeddingPublisher | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, Any]:
    """Consume ``kafka.topic`` into ``trainer`` until stopped; return a summary.

    The source is built here (not passed in) so that it seeks to the checkpoint's positions:
    the checkpoint, not the consumer group, says where each partition resumes.

    Args:
        kafka: the source settings (topic, group, timeouts).
        trainer: restored in place from the newest valid checkpoint in ``store`` if any (its
            config must equal the checkpoint's).
        store: this worker's checkpoint directory.
        config: loop settings (default :class:`ConsumerConfig`).
        dead_letters: sink for invalid records (they are counted either way).
        stop: set it (e.g. from a SIGTERM handler) for a clean stop: final checkpoint,
            commit, close.
        metrics: where to record metrics (default: a private :class:`EngineMetrics`); its
            periodic log line is written every ``metrics.log_every_s``.
        peers: checkpoint stores of the other workers of the group (read only), see the
            module docstring.
        on_batch: called with a :class:`BatchReport` after each non-empty micro-batch.
        publisher: publishes the trainer's embeddings to Redis (after the restore, every
            ``publish_every_s`` while events arrive, and at the stop); closed here.
        clock: monotonic clock, injectable.

    Returns:
        :func:`~streaming.replay.summarize_run`'s summary (``start_position`` /
        ``end_position`` are ``{"topic:partition": offset}``) plus ``"records"``,
        ``"checkpoints"``, ``"rebalances"`` and ``"stopped_by"`` (``"stop"``, ``"idle"`` or
        ``"max_records"``).

    Raises:
        ValueError: the checkpoint belongs to another topic or another trainer config.
        ServiceUnavailableError: the broker stayed unreachable for ``kafka.connect_timeout_s``.
        Exception: whatever training, the sink or a rebalance callback raised; no final
            checkpoint is written then (the newest durable one stays the resume point).
    """
    config = config or ConsumerConfig()
    stop = stop if stop is not None else threading.Event()
    metrics = metrics if metrics is not None else EngineMetrics()
    started = time.perf_counter()
    pipe = _Pipeline(kafka, trainer, store, peers, metrics, clock)
    if config.prequential:
        pipe.prequential_window = config.prequential_window
    resumed = pipe.restore()
    start_positions = dict(pipe.durable)
    source = KafkaEventSource(
        kafka,
        positions=pipe.resume_positions,
        on_revoke=pipe.on_revoke,
        on_assign=pipe.on_assign,
        on_lost=pipe.on_lost,
    )
    pipe.source = source

    def reflected() -> dict[str, int]:
        """Next offset per partition that the trainer's state reflects (as a checkpoint
        would record it; never blocks on the consumer)."""
        return {**pipe.durable, **source.positions(resolve=False)}

    watermark: float | None = None
    if publisher is not None and trainer.num_items:
        publisher.observe(trainer, offsets=reflected(), force=True)  # serve the restored state
    records_total = events_total = 0
    loss = math.nan
    stopped_by = "stop"
    t_start = clock()
    last_record_t = t_start
    last_lag_t = last_graph_t = -math.inf
    metrics.maybe_log(log)
    try:
        while not stop.is_set():
            limit = config.max_batch
            if config.max_records is not None:
                limit = min(limit, config.max_records - records_total)
                if limit <= 0:
                    stopped_by = "max_records"
                    break
            records = source.next_batch(limit, timeout_ms=config.batch_timeout_ms)
            now = clock()
            if records:
                t0 = time.perf_counter()
                events, dead = parse_records(
                    [r.raw for r in records],
                    [r.position for r in records],
                    now=time.time(),
                    max_future_s=config.max_future_s,
                )
                if dead:
                    pipe.counters.update(d.reason for d in dead)
                    if dead_letters is not None:
                        dead_letters.write(dead)
                stats, step_s = None, 0.0
                if events:
                    batch = EventBatch.from_events(events)
                    evaluator = pipe.evaluator
                    if evaluator is not None:
                        te = time.perf_counter()
                        evaluator.rank_and_update(trainer, batch.users, batch.items)
                        pipe.seconds["eval"] += time.perf_counter() - te
                        metrics.set_prequential(evaluator.hits, evaluator.ndcg, evaluator.count)
                    t1 = time.perf_counter()
                    stats = trainer.learn_many(batch.users, batch.items, batch.times, batch.weights)
                    step_s = time.perf_counter() - t1
                    for key, value in stats["seconds"].items():
                        pipe.seconds[key] += value
                    if not math.isnan(stats["loss"]):
                        loss = stats["loss"]
                applied_at = time.time()
                batch_s = time.perf_counter() - t0
                records_total += len(records)
                events_total += len(events)
                pipe.since_checkpoint += len(records)
                metrics.record_batch(
                    records=len(records),
                    events=len(events),
                    dead_reasons=[d.reason for d in dead],
                    batch_s=batch_s,
                    step_s=step_s if events else None,
                    event_times=[e.timestamp for e in events],
                    applied_at=applied_at,
                )
                metrics.graph_nodes.set(trainer.graph.num_nodes)
                if events:
                    newest = float(batch.times.max())
                    watermark = newest if watermark is None else max(watermark, newest)
                if publisher is not None:
                    publisher.observe(
                        trainer,
                        batch.users if events else (),
                        watermark=watermark,
                        offsets=reflected(),
                    )
                if on_batch is not None:
                    on_batch(
                        BatchReport(len(records), events, dead, applied_at, step_s, batch_s, stats)
                    )
                last_record_t = now = clock()
            elif publisher is not None:  # a due publish of the last batches' users
                publisher.observe(trainer, watermark=watermark, offsets=reflected())
            if not records and config.idle_exit_s is not None:
                since = max(last_record_t, pipe.assigned_at or t_start)
                allowed = config.idle_exit_s
                if pipe.assigned_at is None:
                    allowed = max(allowed, _FIRST_JOIN_GRACE_S)
                if now - since >= allowed:
                    stopped_by = "idle"
                    break
            if pipe.since_checkpoint >= config.checkpoint_every_events or (
                now - pipe.last_checkpoint_t >= config.checkpoint_every_s and pipe.dirty()
            ):
                pipe.checkpoint_and_commit(why="periodic")
            if now - last_lag_t >= config.lag_every_s:
                metrics.set_lag(source.lag())
                last_lag_t = now
            if now - last_graph_t >= _GRAPH_EVERY_S:  # O(nnz): not per batch
                metrics.set_graph(trainer.graph.num_nodes, trainer.summary()["graph_nnz"])
                last_graph_t = now
            metrics.maybe_log(log)
        if pipe.dirty():
            pipe.checkpoint_and_commit(why=stopped_by)
        metrics.set_lag(source.lag())
    finally:
        final_offsets = reflected()
        source.close()
        if publisher is not None:
            publisher.close(trainer, watermark=watermark, offsets=final_offsets)
    log.info("stopped (%s): %s", stopped_by, metrics.log_line())
    summary = summarize_run(
        trainer,
        source=f"kafka:{kafka.topic}",
        events=events_total,
        start_position=start_positions,
        end_position=dict(pipe.durable),
        resumed_from_version=resumed,
        total_s=time.perf_counter() - started,
        seconds=pipe.seconds,
        dead_letters=pipe.counters,
        checkpoint=pipe.last_checkpoint,
        loss=loss,
        prequential=None if pipe.evaluator is None else pipe.evaluator.summary(),
    )
    summary.update(
        records=records_total,
        checkpoints=pipe.checkpoints,
        rebalances=pipe.rebalances,
        stopped_by=stopped_by,
    )
    return summary
