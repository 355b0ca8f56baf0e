"""Named per-model, per-data-set settings: the SEvo authors' configuration files as presets.

A :class:`Preset` names a backbone, the data set its values were chosen for, the
:class:`~engine.config.OfflineConfig` fields it sets (``config``) and the model-config fields
(``model_overrides``), plus ``source``: where every value came from. ``sevo offline --preset
NAME`` and ``benchmarks/reproduce_paper.py --preset NAME`` start from a preset; a flag given on
the command line overrides the preset's value (:func:`preset_config`).

Sources. The SEvo authors' repository, ``github.com/MTandHJ/SEvo`` at commit
``289dda7acdcdb31cac03f65c4fb022bab6c89cfd`` (read through a public code index): per model a
``configs/AmazonBeauty_550_Chron.yaml`` (and ``MovieLens1M_550_Chron.yaml``), the argparse
defaults in its ``main.py``, and the parameter table each logged run wrote
(``<MODEL>/logs/.../README.md``), which also records the freerec defaults the YAML files leave
out (``beta1``/``beta2`` where absent, ``EVAL_FREQ`` 5). The YAML keys map as ``lr`` → ``lr``,
``weight_decay`` → ``weight_decay``, ``beta1``/``beta2`` → ``betas``, ``batch_size`` →
``batch_size``, ``epochs`` → ``epochs``, ``maxlen`` → ``maxlen`` (this engine also builds the
SEvo graph from the last ``maxlen`` items, the authors' ``maxlen4graph``; every preset below
has ``maxlen4graph == maxlen``), ``beta3`` → ``sevo_beta``, ``L`` → ``sevo_steps``, ``H`` →
``hops``, ``hidden_size``/``embedding_dim`` → ``dim``, ``num_blocks``, ``num_heads``,
``dropout_rate``/``emb_dropout_rate``/``hidden_dropout_rate`` → ``dropout``,
``attn_dropout_rate`` → ``attn_dropout``, ``mask_prob``, ``pvn_weight``. Every preset uses
``aggr: neumann`` (the only smoothing this engine implements).

This module imports neither torch nor numpy (the command line builds its parser from it).

Example:
    >>> preset_config("bert4rec-beauty").lr
    0.0005
    >>> preset_config("bert4rec-beauty", {"lr": 1e-3}).model_overrides["mask_prob"]
    0.5
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from types import MappingProxyType
from typing import Any

from engine.config import MODEL_NAMES, OfflineConfig

__all__ = [
    "PRESETS",
    "Preset",
    "RecordGiven",
    "given_options",
    "preset_config",
]

_REPO = "MTandHJ/SEvo@289dda7"
#: freerec's Adam defaults, recorded in every logged run's parameter table where the YAML file
#: sets no betas.
_FREEREC_BETAS = (0.9, 0.999)


@dataclass(frozen=True)
class Preset:
    """One named setting of a backbone on a data set.

    Attributes:
        name: the preset's name, ``<model>-<data set>`` (``sevo offline --preset NAME``).
        model: the backbone (one of :data:`engine.config.MODEL_NAMES`).
        data: the data set the values are for (``sevo offline --data`` default with the preset).
        config: :class:`~engine.config.OfflineConfig` fields (not ``model`` or
            ``model_overrides``).
        model_overrides: fields of the model's config.
        source: where each value came from.
        notes: how this engine's run differs from the authors' despite the same values.
    """

    name: str
    model: str
    data: str
    config: Mapping[str, Any]
    model_overrides: Mapping[str, Any]
    source: str
    notes: str = ""

    def __post_init__(self) -> None:
        if self.model not in MODEL_NAMES:
            raise ValueError(f"preset {self.name!r}: unknown model {self.model!r}")
        names = {f.name for f in fields(OfflineConfig)} - {"model", "model_overrides"}
        unknown = sorted(set(self.config) - names)
        if unknown:
            raise ValueError(f"preset {self.name!r}: unknown OfflineConfig field(s) {unknown}")
        object.__setattr__(self, "config", MappingProxyType(dict(self.config)))
        object.__setattr__(self, "model_overrides", MappingProxyType(dict(self.model_overrides)))

    def offline_config(self, **overrides: Any) -> OfflineConfig:
        """The preset as an :class:`OfflineConfig`, with ``overrides`` (OfflineConfig fields)
        on top; ``model_overrides`` there are merged into the preset's, key by key."""
        return preset_config(self, overrides)


_PRESET_LIST = [
    Preset(
        name="sasrec-beauty",
        model="sasrec",
        data="beauty",
        config=dict(
            epochs=200,
            batch_size=512,
            lr=1e-3,
            weight_decay=0.1,
            betas=(0.9, 0.98),
            maxlen=50,
            sevo_beta=0.99,
            sevo_steps=3,
            hops=1,
            eval_every=5,
        ),
        model_overrides=dict(dim=64, num_blocks=2, num_heads=1, dropout=0.3),
        source=f"{_REPO} SASRec/configs/AmazonBeauty_550_Chron.yaml (every value); eval_every "
        "= EVAL_FREQ 5 of the logged runs (SASRec/logs/Beauty-5/.../README.md)",
        notes="SASRecConfig's default block (query-norm, padding attended) is the authors' "
        "block; these are also OfflineConfig's defaults.",
    ),
    Preset(
        name="gru4rec-beauty",
        model="gru4rec",
        data="beauty",
        config=dict(
            epochs=300,
            batch_size=512,
            lr=1e-3,
            weight_decay=0.1,
            betas=_FREEREC_BETAS,
            maxlen=50,
            sevo_beta=0.99,
            sevo_steps=3,
            hops=1,
            eval_every=5,
        ),
        model_overrides=dict(dim=64, hidden=64, num_layers=1, dropout=0.4),
        source=f"{_REPO} GRU4Rec/configs/AmazonBeauty_550_Chron.yaml (epochs, batch, lr, weight "
        "decay, maxlen, embedding_dim/hidden_size 64, emb_dropout_rate 0.4, 1 GRU layer, beta3, "
        "L, H); betas (0.9, 0.999) and EVAL_FREQ 5 from the logged runs' parameter table "
        "(GRU4Rec/logs/Beauty-5/.../README.md; the YAML sets no betas)",
        notes="The authors' GRU has no biases and Xavier initialisation; GRU4RecConfig's own "
        "initialisation is kept.",
    ),
    Preset(
        name="mf-beauty",
        model="mf",
        data="beauty",
        config=dict(
            epochs=1000,
            batch_size=298,
            lr=1e-3,
            weight_decay=0.1,
            betas=_FREEREC_BETAS,
            maxlen=50,
            sevo_beta=0.9,
            sevo_steps=3,
            hops=1,
            eval_every=5,
        ),
        model_overrides=dict(dim=64),
        source=f"{_REPO} MF-BPR/item-item/AmazonBeauty_550_Chron.yaml, the item-graph variant "
        "(MF-BPR/main2.py: only the item table smoothed): epochs 1000, lr, weight decay, "
        "embedding_dim 64, beta3 0.9, L 3, H 1, maxlen4graph 50; betas (0.9, 0.999) and "
        "EVAL_FREQ 5 from its logged runs (MF-BPR/logs/I-I-Beauty-5/.../README.md). "
        "batch_size: the authors' 2048 counts sampled (user, positive, negative) triples; this "
        "engine batches users with all their training items, so 2048 triples ≈ 2048 / 6.88 "
        "(Beauty's mean training items per user: 153,776 / 22,363) ≈ 298 users, the same "
        "number of steps per epoch and interactions per step on average",
        notes="Initialisation: the authors draw embeddings from N(0, 1e-4²); MFConfig's "
        "init_std (0.1) is kept. The paper's table does not say which MF variant it reports; "
        "mf-bipartite-beauty is the other one.",
    ),
    Preset(
        name="mf-bipartite-beauty",
        model="mf",
        data="beauty",
        config=dict(
            epochs=1000,
            batch_size=298,
            lr=1e-3,
            weight_decay=0.1,
            betas=_FREEREC_BETAS,
            maxlen=50,
            sevo_beta=0.99,
            sevo_steps=3,
            hops=1,
            eval_every=5,
        ),
        model_overrides=dict(dim=64, bipartite=True),
        source=f"{_REPO} MF-BPR/configs/AmazonBeauty_550_Chron.yaml, the user-item variant "
        "(MF-BPR/main.py: user and item tables stacked and smoothed on the bipartite graph): "
        "epochs 1000, lr, weight decay, embedding_dim 64, beta3 0.99, L 3, H 1; betas and "
        "EVAL_FREQ from its logged runs (MF-BPR/logs/U-I-Beauty-5/.../README.md); batch_size "
        "as in mf-beauty (2048 triples ≈ 298 users)",
        notes="As mf-beauty.",
    ),
    Preset(
        name="bert4rec-beauty",
        model="bert4rec",
        data="beauty",
        config=dict(
            epochs=500,
            batch_size=256,
            lr=5e-4,
            weight_decay=0.1,
            betas=(0.9, 0.95),
            maxlen=50,
            sevo_beta=0.99,
            sevo_steps=3,
            hops=1,
            eval_every=5,
        ),
        model_overrides=dict(dim=64, num_blocks=2, num_heads=4, dropout=0.2, mask_prob=0.5),
        source=f"{_REPO} BERT4Rec/configs/AmazonBeauty_550_Chron.yaml (every value: maxlen 50, "
        "4 heads, 2 blocks, hidden 64, dropout 0.2, mask_prob 0.5, 500 epochs, batch 256, betas "
        "(0.9, 0.95), lr 5e-4, weight decay 0.1, beta3 0.99, L 3, H 1); the learning-rate "
        "schedule's decay_factor is 1.0 (BERT4Rec/main.py default, logged), i.e. none; "
        "EVAL_FREQ 5 from the logged runs",
        notes="The authors' BERT4Rec is torch's TransformerEncoder (post-LN, GELU) with one "
        "output Linear over all items; engine.models.bert4rec's block is its own (module "
        "docstring).",
    ),
    Preset(
        name="stosa-beauty",
        model="stosa",
        data="beauty",
        config=dict(
            epochs=500,
            batch_size=256,
            lr=1e-3,
            weight_decay=0.1,
            betas=(0.9, 0.999),
            maxlen=100,
            sevo_beta=0.99,
            sevo_steps=3,
            hops=1,
            eval_every=5,
        ),
        model_overrides=dict(
            dim=64, num_blocks=1, num_heads=4, dropout=0.2, attn_dropout=0.5, pvn_weight=0.005
        ),
        source=f"{_REPO} STOSA/configs/AmazonBeauty_550_Chron.yaml (every value: maxlen and "
        "maxlen4graph 100, 4 heads, 1 block, hidden 64, attention dropout 0.5, hidden dropout "
        "0.2, 500 epochs, batch 256, betas (0.9, 0.999), lr 1e-3, weight decay 0.1, pvn_weight "
        "0.005, Wasserstein distance, beta3 0.99, L 3, H 1); EVAL_FREQ 5 from the logged runs",
        notes="See engine/models/stosa.py for the differences from the authors' encoder "
        "(encode_mean).",
    ),
    # MovieLens-1M: the authors' settings for it, also the ones the README uses on ML-100K.
    Preset(
        name="sasrec-ml-1m",
        model="sasrec",
        data="ml-1m",
        config=dict(
            epochs=200,
            batch_size=128,
            lr=1e-3,
            weight_decay=0.1,
            betas=(0.9, 0.98),
            maxlen=200,
            sevo_beta=0.99,
            sevo_steps=3,
            hops=1,
            eval_every=5,
        ),
        model_overrides=dict(dim=64, num_blocks=2, num_heads=1, dropout=0.1),
        source=f"{_REPO} SASRec/configs/MovieLens1M_550_Chron.yaml (every value); EVAL_FREQ 5",
        notes="ml-1m is not a named data set here: pass --data with the directory holding "
        "ratings.dat, or use it on ml-100k as the README's MovieLens table does.",
    ),
    Preset(
        name="gru4rec-ml-1m",
        model="gru4rec",
        data="ml-1m",
        config=dict(
            epochs=300,
            batch_size=512,
            lr=1e-3,
            weight_decay=0.01,
            betas=_FREEREC_BETAS,
            maxlen=200,
            sevo_beta=0.99,
            sevo_steps=3,
            hops=1,
            eval_every=5,
        ),
        model_overrides=dict(dim=64, hidden=64, num_layers=1, dropout=0.3),
        source=f"{_REPO} GRU4Rec/configs/MovieLens1M_550_Chron.yaml; betas are freerec's "
        "defaults (0.9, 0.999) as logged for the Beauty runs (not read from an ML-1M log); "
        "EVAL_FREQ 5",
        notes="As sasrec-ml-1m for the data set.",
    ),
    Preset(
        name="stosa-ml-1m",
        model="stosa",
        data="ml-1m",
        config=dict(
            epochs=500,
            batch_size=256,
            lr=5e-3,
            weight_decay=0.1,
            betas=(0.9, 0.999),
            maxlen=200,
            sevo_beta=0.99,
            sevo_steps=3,
            hops=1,
            eval_every=5,
        ),
        model_overrides=dict(
            dim=64, num_blocks=1, num_heads=4, dropout=0.1, attn_dropout=0.2, pvn_weight=0.001
        ),
        source=f"{_REPO} STOSA/configs/MovieLens1M_550_Chron.yaml (every value); EVAL_FREQ 5",
        notes="As sasrec-ml-1m for the data set. No bert4rec-ml-1m or mf-ml-1m preset: their "
        "ML-1M files build the graph from the last 10 items (maxlen4graph 10) with maxlen 200 "
        "(BERT4Rec) or none (MF); this engine ties the graph window to maxlen.",
    ),
]

#: Every preset by name, in a fixed order (Beauty first, then MovieLens-1M).
PRESETS: Mapping[str, Preset] = MappingProxyType({p.name: p for p in _PRESET_LIST})


def preset_config(
    preset: str | Preset | None, given: Mapping[str, Any] | None = None
) -> OfflineConfig:
    """An :class:`OfflineConfig` from a preset with ``given`` fields on top.

    Precedence: ``given`` (e.g. the flags typed on a command line) > the preset >
    :class:`OfflineConfig`'s defaults. ``given["model_overrides"]`` is merged into the preset's
    model overrides key by key (a given key wins). ``preset=None`` builds from ``given`` alone.

    Raises:
        KeyError: unknown preset name (the message lists the known ones).
        ValueError: ``given["model"]`` names another backbone than the preset's, or an invalid
            value (from :class:`OfflineConfig`).
    """
    given = dict(given or {})
    if preset is None:
        return OfflineConfig(**given)
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise KeyError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
        preset = PRESETS[preset]
    if given.get("model", preset.model) != preset.model:
        raise ValueError(
            f"preset {preset.name!r} is for model {preset.model!r}, not {given['model']!r}"
        )
    overrides = {**preset.model_overrides, **dict(given.pop("model_overrides", None) or {})}
    values = {**preset.config, **given, "model": preset.model, "model_overrides": overrides}
    return OfflineConfig(**values)


class RecordGiven(argparse.Action):
    """``store`` that also records the option's ``dest`` in ``namespace._given``, so a command
    can tell a typed flag from its default (a typed flag overrides a preset; see
    :func:`given_options`)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, values)
        given = set(getattr(namespace, "_given", ()))
        given.add(self.dest)
        namespace._given = given


def given_options(args: argparse.Namespace, dests: Sequence[str] | None = None) -> set[str]:
    """The ``dest``s of the :class:`RecordGiven` options typed on the command line (among
    ``dests`` when given)."""
    given = set(getattr(args, "_given", ()))
    return given if dests is None else given & set(dests)
