"""Which edges a micro-batch adds to the live item graph.

On event ``(u, i)`` with weight ``w`` at time ``t``, an edge of weight ``w / h`` joins ``i`` and
the ``h``-th previous item of ``u`` (``h = 1..hops``), stamped with ``t`` so the graph's
half-life decay applies from then. "Previous" includes the user's earlier events of the same
batch, so a batch adds the same edges as its events would one at a time; an item is never
joined to itself.
"""

from __future__ import annotations

import numpy as np

from engine.online.layout import BatchLayout

__all__ = ["batch_edges"]


def batch_edges(
    lay: BatchLayout, item_rows: np.ndarray, weights: np.ndarray, times: np.ndarray, hops: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The batch's edges as ``(src, dst, weight, time)`` arrays for ``ItemGraph.add_edges``.

    Args:
        lay: the batch laid out after its users' stored windows.
        item_rows: ``(B,)`` item row of each event (in arrival order, as ``lay.pos``).
        weights: ``(B,)`` event weights.
        times: ``(B,)`` event times.
        hops: how many previous items each event is joined to.
    """
    src_parts, dst_parts, w_parts, t_parts = [], [], [], []
    for h in range(1, hops + 1):
        prev = lay.flat[lay.pos - h]
        ok = (prev != 0) & (prev != item_rows)
        src_parts.append(item_rows[ok])
        dst_parts.append(prev[ok])
        w_parts.append(weights[ok] / h)
        t_parts.append(times[ok])
    return (
        np.concatenate(src_parts),
        np.concatenate(dst_parts),
        np.concatenate(w_parts),
        np.concatenate(t_parts),
    )
