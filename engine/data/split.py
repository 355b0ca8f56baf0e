"""The leave-one-out split of the SEvo paper: :class:`SequenceSplit` and its builder.

Each user's chronological sequence gives one test target (the last item), one validation target
(the second-last) and a training sequence (the rest); the split also serves the padded model
inputs and the history that full-ranking evaluation excludes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import numpy as np

from engine.data.interactions import Interactions, Ragged, _as_int64_1d, _offsets_from_counts

__all__ = ["SequenceSplit", "Which", "split_leave_one_out"]

Which = Literal["train", "valid", "test"]


@dataclass(frozen=True, eq=False, repr=False)
class SequenceSplit:
    """Leave-one-out split of per-user chronological sequences (the SEvo paper's protocol).

    For a user with ``n >= 3`` interactions the last one is the test target, the second-last the
    validation target and the first ``n - 2`` form the training sequence. A user with fewer than 3
    interactions keeps all of them in training and has ``valid_items[u] == test_items[u] == 0``
    ("no target"); evaluation skips such users (see :meth:`eval_users`). The held-out interactions
    never appear in ``train_items`` (the same item can still occur earlier in a user's training
    sequence when a user repeats an item; ranking never excludes the target itself).

    Attributes:
        train_items: Flat int64 training items, user after user, chronological within a user.
        train_offsets: int64 ``(num_users + 1,)``; user ``u`` owns
            ``train_items[train_offsets[u]:train_offsets[u + 1]]``.
        valid_items: int64 ``(num_users,)`` validation target per user, 0 = none.
        test_items: int64 ``(num_users,)`` test target per user, 0 = none.
        num_users: Number of users.
        num_items: Number of real items (indices ``1 .. num_items``).
        item_categories: Per-item category ids as in :class:`Interactions`, or ``None``.
    """

    train_items: np.ndarray
    train_offsets: np.ndarray
    valid_items: np.ndarray
    test_items: np.ndarray
    num_users: int
    num_items: int
    item_categories: list[np.ndarray] | None = None

    def __post_init__(self) -> None:
        for field in ("train_items", "train_offsets", "valid_items", "test_items"):
            object.__setattr__(self, field, _as_int64_1d(getattr(self, field), field))
        nu = int(self.num_users)
        if self.train_offsets.shape[0] != nu + 1 or self.train_offsets[0] != 0:
            raise ValueError("train_offsets must have num_users + 1 entries starting at 0")
        if np.any(np.diff(self.train_offsets) < 0):
            raise ValueError("train_offsets must be non-decreasing")
        if self.train_offsets[-1] != self.train_items.shape[0]:
            raise ValueError("train_offsets[-1] must equal len(train_items)")
        if self.valid_items.shape[0] != nu or self.test_items.shape[0] != nu:
            raise ValueError("valid_items and test_items must have num_users entries")
        for field in ("train_items", "valid_items", "test_items"):
            arr = getattr(self, field)
            lo = 1 if field == "train_items" else 0
            if arr.size and (arr.min() < lo or arr.max() > self.num_items):
                raise ValueError(f"{field} must lie in [{lo}, {self.num_items}]")

    def __repr__(self) -> str:
        return (
            f"SequenceSplit(users={self.num_users}, items={self.num_items}, "
            f"train={self.train_items.shape[0]}, valid={int(np.count_nonzero(self.valid_items))}, "
            f"test={int(np.count_nonzero(self.test_items))})"
        )

    def train_sequence(self, u: int) -> np.ndarray:
        """User ``u``'s chronological training items (a read-only view)."""
        if not 0 <= u < self.num_users:
            raise ValueError(f"user {u} out of range [0, {self.num_users})")
        view = self.train_items[self.train_offsets[u] : self.train_offsets[u + 1]]
        view.flags.writeable = False
        return view

    def train_ragged(self) -> Ragged:
        """All training sequences as a :class:`Ragged` array."""
        return Ragged(self.train_items, self.train_offsets)

    def targets(self, which: Literal["valid", "test"]) -> np.ndarray:
        """``valid_items`` or ``test_items`` (0 = no target)."""
        if which == "valid":
            return self.valid_items
        if which == "test":
            return self.test_items
        raise ValueError(f"which must be 'valid' or 'test', got {which!r}")

    def eval_users(self, which: Literal["valid", "test"]) -> np.ndarray:
        """Users that have a ``which`` target (the ones evaluation ranks), ascending."""
        return np.flatnonzero(self.targets(which) > 0)

    def history_for(self, which: Literal["valid", "test"]) -> Ragged:
        """Items to exclude when ranking ``which``: train for "valid", train + valid for "test".

        Returns:
            A :class:`Ragged` array with one row per user, chronological.
        """
        if which == "valid":
            return self.train_ragged()
        if which != "test":
            raise ValueError(f"which must be 'valid' or 'test', got {which!r}")
        return self._test_history

    @cached_property
    def _test_history(self) -> Ragged:
        # Computed once per split (cached_property writes to __dict__, fine on a frozen dataclass).
        train_len = np.diff(self.train_offsets)
        has_valid = self.valid_items > 0
        offsets = _offsets_from_counts(train_len + has_valid)
        values = np.empty(offsets[-1], dtype=np.int64)
        row_of = np.repeat(np.arange(self.num_users), train_len)
        shift = offsets[:-1] - self.train_offsets[:-1]
        values[np.arange(self.train_items.shape[0]) + shift[row_of]] = self.train_items
        values[offsets[1:][has_valid] - 1] = self.valid_items[has_valid]
        values.flags.writeable = False
        offsets.flags.writeable = False
        return Ragged(values, offsets)

    def input_sequences(self, which: Which) -> Ragged:
        """The sequence a model reads to predict ``which``: train for "train"/"valid",
        train + validation item for "test"."""
        if which in ("train", "valid"):
            return self.train_ragged()
        if which == "test":
            return self.history_for("test")
        raise ValueError(f"which must be 'train', 'valid' or 'test', got {which!r}")

    def padded_sequences(
        self, users: np.ndarray | Sequence[int], maxlen: int, which: Which
    ) -> np.ndarray:
        """Last ``maxlen`` input items of each user, left-padded with 0.

        Args:
            users: User indices, shape ``(B,)``.
            maxlen: Sequence length ``T`` (>= 1).
            which: ``"train"`` or ``"valid"`` (the training sequence) or ``"test"`` (training
                sequence + validation item).

        Returns:
            int64 array ``(B, T)``; row ``b`` ends with the most recent item.

        Example:
            For a training sequence ``[5, 6, 7]`` and ``maxlen=5``: ``[0, 0, 5, 6, 7]``; with
            ``maxlen=2``: ``[6, 7]``.
        """
        if isinstance(maxlen, bool) or not isinstance(maxlen, (int, np.integer)) or maxlen < 1:
            raise ValueError(f"maxlen must be a positive integer, got {maxlen!r}")
        seqs = self.input_sequences(which)
        u = self._check_users(users)
        starts, ends = seqs.offsets[u], seqs.offsets[u + 1]
        take = np.minimum(ends - starts, maxlen)
        total = int(take.sum())
        out = np.zeros((u.shape[0], maxlen), dtype=np.int64)
        if total == 0:
            return out
        rows = np.repeat(np.arange(u.shape[0]), take)
        within = np.arange(total) - np.repeat(np.cumsum(take) - take, take)  # 0..take-1
        src = np.repeat(ends - take, take) + within
        cols = np.repeat(maxlen - take, take) + within
        out[rows, cols] = seqs.values[src]
        return out

    def exclusion_pairs(
        self, users: np.ndarray | Sequence[int], which: Literal["valid", "test"]
    ) -> tuple[np.ndarray, np.ndarray]:
        """History of a batch of users as ``(rows, items)`` pairs for
        :func:`engine.metrics.target_ranks`.

        Args:
            users: User indices of the batch, shape ``(B,)``.
            which: ``"valid"`` or ``"test"``, see :meth:`history_for`.

        Returns:
            ``(rows, items)`` int64 arrays of equal length; ``rows`` are positions ``0 .. B-1`` in
            the batch.
        """
        hist = self.history_for(which)
        u = self._check_users(users)
        starts = hist.offsets[u]
        lengths = hist.offsets[u + 1] - starts
        total = int(lengths.sum())
        rows = np.repeat(np.arange(u.shape[0], dtype=np.int64), lengths)
        within = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        return rows, hist.values[np.repeat(starts, lengths) + within]

    def _check_users(self, users: np.ndarray | Sequence[int]) -> np.ndarray:
        u = _as_int64_1d(users, "users")
        if u.size and (u.min() < 0 or u.max() >= self.num_users):
            raise ValueError(f"users must lie in [0, {self.num_users})")
        return u


def split_leave_one_out(inter: Interactions) -> SequenceSplit:
    """Splits each user's chronological sequence: last -> test, second-last -> valid, rest -> train.

    Users with fewer than 3 interactions keep everything in train with no valid/test target (0);
    see :class:`SequenceSplit`. Order within a user is the row order of ``inter`` (time, then file
    order), so ties are never shuffled.

    Args:
        inter: The log (usually after :func:`core_filter`).

    Returns:
        The split.
    """
    offsets = inter.user_offsets()
    counts = np.diff(offsets)
    has = counts >= 3
    ends = offsets[1:][has]
    valid = np.zeros(inter.num_users, dtype=np.int64)
    test = np.zeros(inter.num_users, dtype=np.int64)
    test[has] = inter.items[ends - 1]
    valid[has] = inter.items[ends - 2]
    keep = np.ones(inter.num_interactions, dtype=bool)
    keep[ends - 1] = False
    keep[ends - 2] = False
    train_counts = counts - 2 * has
    return SequenceSplit(
        train_items=inter.items[keep],
        train_offsets=_offsets_from_counts(train_counts),
        valid_items=valid,
        test_items=test,
        num_users=inter.num_users,
        num_items=inter.num_items,
        item_categories=inter.item_categories,
    )
