"""Offline training and full-ranking evaluation (the SEvo paper's protocol).

One run = one model, one optimizer, one seed on a leave-one-out :class:`~engine.data.SequenceSplit`:
train for ``epochs``, validate every ``eval_every`` epochs (NDCG@10 over all items, history
excluded), keep the best-validation state and report the test metrics at it. The graph SEvo
smooths over is built from *training* items only, so validation/test never leak into it.
The run's settings, :class:`OfflineConfig`, live in the torch-free :mod:`engine.config` and are
re-exported here.

**Resume.** With ``config.checkpoint_dir`` set, the run writes ``<dir>/checkpoint.pt``
atomically every ``checkpoint_every_epochs`` epochs, after the last epoch and at an early stop:
model, optimizer, the torch generator, the numpy epoch-order generator, the epoch, the learning
curve and timings, and the early-stopping state (best score, epoch and state, evaluations
without gain). A later call with the same settings continues from it and ends bit for bit where
an uninterrupted run ends (on the CPU; see :func:`train_offline`).

**Hooks.** ``train_offline(extra_loss=...)`` adds a term to every batch's loss (knowledge
distillation: ``benchmarks/kd_study.py``); ``train_offline(item_graph=...)`` makes SEvo smooth
over a given graph instead of the one ``config.graph`` names (e.g. a teacher's kNN item graph).

Example:
    >>> from engine.data import load_dataset, core_filter, split_leave_one_out
    >>> split = split_leave_one_out(core_filter(load_dataset("ml-100k")))   # doctest: +SKIP
    >>> result = train_offline(split, OfflineConfig(model="sasrec", epochs=20))  # doctest: +SKIP
    >>> result.test["NDCG@10"]                                              # doctest: +SKIP
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import logging
import math
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from graph_store import ItemGraph, category_edges, combine_edges, sequence_edges
from sevo_common.atomic import atomic_write_bytes

from .config import OfflineConfig
from .data import SequenceSplit
from .metrics import summarize, target_ranks
from .models import Batch, Recommender, build_model, model_class, resolved_config
from .optim import SEvoAdamW
from .sevo import Smoother

__all__ = [
    "CHECKPOINT_FILE",
    "CHECKPOINT_FORMAT",
    "ExtraLoss",
    "OfflineConfig",
    "RunResult",
    "build_item_graph",
    "build_optimizer",
    "evaluate",
    "read_checkpoint",
    "train_epoch",
    "train_offline",
    "trainable_users",
]

#: An extra training-loss term: ``extra_loss(model, batch, generator) -> scalar tensor``, added
#: to ``model.loss(batch, generator)`` at every step (``batch`` as the model's ``loss`` gets it:
#: ``{"users": (B,), "seqs": (B, maxlen + 1)}``; the generator is the run's, for dropout).
ExtraLoss = Callable[[Recommender, Batch, torch.Generator], torch.Tensor]
#: The checkpoint file inside ``OfflineConfig.checkpoint_dir``.
CHECKPOINT_FILE = "checkpoint.pt"
#: Version of the checkpoint layout (``_save_checkpoint``); another version is not resumed.
CHECKPOINT_FORMAT = 1

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
    extra_loss: ExtraLoss | None = None,
) -> float:
    """One pass over ``order`` (user indices) in batches; returns the mean training loss
    (``extra_loss`` included)."""
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
        if extra_loss is not None:
            loss = loss + extra_loss(model, batch, generator)
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
    extra_loss: ExtraLoss | None = None,
    item_graph: ItemGraph | None = None,
) -> RunResult:
    """Train one model with one optimizer and seed; test at the best-validation epoch.

    Args:
        split: leave-one-out split.
        config: the run's settings.
        dataset: a name recorded in the result.
        progress: show a tqdm bar over epochs.
        on_eval: called after every validation with the curve point (for partial results).
            A resumed run first calls it with the restored curve's points, in order, so a
            listener sees the whole curve.
        keep_model: attach the best model to the result (for embedding analyses).
        extra_loss: a term added to every step's loss (see :data:`ExtraLoss`), e.g. a
            distillation loss against a fixed teacher.
        item_graph: the graph SEvo smooths over instead of the one ``config.graph`` names
            (rows ``0..num_items``; needs ``optimizer="sevo-adamw"``).

    Resume: with ``config.checkpoint_dir`` set, a checkpoint there from a run with the same
    settings (every :class:`OfflineConfig` field but ``epochs``, ``device`` within its type,
    and the checkpoint fields), the same split and the same SEvo graph is continued from the
    epoch after it. ``epochs`` may grow between calls: a run stopped after epoch k and resumed
    with ``epochs=n`` ends with the weights and metrics of an uninterrupted ``n``-epoch run,
    bit for bit on the CPU, provided it validated at the same epochs (k a multiple of
    ``eval_every``; otherwise the k-epoch call's closing validation is an extra curve point and
    may become the best state). A checkpoint from other settings, or from further than
    ``epochs``, is ignored (logged) and overwritten. ``extra_loss`` is not part of the check:
    pass the same one again.
    """
    try:  # OfflineConfig checked the form of the name; only torch knows which types exist
        device = torch.device(config.device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"device must be a torch device such as 'cpu' or 'cuda', got {config.device!r}"
        ) from exc
    if item_graph is not None and not config.uses_sevo:
        raise ValueError("item_graph is what SEvo smooths over: it needs optimizer='sevo-adamw'")
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
    if item_graph is None and config.uses_sevo:
        item_graph = build_item_graph(split, config)
    needs_bipartite = config.uses_sevo and any(len(g) > 1 for g in model.smoothing_groups())
    bipartite = build_bipartite_graph(split) if needs_bipartite else None
    optimizer = build_optimizer(model, config, item_graph, bipartite)

    trainable = trainable_users(split)
    if trainable.size == 0:
        raise ValueError("no user has two or more training interactions")
    progress_state = _Progress()
    ckpt_path = Path(config.checkpoint_dir) / CHECKPOINT_FILE if config.checkpoint_dir else None
    identity = None
    if ckpt_path is not None:
        identity = _run_identity(config, split, item_graph)
        restored = _load_checkpoint(ckpt_path, identity, config, device)
        if restored is not None:
            progress_state = _restore(restored, model, optimizer, generator, rng)
            log.info(
                "%s: resumed after epoch %d from %s",
                _run_name(config),
                progress_state.epoch,
                ckpt_path,
            )
            if on_eval is not None:
                for point in progress_state.curve:
                    on_eval(dict(point))
    st = progress_state
    bar = tqdm(
        range(st.epoch + 1, config.epochs + 1),
        disable=not progress,
        desc=_run_name(config),
        unit="epoch",
        leave=False,
        initial=st.epoch,
        total=config.epochs,
    )
    for epoch in bar if not st.stopped else ():
        start = time.perf_counter()
        mean_loss = train_epoch(
            model, optimizer, split, rng.permutation(trainable), config, generator, extra_loss
        )
        st.epoch_seconds.append(time.perf_counter() - start)
        if not math.isfinite(mean_loss):
            raise FloatingPointError(f"training diverged at epoch {epoch} (loss {mean_loss})")
        if epoch % config.eval_every == 0 or epoch == config.epochs:
            start = time.perf_counter()
            valid, _ = evaluate(
                model, split, "valid", maxlen=config.maxlen, batch_size=config.eval_batch_size
            )
            st.eval_seconds.append(time.perf_counter() - start)
            point = {
                "epoch": epoch,
                "loss": mean_loss,
                **{f"valid_{k}": v for k, v in valid.items()},
            }
            st.curve.append(point)
            bar.set_postfix(loss=f"{mean_loss:.4f}", ndcg10=f"{valid['NDCG@10']:.4f}")
            if valid["NDCG@10"] > st.best_score:
                st.best_score, st.best_epoch, st.bad_evals = valid["NDCG@10"], epoch, 0
                st.best_state = copy.deepcopy(model.state_dict())
            else:
                st.bad_evals += 1
                if config.patience is not None and st.bad_evals >= config.patience:
                    log.info("early stop at epoch %d (best %d)", epoch, st.best_epoch)
                    st.stopped = True
            # the checkpoint first: a listener that fails (or a kill) after this point loses
            # nothing of this epoch
            st.epoch = epoch
            if ckpt_path is not None and (
                st.stopped or epoch % config.checkpoint_every_epochs == 0 or epoch == config.epochs
            ):
                _save_checkpoint(ckpt_path, identity, st, model, optimizer, generator, rng)
            if on_eval is not None:
                on_eval(point)
            if st.stopped:
                break
        else:
            st.epoch = epoch
            if ckpt_path is not None and epoch % config.checkpoint_every_epochs == 0:
                _save_checkpoint(ckpt_path, identity, st, model, optimizer, generator, rng)
    bar.close()
    if st.best_state is not None:
        model.load_state_dict(st.best_state)
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
        best_epoch=st.best_epoch,
        epoch_seconds=st.epoch_seconds,
        eval_seconds=st.eval_seconds,
        curve=st.curve,
        test_user_ndcg10=_ndcg10(test_ranks),
        graph_nnz=0 if item_graph is None else item_graph.nnz,
        model=model if keep_model else None,
    )


# ---------------------------------------------------------------------- checkpoints
@dataclass
class _Progress:
    """What a run has done so far, beyond the model, optimizer and generators."""

    epoch: int = 0
    best_score: float = -1.0
    best_epoch: int = 0
    best_state: dict[str, torch.Tensor] | None = None
    bad_evals: int = 0
    stopped: bool = False
    curve: list[dict[str, float]] | None = None
    epoch_seconds: list[float] | None = None
    eval_seconds: list[float] | None = None

    def __post_init__(self) -> None:
        self.curve = [] if self.curve is None else self.curve
        self.epoch_seconds = [] if self.epoch_seconds is None else self.epoch_seconds
        self.eval_seconds = [] if self.eval_seconds is None else self.eval_seconds


#: OfflineConfig fields that do not have to match for a checkpoint to be resumed.
_NOT_IN_IDENTITY = ("epochs", "device", "checkpoint_dir", "checkpoint_every_epochs")


def _digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _run_identity(
    config: OfflineConfig, split: SequenceSplit, item_graph: ItemGraph | None
) -> dict[str, Any]:
    """What a checkpoint must have been written by to be resumed: the settings (JSON form,
    without :data:`_NOT_IN_IDENTITY`, with the device's type), the split and the SEvo graph."""
    settings = json.loads(json.dumps(asdict(config)))
    for name in _NOT_IN_IDENTITY:
        settings.pop(name, None)
    settings["device_type"] = torch.device(config.device).type
    graph = None
    if item_graph is not None:
        A = item_graph.to_scipy().tocsr()
        graph = _digest(A.indptr, A.indices, A.data)
    return {
        "settings": settings,
        "split": _digest(
            split.train_items,
            split.train_offsets,
            split.valid_items,
            split.test_items,
            np.array([split.num_users, split.num_items]),
        ),
        "graph": graph,
    }


def _save_checkpoint(
    path: Path,
    identity: dict[str, Any] | None,
    st: _Progress,
    model: Recommender,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    rng: np.random.Generator,
) -> None:
    """Write the run's state to ``path`` atomically (a reader sees the old file or the new)."""
    meta = {
        "format": CHECKPOINT_FORMAT,
        "identity": identity,
        "epoch": st.epoch,
        "stopped": st.stopped,
        "best_score": st.best_score,
        "best_epoch": st.best_epoch,
        "bad_evals": st.bad_evals,
        "has_best_state": st.best_state is not None,
        "curve": st.curve,
        "epoch_seconds": st.epoch_seconds,
        "eval_seconds": st.eval_seconds,
        "numpy_rng": rng.bit_generator.state,
        "torch": torch.__version__,
    }
    payload = {
        "meta": json.dumps(meta),  # plain JSON: loads with weights_only=True
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "generator": generator.get_state(),
        "best_state": st.best_state if st.best_state is not None else {},
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint file as written (``meta`` decoded from JSON); tensors stay on the CPU.

    Loaded with ``torch.load(weights_only=True)``: tensors and plain values only.
    """
    payload = torch.load(io.BytesIO(Path(path).read_bytes()), map_location="cpu", weights_only=True)
    payload["meta"] = json.loads(payload["meta"])
    return payload


def _load_checkpoint(
    path: Path, identity: dict[str, Any], config: OfflineConfig, device: torch.device
) -> dict[str, Any] | None:
    """The checkpoint at ``path`` if this run can continue from it, else ``None`` (logged)."""
    if not path.exists():
        return None
    try:
        payload = read_checkpoint(path)
    except Exception as exc:  # a file that is not a checkpoint: start over, say why
        log.warning("%s: unreadable checkpoint (%s); starting from epoch 1", path, exc)
        return None
    meta = payload["meta"]
    if meta.get("format") != CHECKPOINT_FORMAT:
        reason = f"format {meta.get('format')!r}, expected {CHECKPOINT_FORMAT}"
    elif meta.get("identity") != identity:
        reason = "written by a run with other settings, data or graph"
    elif meta["epoch"] > config.epochs:
        reason = f"it is at epoch {meta['epoch']}, beyond epochs={config.epochs}"
    else:
        return payload
    log.warning("%s: not resumed (%s); starting from epoch 1", path, reason)
    return None


def _restore(
    payload: dict[str, Any],
    model: Recommender,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    rng: np.random.Generator,
) -> _Progress:
    """Load a checkpoint into the freshly built run; return its progress."""
    meta = payload["meta"]
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    generator.set_state(payload["generator"])
    rng.bit_generator.state = meta["numpy_rng"]
    device = next(model.parameters()).device
    best_state = None
    if meta["has_best_state"]:
        best_state = {k: v.to(device) for k, v in payload["best_state"].items()}
    return _Progress(
        epoch=meta["epoch"],
        best_score=meta["best_score"],
        best_epoch=meta["best_epoch"],
        best_state=best_state,
        bad_evals=meta["bad_evals"],
        stopped=meta["stopped"],
        curve=meta["curve"],
        epoch_seconds=meta["epoch_seconds"],
        eval_seconds=meta["eval_seconds"],
    )


def _run_name(config: OfflineConfig) -> str:
    return f"{config.model}/{config.optimizer}/seed{config.seed}"
