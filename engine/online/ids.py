"""External string ids ↔ table rows, growing as new ids arrive, and events learned per item.

Items get rows ``1, 2, ...`` in order of first appearance (row 0 is the padding item, whose id
:data:`PAD_ID` no event may use); users get rows ``0, 1, ...``. Rows never change once given, so
a model's tables, the optimizer state and the graph only ever grow at the end.

Pure numpy: the trainer turns :meth:`IdMaps.state_arrays` into tensors for its state dict.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from engine.data.events import PAD_ITEM_ID

__all__ = ["PAD_ID", "IdMaps", "as_str_array", "assign_rows", "lookup_rows"]

#: The id of item row 0 (padding); reserved, so no event may name it.
PAD_ID = PAD_ITEM_ID  # row 0; the event parser rejects it as an item id


def as_str_array(name: str, values: Any) -> np.ndarray:
    """``values`` as a 1-D array of ``str`` (ids of any type compare as their text).

    Raises:
        ValueError: ``values`` is not 1-D (``name`` is used in the message).
    """
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    return arr.astype(str)


def lookup_rows(table: dict[str, int], keys: np.ndarray, *, missing: int) -> np.ndarray:
    """Rows of ``keys`` (``missing`` for unknown ones), int64.

    One dict lookup per event: for micro-batches several times cheaper than ``np.unique`` over
    strings.
    """
    if keys.size == 0:
        return np.zeros(0, dtype=np.int64)
    get = table.get
    return np.fromiter((get(k, missing) for k in keys.tolist()), dtype=np.int64, count=keys.size)


def assign_rows(table: dict[str, int], ids: list[str], keys: np.ndarray) -> tuple[np.ndarray, int]:
    """Rows of ``keys``, giving new keys the next rows in order of first appearance.

    Args:
        table: id → row, extended in place.
        ids: row → id, extended in place (the next row is ``len(ids)``).
        keys: the batch's ids (repeats allowed).

    Returns:
        ``(rows, number of new ids)``; rows are int64.
    """
    names = keys.tolist()
    get = table.get
    rows = [get(k, -1) for k in names]
    new = 0
    if -1 in rows:  # new keys: rows in order of first appearance (repeats share theirs)
        for i, k in enumerate(names):
            if rows[i] < 0:
                row = get(k, -1)
                if row < 0:
                    row = table[k] = len(ids)  # ids[0] is the padding item for items
                    ids.append(k)
                    new += 1
                rows[i] = row
    return np.array(rows, dtype=np.int64), new


class IdMaps:
    """The item and user id maps of an online trainer, and each item's learned-event count.

    Attributes:
        item_ids: row → item id; ``item_ids[0]`` is :data:`PAD_ID`.
        item_rows: item id → row (``>= 1``).
        user_ids: row → user id.
        user_rows: user id → row.
        item_counts: events learned per item row; its length is a capacity (``>=
            num_items + 1``) that :meth:`reserve` grows ahead of use.
    """

    def __init__(self) -> None:
        self.item_ids: list[str] = [PAD_ID]
        self.item_rows: dict[str, int] = {}
        self.user_ids: list[str] = []
        self.user_rows: dict[str, int] = {}
        self.item_counts = np.zeros(2, dtype=np.int64)

    @property
    def num_items(self) -> int:
        """Items seen so far (rows ``1..num_items``)."""
        return len(self.item_ids) - 1

    @property
    def num_users(self) -> int:
        """Users seen so far (rows ``0..num_users-1``)."""
        return len(self.user_ids)

    def assign(
        self, users: np.ndarray, items: np.ndarray
    ) -> tuple[np.ndarray, int, np.ndarray, int]:
        """Rows of a batch's items and users, new ids getting the next rows.

        Returns:
            ``(item rows, new items, user rows, new users)``.
        """
        item_rows, new_items = assign_rows(self.item_rows, self.item_ids, items)
        user_rows, new_users = assign_rows(self.user_rows, self.user_ids, users)
        return item_rows, new_items, user_rows, new_users

    def item_rows_of(self, items: np.ndarray) -> np.ndarray:
        """Rows of ``items``; 0 (the padding row) for unknown ones."""
        return lookup_rows(self.item_rows, items, missing=0)

    def user_rows_of(self, users: np.ndarray) -> np.ndarray:
        """Rows of ``users``; -1 for unknown ones."""
        return lookup_rows(self.user_rows, users, missing=-1)

    def reserve(self) -> None:
        """Grow :attr:`item_counts` to cover every item row (doubling, so growth is amortised)."""
        n_items = self.num_items
        if n_items + 1 > self.item_counts.shape[0]:
            counts = np.zeros(max(n_items + 1, 2 * self.item_counts.shape[0]), dtype=np.int64)
            counts[: self.item_counts.shape[0]] = self.item_counts
            self.item_counts = counts

    def count_events(self, item_rows: np.ndarray) -> None:
        """Add one learned event per entry of ``item_rows`` (after :meth:`reserve`)."""
        n = self.num_items + 1
        self.item_counts[:n] += np.bincount(item_rows, minlength=n)

    def event_counts(self, items: np.ndarray) -> np.ndarray:
        """Events learned so far per item id (0 for unknown items), int64."""
        rows = self.item_rows_of(items)
        return self.item_counts[rows] * (rows > 0)

    def state_arrays(self) -> dict[str, Any]:
        """``item_ids``, ``user_ids`` (lists) and ``item_counts`` (a copy, without spare rows)."""
        return {
            "item_ids": list(self.item_ids),
            "user_ids": list(self.user_ids),
            "item_counts": self.item_counts[: self.num_items + 1].copy(),
        }

    @classmethod
    def from_state_arrays(cls, state: dict[str, Any]) -> IdMaps:
        """Rebuild from :meth:`state_arrays` (counts as a numpy array)."""
        maps = cls()
        maps.item_ids = list(state["item_ids"])
        maps.item_rows = {k: i for i, k in enumerate(maps.item_ids) if i > 0}
        maps.user_ids = list(state["user_ids"])
        maps.user_rows = {k: i for i, k in enumerate(maps.user_ids)}
        counts = state["item_counts"]
        maps.item_counts = np.zeros(max(counts.size, 2), dtype=np.int64)
        maps.item_counts[: counts.size] = counts
        return maps
