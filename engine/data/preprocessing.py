"""Preprocessing of an :class:`~engine.data.Interactions` log: iterative k-core filter, renaming."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from engine.data.interactions import Interactions

__all__ = ["core_filter", "renamed"]

logger = logging.getLogger(__name__)


def core_filter(inter: Interactions, k: int = 5) -> Interactions:
    """Iterative k-core: keeps users and items that each have at least ``k`` interactions.

    Dropping a user can push an item below ``k`` (and vice versa), so filtering repeats until
    nothing changes. Survivors are re-indexed contiguously (users from 0, items from 1) in their
    previous relative order, so rows stay sorted by ``(user, time)`` with ties in file order.
    Category ids and names are kept unchanged. Repeated (user, item) pairs each count.

    Args:
        inter: The log.
        k: Minimum number of interactions per user and per item; ``0`` and ``1`` only drop users and
            items without interactions.

    Returns:
        A new :class:`Interactions` (possibly empty).

    Raises:
        ValueError: If ``k`` is negative or not an integer.

    Example:
        >>> inter = build_interactions([1, 1, 2, 2, 3], [1, 2, 1, 2, 1], [0, 1, 0, 1, 0])
        >>> core_filter(inter, k=2).num_interactions
        4
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
        raise ValueError(f"k must be a non-negative integer, got {k!r}")
    keep = np.ones(inter.num_interactions, dtype=bool)
    rounds = 0
    while True:
        rounds += 1
        u_cnt = np.bincount(inter.users[keep], minlength=inter.num_users)
        i_cnt = np.bincount(inter.items[keep], minlength=inter.num_items + 1)
        new_keep = keep & (u_cnt[inter.users] >= k) & (i_cnt[inter.items] >= k)
        if np.array_equal(new_keep, keep):
            break
        keep = new_keep
    users, items = inter.users[keep], inter.items[keep]
    user_alive = np.bincount(users, minlength=inter.num_users) > 0
    item_alive = np.bincount(items, minlength=inter.num_items + 1) > 0
    item_alive[0] = True  # padding
    user_map = np.cumsum(user_alive) - 1
    item_map = np.cumsum(item_alive) - 1
    cats = None
    if inter.item_categories is not None:
        alive_idx = np.flatnonzero(item_alive)
        cats = [inter.item_categories[j] for j in alive_idx.tolist()]
    out = Interactions(
        users=user_map[users],
        items=item_map[items],
        times=inter.times[keep],
        user_ids=inter.user_ids[user_alive],
        item_ids=inter.item_ids[item_alive],
        item_categories=cats,
        category_names=inter.category_names,
        name=inter.name,
    )
    logger.info(
        "%d-core filter (%d rounds): %d -> %d users, %d -> %d items, %d -> %d interactions",
        k,
        rounds,
        inter.num_users,
        out.num_users,
        inter.num_items,
        out.num_items,
        inter.num_interactions,
        out.num_interactions,
    )
    return out


def renamed(inter: Interactions, name: str) -> Interactions:
    """The same log under another :attr:`~engine.data.Interactions.name` (arrays are shared).

    Args:
        inter: The log.
        name: The new name, e.g. ``"amazon-beauty"`` for a directory loaded by path.

    Returns:
        A new :class:`Interactions` (validated again) with ``name`` set.
    """
    return dataclasses.replace(inter, name=name)
