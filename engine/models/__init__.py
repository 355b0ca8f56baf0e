"""Recommender backbones and a name → model registry.

Every model subclasses :class:`Recommender` (``loss`` / ``user_repr`` / ``score_all`` /
``item_output_weight`` / ``smoothing_groups`` / ``grow``), declares what its user representation
reads (:attr:`Recommender.sequential`) and has a frozen config dataclass whose defaults are the
SEvo paper's settings.

Example:
    >>> model = build_model("sasrec", num_items=100, num_users=10, dropout=0.2)
    >>> model.config.dropout, model.config.dim
    (0.2, 64)
"""

from __future__ import annotations

import dataclasses
from typing import Any

from engine.config import MODEL_NAMES
from engine.models.base import Batch, Recommender
from engine.models.bert4rec import BERT4Rec, BERT4RecConfig
from engine.models.gru4rec import GRU4Rec, GRU4RecConfig
from engine.models.lightgcn import LightGCN, LightGCNConfig
from engine.models.mf import MF, MFConfig
from engine.models.sasrec import SASRec, SASRecConfig
from engine.models.stosa import STOSA, STOSAConfig

__all__ = [
    "MF",
    "MODELS",
    "STOSA",
    "BERT4Rec",
    "BERT4RecConfig",
    "Batch",
    "GRU4Rec",
    "GRU4RecConfig",
    "LightGCN",
    "LightGCNConfig",
    "MFConfig",
    "Recommender",
    "SASRec",
    "SASRecConfig",
    "STOSAConfig",
    "build_model",
    "model_class",
    "resolved_config",
]

_REGISTRY: dict[str, tuple[type[Recommender], type]] = {
    "sasrec": (SASRec, SASRecConfig),
    "gru4rec": (GRU4Rec, GRU4RecConfig),
    "mf": (MF, MFConfig),
    "bert4rec": (BERT4Rec, BERT4RecConfig),
    "lightgcn": (LightGCN, LightGCNConfig),
    "stosa": (STOSA, STOSAConfig),
}
if set(_REGISTRY) != set(MODEL_NAMES):  # one list of names: engine.config's, torch-free
    raise ImportError(
        f"engine.config.MODEL_NAMES {MODEL_NAMES} and the backbones {tuple(_REGISTRY)} differ"
    )
#: name → (model class, config class), one entry per name of :data:`engine.config.MODEL_NAMES`
#: (in its order): every backbone :func:`build_model`, :func:`model_class`,
#: :func:`resolved_config`, the offline trainer and the command line accept.
MODELS: dict[str, tuple[type[Recommender], type]] = {name: _REGISTRY[name] for name in MODEL_NAMES}


def _entry(name: str) -> tuple[type[Recommender], type]:
    """``MODELS[name]`` by case-insensitive name; ``ValueError`` listing the known names."""
    key = name.lower() if isinstance(name, str) else name
    if key not in MODELS:
        raise ValueError(f"unknown model {name!r}; expected one of: {', '.join(MODELS)}")
    return MODELS[key]


def model_class(name: str) -> type[Recommender]:
    """The class :func:`build_model` builds for ``name``, e.g. to read its declared
    capabilities (:attr:`Recommender.sequential`) before choosing the config to build it with.

    Raises:
        ValueError: unknown model name (the message lists the known ones).
    """
    return _entry(name)[0]


def resolved_config(name: str, **overrides: Any) -> dict[str, Any]:
    """The full config (defaults + ``overrides``) that :func:`build_model` would use, as a dict.

    Two override sets describe the same model exactly when their resolved configs are equal
    (``{}`` and ``{"block": "query-norm"}`` are the same SASRec today).

    Raises:
        ValueError: as :func:`build_model` for unknown names, fields or values.
    """
    config_cls = _entry(name)[1]
    fields = [f.name for f in dataclasses.fields(config_cls)]
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ValueError(
            f"unknown {config_cls.__name__} field(s) {unknown}; valid: {', '.join(fields)}"
        )
    return dataclasses.asdict(config_cls(**overrides))


def build_model(
    name: str, num_items: int, num_users: int, *, seed: int = 0, **overrides: Any
) -> Recommender:
    """Build a model by name with its paper defaults, overriding config fields by keyword.

    Args:
        name: one of ``"sasrec"``, ``"gru4rec"``, ``"mf"``, ``"bert4rec"``, ``"lightgcn"``,
            ``"stosa"`` (case-insensitive; see :data:`MODELS`).
        num_items: number of items (ids ``1..num_items``).
        num_users: number of users (ids ``0..num_users-1``).
        seed: seeds the parameter initialisation.
        **overrides: fields of the model's config dataclass, e.g. ``dim=32``.

    Raises:
        ValueError: unknown model name (the message lists the known ones), unknown config field
            (the message lists the valid ones), or an invalid config value.
    """
    resolved_config(name, **overrides)  # validates name and fields with the messages above
    model_cls, config_cls = MODELS[name.lower()]
    return model_cls(num_items, num_users, config_cls(**overrides), seed=seed)
