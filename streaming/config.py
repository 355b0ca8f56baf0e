"""Settings of the online pipeline (typed, frozen, validated once; imports no torch).

The CLI takes its defaults from here and from :mod:`engine.config`, so a default is written
once. ``sevo run`` uses :class:`PipelineConfig`'s defaults (a live topic: checkpoints by count
and by time); ``sevo replay`` uses :meth:`PipelineConfig.for_replay` (a finite log read at full
speed: checkpoints by count, progress bar, micro-batches of 256 events).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = ["PipelineConfig"]


def _positive_int(name: str, value: Any, *, optional: bool = False, zero: bool = False) -> None:
    if optional and value is None:
        return
    low = 0 if zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        kind = "a non-negative integer" if zero else "a positive integer"
        raise ValueError(f"{name} must be {kind}{' or None' if optional else ''}, got {value!r}")


def _positive_number(name: str, value: Any, *, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(
            f"{name} must be a positive number{' or None' if optional else ''}, got {value!r}"
        )


@dataclass(frozen=True)
class PipelineConfig:
    """How the pipeline reads, evaluates and checkpoints (the same for every source).

    Attributes:
        max_batch: records per micro-batch at most (and in hand at any time: back-pressure).
        batch_timeout_ms: how long a live source may wait to fill a micro-batch.
        checkpoint_every_events: checkpoint after this many records (events + dead letters)
            since the last checkpoint.
        checkpoint_every_s: ... or when this many seconds passed and something changed
            (None: by count only).
        max_records: stop after this many records in this run (None: no limit).
        idle_exit_s: stop after this many seconds without a record (None: run until stopped
            or until a finite source ends). Counted from the latest record or partition
            assignment; before the first assignment at least 30 s are allowed (a Kafka group
            join can take seconds).
        lag_every_s: how often to read the source's lag for the metrics.
        prequential: rank each event before learning it (test-then-train) and report HR@10 /
            NDCG@10 overall, per window of ``prequential_window`` events and per item age;
            the sums travel in the checkpoint, so they survive restarts.
        prequential_window: events per prequential reporting window.
        progress: show a progress bar (for finite sources).

    Raises:
        ValueError: on any invalid setting, naming it.
    """

    max_batch: int = 500
    batch_timeout_ms: int = 100
    checkpoint_every_events: int = 10_000
    checkpoint_every_s: float | None = 60.0
    max_records: int | None = None
    idle_exit_s: float | None = None
    lag_every_s: float = 1.0
    prequential: bool = False
    prequential_window: int = 10_000
    progress: bool = False

    def __post_init__(self) -> None:
        for name in ("checkpoint_every_events", "max_batch", "prequential_window"):
            _positive_int(name, getattr(self, name))
        _positive_int("batch_timeout_ms", self.batch_timeout_ms, zero=True)
        _positive_int("max_records", self.max_records, optional=True, zero=True)
        _positive_number("checkpoint_every_s", self.checkpoint_every_s, optional=True)
        _positive_number("lag_every_s", self.lag_every_s)
        _positive_number("idle_exit_s", self.idle_exit_s, optional=True)

    @classmethod
    def for_replay(cls, **overrides: Any) -> PipelineConfig:
        """Defaults for replaying a finite log: batches of 256 events, a checkpoint every
        50,000 records, a progress bar; ``overrides`` replace any field."""
        values: dict[str, Any] = {
            "max_batch": 256,
            "batch_timeout_ms": 0,
            "checkpoint_every_events": 50_000,
            "checkpoint_every_s": None,
            "progress": True,
        }
        values.update(overrides)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python form."""
        return dataclasses.asdict(self)
