"""Prequential (test-then-train) evaluation of an online learner.

Each arriving event is first ranked by the model as it is (against every known item, the
user's history excluded), and only then learned. The evaluator sums HR@K and NDCG@K over all
events, per window of events and per *item age* (how many earlier events the item had), and
its state is plain JSON so a run's sums survive checkpoints and restarts.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from engine.online import OnlineTrainer

__all__ = ["Prequential"]


def _rank_within(keys: np.ndarray) -> np.ndarray:
    """For each element, how many earlier elements have the same key."""
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    order = np.argsort(inverse, kind="stable")
    first = np.cumsum(counts) - counts
    out = np.empty(keys.shape[0], dtype=np.int64)
    out[order] = np.arange(keys.shape[0]) - np.repeat(first, counts)
    return out


_AGE_BUCKETS = ((0, 1, "0"), (1, 10, "1-9"), (10, 100, "10-99"), (100, None, "100+"))


class Prequential:
    """Test-then-train metrics: HR@K and NDCG@K over all events, per window and per item age.

    An event whose item was unknown when it was ranked (rank > number of known items) is a miss.
    The *item age* of an event is how many earlier events had the same item (first sight = 0).

    Args:
        k: the cut-off K.
        window: events per reporting window.
    """

    def __init__(self, k: int = 10, window: int = 10_000) -> None:
        if k < 1 or window < 1:
            raise ValueError("k and window must be positive")
        self.k, self.window = int(k), int(window)
        self.count = 0
        self.hits = 0.0
        self.ndcg = 0.0
        self.windows: list[list[float]] = []  # [events, hits, ndcg] per window
        self.ages = {name: [0, 0.0, 0.0] for _, _, name in _AGE_BUCKETS}

    def update(self, ranks: np.ndarray, num_known: int, ages: np.ndarray) -> None:
        """Add one batch: ``ranks`` from ``rank_before_learning`` taken with ``num_known`` items."""
        ranks = np.asarray(ranks, dtype=np.int64)
        hit = ((ranks <= self.k) & (ranks <= num_known)).astype(np.float64)
        gain = np.where(hit > 0, 1.0 / np.log2(ranks.astype(np.float64) + 1.0), 0.0)
        n = ranks.shape[0]
        idx = (self.count + np.arange(n)) // self.window
        first = int(idx[0]) if n else 0
        for w, (c, h, g) in enumerate(
            zip(
                np.bincount(idx - first),
                np.bincount(idx - first, weights=hit),
                np.bincount(idx - first, weights=gain),
            )
        ):
            while len(self.windows) <= first + w:
                self.windows.append([0, 0.0, 0.0])
            row = self.windows[first + w]
            row[0] += int(c)
            row[1] += float(h)
            row[2] += float(g)
        self.count += n
        self.hits += float(hit.sum())
        self.ndcg += float(gain.sum())
        for lo, hi, name in _AGE_BUCKETS:
            sel = (ages >= lo) if hi is None else ((ages >= lo) & (ages < hi))
            row = self.ages[name]
            row[0] += int(sel.sum())
            row[1] += float(hit[sel].sum())
            row[2] += float(gain[sel].sum())

    @classmethod
    def merged(cls, parts: list[Prequential]) -> Prequential:
        """The sums of several evaluators (the ranks of a data-parallel group, each of which
        ranks its own events): totals and item-age buckets add up exactly; window ``i`` adds
        the ``i``-th window of each rank's own events."""
        if not parts:
            return cls()
        out = cls(parts[0].k, parts[0].window)
        for p in parts:
            out.count += p.count
            out.hits += p.hits
            out.ndcg += p.ndcg
            for i, row in enumerate(p.windows):
                while len(out.windows) <= i:
                    out.windows.append([0, 0.0, 0.0])
                for j in range(3):
                    out.windows[i][j] += row[j]
            for name, row in p.ages.items():
                for j in range(3):
                    out.ages[name][j] += row[j]
        return out

    def rank_and_update(self, trainer: OnlineTrainer, users: np.ndarray, items: np.ndarray) -> None:
        """Rank a batch with the trainer as it is (before learning it) and add the result."""
        num_known = trainer.num_items
        ranks = trainer.rank_before_learning(users, items)
        ages = trainer.item_event_counts(items) + _rank_within(np.asarray(items))
        self.update(ranks, num_known, ages)

    def summary(self) -> dict[str, Any]:
        k = self.k

        def rates(n: float, h: float, g: float) -> dict[str, Any]:
            return {
                "events": int(n),
                f"HR@{k}": h / n if n else math.nan,
                f"NDCG@{k}": g / n if n else math.nan,
            }

        return {
            **rates(self.count, self.hits, self.ndcg),
            "window": self.window,
            "windows": [
                {"start": i * self.window, **rates(*row)} for i, row in enumerate(self.windows)
            ],
            "by_item_age": {name: rates(*row) for name, row in self.ages.items()},
        }

    def state(self) -> dict[str, Any]:
        """JSON-serialisable state (kept in checkpoint meta)."""
        return {
            "k": self.k,
            "window": self.window,
            "count": self.count,
            "hits": self.hits,
            "ndcg": self.ndcg,
            "windows": self.windows,
            "ages": self.ages,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Prequential:
        obj = cls(int(state["k"]), int(state["window"]))
        obj.count = int(state["count"])
        obj.hits, obj.ndcg = float(state["hits"]), float(state["ndcg"])
        obj.windows = [[int(r[0]), float(r[1]), float(r[2])] for r in state["windows"]]
        obj.ages.update(
            {k: [int(v[0]), float(v[1]), float(v[2])] for k, v in state["ages"].items()}
        )
        return obj
