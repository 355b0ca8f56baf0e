"""Per-user state of the online trainer: recent windows, full histories, bounded by eviction.

Each user whose state is kept has a *slot*: ``windows[slot]`` holds the user's last
``W = maxlen + 1`` items (left-padded with 0, most recent at the right), which is both the
training sequence and the input for ranking and serving. Optionally ``histories[slot]`` holds
every item the user has interacted with, for a prequential ranking that excludes all of them.

At most ``capacity`` users keep a slot: a batch with users that have none takes free slots
first, then those of the least recently seen users, whose window and history are dropped (their
ids and embeddings stay; they come back with an empty window). Recency counts batches
(:attr:`UserState.tick`), not event times.

Pure numpy: the trainer turns :meth:`UserState.state_arrays` into tensors for its state dict.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from engine.online.layout import BatchLayout

__all__ = ["UserState"]


class UserState:
    """Recent windows (and optionally full histories) of at most ``capacity`` users.

    Args:
        window: items kept per user, ``W = maxlen + 1`` (a training sequence of ``maxlen``
            inputs and their targets).
        capacity: most users with a slot (``max_users_state``).
        keep_histories: also keep every user's full history (``exclude_history="all"``).

    Attributes:
        window, capacity, keep_histories: as given.
        slot_of_user: slot of each user row, -1 for none; its length is a capacity that
            :meth:`reserve_users` grows ahead of use.
        slot_user: user row of each slot (-1 for none).
        windows: ``(slots, W)`` int64 recent items of each slot's user.
        last_seen: tick of the batch that last touched each slot.
        histories: full history of each slot's user (``keep_histories`` only).
        num_slots: slots in use (``<= capacity``).
        tick: batches learned so far (the recency clock).
    """

    def __init__(self, window: int, capacity: int, keep_histories: bool) -> None:
        self.window, self.capacity, self.keep_histories = int(window), int(capacity), keep_histories
        self.slot_of_user = np.full(16, -1, dtype=np.int64)  # by user row; capacity grows
        self.slot_user = np.full(0, -1, dtype=np.int64)
        self.windows = np.zeros((0, self.window), dtype=np.int64)
        self.last_seen = np.zeros(0, dtype=np.int64)
        self.histories: list[np.ndarray] = []  # by slot, when keep_histories
        self.num_slots = 0
        self.tick = 0

    @property
    def num_in_state(self) -> int:
        """Users whose window is currently kept (``<= capacity``)."""
        return int((self.slot_user[: self.num_slots] >= 0).sum())

    # ------------------------------------------------------------------ slots
    def reserve_users(self, num_users: int) -> None:
        """Grow :attr:`slot_of_user` to cover user rows ``0..num_users-1`` (doubling)."""
        if num_users > self.slot_of_user.shape[0]:
            slots = np.full(max(num_users, 2 * self.slot_of_user.shape[0]), -1, dtype=np.int64)
            slots[: self.slot_of_user.shape[0]] = self.slot_of_user
            self.slot_of_user = slots

    def slots_for(self, users: np.ndarray) -> np.ndarray:
        """Slots of ``users`` (sorted unique user rows), allocating and evicting as needed.

        Every user of ``users`` counts as seen now, so none of them is evicted for another.

        Raises:
            RuntimeError: more users than ``capacity`` (callers check this before changing
                anything, so it is never raised half-way through a batch).
        """
        slots = self.slot_of_user[users].copy()
        self.last_seen[slots[slots >= 0]] = self.tick  # protect this batch's users
        missing = np.flatnonzero(slots < 0)
        if missing.size == 0:
            return slots
        cap = self.capacity
        if users.size > cap:
            raise RuntimeError(f"{users.size} users in one batch exceed max_users_state={cap}")
        fresh = min(missing.size, cap - self.num_slots)
        self._reserve_slots(self.num_slots + fresh)
        new_slots = np.arange(self.num_slots, self.num_slots + fresh, dtype=np.int64)
        self.num_slots += fresh
        self.last_seen[new_slots] = self.tick
        evict_count = missing.size - fresh
        if evict_count:
            new_slots = np.concatenate([new_slots, self._evict(evict_count)])
        slots[missing] = new_slots
        self.slot_of_user[users[missing]] = new_slots
        self.slot_user[new_slots] = users[missing]
        self.last_seen[new_slots] = self.tick
        return slots

    def _evict(self, count: int) -> np.ndarray:
        """Free the ``count`` least recently seen slots (ties by slot number); sorted slots."""
        used = self.num_slots
        # This batch's users are at tick: only slots seen before can go.
        key = self.last_seen[:used]
        candidates = np.flatnonzero(key < self.tick)
        pick = candidates[np.lexsort((candidates, key[candidates]))[:count]]
        old_users = self.slot_user[pick]
        self.slot_of_user[old_users[old_users >= 0]] = -1
        self.windows[pick] = 0
        if self.keep_histories:
            for s in pick.tolist():
                self.histories[s] = np.zeros(0, dtype=np.int64)
        return np.sort(pick)

    def _reserve_slots(self, n: int) -> None:
        """Grow the per-slot arrays to at least ``n`` slots (doubling, at most ``capacity``)."""
        cap = self.windows.shape[0]
        if n <= cap:
            return
        new_cap = min(max(n, 2 * cap, 16), self.capacity)
        windows = np.zeros((new_cap, self.window), dtype=np.int64)
        windows[:cap] = self.windows
        self.windows = windows
        slot_user = np.full(new_cap, -1, dtype=np.int64)
        slot_user[:cap] = self.slot_user
        self.slot_user = slot_user
        last = np.zeros(new_cap, dtype=np.int64)
        last[:cap] = self.last_seen
        self.last_seen = last
        if self.keep_histories:
            self.histories.extend(np.zeros(0, dtype=np.int64) for _ in range(new_cap - cap))

    # ------------------------------------------------------------------ reading and writing
    def stored_windows(self, user_rows: np.ndarray) -> np.ndarray:
        """``(len(user_rows), W)`` stored windows; zeros for -1 (unknown) or slot-less users."""
        out = np.zeros((user_rows.size, self.window), dtype=np.int64)
        known = user_rows >= 0
        slots = np.full(user_rows.size, -1, dtype=np.int64)
        slots[known] = self.slot_of_user[user_rows[known]]
        has = slots >= 0
        out[has] = self.windows[slots[has]]
        return out

    def slot_windows(self, slots: np.ndarray) -> np.ndarray:
        """``(len(slots), W)`` copy of the windows of ``slots``."""
        return self.windows[slots]

    def histories_of(self, user_rows: np.ndarray) -> list[np.ndarray]:
        """Full history of each user row (empty for negative rows and slot-less users)."""
        hists = []
        for key in user_rows.tolist():
            slot = self.slot_of_user[key] if key >= 0 else -1
            hists.append(self.histories[slot] if slot >= 0 else np.zeros(0, dtype=np.int64))
        return hists

    def record(self, slots: np.ndarray, lay: BatchLayout) -> None:
        """Store a learned batch: the last ``W`` items of each user's block become its window,
        its events join its history, and its users count as seen at this tick.

        Args:
            slots: slot of each user of ``lay.users`` (from :meth:`slots_for`).
            lay: the batch laid out after these slots' windows.
        """
        W = self.window
        take = (lay.block_end - W)[:, None] + np.arange(W)  # (U, W)
        self.windows[slots] = lay.flat[take]
        self.last_seen[slots] = self.tick
        if self.keep_histories:
            counts = np.bincount(lay.group, minlength=lay.users.size)
            starts = lay.block_start + W
            for k, s in enumerate(slots.tolist()):
                new = lay.flat[starts[k] : starts[k] + counts[k]]
                self.histories[s] = np.concatenate([self.histories[s], new])

    def advance(self) -> None:
        """End a batch: later batches' users are more recent than this one's."""
        self.tick += 1

    # ------------------------------------------------------------------ persistence
    def state_arrays(self, num_users: int) -> dict[str, Any]:
        """Copies of the state of user rows ``0..num_users-1`` and the used slots.

        Histories are stored flat (``history_values``) with one length per slot
        (``history_lengths``; both empty without ``keep_histories``).
        """
        n_slots = self.num_slots
        if self.keep_histories:
            hists = self.histories[:n_slots]
            lengths = np.array([h.size for h in hists], dtype=np.int64)
            values = np.concatenate(hists) if hists else np.zeros(0, dtype=np.int64)
        else:
            lengths = np.zeros(0, dtype=np.int64)
            values = np.zeros(0, dtype=np.int64)
        return {
            "slot_of_user": self.slot_of_user[:num_users].copy(),
            "slot_user": self.slot_user[:n_slots].copy(),
            "windows": self.windows[:n_slots].copy(),
            "last_seen": self.last_seen[:n_slots].copy(),
            "history_lengths": lengths,
            "history_values": values,
            "tick": int(self.tick),
        }

    @classmethod
    def merged(
        cls,
        states: list[dict[str, Any]],
        window: int,
        capacity: int,
        keep_histories: bool,
        num_users: int,
    ) -> UserState:
        """One state from the :meth:`state_arrays` of the ranks of a data-parallel group.

        Every rank starts from the same restored state and records only its own users, and
        every rank advances the same tick, so for each user the copy seen last (largest
        ``last_seen``; the first rank on ties, whose copies are equal) is the current one.
        When more users than ``capacity`` remain, the least recently seen go.
        """
        users_parts, windows, last, rank_of, slot_in = [], [], [], [], []
        for r, st in enumerate(states):
            kept = np.flatnonzero(st["slot_user"] >= 0)
            users_parts.append(st["slot_user"][kept])
            windows.append(st["windows"][kept])
            last.append(st["last_seen"][kept])
            rank_of.append(np.full(kept.size, r, dtype=np.int64))
            slot_in.append(kept)
        u = np.concatenate(users_parts) if users_parts else np.zeros(0, np.int64)
        seen = np.concatenate(last) if last else np.zeros(0, np.int64)
        ranks = np.concatenate(rank_of) if rank_of else np.zeros(0, np.int64)
        order = np.lexsort((ranks, -seen, u))  # by user, newest first, lowest rank first
        first = order[np.r_[True, u[order][1:] != u[order][:-1]]] if u.size else order
        if first.size > capacity:  # keep the most recently seen (ties: lower user row)
            first = first[np.lexsort((u[first], -seen[first]))[:capacity]]
        first = first[np.argsort(u[first], kind="stable")]
        out = cls(window, capacity, keep_histories)
        out.reserve_users(num_users)
        n = first.size
        out._reserve_slots(n)
        out.num_slots = n
        all_windows = np.concatenate(windows) if windows else np.zeros((0, window), np.int64)
        out.slot_user[:n] = u[first]
        out.windows[:n] = all_windows[first]
        out.last_seen[:n] = seen[first]
        out.slot_of_user[u[first]] = np.arange(n, dtype=np.int64)
        if keep_histories:
            slots = np.concatenate(slot_in) if slot_in else np.zeros(0, np.int64)
            for k, idx in enumerate(first.tolist()):
                st = states[int(ranks[idx])]
                ends = np.cumsum(st["history_lengths"])
                s_idx = int(slots[idx])
                start = int(ends[s_idx] - st["history_lengths"][s_idx])
                out.histories[k] = st["history_values"][start : int(ends[s_idx])].copy()
        out.tick = int(max((int(st["tick"]) for st in states), default=0))
        return out

    @classmethod
    def from_state_arrays(
        cls, state: dict[str, Any], window: int, capacity: int, keep_histories: bool
    ) -> UserState:
        """Rebuild from :meth:`state_arrays` (numpy arrays); it continues exactly."""
        users = cls(window, capacity, keep_histories)
        slot_of_user = state["slot_of_user"]
        users.slot_of_user = np.full(max(slot_of_user.size, 16), -1, dtype=np.int64)
        users.slot_of_user[: slot_of_user.size] = slot_of_user
        n_slots = int(state["slot_user"].shape[0])
        users._reserve_slots(n_slots)
        users.num_slots = n_slots
        users.slot_user[:n_slots] = state["slot_user"]
        users.windows[:n_slots] = state["windows"]
        users.last_seen[:n_slots] = state["last_seen"]
        if keep_histories:
            lengths = state["history_lengths"]
            values = state["history_values"]
            parts = np.split(values.astype(np.int64), np.cumsum(lengths)[:-1]) if n_slots else []
            users.histories[:n_slots] = [p.copy() for p in parts]
        users.tick = int(state["tick"])
        return users
