"""Settings of the offline and online trainers, and the names they accept.

:class:`OfflineConfig` (one offline run, :func:`engine.train.train_offline`) and
:class:`OnlineConfig` (an :class:`engine.online.OnlineTrainer`) are frozen dataclasses validated
once on construction, so a bad value fails where it is set rather than deep inside training.

This module imports neither torch nor anything that imports it: a command line can build its
parser from these choice lists and defaults, and validate settings, before paying for torch's
import. The torch modules take their name lists from here (``engine.models`` registers one
backbone per name of :data:`MODEL_NAMES`).

Example:
    >>> OnlineConfig(model="mf", maxlen=5).lr
    0.003
    >>> OfflineConfig(optimizer="sgd")
    Traceback (most recent call last):
    ...
    ValueError: optimizer must be one of ('sevo-adamw', 'adamw'), got 'sgd'
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DECAY_UNITS",
    "GRAPHS",
    "HISTORY_MODES",
    "MODEL_NAMES",
    "NEW_ITEM_POLICIES",
    "ONLINE_MODELS",
    "OPTIMIZERS",
    "SEVO_SMOOTH_TARGETS",
    "OfflineConfig",
    "OnlineConfig",
]

#: Every backbone of ``engine.models``, in registry order (the offline trainer accepts each).
MODEL_NAMES = ("sasrec", "gru4rec", "mf", "bert4rec", "lightgcn", "stosa")
#: The backbones the online trainer supports: one item table, smoothed on the item graph.
ONLINE_MODELS = ("sasrec", "gru4rec", "mf")
#: ``"sevo-adamw"``: AdamW with the item-table update smoothed over the item graph (SEvo);
#: ``"adamw"``: the same optimizer without smoothing (the baseline).
OPTIMIZERS = ("sevo-adamw", "adamw")
#: The item graphs an offline run can smooth over: item transitions, shared categories, or both.
GRAPHS = ("interactions", "categories", "both")
#: How the online smoother treats new items (see :attr:`OnlineConfig.new_item_policy`).
NEW_ITEM_POLICIES = ("passthrough", "paper", "young")
#: Where SEvo-AdamW applies ψ online (see :attr:`OnlineConfig.sevo_smooth`).
SEVO_SMOOTH_TARGETS = ("update", "gradient")
#: The clock of the live graph's edge decay (see :attr:`OnlineConfig.decay_unit`).
DECAY_UNITS = ("seconds", "events")
#: What online prequential ranking excludes (see :attr:`OnlineConfig.exclude_history`).
HISTORY_MODES = ("all", "window")

# The form torch.device accepts: a lower-case type, optionally ":index" without leading zeros.
# Whether torch knows the type is checked when training starts (that needs torch).
_DEVICE_FORM = re.compile(r"[a-z_]+(:(0|[1-9][0-9]*))?")


def _check_positive_ints(config: Any, names: tuple[str, ...]) -> None:
    """Raise ``ValueError`` unless each field in ``names`` is an ``int`` (not a bool) >= 1."""
    for name in names:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class OfflineConfig:
    """Everything one offline run needs; validated once on construction.

    Defaults are the SEvo paper's SASRec settings on Beauty (see the dataset README; other
    models' settings are named presets, :mod:`engine.presets`). ``model`` is checked when the
    model is built (:func:`engine.models.build_model`, which accepts any case), ``device``'s
    type when training starts; here ``device`` must have the form ``"type"`` or
    ``"type:index"``.

    ``checkpoint_dir``: where :func:`engine.train.train_offline` writes ``checkpoint.pt`` every
    ``checkpoint_every_epochs`` epochs (and after the last one) and from which it resumes an
    interrupted run; ``None`` (default) writes none. Neither field defines the experiment
    (:func:`engine.experiments.same_experiment` ignores them, as it ignores ``device``).
    """

    model: str = "sasrec"
    optimizer: str = "sevo-adamw"
    graph: str = "interactions"
    epochs: int = 200
    batch_size: int = 512
    lr: float = 1e-3
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.98)
    maxlen: int = 50
    sevo_beta: float = 0.99
    sevo_steps: int = 3
    hops: int = 1
    category_weight: float | None = None
    max_category_size: int | None = 500
    eval_every: int = 5
    eval_batch_size: int = 1024
    patience: int | None = None
    seed: int = 0
    model_overrides: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"
    checkpoint_dir: str | None = None
    checkpoint_every_epochs: int = 5

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.graph not in GRAPHS:
            raise ValueError(f"graph must be one of {GRAPHS}, got {self.graph!r}")
        _check_positive_ints(
            self,
            (
                "epochs",
                "batch_size",
                "maxlen",
                "eval_every",
                "eval_batch_size",
                "hops",
                "checkpoint_every_epochs",
            ),
        )
        if self.checkpoint_dir is not None:
            object.__setattr__(self, "checkpoint_dir", str(self.checkpoint_dir))
        betas = tuple(self.betas)
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        object.__setattr__(self, "betas", (float(betas[0]), float(betas[1])))
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience must be >= 1 or None, got {self.patience!r}")
        if not (isinstance(self.device, str) and _DEVICE_FORM.fullmatch(self.device)):
            raise ValueError(
                f"device must be a torch device such as 'cpu' or 'cuda', got {self.device!r}"
            )

    @property
    def uses_sevo(self) -> bool:
        """Whether the optimizer smooths updates over a graph (so the run needs one)."""
        return self.optimizer == "sevo-adamw"


#: Settings whose default changed when the field was added: a checkpoint without the field was
#: trained with these (edge times in seconds, the paper's update smoothing).
_BEFORE_FIELD_EXISTED: dict[str, Any] = {
    "decay_unit": "seconds",
    "sevo_smooth": "update",
    "prune_below": None,
}


@dataclass(frozen=True)
class OnlineConfig:
    """Settings of an :class:`~engine.online.OnlineTrainer`; validated once on construction.

    Attributes:
        model: ``"sasrec"``, ``"gru4rec"`` or ``"mf"`` (item–item smoothing only).
        optimizer: ``"sevo-adamw"`` (item-table update smoothed over the live graph) or
            ``"adamw"`` (the same optimizer without smoothing; its per-row state grows with the
            table, which ``torch.optim.AdamW`` cannot do).
        maxlen: input length ``T`` of the sequential models; ``T + 1`` recent items are kept per
            user. Also a sequential model's ``maxlen`` unless ``model_overrides`` sets it.
        hops: graph window ``H`` (edge weight ``1/h`` to the ``h``-th previous item).
        half_life: how long after which an edge's weight halves, in ``decay_unit``s;
            ``None`` = no decay. Default: 25,000 learned events (the README's decay table: it
            beats no decay on drifting streams and stays within 1% of it on stationary ones).
        decay_unit: the clock edges are stamped with and ``half_life`` counts. ``"events"``
            (default): the trainer's running count of learned events (the ``j``-th event it
            learns is stamped ``j``, restored with its state), so one half-life suits data sets
            whose time spans differ by years and an edge halves after ``half_life`` more events
            whatever their timestamps. ``"seconds"``: event time, unix seconds.
        prune_below: with decay, drop the edges whose decayed weight has fallen below this
            (checked every 25,000 learned events; ``None`` keeps every edge). An edge of
            weight 1 falls below the default 1e-3 after ten half-lives without a new
            co-occurrence, so the graph holds the recent past of a stream instead of growing
            with its length.
        lr, weight_decay, betas: AdamW settings. ``lr`` and ``steps_per_batch`` default to
            what ``sevo replay`` / ``sevo run`` and the README's prequential tables use: of the
            settings tried on ML-100K, the pair with the best prequential HR@10.
        sevo_beta, sevo_steps: SEvo's β and L.
        steps_per_batch: optimizer steps per micro-batch.
        new_item_policy: how ψ treats new items. ``"passthrough"`` (default): nodes without
            edges get their raw update (``Smoother(passthrough_isolated=True)``); ``"paper"``:
            plain ψ, which scales an isolated row's update by c ≈ 0.25; ``"young"``: rows of
            items with fewer than ``young_item_events`` learned events get their raw update
            (online a new item usually has an edge from its first event on, and a node with one
            edge to a popular item keeps only about c of its own update too).
        young_item_events: the event count below which ``"young"`` leaves an item's update
            unsmoothed.
        carry_unsampled: SEvo-AdamW's unsampled-row correction (``SEvoAdamW(carry_unsampled)``):
            True (the paper's) keeps a row that is not in the micro-batch moving with its last
            bias-corrected moments; False lets them decay as AdamW does. Only for
            ``sevo_smooth="update"``.
        sevo_smooth: where ψ acts (``SEvoAdamW(smooth=...)``): ``"gradient"`` (default) smooths
            the micro-batch's gradient and steps only the rows it reaches (the sampled rows and
            their neighbours up to ``sevo_steps`` hops), with lazy moments; ``"update"`` smooths
            AdamW's final direction of every row (the paper's). The README's prequential table
            compares them.
        seed: seeds the model initialisation and the training generator.
        model_overrides: fields of the model's config (e.g. ``{"dim": 32}``).
        max_users_state: most users whose recent sequence (and history) is kept; the least
            recently seen are evicted beyond it (their ids and embeddings stay).
        exclude_history: what :meth:`~engine.online.OnlineTrainer.rank_before_learning`
            excludes from the ranking: ``"all"`` items the user has interacted with (kept per
            user, 8 bytes per event), or only the ``"window"`` of recent items.
        eval_batch_size: events ranked per forward pass in ``rank_before_learning``.
    """

    model: str = "sasrec"
    optimizer: str = "sevo-adamw"
    maxlen: int = 50
    hops: int = 1
    half_life: float | None = 25_000.0
    decay_unit: str = "events"
    prune_below: float | None = 1e-3
    lr: float = 3e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.98)
    sevo_beta: float = 0.99
    sevo_steps: int = 3
    steps_per_batch: int = 2
    new_item_policy: str = "passthrough"
    young_item_events: int = 10
    carry_unsampled: bool = True
    sevo_smooth: str = "gradient"
    seed: int = 0
    model_overrides: dict[str, Any] = field(default_factory=dict)
    max_users_state: int = 1_000_000
    exclude_history: str = "all"
    eval_batch_size: int = 256

    def __post_init__(self) -> None:
        if self.model not in ONLINE_MODELS:
            raise ValueError(f"model must be one of {ONLINE_MODELS}, got {self.model!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.new_item_policy not in NEW_ITEM_POLICIES:
            raise ValueError(
                f"new_item_policy must be one of {NEW_ITEM_POLICIES}, got {self.new_item_policy!r}"
            )
        if self.sevo_smooth not in SEVO_SMOOTH_TARGETS:
            raise ValueError(
                f"sevo_smooth must be one of {SEVO_SMOOTH_TARGETS}, got {self.sevo_smooth!r}"
            )
        if self.decay_unit not in DECAY_UNITS:
            raise ValueError(f"decay_unit must be one of {DECAY_UNITS}, got {self.decay_unit!r}")
        if self.exclude_history not in HISTORY_MODES:
            raise ValueError(
                f"exclude_history must be one of {HISTORY_MODES}, got {self.exclude_history!r}"
            )
        _check_positive_ints(
            self,
            (
                "maxlen",
                "hops",
                "sevo_steps",
                "steps_per_batch",
                "max_users_state",
                "eval_batch_size",
                "young_item_events",
            ),
        )
        if self.hops > self.maxlen:
            raise ValueError(f"hops ({self.hops}) must not exceed maxlen ({self.maxlen})")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        if self.half_life is not None and not (
            isinstance(self.half_life, (int, float))
            and math.isfinite(self.half_life)
            and self.half_life > 0
        ):
            raise ValueError(f"half_life must be a positive number or None, got {self.half_life!r}")
        if self.prune_below is not None and not (
            isinstance(self.prune_below, (int, float))
            and not isinstance(self.prune_below, bool)
            and math.isfinite(self.prune_below)
            and self.prune_below > 0
        ):
            raise ValueError(
                f"prune_below must be a positive number or None, got {self.prune_below!r}"
            )
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        betas = tuple(self.betas)
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        object.__setattr__(self, "betas", (float(betas[0]), float(betas[1])))
        if not 0.0 <= self.sevo_beta < 1.0:
            raise ValueError(f"sevo_beta must be in [0, 1), got {self.sevo_beta!r}")
        overrides = dict(self.model_overrides)
        if overrides.get("bipartite"):
            raise ValueError("MF with bipartite=True is not supported online (item graph only)")
        # The trainer feeds a sequential model the last ``maxlen`` items; one built to encode
        # fewer would reject them. (A model without a maxlen field rejects the key when built.)
        if overrides.get("maxlen", self.maxlen) < self.maxlen:
            raise ValueError("model_overrides['maxlen'] must be >= maxlen")
        object.__setattr__(self, "model_overrides", overrides)

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python form (JSON- and weights-only-safe)."""
        out = dataclasses.asdict(self)
        out["betas"] = list(self.betas)
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> OnlineConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``.

        A field missing from ``values`` (a checkpoint written before the field existed) takes
        the value that reproduces what that checkpoint was trained with, not today's default:
        :data:`_BEFORE_FIELD_EXISTED`.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown OnlineConfig field(s) {unknown}")
        values = {**_BEFORE_FIELD_EXISTED, **values}
        if "betas" in values:
            values["betas"] = tuple(values["betas"])
        return cls(**values)
