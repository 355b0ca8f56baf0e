"""The quality guard on publishing: the state machine that decides when the live model has
regressed and when it has recovered (:class:`QualityGuard`).

A bad model published to Redis reaches every reader within a publish interval, and online
training can go bad without any error: a burst of bot or replayed events, a learning-rate
mistake, a broken upstream feature. The prequential metric (each event ranked before it is
learned) measures exactly what the served model does on live traffic, so the guard watches it:
the NDCG@10 of consecutive windows of events is compared with a reference, and a sustained fall
pauses publishing and rolls serving back to a snapshot published before the fall began
(:class:`~streaming.serving.publisher.EmbeddingPublisher` acts on the guard's verdicts).

**States.** ``warmup`` (the first ``warmup_windows`` windows only build the reference),
``healthy``, ``suspect`` (fewer than ``patience`` bad windows so far) and ``tripped``. With
``ref`` the reference, a window is *bad* below ``ref * (1 - drop)``, *good* at or above
``ref * (1 - drop / 2)``, and in the band between it changes nothing:

* healthy/suspect: a bad window extends the streak (the first one records when it began); the
  ``patience``-th trips the guard. A good window ends the streak and moves the reference
  (exponential moving average). Only good windows move it, so a slow slide cannot drag the
  reference down with it.
* tripped: the reference is frozen; ``patience`` good windows in a row report a recovery (once).
  Publishing resumes when the operator says so (:meth:`reset`: the reference starts over, so the
  operator accepts the level the model is at) or, with ``auto_resume``, after the recovery
  (:meth:`resume`: the reference is kept).

The band is the hysteresis: a metric that hovers around one line neither trips the guard nor
clears a streak, and a tripped guard needs a clear recovery, so verdicts do not flap.

The guard knows nothing of Redis and is not thread-safe: the publisher's thread owns it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from streaming.config import QualityGuardConfig

__all__ = ["GUARD", "GuardEvent", "QualityGuard", "QualityGuardConfig"]

#: The ``by`` field of a pause marker the guard wrote (see ``SnapshotStore.pause``).
GUARD = "quality-guard"


@dataclass(frozen=True)
class GuardEvent:
    """A verdict of :meth:`QualityGuard.observe`.

    Attributes:
        kind: ``"tripped"`` (publishing must pause and serving roll back) or ``"recovered"``.
        live: NDCG@10 of the window that caused it.
        reference: the reference it was judged against.
        bad_since: wall clock (unix s) when the first window of the bad streak began, i.e. the
            newest moment before which published snapshots are trusted; None for a recovery.
    """

    kind: str
    live: float
    reference: float
    bad_since: float | None = None


class QualityGuard:
    """Judges windows of prequential NDCG@10 (see the module docstring).

    Args:
        config: thresholds and window sizes.
    """

    def __init__(self, config: QualityGuardConfig) -> None:
        self.config = config
        self.live: float | None = None  # NDCG@10 of the newest complete window
        self.windows = 0  # complete windows judged since the start
        self.events = 0  # events in complete windows since the start
        self.reference: float | None = None
        self.bad_since: float | None = None
        self.recovered = False
        self._warm = 0
        self._bad = 0
        self._good = 0
        self._tripped = False
        self._n = 0  # the open window: events, NDCG@10 sum, when it began
        self._sum = 0.0
        self._start: float | None = None

    # ------------------------------------------------------------------ state
    @property
    def state(self) -> str:
        """``"warmup"``, ``"healthy"``, ``"suspect"`` or ``"tripped"``."""
        if self._tripped:
            return "tripped"
        if self._warm < self.config.warmup_windows:
            return "warmup"
        return "suspect" if self._bad else "healthy"

    @property
    def tripped(self) -> bool:
        return self._tripped

    def thresholds(self) -> tuple[float, float] | None:
        """``(bad below, good from)`` for the current reference; None while there is none."""
        if self.reference is None:
            return None
        drop = self.config.drop
        return self.reference * (1 - drop), self.reference * (1 - drop / 2)

    def status(self) -> dict[str, Any]:
        """What a published version records and what the metrics show (plain JSON)."""
        return {
            "ndcg10": self.live,
            "window_events": self.config.window_events,
            "events": self.events,
            "reference": self.reference,
            "state": self.state,
        }

    # ------------------------------------------------------------------ feeding
    def observe(self, events: int, ndcg_sum: float, at: float) -> list[GuardEvent]:
        """Add one micro-batch's prequential result (``events`` ranked, their NDCG@10 summed,
        ranked at wall clock ``at``); returns the verdicts of the windows it completed."""
        if events <= 0:
            return []
        if self._n == 0:
            self._start = at
        self._n += int(events)
        self._sum += float(ndcg_sum)
        if self._n < self.config.window_events:
            return []
        value, start = self._sum / self._n, self._start
        self.events += self._n
        self._n, self._sum, self._start = 0, 0.0, None
        verdict = self._judge(value, at if start is None else start)
        return [] if verdict is None else [verdict]

    def _judge(self, value: float, start: float) -> GuardEvent | None:
        cfg = self.config
        self.windows += 1
        self.live = value
        if not math.isfinite(value):
            return None
        if self._warm < cfg.warmup_windows:
            self._warm += 1
            self._move_reference(value)
            return None
        assert self.reference is not None
        bad_below, good_from = self.thresholds()  # type: ignore[misc]
        if self._tripped:
            self._good = self._good + 1 if value >= good_from else 0
            if self._good >= cfg.patience and not self.recovered:
                self.recovered = True
                return GuardEvent("recovered", value, self.reference)
            return None
        if value < bad_below:
            if self._bad == 0:
                self.bad_since = start
            self._bad += 1
            if self._bad >= cfg.patience:
                self._tripped, self._good, self.recovered = True, 0, False
                return GuardEvent("tripped", value, self.reference, self.bad_since)
        elif value >= good_from:
            self._bad, self.bad_since = 0, None
            self._move_reference(value)
        return None

    def _move_reference(self, value: float) -> None:
        a = self.config.reference_alpha
        self.reference = value if self.reference is None else (1 - a) * self.reference + a * value

    # ------------------------------------------------------------------ leaving the trip
    def reset(self) -> None:
        """Start over (``sevo snapshots resume``): no reference, a new warm-up, no streak; the
        open window is dropped, so the new reference is built from events after the reset."""
        self.reference, self.bad_since, self.recovered = None, None, False
        self._warm = self._bad = self._good = 0
        self._tripped = False
        self._n, self._sum, self._start = 0, 0.0, None

    def resume(self) -> None:
        """Leave the trip after a recovery, keeping the reference (``auto_resume``)."""
        self._tripped, self.recovered = False, False
        self._bad = self._good = 0
        self.bad_since = None
