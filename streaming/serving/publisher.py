"""Publishing from the engine's run loops: :class:`EmbeddingPublisher` runs a
:class:`~streaming.serving.writer.SnapshotWriter` on a background thread.

The loop (``sevo run`` / ``sevo replay --redis-url``) hands it the trainer's outputs every
``publish_every_s`` and never waits for Redis. When Redis is down or slow, training
continues; the publisher retries with backoff and catches up with a full snapshot. One
publisher per namespace: two engines publishing into one namespace would flip the pointer
between their models.
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

from streaming.errors import describe_error
from streaming.retry import Backoff, ExponentialBackoff
from streaming.serving.keys import Keys, SnapshotError, connect, redact
from streaming.serving.writer import PublishResult, SnapshotWriter

log = logging.getLogger("streaming.serving")  # one logger for the whole serving package


@dataclass(frozen=True)
class PublishConfig:
    """How the engine publishes to Redis (``--redis-url`` and friends).

    Args:
        redis_url: ``redis://[:password@]host:port/db`` or ``rediss://`` (TLS).
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

    def __post_init__(self) -> None:
        Keys(self.namespace)  # validates
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

    def absorb(self, older: _Request) -> None:
        """Take over the user vectors of an older hand-over not written yet (ours win)."""
        self.users = {**older.users, **self.users}


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
        client: redis.Redis | None = None,
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
        self.results: list[PublishResult] = []  # newest last, at most 1000
        self.errors = 0
        self.last_error: str | None = None
        self._thread = threading.Thread(target=self._run, name="sevo-publisher", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ the loop's side
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
        ids, matrix = trainer.item_matrix()
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
        )
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
            if paused is not None:
                if not self._was_paused:
                    log.warning("publisher: publishing to namespace %s is paused", writer.namespace)
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
            extra = {"watermark": request.watermark, "offsets": request.offsets}
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
            if reason:
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

    def _record(self, outcome: str, result: PublishResult | None) -> None:
        m = self.metrics
        if m is None or not hasattr(m, "record_publish"):
            return
        m.record_publish(outcome, result)
