"""Offline training and full-ranking evaluation (the SEvo paper's protocol).

One run = one model, one optimizer, one seed on a leave-one-out :class:`~engine.data.SequenceSplit`:
train for ``epochs``, validate every ``eval_every`` epochs (NDCG@10 over all items, history
excluded), keep the best-validation state and report the test metrics at it. The graph SEvo
smooths over is built from *training* items only, so validation/test never leak into it.
The run's settings, :class:`OfflineConfig`, live in the torch-free :mod:`engine.config` and are
re-exported here.

Example:
    >>> from engine.data import load_dataset, core_filter, split_leave_one_out
    >>> split = split_leave_one_out(core_filter(load_dataset("ml-100k")))   # doctest: +SKIP
    >>> result = train_offline(split, OfflineConfig(model="sasrec", epochs=20))  # doctest: +SKIP
    >>> result.test["NDCG@10"]                                              # doctest: +SKIP
"""

from __future__ import annotations

import copy
import logging
import math
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from graph_store import ItemGraph, category_edges, combine_edges, sequence_edges

from .config import OfflineConfig
from .data import SequenceSplit
from .metrics import summarize, target_ranks
from .models import Recommender, build_model, model_class, resolved_config
from .optim import SEvoAdamW
from .sevo import Smoother

__all__ = [
    "OfflineConfig",
    "RunResult",
    "build_item_graph",
    "build_optimizer",
    "evaluate",
    "train_epoch",
    "train_offline",
    "trainable_users",
]

log = logging.getLogger(__name__)


def model_kwargs(config: OfflineConfig) -> dict[str, Any]:
    """The model's config overrides for a run: ``model_overrides``, and for a sequential
    model the run's ``maxlen`` (its inputs are that long) unless the overrides set it."""
    kwargs = dict(config.model_overrides)
    if model_class(config.model).sequential:
        kwargs.setdefault("maxlen", config.maxlen)
    return kwargs


@dataclass
class RunResult:
    """What one run produced; ``to_json()`` is what the results file holds."""

    config: OfflineConfig
    dataset: str
    valid: dict[str, float]
    test: dict[str, float]
    best_epoch: int
    epoch_seconds: list[float]
    eval_seconds: list[float]
    curve: list[dict[str, float]]
    test_user_ndcg10: np.ndarray  # per evaluated user, for paired tests
    graph_nnz: int
    model: Recommender | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "config": asdict(self.config),
            # the model's whole config as it was built (defaults may change between versions)
            "model_config": resolved_config(self.config.model, **model_kwargs(self.config)),
            "valid": self.valid,
            "test": self.test,
            "best_epoch": self.best_epoch,
            "epoch_seconds": self.epoch_seconds,
            "mean_epoch_seconds": float(np.mean(self.epoch_seconds)) if self.epoch_seconds else 0,
            "eval_seconds": self.eval_seconds,
            "curve": self.curve,
            "graph_nnz": self.graph_nnz,
            "test_user_ndcg10": self.test_user_ndcg10.round(6).tolist(),
            "versions": {
                "torch": torch.__version__,
                "numpy": np.__version__,
                "python": platform.python_version(),
            },
        }


# ---------------------------------------------------------------------- graph and optimizer
def build_item_graph(split: SequenceSplit, config: OfflineConfig) -> ItemGraph:
    """The item–item graph of ``config.graph`` over *training* items (rows 0..num_items).

    Row 0 (padding) has no edges. ``"both"`` adds the category graph with weight
    ``config.category_weight`` to the interaction graph (a weighted sum of raw adjacencies);
    ``None`` balances the two so that each contributes the same total weight (a category graph
    has far more edges than an interaction graph and would otherwise drown it). Categories with
    more than ``config.max_category_size`` items are skipped: a category holding a third of the
    catalogue links everything to everything and costs size² edges.
    """
    n = split.num_items + 1
    parts = []
    if config.graph in ("interactions", "both"):
        parts.append(
            (1.0, sequence_edges(split.train_ragged(), n, hops=config.hops, maxlen=config.maxlen))
        )
    if config.graph in ("categories", "both"):
        if split.item_categories is None:
            raise ValueError("this dataset has no item categories; use --graph interactions")
        cats = category_edges(split.item_categories, n, max_category_size=config.max_category_size)
        weight = config.category_weight
        if weight is None:
            total_cats = float(cats[2].sum())
            weight = float(parts[0][1][2].sum()) / total_cats if parts and total_cats else 1.0
        parts.append((weight, cats))
    src, dst, w = parts[0][1] if len(parts) == 1 else combine_edges(*parts)
    graph = ItemGraph(n)
    graph.add_edges(src, dst, w)
    graph.merge()
    return graph


def build_bipartite_graph(split: SequenceSplit) -> ItemGraph:
    """User–item graph for stacked [users; items] tables: user u is row u, item i is row U + i."""
    U = split.num_users
    users = np.repeat(np.arange(U), np.diff(split.train_offsets))
    graph = ItemGraph(U + split.num_items + 1)
    graph.add_edges(users, U + split.train_items)
    graph.merge()
    return graph


def build_optimizer(
    model: Recommender,
    config: OfflineConfig,
    item_graph: ItemGraph | None,
    bipartite_graph: ItemGraph | None = None,
) -> torch.optim.Optimizer:
    """``torch.optim.AdamW`` for the baseline; SEvoAdamW smoothing the model's declared tables."""
    kwargs = {"lr": config.lr, "betas": config.betas, "weight_decay": config.weight_decay}
    if not config.uses_sevo:
        return torch.optim.AdamW(model.parameters(), **kwargs)
    groups, smoothed_ids = [], set()
    for group in model.smoothing_groups():
        graph = item_graph if len(group) == 1 else bipartite_graph
        if graph is None:
            raise ValueError("a stacked smoothing group needs the bipartite user–item graph")
        # The offline graph never changes: one snapshot, on the model's device, serves every step.
        view = graph.snapshot().to(group[0].device)
        smoother = Smoother(view, beta=config.sevo_beta, L=config.sevo_steps)
        groups.append({"params": list(group), "smoother": smoother})
        smoothed_ids.update(id(p) for p in group)
    rest = [p for p in model.parameters() if id(p) not in smoothed_ids]
    if rest:
        groups.append({"params": rest})
    return SEvoAdamW(groups, **kwargs)


# ---------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(
    model: Recommender,
    split: SequenceSplit,
    which: str,
    *,
    maxlen: int,
    batch_size: int = 1024,
) -> tuple[dict[str, float], np.ndarray]:
    """Full-ranking HR@1/5/10 and NDCG@5/10 of ``which`` ("valid" or "test").

    Every item is ranked, the user's history (train, plus the validation item for "test") is
    excluded; batched matrix products, no per-user loop over items.

    Returns:
        ``(metrics, ranks)`` with one rank per evaluated user.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    users = split.eval_users(which)
    targets = split.targets(which)
    ranks = []
    for lo in range(0, users.size, batch_size):
        batch_users = users[lo : lo + batch_size]
        seqs = split.padded_sequences(batch_users, maxlen, which)
        batch = {
            "users": torch.from_numpy(batch_users).to(device),
            "seqs": torch.from_numpy(seqs).to(device),
        }
        scores = model.score_all(batch)  # (B, N+1)
        rows, items = split.exclusion_pairs(batch_users, which)
        ranks.append(
            target_ranks(
                scores,
                torch.from_numpy(targets[batch_users]).to(device),
                (torch.from_numpy(rows).to(device), torch.from_numpy(items).to(device)),
            ).cpu()
        )
    model.train(was_training)
    all_ranks = torch.cat(ranks).numpy() if ranks else np.zeros(0, dtype=np.int64)
    return summarize(all_ranks), all_ranks


def _ndcg10(ranks: np.ndarray) -> np.ndarray:
    return np.where(ranks <= 10, 1.0 / np.log2(ranks + 1.0), 0.0)


# ---------------------------------------------------------------------- training
def trainable_users(split: SequenceSplit) -> np.ndarray:
    """Users with at least two training items (an input and a target)."""
    return np.flatnonzero(np.diff(split.train_offsets) >= 2)


def train_epoch(
    model: Recommender,
    optimizer: torch.optim.Optimizer,
    split: SequenceSplit,
    order: np.ndarray,
    config: OfflineConfig,
    generator: torch.Generator,
) -> float:
    """One pass over ``order`` (user indices) in batches; returns the mean training loss."""
    model.train()
    device = next(model.parameters()).device
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    for lo in range(0, order.size, config.batch_size):
        users = order[lo : lo + config.batch_size]
        seqs = split.padded_sequences(users, config.maxlen + 1, "train")  # (B, T+1)
        batch = {
            "users": torch.from_numpy(users).to(device, non_blocking=True),
            "seqs": torch.from_numpy(seqs).to(device, non_blocking=True),
        }
        loss = model.loss(batch, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total_loss += loss.detach() * users.size  # summed on the device: no sync per step
    return float(total_loss) / max(order.size, 1)


def train_offline(
    split: SequenceSplit,
    config: OfflineConfig,
    *,
    dataset: str = "",
    progress: bool = True,
    on_eval: Callable[[dict[str, float]], None] | None = None,
    keep_model: bool = False,
) -> RunResult:
    """Train one model with one optimizer and seed; test at the best-validation epoch.

    Args:
        split: leave-one-out split.
        config: the run's settings.
        dataset: a name recorded in the result.
        progress: show a tqdm bar over epochs.
        on_eval: called after every validation with the curve point (for partial results).
        keep_model: attach the best model to the result (for embedding analyses).
    """
    try:  # OfflineConfig checked the form of the name; only torch knows which types exist
        device = torch.device(config.device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"device must be a torch device such as 'cpu' or 'cuda', got {config.device!r}"
        ) from exc
    # Dropout, negatives and masks draw from a generator on the model's device (a CUDA run is
    # reproducible run to run, but not bit-equal to a CPU run with the same seed).
    generator = torch.Generator(device=device).manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    model = build_model(
        config.model,
        num_items=split.num_items,
        num_users=split.num_users,
        seed=config.seed,
        **model_kwargs(config),
    ).to(device)
    if hasattr(model, "set_graph"):  # LightGCN carries the training graph inside the model
        model.set_graph(
            np.repeat(np.arange(split.num_users), np.diff(split.train_offsets)),
            split.train_items,
        )
    item_graph = build_item_graph(split, config) if config.uses_sevo else None
    needs_bipartite = config.uses_sevo and any(len(g) > 1 for g in model.smoothing_groups())
    bipartite = build_bipartite_graph(split) if needs_bipartite else None
    optimizer = build_optimizer(model, config, item_graph, bipartite)

    trainable = trainable_users(split)
    if trainable.size == 0:
        raise ValueError("no user has two or more training interactions")
    best_score, best_epoch, best_state, bad_evals = -1.0, 0, None, 0
    epoch_seconds, eval_seconds, curve = [], [], []
    bar = tqdm(
        range(1, config.epochs + 1),
        disable=not progress,
        desc=_run_name(config),
        unit="epoch",
        leave=False,
    )
    for epoch in bar:
        start = time.perf_counter()
        mean_loss = train_epoch(
            model, optimizer, split, rng.permutation(trainable), config, generator
        )
        epoch_seconds.append(time.perf_counter() - start)
        if not math.isfinite(mean_loss):
            raise FloatingPointError(f"training diverged at epoch {epoch} (loss {mean_loss})")
        if epoch % config.eval_every == 0 or epoch == config.epochs:
            start = time.perf_counter()
            valid, _ = evaluate(
                model, split, "valid", maxlen=config.maxlen, batch_size=config.eval_batch_size
            )
            eval_seconds.append(time.perf_counter() - start)
            point = {
                "epoch": epoch,
                "loss": mean_loss,
                **{f"valid_{k}": v for k, v in valid.items()},
            }
            curve.append(point)
            if on_eval is not None:
                on_eval(point)
            bar.set_postfix(loss=f"{mean_loss:.4f}", ndcg10=f"{valid['NDCG@10']:.4f}")
            if valid["NDCG@10"] > best_score:
                best_score, best_epoch, bad_evals = valid["NDCG@10"], epoch, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                bad_evals += 1
                if config.patience is not None and bad_evals >= config.patience:
                    log.info("early stop at epoch %d (best %d)", epoch, best_epoch)
                    break
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    valid, _ = evaluate(
        model, split, "valid", maxlen=config.maxlen, batch_size=config.eval_batch_size
    )
    test, test_ranks = evaluate(
        model, split, "test", maxlen=config.maxlen, batch_size=config.eval_batch_size
    )
    return RunResult(
        config=config,
        dataset=dataset,
        valid=valid,
        test=test,
        best_epoch=best_epoch,
        epoch_seconds=epoch_seconds,
        eval_seconds=eval_seconds,
        curve=curve,
        test_user_ndcg10=_ndcg10(test_ranks),
        graph_nnz=0 if item_graph is None else item_graph.nnz,
        model=model if keep_model else None,
    )


def _run_name(config: OfflineConfig) -> str:
    return f"{config.model}/{config.optimizer}/seed{config.seed}"
