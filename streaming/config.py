"""Settings of the online pipeline (typed, frozen, validated once; imports no torch).

The CLI takes its defaults from here and from :mod:`engine.config`, so a default is written
once. ``sevo run`` uses :class:`PipelineConfig`'s defaults (a live topic: checkpoints by count
and by time); ``sevo replay`` uses :meth:`PipelineConfig.for_replay` (a finite log read at full
speed: checkpoints by count, progress bar, micro-batches of 256 events).
:class:`QualityGuardConfig` holds the settings of the quality guard on publishing
(``--quality-guard-*``; see :mod:`streaming.serving.guard`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = ["PipelineConfig", "QualityGuardConfig"]


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
            join can take seconds); time spent waiting for a lost broker does not count.
        lag_every_s: how often to read the source's lag for the metrics.
        prequential: rank each event before learning it (test-then-train) and report HR@10 /
            NDCG@10 overall, per window of ``prequential_window`` events and per item age;
            the sums travel in the checkpoint, so they survive restarts.
        prequential_window: events per prequential reporting window.
        progress: show a progress bar (for finite sources).
        max_unsaved_records: when checkpoints fail (directory full or read-only), training
            goes on with retries (exponential backoff, 1 s to 60 s) until this many records
            are held only in memory; then the run stops with an error. Nothing is committed
            past the last durable checkpoint, so a restart resumes from it.

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
    max_unsaved_records: int = 100_000

    def __post_init__(self) -> None:
        for name in (
            "checkpoint_every_events",
            "max_batch",
            "prequential_window",
            "max_unsaved_records",
        ):
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


@dataclass(frozen=True)
class QualityGuardConfig:
    """When the quality guard pauses publishing and rolls serving back
    (:class:`~streaming.serving.guard.QualityGuard`; ``sevo run|replay --prequential
    --redis-url ... --quality-guard-drop FRACTION``).

    The guard judges the prequential NDCG@10 of consecutive windows of ``window_events`` events
    against a reference (an exponential moving average of the healthy windows). A window is
    *bad* below ``reference * (1 - drop)`` and *good* at or above ``reference * (1 - drop / 2)``;
    windows in between change nothing. That band is the hysteresis: a metric hovering around one
    line can neither trip the guard nor clear a streak of bad windows.

    Attributes:
        drop: the relative fall that counts as a regression, in (0, 1).
        window_events: events per judged window (whole micro-batches: a window closes at the
            first batch boundary at or after this many events). Larger windows are less noisy
            and react later.
        patience: bad windows (with no good one in between) that trip the guard; while tripped,
            good windows in a row that count as recovered.
        warmup_windows: windows that only build the reference, at the start and after every
            ``sevo snapshots resume``; nothing trips during them.
        reference_alpha: weight of a good window in the reference (moving average).
        auto_resume: resume publishing by itself once the metric has recovered (``patience``
            good windows in a row) instead of waiting for ``sevo snapshots resume``.

    Raises:
        ValueError: on any invalid setting, naming it.
    """

    drop: float
    window_events: int = 5000
    patience: int = 2
    warmup_windows: int = 3
    reference_alpha: float = 0.2
    auto_resume: bool = False

    def __post_init__(self) -> None:
        if (
            isinstance(self.drop, bool)
            or not isinstance(self.drop, (int, float))
            or not 0 < self.drop < 1
        ):
            raise ValueError(f"drop must be a fraction in (0, 1), got {self.drop!r}")
        for name in ("window_events", "patience", "warmup_windows"):
            _positive_int(name, getattr(self, name))
        alpha = self.reference_alpha
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha <= 1:
            raise ValueError(f"reference_alpha must be in (0, 1], got {alpha!r}")
        if not isinstance(self.auto_resume, bool):
            raise ValueError(f"auto_resume must be a bool, got {self.auto_resume!r}")
