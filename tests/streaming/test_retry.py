"""Backoff policies and the deadline-bounded retry loop (fake clock, no sleeping)."""

from __future__ import annotations

import logging

import pytest

from streaming.errors import DeliveryError, ServiceUnavailableError, StreamingError
from streaming.retry import ConstantBackoff, ExponentialBackoff, retry_until


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_exponential_backoff_doubles_up_to_the_cap():
    b = ExponentialBackoff(base=0.1, factor=2.0, cap=1.0)
    assert [b.compute(n) for n in range(1, 7)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    assert b.compute(10_000) == 1.0  # no overflow


def test_jitter_is_seeded_and_only_shortens():
    a = ExponentialBackoff(0.1, 2.0, 1.0, jitter=0.5, seed=3)
    b = ExponentialBackoff(0.1, 2.0, 1.0, jitter=0.5, seed=3)
    da, db = [a.compute(n) for n in range(1, 8)], [b.compute(n) for n in range(1, 8)]
    plain = ExponentialBackoff(0.1, 2.0, 1.0)
    assert da == db
    assert all(0.5 * plain.compute(n) <= d <= plain.compute(n) for n, d in enumerate(da, 1))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"base": 0}, "base must be > 0"),
        ({"factor": 0.5}, "factor must be >= 1"),
        ({"base": 2.0, "cap": 1.0}, "cap must be >= base"),
        ({"jitter": 1.5}, r"jitter must be in \[0, 1\]"),
    ],
)
def test_backoff_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ExponentialBackoff(**kwargs)


def test_retry_until_succeeds_after_failures_and_logs_each(caplog):
    clock = FakeClock()
    calls = []

    def attempt():
        calls.append(clock.now)
        if len(calls) < 3:
            raise ConnectionError("refused")
        return "ok"

    caplog.set_level(logging.INFO, logger="streaming.retry")
    result = retry_until(
        attempt,
        service="thing 1.2.3.4:5",
        timeout_s=10,
        backoff=ExponentialBackoff(0.5, 2.0, 4.0),
        clock=clock,
        sleep=clock.sleep,
    )
    assert result == "ok" and clock.sleeps == [0.5, 1.0]
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0] == (
        "thing 1.2.3.4:5 unreachable (ConnectionError: refused), retrying in 0.5 s "
        "(attempt 1 failed, giving up in 10.0 s)"
    )
    assert messages[-1] == "thing 1.2.3.4:5 reachable after 2 failed attempts"


def test_retry_until_gives_up_with_a_non_retriable_typed_error():
    clock = FakeClock()

    def attempt():
        raise ConnectionError("refused")

    with pytest.raises(ServiceUnavailableError) as info:
        retry_until(
            attempt,
            service="svc",
            timeout_s=3.0,
            backoff=ConstantBackoff(1.0),
            clock=clock,
            sleep=clock.sleep,
        )
    err = info.value
    assert isinstance(err, StreamingError) and err.retriable is False
    assert err.attempts == 4 and err.waited_s == 3.0
    assert isinstance(err.__cause__, ConnectionError)
    assert str(err) == (
        "svc unreachable after 4 attempts in 3.0 s "
        "(is it running and reachable?; last error: ConnectionError: refused)"
    )
    assert clock.sleeps == [1.0, 1.0, 1.0]  # the last wait is clipped to the deadline


def test_non_retriable_failures_propagate_at_once():
    clock = FakeClock()

    def attempt():
        raise KeyError("bad config")

    with pytest.raises(KeyError):
        retry_until(
            attempt,
            service="svc",
            timeout_s=5,
            backoff=ConstantBackoff(1.0),
            is_retriable=lambda exc: isinstance(exc, OSError),
            clock=clock,
            sleep=clock.sleep,
        )
    assert clock.sleeps == []
    assert DeliveryError("x").retriable is True
