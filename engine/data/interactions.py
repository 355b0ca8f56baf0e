"""The columnar interaction log (:class:`Interactions`, :class:`Ragged`) and id encoding.

Every loader returns one columnar form, :class:`Interactions`: parallel arrays of internal user
index, internal item index and unix time, sorted by ``(user, time)`` with a *stable* sort so that
events with the same timestamp keep the order of the source file (Amazon timestamps have whole-day
granularity; shuffling ties would change the sequences a model sees).
:func:`build_interactions` is the one place that turns external ids into internal indices (see
the index conventions in :mod:`engine.data`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

__all__ = ["PAD_ITEM_ID", "Interactions", "Ragged", "build_interactions", "dataset_stats"]

PAD_ITEM_ID = "<pad>"
"""External id stored at ``item_ids[0]``, the padding item."""


class Ragged(NamedTuple):
    """A ragged 2-D integer array in CSR form: row ``r`` is ``values[offsets[r]:offsets[r + 1]]``.

    Attributes:
        values: Flat int64 values of all rows, row after row.
        offsets: int64 array of length ``num_rows + 1``, ``offsets[0] == 0``, non-decreasing.
    """

    values: np.ndarray
    offsets: np.ndarray

    @property
    def num_rows(self) -> int:
        """Number of rows."""
        return int(self.offsets.shape[0] - 1)

    def lengths(self) -> np.ndarray:
        """Length of every row, int64 array of shape ``(num_rows,)``."""
        return np.diff(self.offsets)

    def row(self, r: int) -> np.ndarray:
        """Values of row ``r`` (a view, do not modify)."""
        if not 0 <= r < self.num_rows:
            raise ValueError(f"row {r} out of range [0, {self.num_rows})")
        return self.values[self.offsets[r] : self.offsets[r + 1]]


@dataclass(frozen=True, eq=False, repr=False)
class Interactions:
    """An implicit-feedback log in columnar form, sorted by ``(user, time)``.

    Rows are sorted by internal user index, then time, with ties in the order of the source file.
    The constructor validates shapes, dtypes, index ranges and this ordering; use
    :func:`build_interactions` to build one from external ids in any order. Arrays are not copied:
    treat them as read-only.

    Attributes:
        users: int64 ``(n,)`` internal user index ``0 .. num_users - 1`` of each interaction.
        items: int64 ``(n,)`` internal item index ``1 .. num_items`` of each interaction.
        times: float64 ``(n,)`` unix seconds.
        user_ids: str ``(num_users,)`` external id of each internal user.
        item_ids: str ``(num_items + 1,)`` external id of each internal item; ``item_ids[0]`` is
            ``"<pad>"``.
        item_categories: Optional list of ``num_items + 1`` int64 arrays, the category ids of each
            internal item (sorted, unique; entry 0 is empty). Category ids index ``category_names``.
        category_names: Optional str array, the name of each category id.
        name: Free-form dataset name, e.g. ``"ml-100k"``.

    Example:
        >>> inter = build_interactions(["a", "a", "b"], ["x", "y", "x"], [1.0, 2.0, 1.0])
        >>> inter.num_users, inter.num_items, inter.num_interactions
        (2, 2, 3)
        >>> inter.items.tolist()
        [1, 2, 1]
    """

    users: np.ndarray
    items: np.ndarray
    times: np.ndarray
    user_ids: np.ndarray
    item_ids: np.ndarray
    item_categories: list[np.ndarray] | None = None
    category_names: np.ndarray | None = None
    name: str = ""

    def __post_init__(self) -> None:
        users = _as_int64_1d(self.users, "users")
        items = _as_int64_1d(self.items, "items")
        times = np.asarray(self.times, dtype=np.float64)
        if times.ndim != 1:
            raise ValueError(f"times must be 1-D, got shape {times.shape}")
        user_ids = np.asarray(self.user_ids).astype(str)
        item_ids = np.asarray(self.item_ids).astype(str)
        if user_ids.ndim != 1 or item_ids.ndim != 1:
            raise ValueError("user_ids and item_ids must be 1-D")
        object.__setattr__(self, "users", users)
        object.__setattr__(self, "items", items)
        object.__setattr__(self, "times", times)
        object.__setattr__(self, "user_ids", user_ids)
        object.__setattr__(self, "item_ids", item_ids)

        n = users.shape[0]
        if items.shape[0] != n or times.shape[0] != n:
            raise ValueError(
                f"users, items and times must have equal length, got {n}, {items.shape[0]}, "
                f"{times.shape[0]}"
            )
        if item_ids.shape[0] < 1 or item_ids[0] != PAD_ITEM_ID:
            raise ValueError(f"item_ids[0] must be {PAD_ITEM_ID!r} (item 0 is padding)")
        num_users, num_items = user_ids.shape[0], item_ids.shape[0] - 1
        if n:
            if users.min() < 0 or users.max() >= num_users:
                raise ValueError(f"users must lie in [0, {num_users})")
            if items.min() < 1 or items.max() > num_items:
                raise ValueError(f"items must lie in [1, {num_items}] (0 is padding)")
            if not np.all(np.isfinite(times)):
                raise ValueError("times must be finite")
            du = np.diff(users)
            if np.any(du < 0) or np.any((du == 0) & (np.diff(times) < 0)):
                raise ValueError(
                    "rows must be sorted by (user, time); build_interactions() sorts them stably"
                )
        if self.item_categories is not None:
            cats = [np.asarray(c, dtype=np.int64).reshape(-1) for c in self.item_categories]
            if len(cats) != num_items + 1:
                raise ValueError(
                    f"item_categories must have num_items + 1 = {num_items + 1} entries, "
                    f"got {len(cats)}"
                )
            if cats[0].size:
                raise ValueError("item_categories[0] (padding) must be empty")
            object.__setattr__(self, "item_categories", cats)
        if self.category_names is not None:
            object.__setattr__(self, "category_names", np.asarray(self.category_names).astype(str))

    @property
    def num_users(self) -> int:
        """Number of users (``len(user_ids)``)."""
        return int(self.user_ids.shape[0])

    @property
    def num_items(self) -> int:
        """Number of real items (``len(item_ids) - 1``; item 0 is padding)."""
        return int(self.item_ids.shape[0] - 1)

    @property
    def num_interactions(self) -> int:
        """Number of interactions (rows)."""
        return int(self.users.shape[0])

    @property
    def num_categories(self) -> int:
        """Number of category ids (0 when there are no categories)."""
        if self.category_names is not None:
            return int(self.category_names.shape[0])
        if self.item_categories is None:
            return 0
        return int(max((int(c.max()) + 1 for c in self.item_categories if c.size), default=0))

    def user_offsets(self) -> np.ndarray:
        """CSR offsets of each user's rows: user ``u`` owns rows ``offsets[u]:offsets[u + 1]``.

        Returns:
            int64 array of shape ``(num_users + 1,)``.
        """
        counts = np.bincount(self.users, minlength=self.num_users)
        return _offsets_from_counts(counts)

    def sequences(self) -> Ragged:
        """Each user's chronological item sequence as a :class:`Ragged` array."""
        return Ragged(self.items, self.user_offsets())

    def __repr__(self) -> str:
        cats = "" if self.item_categories is None else f", categories={self.num_categories}"
        return (
            f"Interactions(name={self.name!r}, users={self.num_users}, items={self.num_items}, "
            f"interactions={self.num_interactions}{cats})"
        )


# --------------------------------------------------------------------------------------------------
# Building from external ids
# --------------------------------------------------------------------------------------------------


def build_interactions(
    user_ids: Sequence[Any] | np.ndarray,
    item_ids: Sequence[Any] | np.ndarray,
    times: Sequence[float] | np.ndarray,
    *,
    item_categories: Mapping[str, Sequence[Any]] | None = None,
    category_order: Sequence[str] | None = None,
    name: str = "",
) -> Interactions:
    """Encodes external ids and sorts rows stably by ``(user, time)``.

    Args:
        user_ids: External user id of each interaction (converted with ``str``).
        item_ids: External item id of each interaction (converted with ``str``).
        times: Unix seconds of each interaction.
        item_categories: Optional ``{external item id: [category name, ...]}``. Items of the log
            missing from it get no categories; entries for items not in the log are ignored.
        category_order: Optional preferred order of category names (category id = position); names
            not listed are appended in numeric-aware sorted order. Without it every name is sorted.
        name: Dataset name.

    Returns:
        The log as :class:`Interactions`, rows in file order within equal ``(user, time)``.

    Raises:
        ValueError: If lengths differ, times are not finite, or an item id equals ``"<pad>"``.
    """
    users_ext = _as_str_1d(user_ids, "user_ids")
    items_ext = _as_str_1d(item_ids, "item_ids")
    t = np.asarray(times, dtype=np.float64).reshape(-1)
    if not (users_ext.shape[0] == items_ext.shape[0] == t.shape[0]):
        raise ValueError(
            f"user_ids, item_ids and times must have equal length, got {users_ext.shape[0]}, "
            f"{items_ext.shape[0]}, {t.shape[0]}"
        )
    if not np.all(np.isfinite(t)):
        raise ValueError("times must be finite")
    if np.any(items_ext == PAD_ITEM_ID):
        raise ValueError(f"{PAD_ITEM_ID!r} is reserved for the padding item")

    user_vocab, users = _encode_ids(users_ext)
    item_vocab, items0 = _encode_ids(items_ext)
    items = items0 + 1
    order = _stable_user_time_order(users, t)
    item_id_table = np.concatenate([np.array([PAD_ITEM_ID]), item_vocab]).astype(str)

    cats: list[np.ndarray] | None = None
    names: np.ndarray | None = None
    if item_categories is not None:
        cats, names = _encode_categories(item_id_table, item_categories, category_order)
    return Interactions(
        users=users[order],
        items=items[order],
        times=t[order],
        user_ids=user_vocab,
        item_ids=item_id_table,
        item_categories=cats,
        category_names=names,
        name=name,
    )


def _as_str_1d(values: Sequence[Any] | np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be 1-D, got shape {arr.shape}")
    return arr if arr.dtype.kind == "U" else arr.astype(str)


def _as_int64_1d(values: Any, what: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be 1-D, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{what} must be integers, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def _numeric_aware_order(strings: np.ndarray) -> np.ndarray:
    """Permutation sorting ``strings`` numerically if all are digit strings, else by characters."""
    order = np.argsort(strings, kind="stable")
    if strings.size and bool(np.all(np.char.isdigit(strings))):
        # For digit strings, (length, lexicographic) order is numeric order; no int overflow.
        order = order[np.argsort(np.char.str_len(strings[order]), kind="stable")]
    return order


def _encode_ids(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Maps string ids to ``0 .. V-1`` in numeric-aware order. Returns (vocabulary, codes)."""
    uniq, inverse = np.unique(values, return_inverse=True)
    inverse = inverse.reshape(-1)
    order = _numeric_aware_order(uniq)
    rank = np.empty(order.shape[0], dtype=np.int64)
    rank[order] = np.arange(order.shape[0], dtype=np.int64)
    return uniq[order].astype(str), rank[inverse]


def _stable_user_time_order(users: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Row order by (user, time); equal keys keep their input order (two stable passes)."""
    order = np.argsort(times, kind="stable")
    return order[np.argsort(users[order], kind="stable")]


def _offsets_from_counts(counts: np.ndarray) -> np.ndarray:
    offsets = np.zeros(counts.shape[0] + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return offsets


def _encode_categories(
    item_id_table: np.ndarray,
    mapping: Mapping[str, Sequence[Any]],
    category_order: Sequence[str] | None,
) -> tuple[list[np.ndarray], np.ndarray]:
    """Category ids per internal item: sorted, unique; ids index the returned names."""
    per_item = [mapping.get(str(ext), ()) for ext in item_id_table.tolist()]
    per_item[0] = ()
    lengths = np.fromiter((len(cs) for cs in per_item), dtype=np.int64, count=len(per_item))
    flat = np.array([str(c) for cs in per_item for c in cs], dtype=str)
    names: list[str] = []
    if category_order is not None:
        names = [str(c) for c in category_order]
        if len(set(names)) != len(names):
            raise ValueError("category_order has duplicate names")
    used = np.unique(flat)
    extra = used[~np.isin(used, np.array(names, dtype=str))] if names else used
    if extra.size:
        names.extend(extra[_numeric_aware_order(extra)].tolist())
    name_arr = np.array(names, dtype=str)
    # Vectorised name -> id through the sorted name table, then unique (item, id) pairs.
    sorter = np.argsort(name_arr, kind="stable")
    cat_ids = sorter[np.searchsorted(name_arr, flat, sorter=sorter)] if flat.size else flat
    item_of = np.repeat(np.arange(len(per_item), dtype=np.int64), lengths)
    keys = np.unique(item_of * max(len(names), 1) + np.asarray(cat_ids, dtype=np.int64))
    key_items, key_cats = np.divmod(keys, max(len(names), 1))
    counts = np.bincount(key_items, minlength=len(per_item))
    cats = np.split(key_cats.astype(np.int64), np.cumsum(counts)[:-1])
    return cats, name_arr


# --------------------------------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------------------------------


def dataset_stats(inter: Interactions) -> dict[str, Any]:
    """Summary numbers of a log (JSON-serialisable).

    Returns:
        A dict with ``name``, ``users``, ``items``, ``interactions``, ``density``
        (interactions / (users * items)), ``seq_len_mean``, ``seq_len_min``, ``seq_len_p50``,
        ``seq_len_p90``, ``seq_len_p99``, ``seq_len_max`` (interactions per user),
        ``item_freq_max``, ``time_min``/``time_max`` (unix seconds, ``None`` when empty),
        ``time_span_days`` and ``categories`` (number of category ids).
    """
    lengths = np.bincount(inter.users, minlength=inter.num_users)
    item_freq = np.bincount(inter.items, minlength=inter.num_items + 1)[1:]
    cells = inter.num_users * inter.num_items
    n = inter.num_interactions
    out: dict[str, Any] = {
        "name": inter.name,
        "users": inter.num_users,
        "items": inter.num_items,
        "interactions": n,
        "density": float(n / cells) if cells else float("nan"),
    }
    if lengths.size:
        p50, p90, p99 = np.percentile(lengths, [50, 90, 99]).tolist()
        out.update(
            seq_len_mean=float(lengths.mean()),
            seq_len_min=int(lengths.min()),
            seq_len_p50=float(p50),
            seq_len_p90=float(p90),
            seq_len_p99=float(p99),
            seq_len_max=int(lengths.max()),
        )
    else:
        nan = float("nan")
        out.update(
            seq_len_mean=nan,
            seq_len_min=0,
            seq_len_p50=nan,
            seq_len_p90=nan,
            seq_len_p99=nan,
            seq_len_max=0,
        )
    out["item_freq_max"] = int(item_freq.max()) if item_freq.size else 0
    if n:
        t0, t1 = float(inter.times.min()), float(inter.times.max())
        out.update(time_min=t0, time_max=t1, time_span_days=(t1 - t0) / 86400.0)
    else:
        out.update(time_min=None, time_max=None, time_span_days=0.0)
    out["categories"] = inter.num_categories
    return out
