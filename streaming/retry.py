"""Backoff policies and a deadline-bounded retry loop (after redis-py's retry and backoff objects).

Backoff objects are injected, never hard-wired, so tests pass a fast one and production a
patient one.

Example:
    >>> b = ExponentialBackoff(base=0.2, factor=2.0, cap=1.0)
    >>> [b.compute(n) for n in (1, 2, 3, 4)]
    [0.2, 0.4, 0.8, 1.0]
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Protocol, TypeVar, runtime_checkable

from streaming.errors import ServiceUnavailableError, describe_error

__all__ = ["Backoff", "ConstantBackoff", "ExponentialBackoff", "retry_until"]

log = logging.getLogger(__name__)

T = TypeVar("T")


@runtime_checkable
class Backoff(Protocol):
    """How long to wait after the ``failures``-th consecutive failure (``failures >= 1``)."""

    def compute(self, failures: int) -> float: ...


class ConstantBackoff:
    """Always wait ``delay`` seconds."""

    def __init__(self, delay: float) -> None:
        if not delay >= 0:
            raise ValueError(f"delay must be >= 0, got {delay!r}")
        self.delay = float(delay)

    def compute(self, failures: int) -> float:
        return self.delay

    def __repr__(self) -> str:
        return f"ConstantBackoff({self.delay})"


class ExponentialBackoff:
    """``min(cap, base * factor**(failures - 1))``, optionally shortened by random jitter.

    Args:
        base: the first delay in seconds.
        factor: growth per failure (>= 1).
        cap: the largest delay.
        jitter: fraction in [0, 1]; each delay is multiplied by ``1 - jitter * u`` with
            ``u ~ U[0, 1)`` so that many clients restarting together spread out.
        seed: seed of the jitter's own random generator.
    """

    def __init__(
        self,
        base: float = 0.2,
        factor: float = 2.0,
        cap: float = 5.0,
        *,
        jitter: float = 0.0,
        seed: int | None = None,
    ) -> None:
        if not base > 0:
            raise ValueError(f"base must be > 0, got {base!r}")
        if not factor >= 1:
            raise ValueError(f"factor must be >= 1, got {factor!r}")
        if not cap >= base:
            raise ValueError(f"cap must be >= base, got cap={cap!r} base={base!r}")
        if not 0 <= jitter <= 1:
            raise ValueError(f"jitter must be in [0, 1], got {jitter!r}")
        self.base, self.factor, self.cap, self.jitter = (
            float(base),
            float(factor),
            float(cap),
            jitter,
        )
        self._rng = random.Random(seed)

    def compute(self, failures: int) -> float:
        if failures < 1:
            raise ValueError(f"failures must be >= 1, got {failures}")
        # Cap the exponent so huge failure counts never overflow.
        delay = min(self.cap, self.base * self.factor ** min(failures - 1, 64))
        if self.jitter:
            delay *= 1.0 - self.jitter * self._rng.random()
        return delay

    def __repr__(self) -> str:
        return (
            f"ExponentialBackoff(base={self.base}, factor={self.factor}, cap={self.cap}, "
            f"jitter={self.jitter})"
        )


def retry_until(
    attempt: Callable[[], T],
    *,
    service: str,
    timeout_s: float,
    backoff: Backoff,
    is_retriable: Callable[[BaseException], bool] = lambda exc: True,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    logger: logging.Logger | None = None,
) -> T:
    """Call ``attempt()`` until it returns, retrying retriable failures until ``timeout_s``.

    Each failure logs one warning line such as ``kafka broker 127.0.0.1:9 unreachable
    (ConnectionRefusedError: ...), retrying in 0.4 s (attempt 2 failed, giving up in 27.6 s)``.

    Args:
        attempt: the operation; it should bound its own duration.
        service: what is contacted, for messages ("kafka broker 127.0.0.1:9092").
        timeout_s: total time budget; after it a last failure raises.
        backoff: delay policy between attempts.
        is_retriable: failures for which this returns False propagate at once.
        clock, sleep: injectable for tests.
        logger: where the retry lines go (default: this module's logger).

    Raises:
        ServiceUnavailableError: the budget ran out (``retriable=False``), chained to the last
            underlying error.
    """
    logger = logger or log
    start = clock()
    failures = 0
    while True:
        try:
            result = attempt()
        except Exception as exc:
            if not is_retriable(exc):
                raise
            failures += 1
            waited = clock() - start
            remaining = timeout_s - waited
            if remaining <= 0:
                raise ServiceUnavailableError(
                    service, attempts=failures, waited_s=waited, last_error=exc
                ) from exc
            delay = min(backoff.compute(failures), remaining)
            logger.warning(
                "%s unreachable (%s), retrying in %.1f s (attempt %d failed, giving up in %.1f s)",
                service,
                describe_error(exc),
                delay,
                failures,
                remaining,
            )
            sleep(delay)
        else:
            if failures:
                logger.info("%s reachable after %d failed attempts", service, failures)
            return result
