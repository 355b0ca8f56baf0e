"""The online pipeline: one loop from any source into the trainer, with recovery in one place.

``sevo replay`` (a log file or named data set, :class:`~streaming.sources.log.LogSource`) and
``sevo run`` (a Kafka topic, :class:`~streaming.sources.kafka.KafkaEventSource`) build the same
:class:`Pipeline` and differ only in their source. Per micro-batch:

    source.next_batch() → dead letters to the sink (with their reason) → prequential ranking
    (optional: test, then train) → ``trainer.learn_many`` → metrics → hand-off to the Redis
    publisher → checkpoint when due → commit the source's offsets after the checkpoint

**Sources** (:mod:`streaming.sources`) yield validated :class:`~streaming.events.EventBatch`es
(events plus the dead letters met while reading them), report resume positions
``{key: next_position}`` after the last batch, and can seek. A finite source returns ``None``
at its end; a live one returns an empty batch when nothing arrived in time.

**Exactly once.** The checkpoint is the source of truth for positions. At start the newest
valid checkpoint is restored (trainer state, dead-letter counters, prequential sums) and the
source seeks to its positions; an event's effect is in a checkpoint iff its position is below
the checkpoint's, so a restart after ``kill -9`` re-applies exactly the events after the last
durable checkpoint. Offsets are committed to the source (Kafka group offsets, for lag
monitoring) only after the checkpoint holding them is durable. Dead letters are written to the
sink *before* the checkpoint that covers them: delivered at least once, counted once.

**Rebalances** (Kafka). When partitions are revoked the source calls :meth:`Pipeline.on_revoke`
on the client's IO thread while the loop is blocked in ``next_batch`` (the trainer is
quiescent): it checkpoints synchronously and commits asynchronously, so the next owner starts
where this worker's state ends. When partitions are *lost* (this worker was evicted),
:meth:`Pipeline.on_lost` reloads the newest durable checkpoint instead, because the next owner
resumes from it and applies the records since. Several workers of one group keep their own
checkpoint directories; ``peers`` are the others' (read only): a partition that moves here
resumes from the largest position any of them holds. A "zombie" worker that was evicted
without noticing can still apply records the new owner also applies — Kafka has no fencing for
consumers; keep ``max_poll_interval_ms`` and the checkpoint time well apart.

**Back-pressure.** Records are pulled, never pushed: at most ``max_batch`` are in hand, and
the next batch is asked for only after the previous one was learned.

Example:
    >>> from engine.online import OnlineConfig, OnlineTrainer
    >>> from streaming.sources import LogSource
    >>> pipeline = Pipeline(OnlineTrainer(OnlineConfig()), config=PipelineConfig.for_replay())
    >>> summary = pipeline.run(LogSource("ml-100k", limit=5000))  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from engine.online import OnlineTrainer
from engine.prequential import Prequential
from sevo_common.memory import release_free_memory
from streaming.checkpoint import Checkpoint, CheckpointStore, parse_checkpoint
from streaming.config import PipelineConfig
from streaming.errors import CheckpointWriteError
from streaming.events import DeadLetterSink, EventBatch
from streaming.metrics import EngineMetrics
from streaming.retry import ExponentialBackoff
from streaming.serving import EmbeddingPublisher
from streaming.sources import EventSource
from streaming.timeseries import MetricsSeries

__all__ = ["BatchReport", "Pipeline", "PipelineConfig", "check_checkpoint_config"]

#: Micro-batches between two returns of free heap memory to the OS (a trim takes ~1–5 ms).
_TRIM_EVERY_BATCHES = 100

log = logging.getLogger(__name__)

_FIRST_JOIN_GRACE_S = 30.0
_GRAPH_EVERY_S = 5.0
#: Delay before retrying a checkpoint the directory refused: 1 s, doubling up to a minute.
_CHECKPOINT_RETRY = ExponentialBackoff(1.0, 2.0, 60.0)


@dataclass(frozen=True)
class BatchReport:
    """What one micro-batch did (given to ``on_batch``; benchmarks measure latency with it).

    Attributes:
        batch: the validated batch (events in the order learned, and its dead letters).
        applied_at: wall clock (unix s) when ``learn_many`` returned (or the batch ended).
        step_s: ``learn_many`` time (0 when nothing was learned).
        batch_s: processing time of the batch.
        stats: ``learn_many``'s return value (None when nothing was learned).
    """

    batch: EventBatch
    applied_at: float
    step_s: float
    batch_s: float
    stats: dict[str, Any] | None = None


def check_checkpoint_config(ckpt: Checkpoint, trainer: OnlineTrainer, directory: Any) -> None:
    """Refuse a checkpoint written with another trainer config (one clear line, the keys).

    Raises:
        ValueError: naming the settings that differ.
    """
    saved, mine = ckpt.state.get("config"), trainer.config.to_dict()
    if saved != mine:
        saved = saved if isinstance(saved, dict) else {}
        diff = sorted(k for k in set(saved) | set(mine) if saved.get(k) != mine.get(k))
        raise ValueError(
            f"the checkpoint in {directory} was written with other "
            f"settings ({', '.join(diff)}); use the same settings or another directory"
        )


class Pipeline:
    """Source → validation → (prequential) → learning → publishing → checkpoints.

    Args:
        trainer: restored in place from the newest valid checkpoint in ``store`` if any (its
            config must equal the checkpoint's).
        store: this worker's checkpoint directory; ``None`` = no checkpoints, no resume.
        config: loop settings (default :class:`PipelineConfig`).
        dead_letters: sink for invalid records (they are counted either way).
        metrics: where to record metrics (default: a private :class:`EngineMetrics`); its
            periodic log line is written every ``metrics.log_every_s``.
        publisher: publishes the trainer's embeddings to Redis (after the restore, every
            ``publish_every_s`` while events arrive, and at the stop); closed by :meth:`run`.
        peers: checkpoint stores of the other workers of a Kafka group (read only).
        on_batch: called with a :class:`BatchReport` after each non-empty micro-batch.
        clock: monotonic clock, injectable.
    """

    def __init__(
        self,
        trainer: OnlineTrainer,
        store: CheckpointStore | None = None,
        config: PipelineConfig | None = None,
        *,
        dead_letters: DeadLetterSink | None = None,
        metrics: EngineMetrics | None = None,
        publisher: EmbeddingPublisher | None = None,
        peers: Sequence[CheckpointStore] = (),
        on_batch: Callable[[BatchReport], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.trainer = trainer
        self.store = store
        self.config = config if config is not None else PipelineConfig()
        self.dead_letters = dead_letters
        self.metrics = metrics if metrics is not None else EngineMetrics()
        self.publisher = publisher
        if getattr(publisher, "guard", None) is not None and not self.config.prequential:
            log.warning(
                "the quality guard judges the prequential NDCG@10 and prequential evaluation "
                "is off: the guard never trips (run with prequential on)"
            )
        self.peers = list(peers)
        self.on_batch = on_batch
        self.clock = clock
        self.source: EventSource | None = None
        self.counters: Counter[str] = Counter()  # dead letters by reason, all runs
        self.durable: dict[str, int] = {}  # positions of this worker's newest checkpoint
        self.has_checkpoint = False
        self.since_checkpoint = 0  # records since the newest checkpoint
        self.checkpoint_failures = 0  # failed checkpoint attempts in a row
        self._checkpoint_retry_at = -math.inf
        self.last_checkpoint_t = clock()
        self.last_checkpoint: dict[str, Any] | None = None
        self.seconds: Counter[str] = Counter()
        self.checkpoints = 0
        self.rebalances = 0
        self.reloads = 0
        self.assigned_at: float | None = None
        self.initial_state: dict[str, Any] | None = None  # to reload without a checkpoint
        self.evaluator: Prequential | None = None
        self.records = 0  # this run
        self.events = 0  # this run
        self.batches = 0  # this run
        self.loss = math.nan
        self.watermark: float | None = None
        self._warned_all_dead = False
        self._last_lag_t = self._last_graph_t = -math.inf
        # the run's metrics time series (metrics.jsonl next to the checkpoints)
        self.timeseries = MetricsSeries(store.directory) if store is not None else None
        # Data parallel: the trainer's group. Rank 0 alone holds the checkpoint directory and
        # decides when to checkpoint; every rank joins each step's exchanges.
        self.group = trainer.collective
        if self.group.distributed and (store is None) != (self.group.rank != 0):
            raise ValueError("in a data-parallel group exactly rank 0 holds the checkpoint store")
        self.group_steps = 0  # learn steps of the group (data parallel)
        self.step_log = None  # file object of --step-log (data parallel)

    # ------------------------------------------------------------------ checkpoints
    def _own_positions(self, offsets: Mapping[str, int], where: Any) -> dict[str, int]:
        assert self.source is not None
        foreign = sorted(k for k in offsets if not self.source.owns(k))
        if foreign:
            raise ValueError(
                f"{where} holds a checkpoint of {sorted(offsets)}, not of {self.source.key}; "
                "use another checkpoint directory"
            )
        return {k: int(v) for k, v in offsets.items()}

    def restore(self) -> int | None:
        """Load the newest valid checkpoint into the trainer; returns its version. In a
        data-parallel group rank 0 reads it and broadcasts its bytes to the other ranks."""
        if self.group.distributed:
            found = self.store.latest_payload() if self.store is not None else None
            mine = None if self.group.rank else (found[1] if found else b"")
            blob = self.group.broadcast_bytes(mine)  # b"": rank 0 has no checkpoint
            ckpt = parse_checkpoint(blob, found[0] if found else Path("rank-0")) if blob else None
        else:
            ckpt = None if self.store is None else self.store.latest_checkpoint()
        if ckpt is None:
            # kept to reload after lost partitions (only a checkpointing worker needs it)
            keep = self.store is not None or self.group.distributed
            self.initial_state = self.trainer.state_dict() if keep else None
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
            self.store.directory if self.store is not None else "rank 0's directory",
            self.durable or "the beginning",
            self.trainer.events_applied,
        )
        return ckpt.version

    def _adopt(self, ckpt: Checkpoint | None) -> None:
        """Make the trainer, counters, evaluator and durable positions those of ``ckpt`` (or
        of the initial state when it is None)."""
        if ckpt is None:
            self.trainer.load_state_dict(self.initial_state)
            self.counters, self.durable = Counter(), {}
        else:
            where = self.store.directory if self.store is not None else "rank 0's directory"
            durable = self._own_positions(ckpt.offsets, where)
            check_checkpoint_config(ckpt, self.trainer, where)
            self.trainer.load_state_dict(ckpt.state)
            # In a group the checkpoint's counters and prequential sums restart on rank 0 only:
            # a checkpoint adds up every rank's.
            first = self.group.rank == 0
            self.counters = Counter(ckpt.meta.get("dead_letters", {}) if first else {})
            self.durable = durable
            if not first:
                ckpt = None
        self._restore_evaluator(ckpt)

    def _restore_evaluator(self, ckpt: Checkpoint | None) -> None:
        if not self.config.prequential:
            return
        state = ckpt.meta.get("prequential") if ckpt is not None else None
        self.evaluator = (
            Prequential.from_state(state)
            if state
            else Prequential(window=self.config.prequential_window)
        )

    def resume_positions(self) -> dict[str, int]:
        """Where the source starts: this worker's newest checkpoint, and for each position the
        largest of its peers' (asked by a Kafka source at every assignment)."""
        out = dict(self.durable)
        for peer in self.peers:
            ckpt = peer.latest_checkpoint()
            if ckpt is None:
                continue
            for key, value in self._own_positions(ckpt.offsets, peer.directory).items():
                out[key] = max(out.get(key, value), value)
        return out

    def reflected(self) -> dict[str, int]:
        """Next position per partition that the trainer's state reflects (as a checkpoint
        would record it; never blocks on the source)."""
        assert self.source is not None
        return {**self.durable, **self.source.positions(resolve=False)}

    def checkpoint(self, extra: Mapping[str, int] | None = None, *, why: str) -> dict[str, int]:
        """Write a checkpoint of the trainer and the positions; returns the positions."""
        if self.group.distributed:
            return self._group_checkpoint(why=why)
        assert self.source is not None and self.store is not None
        t = time.perf_counter()
        offsets = {**self.durable, **self.source.positions(), **(extra or {})}
        state = self.trainer.state_dict()
        return self._write_checkpoint(state, offsets, self.counters, self.evaluator, why, t)

    def _group_checkpoint(self, *, why: str) -> dict[str, int]:
        """Collective checkpoint: rank 0 gathers every rank's user state, positions, dead-letter
        counters and prequential sums, writes one checkpoint, and tells the others whether it
        is durable (a rank commits its offsets only then).

        Raises:
            CheckpointWriteError: on every rank when rank 0's directory refused the write.
        """
        assert self.source is not None
        t = time.perf_counter()
        group = self.group
        state = self.trainer.group_state_dict()
        mine = {
            "positions": self.source.positions(),
            "dead_letters": dict(self.counters),
            "prequential": None if self.evaluator is None else self.evaluator.state(),
        }
        parts = group.gather_bytes(json.dumps(mine).encode("utf-8"))
        failure = ""
        offsets: dict[str, int] = {}
        if parts is not None:  # rank 0
            ranks = [json.loads(p.decode("utf-8")) for p in parts]
            offsets = dict(self.durable)
            counters: Counter[str] = Counter()
            for r in ranks:
                offsets.update(r["positions"])
                counters.update(r["dead_letters"])
            evaluator = None
            if self.evaluator is not None:
                evaluator = Prequential.merged(
                    [Prequential.from_state(r["prequential"]) for r in ranks if r["prequential"]]
                )
            try:
                self._write_checkpoint(state, offsets, counters, evaluator, why, t)
            except CheckpointWriteError as exc:
                failure = exc.reason
        reply = group.broadcast_bytes(
            json.dumps({"failure": failure, "offsets": offsets}).encode("utf-8")
            if group.rank == 0
            else None
        )
        answer = json.loads(reply.decode("utf-8"))
        if answer["failure"]:
            raise CheckpointWriteError(
                self.store.directory if self.store is not None else Path("rank 0"),
                answer["failure"],
            )
        if group.rank != 0:
            self.durable = {k: int(v) for k, v in answer["offsets"].items()}
            self.has_checkpoint = True
            self.since_checkpoint = 0
            self.last_checkpoint_t = self.clock()
        return self.durable

    def _write_checkpoint(
        self,
        state: dict[str, Any],
        offsets: dict[str, int],
        counters: Mapping[str, int],
        evaluator: Prequential | None,
        why: str,
        t: float,
    ) -> dict[str, int]:
        assert self.source is not None and self.store is not None
        summary = self.trainer.summary()
        created = time.time()
        meta = {
            "source": self.source.key,
            "group": self.source.group,
            "reason": why,
            "created_at": created,
            "dead_letters": dict(counters),
            "dead_letters_total": int(sum(counters.values())),
            "prequential": None if evaluator is None else evaluator.state(),
            "world_size": self.group.world_size,
            **summary,
        }
        path = self.store.save(state, offsets, meta)
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
        if self.timeseries is not None:
            self.timeseries.record(self, "checkpoint")
        log.debug("checkpoint (%s) at %s in %.3f s", why, offsets, seconds)
        return offsets

    def checkpoint_and_commit(self, *, why: str) -> None:
        """Checkpoint, then commit the positions. A periodic checkpoint that the directory
        refuses (full, read-only) is retried with backoff while training goes on, up to
        ``max_unsaved_records``; a final one, or one past that bound, raises."""
        assert self.source is not None
        try:
            offsets = self.checkpoint(why=why)
        except CheckpointWriteError as exc:
            self._checkpoint_failed(exc, final=why != "periodic")
            return
        if self.checkpoint_failures:
            log.info(
                "checkpoint written again after %d failed attempt(s)", self.checkpoint_failures
            )
            self.checkpoint_failures = 0
        self.metrics.set_unsaved(0)
        self.source.commit(offsets)  # offsets leave only once the checkpoint is durable

    def _checkpoint_failed(self, exc: CheckpointWriteError, *, final: bool) -> None:
        self.checkpoint_failures += 1
        self.metrics.record_checkpoint_failure()
        unsaved, limit = self.since_checkpoint, self.config.max_unsaved_records
        if final or unsaved >= limit:
            where = self.durable if self.has_checkpoint else "the beginning (no checkpoint yet)"
            raise CheckpointWriteError(
                exc.directory,
                f"{exc.reason}; stopping with {unsaved} record(s) not saved"
                f"{'' if final else f' (limit {limit})'}: nothing was committed past the last "
                f"durable checkpoint, so a restart resumes from {where}",
            ) from exc
        delay = _CHECKPOINT_RETRY.compute(self.checkpoint_failures)
        self._checkpoint_retry_at = self.clock() + delay
        if self.checkpoint_failures == 1:
            log.error(
                "%s: training goes on with offsets held at the last durable checkpoint; "
                "retrying with backoff, stopping once %d records are unsaved",
                exc,
                limit,
            )
        else:
            log.warning(
                "checkpoint attempt %d failed (%s): %d of at most %d records unsaved, next "
                "attempt in %.0f s",
                self.checkpoint_failures,
                exc.reason,
                unsaved,
                limit,
                delay,
            )

    def dirty(self) -> bool:
        """Whether the state differs from the newest checkpoint (always False without a store)."""
        assert self.source is not None
        if self.store is None:
            return False
        if self.since_checkpoint or not self.has_checkpoint:
            return True
        return any(self.durable.get(k) != v for k, v in self.source.positions().items())

    # ------------------------------------------------------------------ rebalance callbacks
    def on_revoke(self, positions: dict[str, int]) -> None:
        """Flush before partitions go: checkpoint synchronously, then commit (async).

        Runs on kafka-python's IO thread while the loop's thread is blocked in
        ``next_batch``; no blocking consumer call may happen here.
        """
        assert self.source is not None
        self.rebalances += 1
        self.metrics.record_rebalance()
        if self.store is None:
            return
        t = time.perf_counter()
        offsets = self.checkpoint(positions, why="revoke")
        self.source.commit(offsets)  # sent asynchronously from a callback
        took = time.perf_counter() - t
        session_s = getattr(getattr(self.source, "config", None), "session_timeout_ms", None)
        if session_s is not None and took > session_s / 1000.0 / 3:
            log.warning(
                "checkpoint on partition revocation took %.1f s (heartbeats pause meanwhile; "
                "keep it under a third of session_timeout_ms = %.1f s)",
                took,
                session_s / 1000.0,
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
        ckpt = None if self.store is None else self.store.latest_checkpoint()
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

    # ------------------------------------------------------------------ one micro-batch
    def process(self, batch: EventBatch, *, live: bool) -> None:
        """Dead letters → (prequential) → learn → metrics → publisher hand-off → ``on_batch``."""
        t0 = time.perf_counter()
        trainer, dead = self.trainer, batch.dead_letters
        if dead:
            self.counters.update(d.reason for d in dead)
            if self.dead_letters is not None:
                self.dead_letters.write(dead)
        stats, step_s, n = None, 0.0, len(batch)
        if n or self.group.distributed:  # a rank of a group joins every step, even empty
            if self.evaluator is not None and n:
                te = time.perf_counter()
                ranked_at, before = time.time(), (self.evaluator.count, self.evaluator.ndcg)
                self.evaluator.rank_and_update(trainer, batch.users, batch.items)
                self.seconds["eval"] += time.perf_counter() - te
                if self.publisher is not None:  # the quality guard judges the batch's NDCG@10
                    self.publisher.observe_quality(
                        self.evaluator.count - before[0],
                        self.evaluator.ndcg - before[1],
                        at=ranked_at,
                    )
                self.metrics.set_prequential(
                    self.evaluator.hits, self.evaluator.ndcg, self.evaluator.count
                )
            t1 = time.perf_counter()
            stats = trainer.learn_many(batch.users, batch.items, batch.times, batch.weights)
            step_s = time.perf_counter() - t1
            for key, value in stats["seconds"].items():
                self.seconds[key] += value
            if not math.isnan(stats["loss"]):
                self.loss = stats["loss"]
            if stats["group_events"]:
                self._log_step(batch)
            if n:
                newest = float(np.max(batch.times))
                self.watermark = newest if self.watermark is None else max(self.watermark, newest)
        applied_at = time.time()
        batch_s = time.perf_counter() - t0
        self.records += batch.records
        self.events += n
        self.since_checkpoint += batch.records
        self.metrics.set_unsaved(self.since_checkpoint)
        self.batches += 1
        if self.batches % _TRIM_EVERY_BATCHES == 0:
            release_free_memory()  # keep the resident set from creeping (see sevo_common.memory)
        self.metrics.record_batch(
            records=batch.records,
            events=n,
            dead_reasons=[d.reason for d in dead],
            batch_s=batch_s,
            step_s=step_s if n else None,
            # Freshness means something only for live events, not for a replayed history.
            event_times=batch.times.tolist() if live else None,
            applied_at=applied_at,
        )
        self.metrics.graph_nodes.set(trainer.graph.num_nodes)
        if self.publisher is not None:
            self.publisher.observe(
                trainer,
                batch.users if n else (),
                watermark=self.watermark,
                offsets=self.reflected(),
                # in a group the model changes with the other ranks' events too
                learned=bool(n or (stats is not None and stats["group_events"])),
            )
        if self.events == 0 and self.records and not self._warned_all_dead:
            self._warned_all_dead = True
            log.warning(
                "every record read so far is a dead letter (%s): check the input's format "
                "(the wire format is JSON with user_id, item_id and timestamp)",
                ", ".join(f"{k}: {v}" for k, v in sorted(Counter(d.reason for d in dead).items())),
            )
        if self.on_batch is not None:
            self.on_batch(BatchReport(batch, applied_at, step_s, batch_s, stats))

    def _log_step(self, batch: EventBatch) -> None:
        """One line of the step log (data parallel, ``step_log`` set): the group step's index
        and this rank's events in the order learned, so a one-process reference can replay
        the union batches (rank order) exactly."""
        self.group_steps += 1
        if self.step_log is None:
            return
        line = {
            "step": self.group_steps - 1,
            "rank": self.group.rank,
            "users": batch.users.tolist(),
            "items": batch.items.tolist(),
            "times": batch.times.tolist(),
            "weights": batch.weights.tolist(),
        }
        self.step_log.write(json.dumps(line) + "\n")
        self.step_log.flush()

    def _agree(self, *flags: bool | int) -> list[int]:
        """Each flag summed over the group's ranks (one small all-reduce)."""
        values = torch.tensor([int(f) for f in flags], dtype=torch.int64)
        return [int(v) for v in self.group.all_reduce_sum(values)]

    # ------------------------------------------------------------------ the loop
    def run(self, source: EventSource, *, stop: threading.Event | None = None) -> dict[str, Any]:
        """Restore, then feed ``source`` through the trainer until it ends, ``stop`` is set,
        ``max_records`` were read or the source was idle for ``idle_exit_s``; write a final
        checkpoint and commit; return a summary. The source is closed here.

        Returns:
            ``{"source", "events", "events_applied", "start_position", "end_position",
            "resumed_from_version", "events_per_s", "seconds": {...}, "prequential": {...} |
            None, "graph": {...}, "num_users", "num_items", "dead_letters": {reason: n},
            "dead_letters_total", "checkpoint": {...} | None, "loss", "records",
            "checkpoints", "rebalances", "stopped_by", "only_dead_letters"}``; ``stopped_by``
            is ``"end"``, ``"stop"``, ``"idle"`` or ``"max_records"``.

        Raises:
            ValueError: the checkpoint belongs to another source or another trainer config.
            Exception: whatever training, the sink, the source or a rebalance callback raised;
                no final checkpoint is written then (the newest durable one stays the resume
                point).
        """
        stop = stop if stop is not None else threading.Event()
        started = time.perf_counter()
        self.source = source
        live = source.total is None
        bar = None
        stopped_by = "stop"
        try:
            resumed = self.restore()
            if self.store is not None:
                self.store.check_writable()  # a read-only or full directory fails here, early
            source.attach(self)
            source.seek(self.resume_positions())
            start_positions = self.reflected()
            if self.timeseries is not None:
                self.timeseries.begin(self)
            if self.publisher is not None and self.trainer.num_items:
                self.publisher.observe(self.trainer, offsets=start_positions, force=True)
            if self.config.progress:
                bar = tqdm(
                    total=source.total,
                    initial=0 if live else sum(start_positions.values()),
                    unit="ev",
                    unit_scale=True,
                    desc="run" if live else "replay",
                    dynamic_ncols=True,
                )
            if self.group.distributed:
                stopped_by = self._group_loop(source, stop, bar)
                dirty = self._agree(self.dirty())[0] > 0  # rank 0 knows
            else:
                stopped_by = self._loop(source, stop, bar)
                dirty = self.dirty()
            if dirty:
                self.checkpoint_and_commit(why=stopped_by)
            if live:
                self.metrics.set_lag(source.lag())
        finally:
            if bar is not None:
                bar.close()
            final_offsets = self.reflected()
            if self.timeseries is not None:
                self.timeseries.end(self)
            source.close()
            if self.publisher is not None:
                self.publisher.close(self.trainer, watermark=self.watermark, offsets=final_offsets)
        if live:
            log.info("stopped (%s): %s", stopped_by, self.metrics.log_line())
        only_dead = self.records > 0 and self.events == 0
        if only_dead:
            log.error(
                "%d record(s) read and every one was a dead letter (%s); nothing was learned",
                self.records,
                ", ".join(f"{k}: {v}" for k, v in sorted(self.counters.items())),
            )
        summary = self.summarize(
            start_position=self._reported(start_positions),
            end_position=self._reported(final_offsets),
            resumed_from_version=resumed,
            total_s=time.perf_counter() - started,
        )
        summary.update(
            records=self.records,
            checkpoints=self.checkpoints,
            rebalances=self.rebalances,
            stopped_by=stopped_by,
            only_dead_letters=only_dead,
        )
        return summary

    def _loop(self, source: EventSource, stop: threading.Event, bar: Any) -> str:
        """Batches until the source ends or a stop condition holds; returns which."""
        cfg, live = self.config, source.total is None
        t_start = last_record_t = self.clock()
        if live:
            self.metrics.maybe_log(log)
        while not stop.is_set():
            limit = self._batch_limit()
            if limit <= 0:
                return "max_records"
            batch = source.next_batch(limit, cfg.batch_timeout_ms)
            if batch is None:
                return "end"
            now = self.clock()
            if batch.records:
                self.process(batch, live=live)
            now, last_record_t = self._after_poll(batch, source, bar, now, last_record_t, live)
            if not batch.records and self._idle_too_long(
                now, max(last_record_t, self.assigned_at or t_start), live
            ):
                return "idle"
            if self._checkpoint_due(now):
                self.checkpoint_and_commit(why="periodic")
            self._periodic(source, now, live)
        return "stop"

    def _batch_limit(self) -> int:
        """Records the next batch may hold: ``max_batch``, less near ``max_records``."""
        cfg = self.config
        if cfg.max_records is None:
            return cfg.max_batch
        return min(cfg.max_batch, cfg.max_records - self.records)

    def _after_poll(
        self,
        batch: EventBatch,
        source: EventSource,
        bar: Any,
        now: float,
        last_record_t: float,
        live: bool,
    ) -> tuple[float, float]:
        """After a poll (and its :meth:`process` when it had records): the progress bar, or
        for an empty poll the due publish of the last batches' users and the broker check.
        Returns ``(now, time of the last record)``."""
        if batch.records:
            if bar is not None:
                bar.update(len(batch))
                ev = self.evaluator
                if ev is not None and ev.count:
                    bar.set_postfix(hr10=f"{ev.hits / ev.count:.3f}", items=self.trainer.num_items)
            now = self.clock()
            return now, now
        if self.publisher is not None and not self.group.distributed:
            # (a rank of a group ran process() on the empty batch, which observed already)
            self.publisher.observe(self.trainer, watermark=self.watermark, offsets=self.reflected())
        if live and not self._broker_up(source):
            last_record_t = now  # waiting for a lost broker is not an idle topic
        return now, last_record_t

    def _periodic(self, source: EventSource, now: float, live: bool) -> None:
        """The metrics time series and, for a live source, broker/lag/graph monitoring."""
        if self.timeseries is not None:
            self.timeseries.maybe_record(self)
        if live:
            self._monitor(source, now)

    def _group_loop(self, source: EventSource, stop: threading.Event, bar: Any) -> str:
        """The loop of one rank of a data-parallel group: every iteration each rank reads its
        own partitions (possibly nothing), every rank joins the learning step, and one
        all-reduce of a few flags makes the group agree on what happens next: stop when any
        rank was asked to, end when no rank's source has more, idle when every rank was idle,
        checkpoint when rank 0 says it is due."""
        cfg, live = self.config, source.total is None
        t_start = last_record_t = self.clock()
        ended = capped = False
        while True:
            batch = None
            capped = capped or self._batch_limit() <= 0
            if not (ended or capped):
                batch = source.next_batch(self._batch_limit(), cfg.batch_timeout_ms)
                ended = batch is None
            batch = batch if batch is not None else EventBatch.empty()
            now = self.clock()
            self.process(batch, live=live)  # every rank joins every step, even with nothing
            now, last_record_t = self._after_poll(batch, source, bar, now, last_record_t, live)
            idle = self._idle_too_long(now, max(last_record_t, self.assigned_at or t_start), live)
            stopping, reading, idle_ranks, due, capped_ranks = self._agree(
                stop.is_set(), not (ended or capped), idle, self._checkpoint_due(now), capped
            )
            if stopping:
                return "stop"
            if not reading:
                return "max_records" if capped_ranks else "end"
            if idle_ranks == self.group.world_size:
                return "idle"
            if due:
                self.checkpoint_and_commit(why="periodic")
            self._periodic(source, now, live)

    def _broker_up(self, source: EventSource) -> bool:
        """The source's view of its broker (probed at most once per probe interval); True for
        sources without one."""
        probe = getattr(source, "broker_up", None)
        if probe is None:
            return True
        up = probe()
        self.metrics.set_broker_up(up)
        return up

    def _idle_too_long(self, now: float, since: float, live: bool) -> bool:
        allowed = self.config.idle_exit_s
        if allowed is None:
            return False
        if self.assigned_at is None and live:  # a first group join can take seconds
            allowed = max(allowed, _FIRST_JOIN_GRACE_S)
        return now - since >= allowed

    def _checkpoint_due(self, now: float) -> bool:
        cfg = self.config
        if self.store is None:
            return False
        if self.checkpoint_failures:
            # Retry with backoff, and once more (the last chance) at the unsaved-work bound.
            return (
                now >= self._checkpoint_retry_at or self.since_checkpoint >= cfg.max_unsaved_records
            )
        if self.since_checkpoint >= cfg.checkpoint_every_events:
            return True
        return (
            cfg.checkpoint_every_s is not None
            and now - self.last_checkpoint_t >= cfg.checkpoint_every_s
            and self.dirty()
        )

    def _monitor(self, source: EventSource, now: float) -> None:
        """Broker health, lag, graph size (O(nnz): not per batch) and the periodic status
        line."""
        self._broker_up(source)
        if now - self._last_lag_t >= self.config.lag_every_s:
            self.metrics.set_lag(source.lag())
            self._last_lag_t = now
        if now - self._last_graph_t >= _GRAPH_EVERY_S:
            self.metrics.set_graph(
                self.trainer.graph.num_nodes, self.trainer.summary()["graph_nnz"]
            )
            self._last_graph_t = now
        self.metrics.maybe_log(log)

    def _reported(self, positions: dict[str, int]) -> int | dict[str, int]:
        """A log's single position (keyed by the source itself) as a number; partitions as
        ``{"topic:partition": offset}``."""
        assert self.source is not None
        if set(positions) == {self.source.key}:
            return positions[self.source.key]
        return positions

    def summarize(
        self,
        *,
        start_position: Any,
        end_position: Any,
        resumed_from_version: int | None,
        total_s: float,
    ) -> dict[str, Any]:
        """The run's summary. ``seconds`` splits the time into the summed ``learn_many``
        timings (``ids``, ``graph``, ``state``, ``train``), prequential ranking and
        checkpoints; whatever they do not account for is ``other``."""
        assert self.source is not None
        seconds, trainer = self.seconds, self.trainer
        accounted = sum(
            seconds.get(k, 0.0) for k in ("ids", "graph", "state", "train", "eval", "checkpoint")
        )
        graph = trainer.graph
        summary = trainer.summary()
        return {
            "source": self.source.key,
            "events": self.events,
            "events_applied": trainer.events_applied,
            "start_position": start_position,
            "end_position": end_position,
            "resumed_from_version": resumed_from_version,
            "events_per_s": self.events / total_s if total_s > 0 else math.nan,
            "seconds": {
                "total": total_s,
                "train": seconds.get("train", 0.0),
                "graph": seconds.get("graph", 0.0),
                "state": seconds.get("ids", 0.0) + seconds.get("state", 0.0),
                "prequential_eval": seconds.get("eval", 0.0),
                "checkpoint": seconds.get("checkpoint", 0.0),
                "other": max(0.0, total_s - accounted),
                # parts of the above
                "optimizer": seconds.get("optimizer", 0.0),
                "exchange": seconds.get("exchange", 0.0),
            },
            "group": {
                "world_size": self.group.world_size,
                "rank": self.group.rank,
                "steps": self.group_steps,
                "bytes_sent": self.group.bytes_sent,
            },
            "prequential": None if self.evaluator is None else self.evaluator.summary(),
            "graph": {
                "nodes": graph.num_nodes,
                "nnz": summary["graph_nnz"],
                "total_weight": summary["graph_total_weight"],
                "half_life": graph.half_life,
                "t_latest": graph.t_latest,
            },
            "num_users": trainer.num_users,
            "num_items": trainer.num_items,
            "dead_letters": dict(self.counters),
            "dead_letters_total": int(sum(self.counters.values())),
            "checkpoint": self.last_checkpoint,
            "loss": self.loss,
        }
