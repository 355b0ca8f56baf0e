"""Online (incremental) training on an interaction stream over a live item graph (DESIGN §3-4).

:class:`OnlineTrainer` consumes micro-batches of already-validated events — external user and
item ids, event times, weights — from any source (a Kafka consumer, a log replay, a test) and
keeps everything the engine needs in one object:

* growable id maps (items get rows ``1, 2, ...`` in order of first appearance; row 0 = padding;
  users get rows ``0, 1, ...``), and a model, optimizer state and item graph that grow with them;
* the live :class:`~graph_store.ItemGraph`: on event ``(u, i)`` an edge of weight ``w/h`` joins
  ``i`` and the ``h``-th previous item of ``u`` (``h = 1..hops``; ``w`` is the event weight),
  stamped with the event time so ``half_life`` decay applies;
* a bounded recent sequence per user (the last ``maxlen + 1`` items), evicting the least recently
  seen users beyond ``max_users_state``;
* optionally every user's full history (for the prequential protocol's "exclude what the user
  has seen"; ``exclude_history="all"``).

One call to :meth:`OnlineTrainer.learn_many` = ids → graph → user state → ``steps_per_batch``
optimizer steps on the touched users' recent sequences, with SEvo smoothing the item-table update
over the graph's current snapshot. :meth:`OnlineTrainer.rank_before_learning` is the pure
"test" half of test-then-train. :meth:`OnlineTrainer.state_dict` /
:meth:`OnlineTrainer.from_state_dict` round-trip bit for bit (weights-only loadable).

The engine knows nothing of Kafka, Redis or files: validation and dead letters happen upstream.

Example:
    >>> trainer = OnlineTrainer(OnlineConfig(model="mf", maxlen=5, seed=0))
    >>> stats = trainer.learn_many(["u1", "u1", "u2"], ["a", "b", "a"], [1.0, 2.0, 3.0])
    >>> stats["new_items"], trainer.num_items, float(trainer.graph.to_scipy()[1, 2])
    (2, 2, 1.0)
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from engine.config import (
    HISTORY_MODES,
    NEW_ITEM_POLICIES,
    OPTIMIZERS,
    OnlineConfig,
)
from engine.config import ONLINE_MODELS as MODELS
from engine.metrics import target_ranks
from engine.models import Recommender, build_model, model_class
from engine.optim import SEvoAdamW
from engine.sevo import Smoother
from graph_store import ItemGraph

__all__ = [
    "HISTORY_MODES",
    "MODELS",
    "NEW_ITEM_POLICIES",
    "OPTIMIZERS",
    "OnlineConfig",
    "OnlineTrainer",
]

log = logging.getLogger(__name__)

_STATE_FORMAT = 1
_PAD_ID = "<pad>"


# ---------------------------------------------------------------------- small numpy helpers
def _as_str_array(name: str, values: Any) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    return arr.astype(str)


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, s + n)`` for each (s, n), vectorised."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    offsets = np.cumsum(lengths) - lengths  # start of each range in the output
    return np.repeat(starts - offsets, lengths) + np.arange(total, dtype=np.int64)


def _left_compact(seqs: np.ndarray) -> np.ndarray:
    """Move the zeros of each row to the left, keeping the order of the non-zeros."""
    if seqs.size == 0:
        return seqs
    perm = np.argsort(seqs != 0, axis=1, kind="stable")
    return np.take_along_axis(seqs, perm, axis=1)


@dataclass
class _Layout:
    """Where each event of a batch sits among its user's recent items.

    Events are grouped by user (stable: arrival order within a user). ``flat`` holds, per user in
    the batch, a block of ``W = maxlen + 1`` slots with the user's recent window (left-padded, as
    stored), then that user's events of this batch. ``pos[e]`` is event ``e``'s index in ``flat``;
    ``flat[pos[e] - h]`` is its ``h``-th previous item (0 = none) for ``h <= W``.
    """

    users: np.ndarray  # (U,) user rows (or -1 for unknown users) in the batch, sorted
    group: np.ndarray  # (B,) index into ``users`` of each event
    rank: np.ndarray  # (B,) how many earlier events of the same user are in the batch
    block_start: np.ndarray  # (U,)
    block_end: np.ndarray  # (U,)
    flat: np.ndarray  # (U * W + B,) int64 item rows
    pos: np.ndarray  # (B,)


def _layout(user_keys: np.ndarray, item_rows: np.ndarray, windows: np.ndarray) -> _Layout:
    """Build a :class:`_Layout`; ``windows[k]`` is the stored window of the k-th sorted user."""
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
    return _Layout(users, group, rank, block_start, block_end, flat, pos)


def _clone_tree(value: Any) -> Any:
    """Deep copy of nested dicts/lists/tuples, cloning tensors (a snapshot of live state)."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: _clone_tree(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clone_tree(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_clone_tree(v) for v in value)
    return value


def _build_model(config: OnlineConfig, num_items: int, num_users: int) -> Recommender:
    """The model of ``config`` with these table sizes; a sequential one encodes ``maxlen`` items
    unless ``model_overrides`` says otherwise."""
    kwargs = dict(config.model_overrides)
    if model_class(config.model).sequential:
        kwargs.setdefault("maxlen", config.maxlen)
    return build_model(config.model, num_items, num_users, seed=config.seed, **kwargs)


class _YoungRowsRaw:
    """ψ, except that rows of items with fewer than ``threshold`` learned events keep their raw
    update (the item counts are read from the trainer at each call)."""

    def __init__(self, smoother: Smoother, trainer: OnlineTrainer, threshold: int) -> None:
        self.smoother, self.trainer, self.threshold = smoother, trainer, int(threshold)

    def __call__(self, X: torch.Tensor) -> torch.Tensor:
        out = self.smoother(X)
        counts = self.trainer._item_counts
        m = min(X.shape[0], counts.shape[0])
        young = np.zeros(X.shape[0], dtype=bool)
        young[1:m] = counts[1:m] < self.threshold  # row 0 (padding) never
        if young.any():
            mask = torch.from_numpy(young)
            out[mask] = X[mask].to(out.dtype)
        return out

    def __repr__(self) -> str:
        return f"_YoungRowsRaw({self.smoother!r}, threshold={self.threshold})"


class OnlineTrainer:
    """Incremental trainer over a live item graph.

    Args:
        config: settings; ``None`` uses :class:`OnlineConfig` defaults.

    Attributes:
        config: the settings.
        model: the recommender (its tables have ``max(num_items, 1) + 1`` item rows).
        optimizer: ``SEvoAdamW`` (smoothing group = the item table when ``optimizer`` is
            ``"sevo-adamw"``).
        graph: the live :class:`~graph_store.ItemGraph` over item rows (row 0 = padding).
        generator: the ``torch.Generator`` of every training step (negatives, dropout).
        events_applied: events learned so far.
    """

    def __init__(self, config: OnlineConfig | None = None) -> None:
        self.config = cfg = config if config is not None else OnlineConfig()
        self._W = cfg.maxlen + 1
        self._item_ids: list[str] = [_PAD_ID]
        self._item_rows: dict[str, int] = {}
        self._user_ids: list[str] = []
        self._user_rows: dict[str, int] = {}
        self._item_counts = np.zeros(2, dtype=np.int64)  # events per item row (capacity grows)
        # Per-user state lives in "slots": windows[slot] is the user's recent items (left-padded).
        self._slot_of_user = np.full(16, -1, dtype=np.int64)  # by user row; capacity grows
        self._slot_user = np.full(0, -1, dtype=np.int64)
        self._windows = np.zeros((0, self._W), dtype=np.int64)
        self._last_seen = np.zeros(0, dtype=np.int64)
        self._histories: list[np.ndarray] = []  # by slot, when exclude_history == "all"
        self._num_slots = 0
        self._tick = 0
        self.events_applied = 0
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.graph = ItemGraph(2, cfg.half_life)
        self.model = _build_model(cfg, 1, 1)
        self.optimizer = self._build_optimizer()

    # ------------------------------------------------------------------ construction helpers
    def _build_optimizer(self) -> SEvoAdamW:
        cfg = self.config
        groups = self.model.smoothing_groups()
        if len(groups) != 1 or len(groups[0]) != 1:
            raise ValueError(f"model {cfg.model!r} must smooth exactly one item table online")
        table = groups[0][0]
        rest = [p for p in self.model.parameters() if p is not table]
        smoother = None
        if cfg.optimizer == "sevo-adamw":
            smoother = Smoother(
                self.graph,
                beta=cfg.sevo_beta,
                L=cfg.sevo_steps,
                passthrough_isolated=cfg.new_item_policy == "passthrough",
            )
            if cfg.new_item_policy == "young":
                smoother = _YoungRowsRaw(smoother, self, cfg.young_item_events)
        param_groups: list[dict[str, Any]] = [{"params": [table], "smoother": smoother}]
        if rest:
            param_groups.append({"params": rest})
        return SEvoAdamW(
            param_groups,
            lr=cfg.lr,
            betas=cfg.betas,
            weight_decay=cfg.weight_decay,
            carry_unsampled=cfg.carry_unsampled,
        )

    # ------------------------------------------------------------------ counters
    @property
    def num_items(self) -> int:
        """Items seen so far (rows ``1..num_items``)."""
        return len(self._item_ids) - 1

    @property
    def num_users(self) -> int:
        """Users seen so far."""
        return len(self._user_ids)

    @property
    def num_users_in_state(self) -> int:
        """Users whose recent sequence is currently kept (``<= max_users_state``)."""
        return int((self._slot_user[: self._num_slots] >= 0).sum())

    def item_ids(self) -> list[str]:
        """External ids of items ``1..num_items``, in row order (a copy)."""
        return self._item_ids[1:]

    def user_ids(self) -> list[str]:
        """External ids of users ``0..num_users-1``, in row order (a copy)."""
        return list(self._user_ids)

    def item_event_counts(self, items: Sequence[str] | np.ndarray) -> np.ndarray:
        """Events learned so far per item (0 for unknown items), int64 ``(len(items),)``."""
        rows = self._lookup(self._item_rows, _as_str_array("items", items), missing=0)
        return self._item_counts[rows] * (rows > 0)

    # ------------------------------------------------------------------ id maps
    @staticmethod
    def _lookup(table: dict[str, int], keys: np.ndarray, *, missing: int) -> np.ndarray:
        """Rows of ``keys`` (``missing`` for unknown ones): one dict lookup per event, which
        for micro-batches is several times cheaper than ``np.unique`` over strings."""
        if keys.size == 0:
            return np.zeros(0, dtype=np.int64)
        get = table.get
        return np.fromiter(
            (get(k, missing) for k in keys.tolist()), dtype=np.int64, count=keys.size
        )

    @staticmethod
    def _assign(table: dict[str, int], ids: list[str], keys: np.ndarray) -> tuple[np.ndarray, int]:
        """Rows of ``keys``, giving new keys the next rows in order of first appearance."""
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

    def _grow(self) -> None:
        n_items, n_users = self.num_items, self.num_users
        model = self.model
        if max(n_items, 1) > model.num_items or max(n_users, 1) > model.num_users:
            # New rows are drawn from a generator seeded by (seed, sizes): deterministic, and the
            # same whether or not the trainer was restored from a checkpoint in between.
            model.grow(num_items=max(n_items, 1, model.num_items), num_users=max(n_users, 1))
        self.graph.grow(model.num_items + 1)
        if n_items + 1 > self._item_counts.shape[0]:
            counts = np.zeros(max(n_items + 1, 2 * self._item_counts.shape[0]), dtype=np.int64)
            counts[: self._item_counts.shape[0]] = self._item_counts
            self._item_counts = counts
        if n_users > self._slot_of_user.shape[0]:
            slots = np.full(max(n_users, 2 * self._slot_of_user.shape[0]), -1, dtype=np.int64)
            slots[: self._slot_of_user.shape[0]] = self._slot_of_user
            self._slot_of_user = slots

    # ------------------------------------------------------------------ user state (slots)
    def _slots_for(self, users: np.ndarray) -> np.ndarray:
        """Slots of ``users`` (sorted unique user rows), allocating / evicting as needed."""
        slots = self._slot_of_user[users].copy()
        self._last_seen[slots[slots >= 0]] = self._tick  # protect this batch's users
        missing = np.flatnonzero(slots < 0)
        if missing.size == 0:
            return slots
        cap = self.config.max_users_state
        if users.size > cap:  # learn_many checks this before changing anything
            raise RuntimeError(f"{users.size} users in one batch exceed max_users_state={cap}")
        fresh = min(missing.size, cap - self._num_slots)
        self._ensure_slot_capacity(self._num_slots + fresh)
        new_slots = np.arange(self._num_slots, self._num_slots + fresh, dtype=np.int64)
        self._num_slots += fresh
        self._last_seen[new_slots] = self._tick
        evict_count = missing.size - fresh
        if evict_count:
            used = self._num_slots
            # Least recently seen first; ties by slot number. This batch's users are at _tick.
            key = self._last_seen[:used]
            candidates = np.flatnonzero(key < self._tick)
            pick = candidates[np.lexsort((candidates, key[candidates]))[:evict_count]]
            old_users = self._slot_user[pick]
            self._slot_of_user[old_users[old_users >= 0]] = -1
            self._windows[pick] = 0
            if self.config.exclude_history == "all":
                for s in pick.tolist():
                    self._histories[s] = np.zeros(0, dtype=np.int64)
            new_slots = np.concatenate([new_slots, np.sort(pick)])
        slots[missing] = new_slots
        self._slot_of_user[users[missing]] = new_slots
        self._slot_user[new_slots] = users[missing]
        self._last_seen[new_slots] = self._tick
        return slots

    def _ensure_slot_capacity(self, n: int) -> None:
        cap = self._windows.shape[0]
        if n <= cap:
            return
        new_cap = min(max(n, 2 * cap, 16), self.config.max_users_state)
        windows = np.zeros((new_cap, self._W), dtype=np.int64)
        windows[:cap] = self._windows
        self._windows = windows
        slot_user = np.full(new_cap, -1, dtype=np.int64)
        slot_user[:cap] = self._slot_user
        self._slot_user = slot_user
        last = np.zeros(new_cap, dtype=np.int64)
        last[:cap] = self._last_seen
        self._last_seen = last
        if self.config.exclude_history == "all":
            self._histories.extend(np.zeros(0, dtype=np.int64) for _ in range(new_cap - cap))

    def _stored_windows(self, user_rows: np.ndarray) -> np.ndarray:
        """Stored windows of user rows (zeros for unknown users, -1, or users without a slot)."""
        out = np.zeros((user_rows.size, self._W), dtype=np.int64)
        known = user_rows >= 0
        slots = np.full(user_rows.size, -1, dtype=np.int64)
        slots[known] = self._slot_of_user[user_rows[known]]
        has = slots >= 0
        out[has] = self._windows[slots[has]]
        return out

    # ------------------------------------------------------------------ learning
    def learn_many(
        self,
        users: Sequence[str] | np.ndarray,
        items: Sequence[str] | np.ndarray,
        times: Sequence[float] | np.ndarray,
        weights: Sequence[float] | np.ndarray | None = None,
    ) -> dict[str, Any]:
        """Learn one micro-batch of validated events (mutates the trainer).

        Events are applied in the given (arrival) order: a user's earlier events of the batch
        precede its later ones in the graph and in its sequence.

        Args:
            users: ``(B,)`` external user ids (converted to ``str``).
            items: ``(B,)`` external item ids.
            times: ``(B,)`` event times, unix seconds (finite).
            weights: ``(B,)`` non-negative event weights scaling the event's graph edges
                (default 1). They do not weight the training loss.

        Returns:
            ``{"events", "new_items", "new_users", "trained_users", "loss",
            "seconds": {"ids", "graph", "state", "train"}}``; ``loss`` is the mean over the
            batch's optimizer steps (NaN when no touched user has two items yet).

        Raises:
            ValueError: on mismatched lengths or non-finite times / bad weights (the engine's
                input must already be validated; nothing is changed when this is raised).
        """
        t0 = time.perf_counter()
        cfg = self.config
        users_s = _as_str_array("users", users)
        items_s = _as_str_array("items", items)
        times_a = np.asarray(times, dtype=np.float64).reshape(-1)
        B = users_s.shape[0]
        if items_s.shape[0] != B or times_a.shape[0] != B:
            raise ValueError(
                f"users, items and times must have equal length, got {B}, {items_s.shape[0]}, "
                f"{times_a.shape[0]}"
            )
        if weights is None:
            weights_a = np.ones(B, dtype=np.float64)
        else:
            weights_a = np.asarray(weights, dtype=np.float64).reshape(-1)
            if weights_a.shape[0] != B:
                raise ValueError(f"weights must have length {B}, got {weights_a.shape[0]}")
            if not np.all(np.isfinite(weights_a)) or (B and weights_a.min() < 0):
                raise ValueError("weights must be finite and non-negative")
        if not np.all(np.isfinite(times_a)):
            raise ValueError("times must be finite")
        nan = float("nan")
        stats: dict[str, Any] = {
            "events": B,
            "new_items": 0,
            "new_users": 0,
            "trained_users": 0,
            "loss": nan,
            "seconds": {"ids": 0.0, "graph": 0.0, "state": 0.0, "train": 0.0},
        }
        if B == 0:
            return stats
        if np.any(items_s == _PAD_ID):
            raise ValueError(f"{_PAD_ID!r} is reserved for the padding item")
        if np.unique(users_s).size > cfg.max_users_state:
            raise ValueError(
                f"a batch touches {np.unique(users_s).size} users but max_users_state is "
                f"{cfg.max_users_state}; use smaller batches or a larger max_users_state"
            )

        # (1) ids → rows; grow model, optimizer state (lazily, on its next step) and graph.
        item_rows, new_items = self._assign(self._item_rows, self._item_ids, items_s)
        user_rows, new_users = self._assign(self._user_rows, self._user_ids, users_s)
        self._grow()
        stats["new_items"], stats["new_users"] = new_items, new_users
        t1 = time.perf_counter()

        # (2) graph edges to each event's previous H items (this batch's earlier ones included).
        uniq_users = np.unique(user_rows)
        slots = self._slots_for(uniq_users)
        lay = _layout(user_rows, item_rows, self._windows[slots])
        src_parts, dst_parts, w_parts, t_parts = [], [], [], []
        for h in range(1, cfg.hops + 1):
            prev = lay.flat[lay.pos - h]
            ok = (prev != 0) & (prev != item_rows)
            src_parts.append(item_rows[ok])
            dst_parts.append(prev[ok])
            w_parts.append(weights_a[ok] / h)
            t_parts.append(times_a[ok])
        self.graph.add_edges(
            np.concatenate(src_parts),
            np.concatenate(dst_parts),
            np.concatenate(w_parts),
            np.concatenate(t_parts),
        )
        t2 = time.perf_counter()

        # (3) user state: the last W items of each block become the user's window.
        W = self._W
        take = (lay.block_end - W)[:, None] + np.arange(W)  # (U, W)
        self._windows[slots] = lay.flat[take]
        self._last_seen[slots] = self._tick
        if cfg.exclude_history == "all":
            counts = np.bincount(lay.group, minlength=uniq_users.size)
            starts = lay.block_start + W
            for k, s in enumerate(slots.tolist()):
                new = lay.flat[starts[k] : starts[k] + counts[k]]
                self._histories[s] = np.concatenate([self._histories[s], new])
        self._item_counts[: self.num_items + 1] += np.bincount(
            item_rows, minlength=self.num_items + 1
        )
        t3 = time.perf_counter()

        # (4) a few optimizer steps on the touched users' recent sequences.
        seqs = self._windows[slots]  # (U, W) left-padded
        trainable = (seqs != 0).sum(axis=1) >= 2
        if trainable.any():
            batch = {
                "users": torch.from_numpy(uniq_users[trainable]),
                "seqs": torch.from_numpy(seqs[trainable]),
            }
            self.model.train()
            losses = []
            for _ in range(cfg.steps_per_batch):
                self.optimizer.zero_grad(set_to_none=True)
                loss = self.model.loss(batch, self.generator)
                loss.backward()
                self.optimizer.step()
                losses.append(float(loss.detach()))
            stats["loss"] = float(np.mean(losses))
            stats["trained_users"] = int(trainable.sum())
            if not math.isfinite(stats["loss"]):
                raise FloatingPointError(f"online training diverged (loss {stats['loss']})")
        t4 = time.perf_counter()

        self._tick += 1
        self.events_applied += B
        stats["seconds"] = {"ids": t1 - t0, "graph": t2 - t1, "state": t3 - t2, "train": t4 - t3}
        return stats

    # ------------------------------------------------------------------ prequential ranking
    @torch.no_grad()
    def rank_before_learning(
        self, users: Sequence[str] | np.ndarray, items: Sequence[str] | np.ndarray
    ) -> np.ndarray:
        """Rank each event's item with the current model, before learning it (pure).

        Each event is ranked with the user's recent items *including the batch's earlier events
        of that user* as input (they have happened), against every known item except the user's
        history (``exclude_history``: all items seen, or the recent window), the batch's earlier
        items of the user included; the target itself is never excluded. Ties are pessimistic
        (:func:`engine.metrics.target_ranks`). The model's parameters are those before the
        batch, so this is test-then-train at micro-batch granularity.

        Items unknown before this call (first seen in this batch) cannot be scored: they get
        rank ``num_items + 1`` — callers must count ``rank > num_items`` as a miss even when the
        catalogue is smaller than the cut-off K. Items first seen earlier in the same batch are
        not in the model yet either and are dropped from the inputs.

        Args:
            users: ``(B,)`` external user ids.
            items: ``(B,)`` external item ids.

        Returns:
            int64 ``(B,)`` ranks in ``1..num_items + 1``.
        """
        users_s = _as_str_array("users", users)
        items_s = _as_str_array("items", items)
        B = users_s.shape[0]
        if items_s.shape[0] != B:
            raise ValueError(f"users and items differ in length ({B} vs {items_s.shape[0]})")
        n = self.num_items
        ranks = np.full(B, n + 1, dtype=np.int64)
        if B == 0 or n == 0:
            return ranks
        item_rows = self._lookup(self._item_rows, items_s, missing=0)
        user_rows = self._lookup(self._user_rows, users_s, missing=-1)
        # Unknown users have no rows: key them apart (below -1) so each gets its own group.
        _, uinv = np.unique(users_s, return_inverse=True)
        keys = np.where(user_rows >= 0, user_rows, -2 - uinv.reshape(-1))
        uniq_keys = np.unique(keys)
        lay = _layout(
            keys, item_rows, self._stored_windows(np.where(uniq_keys >= 0, uniq_keys, -1))
        )
        T = self.config.maxlen
        seqs = _left_compact(lay.flat[lay.pos[:, None] - T + np.arange(T)])  # (B, T)
        ex_rows, ex_items = self._exclusions(lay, uniq_keys, seqs)
        targets = item_rows
        known = targets > 0
        model = self.model
        was_training = model.training
        model.eval()
        try:
            weight = model.item_output_weight()[: n + 1]  # (n+1, D)
            bias = model.item_output_bias()
            has_user_table = not model.sequential
            order = np.argsort(ex_rows, kind="stable")
            ex_rows, ex_items = ex_rows[order], ex_items[order]
            step = self.config.eval_batch_size
            for lo in range(0, B, step):
                hi = min(lo + step, B)
                sel = np.arange(lo, hi)[known[lo:hi]]
                if sel.size == 0:
                    continue
                urows = np.maximum(user_rows[sel], 0)
                batch = {"users": torch.from_numpy(urows), "seqs": torch.from_numpy(seqs[sel])}
                rep = model.user_repr(batch)  # (b, D)
                if has_user_table:
                    rep = rep * torch.from_numpy(user_rows[sel] >= 0).unsqueeze(1).to(rep.dtype)
                scores = rep @ weight.T  # (b, n+1)
                if bias is not None:
                    scores = scores + bias[: n + 1]
                a, b = np.searchsorted(ex_rows, [sel[0], sel[-1] + 1])
                local = np.full(hi - lo, -1, dtype=np.int64)
                local[sel - lo] = np.arange(sel.size)
                rr, ii = local[ex_rows[a:b] - lo], ex_items[a:b]
                keep = rr >= 0
                ranks[sel] = (
                    target_ranks(
                        scores,
                        torch.from_numpy(targets[sel]),
                        (torch.from_numpy(rr[keep]), torch.from_numpy(ii[keep])),
                    )
                    .cpu()
                    .numpy()
                )
        finally:
            model.train(was_training)
        return ranks

    def _exclusions(
        self, lay: _Layout, uniq_keys: np.ndarray, seqs: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(event, item row) pairs of each event's history; unknown items (0) dropped."""
        B = lay.pos.shape[0]
        if self.config.exclude_history == "window":
            rows = np.repeat(np.arange(B, dtype=np.int64), seqs.shape[1])
            items = seqs.reshape(-1)
        else:
            # Earlier events of the same user in this batch ...
            W = self._W
            start_in_batch = (lay.block_start + W)[lay.group]
            batch_rows = np.repeat(np.arange(B, dtype=np.int64), lay.rank)
            batch_items = lay.flat[_ranges(start_in_batch, lay.rank)]
            # ... and the stored full history of each user.
            hists = []
            for key in uniq_keys.tolist():
                slot = self._slot_of_user[key] if key >= 0 else -1
                hists.append(self._histories[slot] if slot >= 0 else np.zeros(0, dtype=np.int64))
            lengths = np.array([h.size for h in hists], dtype=np.int64)
            flat_hist = np.concatenate(hists) if hists else np.zeros(0, dtype=np.int64)
            hist_start = np.cumsum(lengths) - lengths
            per_event = lengths[lay.group]
            hist_rows = np.repeat(np.arange(B, dtype=np.int64), per_event)
            hist_items = flat_hist[_ranges(hist_start[lay.group], per_event)]
            rows = np.concatenate([batch_rows, hist_rows])
            items = np.concatenate([batch_items, hist_items])
        keep = items > 0
        return rows[keep], items[keep]

    # ------------------------------------------------------------------ outputs for serving
    @torch.no_grad()
    def item_matrix(self) -> tuple[list[str], np.ndarray]:
        """``(item ids, (num_items, D) float32 matrix)``: the published item output vectors."""
        weight = self.model.item_output_weight()[1 : self.num_items + 1]
        return self.item_ids(), weight.detach().to(torch.float32).cpu().numpy().copy()

    @torch.no_grad()
    def user_vectors(self, users: Sequence[str] | np.ndarray) -> np.ndarray:
        """``(B, D)`` float32 user representations (scored against :meth:`item_matrix`).

        Sequential models encode the user's last ``maxlen`` items; MF returns the user row.
        Users without state (unknown, or evicted for a sequential model) get zero vectors.
        """
        users_s = _as_str_array("users", users)
        rows = self._lookup(self._user_rows, users_s, missing=-1)
        seqs = self._stored_windows(rows)[:, 1:]  # (B, T)
        known = rows >= 0
        if self.model.sequential:  # no items, no representation
            known &= (seqs != 0).any(axis=1)
        model = self.model
        was_training = model.training
        model.eval()
        try:
            dim = model.item_output_weight().shape[1]
            out = np.zeros((users_s.size, dim), dtype=np.float32)
            if known.any():
                batch = {
                    "users": torch.from_numpy(rows[known]),
                    "seqs": torch.from_numpy(seqs[known]),
                }
                out[known] = model.user_repr(batch).to(torch.float32).cpu().numpy()
        finally:
            model.train(was_training)
        return out

    def recent_items(self, users: Sequence[str] | np.ndarray) -> list[list[str]]:
        """Each user's kept recent items (oldest first, at most ``maxlen + 1``); ``[]`` for
        unknown users or users whose state was evicted. Served with the user vector so a
        client can exclude what the user has just seen."""
        rows = self._lookup(self._user_rows, _as_str_array("users", users), missing=-1)
        windows = self._stored_windows(rows)
        ids = self._item_ids
        return [[ids[r] for r in window[window > 0].tolist()] for window in windows]

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: tensors and plain Python values only.

        Loadable with ``torch.load(..., weights_only=True)``. Tensors are copies (later training
        does not change a state dict already taken).
        """
        n_slots = self._num_slots
        if self.config.exclude_history == "all":
            hists = self._histories[:n_slots]
            lengths = np.array([h.size for h in hists], dtype=np.int64)
            values = np.concatenate(hists) if hists else np.zeros(0, dtype=np.int64)
        else:
            lengths = np.zeros(0, dtype=np.int64)
            values = np.zeros(0, dtype=np.int64)
        graph = {k: torch.from_numpy(np.array(v)) for k, v in self.graph.state_arrays().items()}
        return {
            "format": _STATE_FORMAT,
            "config": self.config.to_dict(),
            "model_sizes": [int(self.model.num_items), int(self.model.num_users)],
            "model": _clone_tree(self.model.state_dict()),
            "optimizer": _clone_tree(self.optimizer.state_dict()),
            "generator": self.generator.get_state().clone(),
            "graph": graph,
            "item_ids": list(self._item_ids),
            "user_ids": list(self._user_ids),
            "item_counts": torch.from_numpy(self._item_counts[: self.num_items + 1].copy()),
            "slot_of_user": torch.from_numpy(self._slot_of_user[: self.num_users].copy()),
            "slot_user": torch.from_numpy(self._slot_user[:n_slots].copy()),
            "windows": torch.from_numpy(self._windows[:n_slots].copy()),
            "last_seen": torch.from_numpy(self._last_seen[:n_slots].copy()),
            "history_lengths": torch.from_numpy(lengths),
            "history_values": torch.from_numpy(values),
            "tick": int(self._tick),
            "events_applied": int(self.events_applied),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> OnlineTrainer:
        """Rebuild a trainer from :meth:`state_dict`; it continues bit for bit."""
        trainer = cls(OnlineConfig.from_dict(state["config"]))
        trainer._restore(state)
        return trainer

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Replace this trainer's whole state (config included) with ``state`` in place."""
        self.__init__(OnlineConfig.from_dict(state["config"]))
        self._restore(state)

    def _restore(self, state: dict[str, Any]) -> None:
        if state.get("format") != _STATE_FORMAT:
            raise ValueError(f"unsupported online trainer state format {state.get('format')!r}")
        cfg = self.config
        n_items, n_users = (int(x) for x in state["model_sizes"])
        self.model = _build_model(cfg, n_items, n_users)
        self.model.load_state_dict(state["model"])
        self.graph = ItemGraph.from_state_arrays({k: v.numpy() for k, v in state["graph"].items()})
        self.optimizer = self._build_optimizer()
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self._item_ids = list(state["item_ids"])
        self._item_rows = {k: i for i, k in enumerate(self._item_ids) if i > 0}
        self._user_ids = list(state["user_ids"])
        self._user_rows = {k: i for i, k in enumerate(self._user_ids)}
        counts = state["item_counts"].numpy()
        self._item_counts = np.zeros(max(counts.size, 2), dtype=np.int64)
        self._item_counts[: counts.size] = counts
        slot_of_user = state["slot_of_user"].numpy()
        self._slot_of_user = np.full(max(slot_of_user.size, 16), -1, dtype=np.int64)
        self._slot_of_user[: slot_of_user.size] = slot_of_user
        n_slots = int(state["slot_user"].shape[0])
        self._num_slots = 0
        self._ensure_slot_capacity(n_slots)
        self._num_slots = n_slots
        self._slot_user[:n_slots] = state["slot_user"].numpy()
        self._windows[:n_slots] = state["windows"].numpy()
        self._last_seen[:n_slots] = state["last_seen"].numpy()
        if cfg.exclude_history == "all":
            lengths = state["history_lengths"].numpy()
            values = state["history_values"].numpy()
            parts = np.split(values.astype(np.int64), np.cumsum(lengths)[:-1]) if n_slots else []
            self._histories[:n_slots] = [p.copy() for p in parts]
        self._tick = int(state["tick"])
        self.events_applied = int(state["events_applied"])
        if self.graph.num_nodes != self.model.num_items + 1:
            raise ValueError("inconsistent state: graph and item table sizes differ")

    def summary(self) -> dict[str, Any]:
        """Counters for logs and checkpoints.

        ``graph_nnz`` counts stored entries of A (both directions of each edge);
        ``graph_total_weight`` is the sum of all entries of the true (decayed to the latest event
        time) A, so each undirected edge counts twice; without decay and with ``hops=1`` and unit
        weights it is twice the number of (user-consecutive item pair) events. Reading them does
        not merge the graph's pending buffer (which would change later float rounding).
        """
        return {
            "events_applied": int(self.events_applied),
            "num_users": self.num_users,
            "num_items": self.num_items,
            "users_in_state": self.num_users_in_state,
            "graph_nnz": int(self.graph.to_scipy(raw=True).nnz),
            "graph_total_weight": float(self.graph.total_weight()),
        }

    def __repr__(self) -> str:
        c = self.config
        return (
            f"OnlineTrainer(model={c.model!r}, optimizer={c.optimizer!r}, items={self.num_items}, "
            f"users={self.num_users}, events={self.events_applied})"
        )
