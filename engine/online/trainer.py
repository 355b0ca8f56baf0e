""":class:`OnlineTrainer`: one object that learns micro-batches of events and can be saved.

The trainer coordinates its parts and owns what ties them together — the model, the optimizer
(and how the config chooses its smoother), the training generator and the state dict:

* :class:`~engine.online.ids.IdMaps`: external ids ↔ rows, events per item;
* :class:`~engine.online.users.UserState`: recent windows and histories, eviction;
* :func:`~engine.online.graph_updates.batch_edges`: what a batch adds to the live graph;
* :mod:`engine.online.ranking`: prequential ranks and the outputs serving publishes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from engine.config import OnlineConfig
from engine.models import Recommender, build_model, model_class
from engine.models.base import zero_loss
from engine.models.draws import KeyedDraws
from engine.online import ranking
from engine.online.collective import Collective, SingleProcess, pack_arrays, unpack_arrays
from engine.online.graph_updates import batch_edges
from engine.online.ids import PAD_ID, IdMaps, as_str_array
from engine.online.layout import build_layout
from engine.online.users import UserState
from engine.optim import SEvoAdamW
from engine.sevo import Smoother
from graph_store import ItemGraph

__all__ = ["OnlineTrainer"]

_STATE_FORMAT = 1


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


def _tensors(arrays: dict[str, Any]) -> dict[str, Any]:
    """``arrays`` with numpy arrays as tensors (state dicts load with ``weights_only=True``)."""
    return {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in arrays.items()}


def _arrays(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` with tensors as numpy arrays (the parts are pure numpy)."""
    return {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in state.items()}


def _build_model(config: OnlineConfig, num_items: int, num_users: int) -> Recommender:
    """The model of ``config`` with these table sizes; a sequential one encodes ``maxlen`` items
    unless ``model_overrides`` says otherwise."""
    kwargs = dict(config.model_overrides)
    if model_class(config.model).sequential:
        kwargs.setdefault("maxlen", config.maxlen)
    return build_model(config.model, num_items, num_users, seed=config.seed, **kwargs)


def _check_events(
    users: Sequence[str] | np.ndarray,
    items: Sequence[str] | np.ndarray,
    times: Sequence[float] | np.ndarray,
    weights: Sequence[float] | np.ndarray | None,
    max_users: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A batch as ``(users, items, times, weights)`` arrays, or ``ValueError`` (see
    :meth:`OnlineTrainer.learn_many`); checked before anything changes."""
    users_s = as_str_array("users", users)
    items_s = as_str_array("items", items)
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
    if np.any(items_s == PAD_ID):
        raise ValueError(f"{PAD_ID!r} is reserved for the padding item")
    touched = np.unique(users_s).size
    if touched > max_users:
        raise ValueError(
            f"a batch touches {touched} users but max_users_state is {max_users}; use smaller "
            f"batches or a larger max_users_state"
        )
    return users_s, items_s, times_a, weights_a


#: How often (in learned events) the trainer drops edges that decayed below ``prune_below``.
PRUNE_EVERY_EVENTS = 25_000


class _YoungRowsRaw:
    """ψ, except that rows of items with fewer than ``threshold`` learned events keep their raw
    update (the item counts are read from the trainer at each call)."""

    def __init__(self, smoother: Smoother, trainer: OnlineTrainer, threshold: int) -> None:
        self.smoother, self.trainer, self.threshold = smoother, trainer, int(threshold)

    def __call__(self, X: torch.Tensor) -> torch.Tensor:
        out = self.smoother(X)
        # Through the trainer: restoring a state replaces its id maps and their counts.
        counts = self.trainer._ids.item_counts
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
        config: settings; ``None`` uses :class:`~engine.config.OnlineConfig` defaults.
        collective: the data-parallel group this trainer is one rank of (default: a single
            process). Every rank holds the same model, optimizer state, id maps and graph;
            each learns its own events' users (see :meth:`learn_many`).

    Attributes:
        config: the settings.
        model: the recommender (its tables have ``max(num_items, 1) + 1`` item rows).
        optimizer: ``SEvoAdamW`` (smoothing group = the item table when ``optimizer`` is
            ``"sevo-adamw"``).
        graph: the live :class:`~graph_store.ItemGraph` over item rows (row 0 = padding).
        generator: the ``torch.Generator`` of every training step. Models with keyed draws
            (SASRec) take one seed per optimizer step from it and key their negatives and
            dropout masks by (seed, user row, position), so a batch split across ranks draws
            what the whole batch would (:mod:`engine.models.draws`); other models draw their
            randomness from it directly (single process only).
        events_applied: events learned so far by the whole group (with
            ``decay_unit="events"`` also the clock of the graph's edge decay).
    """

    def __init__(
        self, config: OnlineConfig | None = None, collective: Collective | None = None
    ) -> None:
        self.collective = collective if collective is not None else SingleProcess()
        self.config = cfg = config if config is not None else OnlineConfig()
        self._ids = IdMaps()
        self._users = UserState(cfg.maxlen + 1, cfg.max_users_state, cfg.exclude_history == "all")
        self.events_applied = 0
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.graph = ItemGraph(2, cfg.half_life)
        self.model = _build_model(cfg, 1, 1)
        self.optimizer = self._build_optimizer()
        self._optimizer_s = 0.0
        if self.collective.distributed and not self.model.supports_keyed_draws:
            raise ValueError(
                f"data-parallel training needs a model with keyed random draws; {cfg.model!r} "
                "has none (use sasrec, or one process)"
            )

    def _build_optimizer(self) -> SEvoAdamW:
        """SEvo-AdamW with the item table in a group of its own, smoothed over the live graph
        per ``optimizer`` and ``new_item_policy``; the other parameters get plain AdamW."""
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
            smooth=cfg.sevo_smooth,
        )

    # ------------------------------------------------------------------ counters
    @property
    def num_items(self) -> int:
        """Items seen so far (rows ``1..num_items``)."""
        return self._ids.num_items

    @property
    def num_users(self) -> int:
        """Users seen so far."""
        return self._ids.num_users

    @property
    def num_users_in_state(self) -> int:
        """Users whose recent sequence is currently kept (``<= max_users_state``)."""
        return self._users.num_in_state

    def item_ids(self) -> list[str]:
        """External ids of items ``1..num_items``, in row order (a copy)."""
        return self._ids.item_ids[1:]

    def user_ids(self) -> list[str]:
        """External ids of users ``0..num_users-1``, in row order (a copy)."""
        return list(self._ids.user_ids)

    def item_event_counts(self, items: Sequence[str] | np.ndarray) -> np.ndarray:
        """Events learned so far per item (0 for unknown items), int64 ``(len(items),)``."""
        return self._ids.event_counts(as_str_array("items", items))

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

        With ``decay_unit="events"`` the edges are stamped with the running event count instead
        of ``times`` (see :class:`~engine.config.OnlineConfig`).

        Returns:
            ``{"events", "new_items", "new_users", "trained_users", "loss",
            "seconds": {"ids", "graph", "state", "train"}}``; ``loss`` is the mean over the
            batch's optimizer steps (NaN when no touched user has two items yet).

        Raises:
            ValueError: on mismatched lengths or non-finite times / bad weights (the engine's
                input must already be validated; nothing is changed when this is raised).
        """
        t0 = time.perf_counter()
        exchanged_before, self._optimizer_s = self.collective.seconds, 0.0
        users_s, items_s, times_a, weights_a = _check_events(
            users, items, times, weights, self.config.max_users_state
        )
        B = users_s.shape[0]
        stats: dict[str, Any] = {
            "events": B,
            "group_events": B,
            "new_items": 0,
            "new_users": 0,
            "trained_users": 0,
            "loss": float("nan"),
            "seconds": {"ids": 0.0, "graph": 0.0, "state": 0.0, "train": 0.0},
        }
        self._optimizer_s = 0.0
        # (0) the group's batch: every rank's events in rank order (ids are agreed on it).
        group = self.collective
        all_users = group.all_gather_strings(users_s)
        all_items = group.all_gather_strings(items_s)
        sizes = [u.shape[0] for u in all_users]
        offset, total = sum(sizes[: group.rank]), sum(sizes)
        stats["group_events"] = total
        if total == 0:
            return stats

        # (1) ids → rows; grow model, optimizer state (lazily, on its next step) and graph.
        union_items, union_users = (
            (np.concatenate(all_items), np.concatenate(all_users))
            if group.distributed
            else (items_s, users_s)
        )
        union_item_rows, new_items, union_user_rows, new_users = self._ids.assign(
            union_users, union_items
        )
        item_rows = union_item_rows[offset : offset + B]
        user_rows = union_user_rows[offset : offset + B]
        self._grow()
        stats["new_items"], stats["new_users"] = new_items, new_users
        t1 = time.perf_counter()

        # (2) graph edges to each event's previous H items (this batch's earlier ones included),
        # stamped with the decay clock: event time, or the running count of learned events.
        # Each rank lays out its own users; every rank adds every rank's edges.
        uniq_users = np.unique(user_rows)
        slots = self._users.slots_for(uniq_users)
        lay = build_layout(user_rows, item_rows, self._users.slot_windows(slots))
        stamps = self._decay_stamps(times_a, offset)
        edges = batch_edges(lay, item_rows, weights_a, stamps, self.config.hops)
        if group.distributed:
            edges = tuple(np.concatenate(group.all_gather_arrays(part)) for part in edges)
        self.graph.add_edges(*edges)
        t2 = time.perf_counter()

        # (3) user state: the last W items of each user's block become its window.
        self._users.record(slots, lay)
        self._ids.count_events(union_item_rows)
        t3 = time.perf_counter()

        # (4) a few optimizer steps on the touched users' recent sequences.
        stats["trained_users"], stats["loss"] = self._train(
            uniq_users, self._users.slot_windows(slots)
        )
        t4 = time.perf_counter()

        self._users.advance()
        self.events_applied += total
        if (
            self.events_applied // PRUNE_EVERY_EVENTS
            > (self.events_applied - total) // PRUNE_EVERY_EVENTS
        ):
            self.prune_graph()
        stats["seconds"] = {
            "ids": t1 - t0,
            "graph": t2 - t1,
            "state": t3 - t2,
            "train": t4 - t3,
            # parts of the above: optimizer steps (psi included), and waiting on other ranks
            "optimizer": self._optimizer_s,
            "exchange": self.collective.seconds - exchanged_before,
        }
        return stats

    def prune_graph(self) -> int:
        """Drop the edges whose decayed weight is below ``config.prune_below`` (with decay
        only); returns how many stored entries went. Called every :data:`PRUNE_EVERY_EVENTS`
        learned events, so a restored trainer prunes at the same points. When no edge is below
        the bound the graph is left untouched (a compaction re-bases the stored weights, which
        would change later rounding for nothing)."""
        cfg = self.config
        if cfg.prune_below is None or cfg.half_life is None or not self.graph.num_nodes:
            return 0
        A = self.graph.to_scipy()
        if not A.nnz or float(A.data.min()) >= cfg.prune_below:
            return 0
        stats = self.graph.compact(min_weight=cfg.prune_below)
        return stats["nnz_before"] - stats["nnz_after"]

    def _decay_stamps(self, times: np.ndarray, offset: int = 0) -> np.ndarray:
        """The decay clock of a batch's events: their times (``decay_unit="seconds"``) or, with
        ``"events"``, their running count among learned events (the state dict keeps it, so a
        restored trainer continues the clock); ``offset`` = the group batch's events before
        this rank's."""
        if self.config.decay_unit == "events":
            start = float(self.events_applied + offset)
            return start + np.arange(1, times.shape[0] + 1, dtype=np.float64)
        return times

    def _grow(self) -> None:
        """Grow the model's tables, the graph and the per-row arrays to the id maps' sizes."""
        n_items, n_users = self.num_items, self.num_users
        model = self.model
        if max(n_items, 1) > model.num_items or max(n_users, 1) > model.num_users:
            # New rows are drawn from a generator seeded by (seed, sizes): deterministic, and the
            # same whether or not the trainer was restored from a checkpoint in between.
            model.grow(num_items=max(n_items, 1, model.num_items), num_users=max(n_users, 1))
        self.graph.grow(model.num_items + 1)
        self._ids.reserve()
        self._users.reserve_users(n_users)

    def _train(self, users: np.ndarray, seqs: np.ndarray) -> tuple[int, float]:
        """``steps_per_batch`` optimizer steps on the users with two or more items.

        Args:
            users: ``(U,)`` user rows.
            seqs: ``(U, W)`` their windows, left-padded.

        Returns:
            ``(users trained, mean loss over the steps)``; ``(0, NaN)`` when none has two items.

        Raises:
            FloatingPointError: the loss is not finite (training diverged).
        """
        trainable = (seqs != 0).sum(axis=1) >= 2
        group = self.collective
        keyed = self.model.supports_keyed_draws
        if group.distributed:
            n_trainable = int(group.all_reduce_sum(torch.tensor([int(trainable.sum())]))[0])
        else:
            n_trainable = int(trainable.sum())
        if n_trainable == 0:
            return 0, float("nan")
        users_t = torch.from_numpy(users[trainable])
        batch = {"users": users_t, "seqs": torch.from_numpy(seqs[trainable])}
        self.model.train()
        losses = []
        for _ in range(self.config.steps_per_batch):
            self.optimizer.zero_grad(set_to_none=True)
            if keyed:
                losses.append(self._keyed_step(batch, bool(trainable.any())))
            else:
                loss = self.model.loss(batch, self.generator)
                loss.backward()
                losses.append(float(loss.detach()))
            t = time.perf_counter()
            self.optimizer.step()
            self._optimizer_s += time.perf_counter() - t
        mean_loss = float(np.mean(losses))
        if not math.isfinite(mean_loss):
            raise FloatingPointError(f"online training diverged (loss {mean_loss})")
        return int(trainable.sum()), mean_loss

    def _keyed_step(self, batch: dict[str, torch.Tensor], has_rows: bool) -> float:
        """Gradients of one step of the group's batch, summed over ranks and divided by the
        group's number of loss terms; returns the group's loss.

        The step's seed is drawn from :attr:`generator` (the same on every rank) and keys the
        model's random draws by user row, so N ranks stepping parts of a batch compute the
        gradient one process would compute on the whole. One all-reduce carries the term
        count, then one carries every gradient, a has-gradient flag per parameter and the loss.
        """
        group = self.collective
        seed = int(torch.randint(0, 2**62, (1,), generator=self.generator))
        params = [p for p in self.model.parameters() if p.requires_grad]
        if has_rows:
            total, count = self.model.loss_terms(batch, KeyedDraws(seed, batch["users"]))
        else:  # a rank without trainable users still joins the step's exchanges
            total, count = zero_loss(*params), 0
        count_all = (
            int(group.all_reduce_sum(torch.tensor([count]))[0]) if group.distributed else count
        )
        (total / max(count_all, 1)).backward()
        if group.distributed:
            flat = torch.cat(
                [
                    *(
                        (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                        for p in params
                    ),
                    torch.tensor([p.grad is not None for p in params], dtype=params[0].dtype),
                    total.detach().reshape(1).to(params[0].dtype),
                ]
            )
            group.all_reduce_sum(flat)
            offset, n = 0, len(params)
            flags = flat[-1 - n : -1]
            for k, p in enumerate(params):
                size = p.numel()
                p.grad = flat[offset : offset + size].view_as(p) if bool(flags[k] > 0) else None
                offset += size
            loss_sum = float(flat[-1])
        else:
            loss_sum = float(total.detach())
        return loss_sum / max(count_all, 1)

    # ------------------------------------------------------------------ prequential ranking
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
        return ranking.rank_before_learning(
            self.model,
            self._ids,
            self._users,
            users,
            items,
            exclude_history=self.config.exclude_history,
            eval_batch_size=self.config.eval_batch_size,
        )

    # ------------------------------------------------------------------ outputs for serving
    def item_matrix(self) -> tuple[list[str], np.ndarray]:
        """``(item ids, (num_items, D) float32 matrix)``: the published item output vectors."""
        return ranking.item_matrix(self.model, self._ids)

    def user_vectors(self, users: Sequence[str] | np.ndarray) -> np.ndarray:
        """``(B, D)`` float32 user representations (scored against :meth:`item_matrix`).

        Sequential models encode the user's last ``maxlen`` items; MF returns the user row.
        Users without state (unknown, or evicted for a sequential model) get zero vectors.
        """
        return ranking.user_vectors(self.model, self._ids, self._users, users)

    def recent_items(self, users: Sequence[str] | np.ndarray) -> list[list[str]]:
        """Each user's kept recent items (oldest first, at most ``maxlen + 1``); ``[]`` for
        unknown users or users whose state was evicted. Served with the user vector so a
        client can exclude what the user has just seen."""
        return ranking.recent_items(self._ids, self._users, users)

    def seen_items(self, users: Sequence[str] | np.ndarray, cap: int = 1000) -> list[list[str]]:
        """Each user's distinct interacted items, most recent first, at most ``cap`` (from the
        full history with ``exclude_history="all"``, else the recent window); ``[]`` for
        unknown or evicted users. Served with the user vector so a client can leave out what
        the user has already consumed."""
        if isinstance(cap, bool) or not isinstance(cap, int) or cap < 0:
            raise ValueError(f"cap must be an integer >= 0, got {cap!r}")
        return ranking.seen_items(self._ids, self._users, users, cap)

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: tensors and plain Python values only.

        Loadable with ``torch.load(..., weights_only=True)``. Tensors are copies (later training
        does not change a state dict already taken).
        """
        graph = {k: torch.from_numpy(np.array(v)) for k, v in self.graph.state_arrays().items()}
        return {
            "format": _STATE_FORMAT,
            "config": self.config.to_dict(),
            "model_sizes": [int(self.model.num_items), int(self.model.num_users)],
            "model": _clone_tree(self.model.state_dict()),
            "optimizer": _clone_tree(self.optimizer.state_dict()),
            "generator": self.generator.get_state().clone(),
            "graph": graph,
            **_tensors(self._ids.state_arrays()),
            **_tensors(self._users.state_arrays(self.num_users)),
            "events_applied": int(self.events_applied),
        }

    def group_state_dict(self) -> dict[str, Any] | None:
        """Collective (every rank calls it): the group's state on rank 0, ``None`` elsewhere.

        Model, optimizer, graph and id maps are the same on every rank; each rank keeps the
        windows of its own users, so rank 0 gathers every rank's user state and merges it
        (:meth:`UserState.merged <engine.online.users.UserState.merged>`). One process returns
        :meth:`state_dict`.
        """
        group = self.collective
        if not group.distributed:
            return self.state_dict()
        mine = pack_arrays(self._users.state_arrays(self.num_users))
        parts = group.gather_bytes(mine)
        if parts is None:
            return None
        cfg = self.config
        merged = UserState.merged(
            [unpack_arrays(b) for b in parts],
            cfg.maxlen + 1,
            cfg.max_users_state,
            cfg.exclude_history == "all",
            self.num_users,
        )
        return {**self.state_dict(), **_tensors(merged.state_arrays(self.num_users))}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> OnlineTrainer:
        """Rebuild a trainer from :meth:`state_dict`; it continues bit for bit."""
        trainer = cls(OnlineConfig.from_dict(state["config"]))
        trainer._restore(state)
        return trainer

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Replace this trainer's whole state (config included) with ``state`` in place."""
        self.__init__(OnlineConfig.from_dict(state["config"]), self.collective)
        self._restore(state)

    def _restore(self, state: dict[str, Any]) -> None:
        """Load ``state`` into this freshly built trainer (same config)."""
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
        arrays = _arrays(state)
        self._ids = IdMaps.from_state_arrays(arrays)
        self._users = UserState.from_state_arrays(
            arrays, cfg.maxlen + 1, cfg.max_users_state, cfg.exclude_history == "all"
        )
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
