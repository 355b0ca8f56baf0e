"""Publishing from the engine's run loops: :class:`EmbeddingPublisher` runs a
:class:`~streaming.serving.writer.SnapshotWriter` on a background thread.

The loop (``sevo run`` / ``sevo replay --redis-url``) hands it the trainer's outputs every
``publish_every_s`` and never waits for Redis. When Redis is down or slow, training
continues; the publisher retries with backoff and catches up with a full snapshot. One
publisher per namespace: two engines publishing into one namespace would flip the pointer
between their models.

With a :class:`~streaming.config.QualityGuardConfig` (``quality_guard``) the publisher also
runs the quality guard (:mod:`streaming.serving.guard`): the run loop hands it each batch's
prequential NDCG@10 (:meth:`EmbeddingPublisher.observe_quality`), every published state records
the guard's trailing metric, and when the guard trips the thread pauses publishing and points
readers back at the newest state published before the fall began.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import redis

from streaming.config import QualityGuardConfig
from streaming.errors import describe_error
from streaming.retry import Backoff, ExponentialBackoff
from streaming.serving.connection import RedisClient, connect
from streaming.serving.guard import GUARD, GuardEvent, QualityGuard
from streaming.serving.keys import Keys, SnapshotError, redact
from streaming.serving.writer import PublishResult, SnapshotWriter

log = logging.getLogger("streaming.serving")  # one logger for the whole serving package


@dataclass(frozen=True)
class PublishConfig:
    """How the engine publishes to Redis (``--redis-url`` and friends).

    Args:
        redis_url: ``redis://[:password@]host:port/db`` or ``rediss://`` (TLS); for a Redis
            Cluster the URL of any node.
        namespace: key namespace (several models/environments can share one Redis).
        publish_every_s: seconds between publishes (a delta, or a full snapshot when due).
        full_every_s: seconds between full snapshots.
        keep_versions, grace_s, user_ttl_s, delta_tolerance, max_chain_factor, chunk_rows:
            see :class:`SnapshotWriter`.
        timeout_s: bound of each Redis command (connect, read, write).
        max_users_per_publish: user vectors encoded per hand-over at most (bounds the run
            loop's work in :meth:`EmbeddingPublisher.observe`); the others follow with the next.
        seen_per_user: distinct items each user has interacted with (most recent first)
            published with its vector, at most; ``EmbeddingClient.recommend`` leaves them out.
            0 publishes none (only the recent window is then excluded).
        close_timeout_s: how long the final publish at shutdown may take.
        backoff: delay between attempts while Redis is unavailable.
        items: publish the item table (snapshots and deltas). ``False`` publishes only the
            vectors of the users this process trained: the other ranks of a data-parallel
            group, whose rank 0 publishes the shared table (and its own users).
        quality_guard: pause publishing and roll back on a prequential regression (None: no
            guard). The run loop must feed it (``Pipeline`` does with prequential on).
    """

    redis_url: str
    namespace: str = "sevo"
    publish_every_s: float = 1.0
    full_every_s: float = 300.0
    keep_versions: int = 5
    grace_s: float = 60.0
    user_ttl_s: float = 7 * 86_400.0
    delta_tolerance: float = 1e-3
    max_chain_factor: float = 2.0
    chunk_rows: int = 4096
    timeout_s: float = 1.0
    close_timeout_s: float = 10.0
    max_users_per_publish: int = 5000
    seen_per_user: int = 1000
    backoff: Backoff = field(default_factory=lambda: ExponentialBackoff(0.2, 2.0, 5.0, jitter=0.2))
    quality_guard: QualityGuardConfig | None = None
    items: bool = True

    def __post_init__(self) -> None:
        Keys(self.namespace)  # validates
        if self.quality_guard is not None and not isinstance(
            self.quality_guard, QualityGuardConfig
        ):
            raise ValueError(
                f"quality_guard must be a QualityGuardConfig or None, got {self.quality_guard!r}"
            )
        if not isinstance(self.redis_url, str) or "://" not in self.redis_url:
            raise ValueError(
                f"redis_url must look like redis://host:port/db, got {self.redis_url!r}"
            )
        if isinstance(self.max_users_per_publish, bool) or self.max_users_per_publish < 1:
            raise ValueError(
                f"max_users_per_publish must be >= 1, got {self.max_users_per_publish!r}"
            )
        if (
            isinstance(self.seen_per_user, bool)
            or not isinstance(self.seen_per_user, int)
            or self.seen_per_user < 0
        ):
            raise ValueError(f"seen_per_user must be an integer >= 0, got {self.seen_per_user!r}")
        for name in ("publish_every_s", "full_every_s", "timeout_s", "close_timeout_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}")


@dataclass
class _Request:
    """Trainer outputs handed from the run loop to the publishing thread."""

    item_ids: list[str]
    matrix: np.ndarray
    users: dict[str, tuple[np.ndarray, list[str], list[str]]]  # vector, recent, seen
    watermark: float | None
    offsets: dict[str, int]
    model: str
    quality: list[tuple[int, float, float]] = field(default_factory=list)  # events, sum, at

    def absorb(self, older: _Request) -> None:
        """Take over the user vectors of an older hand-over not written yet (ours win) and its
        prequential results not judged yet (theirs first)."""
        self.users = {**older.users, **self.users}
        self.quality = older.quality + self.quality


class EmbeddingPublisher:
    """Publishes a trainer's embeddings to Redis from a background thread.

    The run loop calls :meth:`observe` after every micro-batch (cheap: it remembers the
    touched users) and, every ``publish_every_s``, :meth:`observe` copies the item table and
    encodes the touched users (the only work on the loop's thread) and hands them over; a
    newer hand-over replaces an older one not yet written (user vectors merge). The thread
    writes a delta, or a full snapshot when one is due (the first, every ``full_every_s``,
    after a Redis failure, after a pause). While Redis is unavailable the thread backs off
    and retries with the newest outputs; a warning is logged once per outage and once on
    recovery; ``sevo_redis_up`` and ``sevo_publishes_total{outcome="error"}`` say so.

    Args:
        config: the settings.
        metrics: an :class:`~streaming.metrics.EngineMetrics` to record into (optional).
        client: a Redis client to use instead of connecting to ``config.redis_url``.
        clock: monotonic clock, injectable.
    """

    def __init__(
        self,
        config: PublishConfig,
        *,
        metrics: Any = None,
        client: RedisClient | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self._clock = clock
        self.writer = SnapshotWriter(
            client if client is not None else connect(config.redis_url, timeout_s=config.timeout_s),
            config.namespace,
            chunk_rows=config.chunk_rows,
            keep_versions=config.keep_versions,
            grace_s=config.grace_s,
            user_ttl_s=config.user_ttl_s,
            delta_tolerance=config.delta_tolerance,
            max_chain_factor=config.max_chain_factor,
        )
        self._touched: set[str] = set()
        self._dirty = False
        self._last_observe = -math.inf
        self._last_full = -math.inf
        self._pending: _Request | None = None
        self._busy = False
        self._cond = threading.Condition()
        self._stopping = False
        self._failures = 0
        self._retry_at = -math.inf
        self._was_paused = False
        self._full_requested = False
        guard_config = config.quality_guard
        self.guard = None if guard_config is None else QualityGuard(guard_config)
        self._quality: list[tuple[int, float, float]] = []  # loop side, until the hand-over
        self._trip_pending: GuardEvent | None = None  # a trip not acted on yet (Redis failed)
        self._guard_paused = False
        self.rollbacks = 0
        self.results: list[PublishResult] = []  # newest last, at most 1000
        self.errors = 0
        self.last_error: str | None = None
        self._thread = threading.Thread(target=self._run, name="sevo-publisher", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ the loop's side
    def observe_quality(self, events: int, ndcg_sum: float, *, at: float | None = None) -> None:
        """Note one micro-batch's prequential result for the quality guard: ``events`` ranked
        before being learned, their NDCG@10 summed, ranked at wall clock ``at`` (default now).
        It travels with the next hand-over; the guard judges it on the publishing thread. A
        no-op without a guard."""
        if self.guard is None or events <= 0:
            return
        self._quality.append((int(events), float(ndcg_sum), time.time() if at is None else at))

    def observe(
        self,
        trainer: Any,
        users: Sequence[str] | np.ndarray = (),
        *,
        watermark: float | None = None,
        offsets: Mapping[str, int] | None = None,
        learned: bool | None = None,
        force: bool = False,
    ) -> bool:
        """Note a micro-batch; when a publish is due (``publish_every_s`` since the last hand-
        over, and something was learned since) or ``force``d, hand the trainer's outputs to
        the publishing thread. Returns True when it handed over. Never waits for Redis.

        Args:
            trainer: the :class:`~engine.online.OnlineTrainer` (read on this thread only).
            users: the users of the batch (their vectors are published with the next publish).
            watermark: the newest event time the trainer reflects.
            offsets: the source positions the trainer reflects (``{"topic:partition": next}``).
            learned: whether the trainer changed (default: ``users`` is not empty).
            force: hand over now even if nothing changed or it is not due.
        """
        users_a = np.asarray(users, dtype=object).reshape(-1)
        self._touched.update(map(str, users_a))
        self._dirty |= bool(users_a.size) if learned is None else learned
        now = self._clock()
        if not force and (
            not self._dirty or now - self._last_observe < self.config.publish_every_s
        ):
            return False
        self._last_observe = now
        # Encoding users is the loop's only per-user cost here: bound it per hand-over; the
        # rest stay touched and go with the next one.
        touched = sorted(self._touched)[: self.config.max_users_per_publish]
        self._touched.difference_update(touched)
        self._dirty = bool(self._touched)
        ids, matrix = trainer.item_matrix() if self.config.items else ([], np.zeros((0, 0)))
        users_out: dict[str, tuple[np.ndarray, list[str], list[str]]] = {}
        if touched:
            vecs = trainer.user_vectors(touched)
            recent = trainer.recent_items(touched)
            seen = trainer.seen_items(touched, self.config.seen_per_user)
            users_out = {u: (vecs[i], recent[i], seen[i]) for i, u in enumerate(touched)}
        request = _Request(
            ids,
            matrix,
            users_out,
            watermark,
            dict(offsets or {}),
            str(getattr(getattr(trainer, "config", None), "model", "")),
            self._quality,
        )
        self._quality = []
        with self._cond:
            if self._pending is not None:  # not written yet: keep its users, newest wins
                request.absorb(self._pending)
            self._pending = request
            self._cond.notify_all()
        return True

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until everything handed over is written (or the timeout); True if done."""
        deadline = None if timeout_s is None else self._clock() + timeout_s
        with self._cond:
            while self._pending is not None or self._busy:
                remaining = None if deadline is None else deadline - self._clock()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(0.05 if remaining is None else min(0.05, remaining))
        return True

    def close(
        self,
        trainer: Any = None,
        *,
        watermark: float | None = None,
        offsets: Mapping[str, int] | None = None,
    ) -> bool:
        """Publish the final state (if ``trainer`` is given), wait up to
        ``close_timeout_s`` for it, and stop the thread. True if everything was written."""
        while trainer is not None and (self._dirty or self._touched):
            self.observe(trainer, watermark=watermark, offsets=offsets, force=True)
        done = self.flush(self.config.close_timeout_s)
        if not done:
            log.warning(
                "publisher: final publish to %s not written within %.1f s (Redis unavailable?)",
                redact(self.config.redis_url),
                self.config.close_timeout_s,
            )
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(self.config.timeout_s * 4 + 1)
        with contextlib.suppress(Exception):  # a broken connection must not mask the result
            self.writer.redis.close()
        return done

    def __enter__(self) -> EmbeddingPublisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ the thread's side
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and (
                    self._pending is None or self._clock() < self._retry_at
                ):
                    wait = None if self._pending is None else self._retry_at - self._clock()
                    self._cond.wait(0.5 if wait is None else max(0.001, min(wait, 0.5)))
                if self._stopping:
                    return
                request, self._pending = self._pending, None
                self._busy = True
            try:
                self._publish(request)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _publish(self, request: _Request) -> None:
        writer = self.writer
        try:
            paused, requested = writer._publish_controls()
            if requested:
                self._full_requested = True
            if self.guard is not None:
                paused = self._guard_step(request, paused)
            if paused is not None:
                if not self._was_paused:
                    log.warning(
                        "publisher: publishing to namespace %s is paused (%s)",
                        writer.namespace,
                        paused.get("reason") or "no reason given",
                    )
                self._was_paused = True
                self._record("paused", None)
                return
            resumed = self._was_paused
            if resumed:
                log.info(
                    "publisher: namespace %s resumed; writing a full snapshot", writer.namespace
                )
                self._was_paused = False
            now = self._clock()
            extra: dict[str, Any] = {"watermark": request.watermark, "offsets": request.offsets}
            if self.guard is not None:
                extra["quality"] = self.guard.status()
            user_ids = list(request.users)
            if self._failures:
                reason = "recovery"
            elif resumed:
                reason = "resumed"
            elif writer.version is None:
                reason = "first"
            elif self._full_requested:
                reason = "requested"
            elif now - self._last_full >= self.config.full_every_s:
                reason = "interval"
            else:
                reason = ""
            if not self.config.items:  # another rank publishes the table
                pointer = writer.pointer() or {}
                version = int(pointer.get("version") or 0)
                writer.version = version  # the version the users are stamped with
                result = PublishResult("users", version, int(pointer.get("seq") or 0), 0, 0, 0.0)
            elif reason:
                result = writer.publish_full(
                    request.item_ids, request.matrix, model=request.model, reason=reason, **extra
                )
            else:
                result = writer.publish_delta(
                    request.item_ids, request.matrix, model=request.model, **extra
                )
            if result.kind == "full":
                self._last_full = now
                self._full_requested = False
            # User vectors after the rows: a reader that sees a user's new vector can also see
            # the rows it was computed with (the pointer switched first).
            n_users = 0
            if user_ids:
                vecs = np.stack([request.users[u][0] for u in user_ids])
                recent = [request.users[u][1] for u in user_ids]
                seen = [request.users[u][2] for u in user_ids]
                n_users = writer.publish_users(user_ids, vecs, recent, seen)
            result = replace(result, users=n_users)
        except (redis.RedisError, OSError, SnapshotError) as exc:
            self._failures += 1
            self.errors += 1
            self.last_error = describe_error(exc)
            delay = self.config.backoff.compute(self._failures)
            self._retry_at = self._clock() + delay
            # The newest outputs are retried (unless a newer hand-over arrives), as a full
            # snapshot (reason "recovery"): a failed or restarted Redis may have lost earlier
            # writes, so the writer forgets what it published.
            writer.forget()
            with self._cond:
                if self._pending is None:
                    self._pending = request
                else:
                    self._pending.absorb(request)
            if self._failures == 1:
                log.warning(
                    "publisher: Redis %s unavailable (%s); training continues, retrying in "
                    "%.1f s and catching up with a full snapshot",
                    redact(self.config.redis_url),
                    self.last_error,
                    delay,
                )
            self._record("error", None)
            return
        except Exception as exc:  # e.g. NaN rows: not retriable; keep the thread alive
            self.errors += 1
            self.last_error = describe_error(exc)
            log.error("publisher: dropped a publish that cannot succeed: %s", self.last_error)
            self._record("error", None)
            return
        if self._failures:
            log.info(
                "publisher: Redis %s back after %d failed attempts; wrote full snapshot %d",
                redact(self.config.redis_url),
                self._failures,
                result.version,
            )
        self._failures = 0
        self._retry_at = -math.inf
        self.results.append(result)
        del self.results[:-1000]
        self._record("ok", result)

    # ------------------------------------------------------------------ the quality guard
    def _guard_step(self, request: _Request, paused: dict[str, Any] | None) -> Any:
        """Feed the hand-over's prequential results to the guard and act on its verdicts;
        returns the pause marker as it now is. Redis errors propagate (the caller retries the
        request; a trip not acted on yet is retried first, the results not judged yet travel
        with the request)."""
        guard, writer = self.guard, self.writer
        assert guard is not None
        if paused is None and self._was_paused:
            # Publishing was resumed by someone else (`sevo snapshots resume`): start over.
            guard.reset()
            self._trip_pending = None
            if self._guard_paused:
                log.warning(
                    "quality guard: publishing to namespace %s resumed; the reference starts "
                    "over (%d warm-up windows)",
                    writer.namespace,
                    guard.config.warmup_windows,
                )
        rollback = False
        if self._trip_pending is not None:  # Redis failed while acting on it: again
            paused, rollback = self._trip(self._trip_pending, paused, retry=True)
        while request.quality:
            events, ndcg_sum, at = request.quality.pop(0)
            for verdict in guard.observe(events, ndcg_sum, at):
                if verdict.kind == "tripped":
                    self._trip_pending = verdict
                    paused, rolled = self._trip(verdict, paused)
                    rollback |= rolled
                else:
                    paused = self._recovered(verdict, paused)
        # Keep what a rollback would restore while a bad streak is open.
        writer.protect_before = guard.bad_since
        self._guard_paused = paused is not None and paused.get("by") == GUARD
        m = self.metrics
        if m is not None and hasattr(m, "record_quality"):
            m.record_quality(
                live=guard.live,
                reference=guard.reference,
                paused=self._guard_paused,
                rollback=rollback,
            )
        return paused

    def _trip(
        self, verdict: GuardEvent, paused: dict[str, Any] | None, *, retry: bool = False
    ) -> tuple[Any, bool]:
        """Pause publishing, then point readers at the newest state published before the bad
        streak began; returns (the pause marker, whether the pointer moved).

        An existing pause is left alone (an operator, or a guard before a restart, holds it:
        nothing was published during it, so "the newest state before the streak" would be the
        state that pause was protecting readers from), unless it is this trip's own marker
        and Redis failed before the rollback (``retry``)."""
        writer, cfg = self.writer, self.guard.config  # type: ignore[union-attr]
        ns = writer.namespace
        if paused is not None and not (retry and paused.get("by") == GUARD):
            self._trip_pending = None
            log.warning(
                "quality guard: NDCG@10 %.4f fell below %.2f x reference %.4f, but publishing "
                "to namespace %s is already paused (%s); serving left as it is",
                verdict.live,
                1 - cfg.drop,
                verdict.reference,
                ns,
                paused.get("reason") or "no reason given",
            )
            return paused, False
        bad_since = float(verdict.bad_since if verdict.bad_since is not None else time.time())
        since = time.strftime("%H:%M:%S", time.localtime(bad_since))
        reason = (
            f"quality guard: prequential NDCG@10 {verdict.live:.4f} below {1 - cfg.drop:.2f} x "
            f"reference {verdict.reference:.4f} in {cfg.patience} window(s) of "
            f"{cfg.window_events} events since {since}"
        )
        details: dict[str, Any] = {
            "by": GUARD,
            "live_ndcg10": verdict.live,
            "reference_ndcg10": verdict.reference,
            "bad_since": bad_since,
            "rolled_back_to": None,
        }
        writer.pause(reason, **details)  # first: nothing may publish over the rollback
        self._was_paused = True  # this publisher knows; no second "paused" line
        current = writer.pointer() or {}
        target = writer.state_before(bad_since)
        moved = False
        if target is None:
            note = (
                f"no retained snapshot was published before the fall; serving stays at version "
                f"{current.get('version')}.{current.get('seq')}"
            )
        elif (target.get("uid"), target["seq"]) == (current.get("uid"), current.get("seq")):
            note = f"the served version {target['version']}.{target['seq']} predates the fall"
        else:
            try:
                writer.restore(target)
            except SnapshotError as exc:
                note = f"could not roll back ({exc}); serving stays as it is"
            else:
                moved = True
                self.rollbacks += 1
                details["rolled_back_to"] = {
                    "version": target["version"],
                    "seq": target["seq"],
                    "published_at": target["published_at"],
                }
                writer.pause(reason, **details)
                note = f"rolled back to version {target['version']}.{target['seq']}"
        self._trip_pending = None
        log.warning(
            "%s; publishing to namespace %s paused, %s (training continues; "
            "`sevo snapshots resume` publishes again)",
            reason,
            ns,
            note,
        )
        return {**details, "reason": reason}, moved

    def _recovered(self, verdict: GuardEvent, paused: dict[str, Any] | None) -> Any:
        """The metric is back: resume publishing with ``auto_resume`` (when the guard holds the
        pause), else say so once."""
        guard, writer = self.guard, self.writer
        assert guard is not None
        ours = paused is not None and paused.get("by") == GUARD
        if not ours or not guard.config.auto_resume:
            if ours:
                log.info(
                    "quality guard: NDCG@10 %.4f is back near the reference %.4f; "
                    "`sevo snapshots resume --namespace %s` publishes again",
                    verdict.live,
                    verdict.reference,
                    writer.namespace,
                )
            return paused
        writer.resume()
        guard.resume()
        log.warning(
            "quality guard: NDCG@10 %.4f recovered (reference %.4f); publishing to namespace "
            "%s resumed with a full snapshot",
            verdict.live,
            verdict.reference,
            writer.namespace,
        )
        return None

    def _record(self, outcome: str, result: PublishResult | None) -> None:
        m = self.metrics
        if m is None or not hasattr(m, "record_publish"):
            return
        m.record_publish(outcome, result)
