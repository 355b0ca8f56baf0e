"""Where each event of a micro-batch sits among its user's recent items.

Learning (graph edges to previous items, the users' new windows) and prequential ranking (each
event's input sequence and history) all read "the items before this event", which are the user's
stored window followed by the user's earlier events of the same batch. :func:`build_layout` lays
them out once, vectorised over the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["BatchLayout", "build_layout"]


@dataclass
class BatchLayout:
    """Events grouped by user (stable: arrival order within a user), next to the users' windows.

    ``flat`` holds, per user in the batch, a block of ``W = maxlen + 1`` slots with the user's
    recent window (left-padded, as stored), then that user's events of this batch. ``pos[e]`` is
    event ``e``'s index in ``flat``; ``flat[pos[e] - h]`` is its ``h``-th previous item (0 = none)
    for ``h <= W``.
    """

    users: np.ndarray  # (U,) user rows (or -1 for unknown users) in the batch, sorted
    group: np.ndarray  # (B,) index into ``users`` of each event
    rank: np.ndarray  # (B,) how many earlier events of the same user are in the batch
    block_start: np.ndarray  # (U,)
    block_end: np.ndarray  # (U,)
    flat: np.ndarray  # (U * W + B,) int64 item rows
    pos: np.ndarray  # (B,)


def build_layout(user_keys: np.ndarray, item_rows: np.ndarray, windows: np.ndarray) -> BatchLayout:
    """Lay out a batch's events after their users' windows.

    Args:
        user_keys: ``(B,)`` int64 key of each event's user (equal keys = same user).
        item_rows: ``(B,)`` item row of each event.
        windows: ``(U, W)`` stored window of the k-th user in sorted key order.
    """
    B = user_keys.shape[0]
    W = windows.shape[1] if windows.ndim == 2 else 0
    users, group, counts = np.unique(user_keys, return_inverse=True, return_counts=True)
    group = group.reshape(-1)
    order = np.argsort(group, kind="stable")
    first = np.cumsum(counts) - counts  # first sorted index of each user
    rank = np.empty(B, dtype=np.int64)
    rank[order] = np.arange(B, dtype=np.int64) - np.repeat(first, counts)
    block_len = W + counts
    block_end = np.cumsum(block_len)
    block_start = block_end - block_len
    flat = np.zeros(int(block_end[-1]) if B else 0, dtype=np.int64)
    if W and users.size:
        flat[(block_start[:, None] + np.arange(W)).reshape(-1)] = windows.reshape(-1)
    pos = block_start[group] + W + rank
    flat[pos] = item_rows
    return BatchLayout(users, group, rank, block_start, block_end, flat, pos)
