"""Offline experiment grids: run (model × optimizer × graph × seed), resume, compare, tabulate.

Each run writes ``<out>/runs/<name>.json`` when it finishes and ``<name>.partial.json`` after
every validation, so a long benchmark can be stopped and restarted: finished runs with the same
configuration are loaded instead of re-run, and a run stopped mid-way continues from its last
checkpoint (``<out>/checkpoints/<name>/checkpoint.pt``, every ``checkpoint_every_epochs``
epochs; removed when the run finishes). ``PAPER_RESULTS`` holds the SEvo paper's published
numbers, which the summary tables print next to the reproduced ones.
"""

from __future__ import annotations

import io
import json
import logging
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from engine.data import core_filter, load_dataset, split_leave_one_out
from engine.metrics import paired_test
from engine.models import resolved_config
from engine.train import OfflineConfig, train_offline
from sevo_common.atomic import atomic_write_bytes

__all__ = ["PAPER_RESULTS", "compare_runs", "load_split", "markdown_table", "run_grid"]

log = logging.getLogger(__name__)

METRICS = ("HR@1", "HR@5", "HR@10", "NDCG@5", "NDCG@10")

# Test metrics published in the SEvo paper (Graph-enhanced Optimizers for Structure-aware
# Recommendation Embedding Evolution, NeurIPS 2024): data set -> "model/optimizer" -> metric.
# `sevo offline` and benchmarks/reproduce_paper.py pass a data set's entry to markdown_table,
# which prints it under the reproduced rows.
PAPER_RESULTS: dict[str, dict[str, dict[str, float]]] = {
    "beauty": {
        "sasrec/adamw": {
            "HR@1": 0.0120,
            "HR@5": 0.0404,
            "HR@10": 0.0634,
            "NDCG@5": 0.0262,
            "NDCG@10": 0.0336,
        },
        "sasrec/sevo-adamw": {
            "HR@1": 0.0154,
            "HR@5": 0.0499,
            "HR@10": 0.0759,
            "NDCG@5": 0.0328,
            "NDCG@10": 0.0411,
        },
        "gru4rec/adamw": {
            "HR@1": 0.0061,
            "HR@5": 0.0233,
            "HR@10": 0.0395,
            "NDCG@5": 0.0146,
            "NDCG@10": 0.0198,
        },
        "gru4rec/sevo-adamw": {
            "HR@1": 0.0094,
            "HR@5": 0.0326,
            "HR@10": 0.0524,
            "NDCG@5": 0.0209,
            "NDCG@10": 0.0273,
        },
        "mf/adamw": {
            "HR@1": 0.0071,
            "HR@5": 0.0272,
            "HR@10": 0.0454,
            "NDCG@5": 0.0170,
            "NDCG@10": 0.0228,
        },
        "mf/sevo-adamw": {
            "HR@1": 0.0076,
            "HR@5": 0.0293,
            "HR@10": 0.0480,
            "NDCG@5": 0.0184,
            "NDCG@10": 0.0244,
        },
        "bert4rec/adamw": {
            "HR@1": 0.0157,
            "HR@5": 0.0479,
            "HR@10": 0.0716,
            "NDCG@5": 0.0319,
            "NDCG@10": 0.0395,
        },
        "bert4rec/sevo-adamw": {
            "HR@1": 0.0172,
            "HR@5": 0.0522,
            "HR@10": 0.0772,
            "NDCG@5": 0.0350,
            "NDCG@10": 0.0430,
        },
    },
}


def load_split(data: str, *, core: int = 5, max_users: int | None = None):
    """Load a dataset by name or path, k-core filter it and split it leave-one-out."""
    inter = core_filter(load_dataset(data), k=core)
    split = split_leave_one_out(inter)
    if max_users is not None and max_users < split.num_users:
        split = _first_users(split, max_users)
    return inter.name or str(data), split


def _first_users(split, max_users: int):
    """A smaller split with the first ``max_users`` users (for quick runs and tests)."""
    from engine.data import SequenceSplit

    end = int(split.train_offsets[max_users])
    return SequenceSplit(
        train_items=split.train_items[:end],
        train_offsets=split.train_offsets[: max_users + 1],
        valid_items=split.valid_items[:max_users],
        test_items=split.test_items[:max_users],
        num_users=max_users,
        num_items=split.num_items,
        item_categories=split.item_categories,
    )


def same_experiment(saved: dict[str, Any] | None, config: OfflineConfig) -> bool:
    """Whether a finished run's saved config is ``config``'s experiment.

    Fields added to :class:`OfflineConfig` after the run was saved count as their defaults, the
    device does not count (a run finished on a GPU is reused by a CPU rerun, and back), and
    model overrides are compared as the model configs they resolve to (so ``{}`` matches the
    defaults spelled out). A run saved before a model default changed must therefore name the
    old value in its overrides (the result files in ``benchmarks/results`` do). Where its
    checkpoints went (``checkpoint_dir``, ``checkpoint_every_epochs``) does not count either.
    """
    if saved is None:
        return False
    defaults = json.loads(json.dumps(asdict(OfflineConfig())))
    current = json.loads(json.dumps(asdict(config)))
    filled = json.loads(json.dumps({**defaults, **saved}))
    for fields in (filled, current):
        for name in _NOT_THE_EXPERIMENT:
            fields.pop(name, None)
    saved_overrides, overrides = filled.pop("model_overrides"), current.pop("model_overrides")
    if filled != current:
        return False
    try:
        return resolved_config(filled["model"], **saved_overrides) == resolved_config(
            current["model"], **overrides
        )
    except (TypeError, ValueError):  # overrides the current model config no longer accepts
        return False


#: OfflineConfig fields that do not define an experiment (a finished run is reused across them).
_NOT_THE_EXPERIMENT = ("device", "checkpoint_dir", "checkpoint_every_epochs")


def run_name(dataset: str, config: OfflineConfig) -> str:
    graph = config.graph if config.uses_sevo else "none"
    return f"{dataset}_{config.model}_{config.optimizer}_{graph}_seed{config.seed}"


def _write_json(path: Path, payload: Any) -> None:
    atomic_write_bytes(path, (json.dumps(payload, indent=1) + "\n").encode())


def run_grid(
    data: str,
    configs: Iterable[OfflineConfig],
    out_dir: Path,
    *,
    core: int = 5,
    max_users: int | None = None,
    progress: bool = True,
    resume: bool = True,
    save_embeddings: bool = False,
) -> list[dict[str, Any]]:
    """Run every config on ``data`` (loaded once); return the results JSON of each run.

    With ``save_embeddings`` the best model's item output matrix is also written as
    ``runs/<name>.items.npy`` (float32, row i = item i, row 0 = padding).

    Every run checkpoints into its own directory, ``<root>/<name>`` with ``<root>`` the config's
    ``checkpoint_dir`` or else ``<out_dir>/checkpoints``, and continues from a checkpoint found
    there (``resume=False`` deletes it first and starts over); the directory is removed once
    the run's results are written.
    """
    dataset, split = load_split(data, core=core, max_users=max_users)
    runs_dir = Path(out_dir) / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for config in configs:
        name = run_name(dataset, config)
        final = runs_dir / f"{name}.json"
        if resume and final.exists():
            previous = json.loads(final.read_text())
            if same_experiment(previous.get("config"), config):
                log.info("%s: already done, loaded %s", name, final)
                results.append(previous)
                continue
            log.info("%s: configuration changed, running again", name)
        ckpt_root = (
            Path(config.checkpoint_dir) if config.checkpoint_dir else Path(out_dir) / "checkpoints"
        )
        ckpt_dir = ckpt_root / name
        if not resume:
            shutil.rmtree(ckpt_dir, ignore_errors=True)
        config = replace(config, checkpoint_dir=str(ckpt_dir))
        partial_path = runs_dir / f"{name}.partial.json"
        curve: list[dict[str, float]] = []

        # a resumed run replays its restored curve through on_eval first, so this sees it all
        def save_partial(point, curve=curve, partial_path=partial_path, config=config):
            curve.append(point)
            _write_json(partial_path, {"config": asdict(config), "curve": curve})

        log.info("%s: training (%d epochs)", name, config.epochs)
        run = train_offline(
            split,
            config,
            dataset=dataset,
            progress=progress,
            on_eval=save_partial,
            keep_model=save_embeddings,
        )
        if save_embeddings and run.model is not None:
            buffer = io.BytesIO()
            np.save(buffer, run.model.item_output_weight().detach().float().cpu().numpy())
            atomic_write_bytes(runs_dir / f"{name}.items.npy", buffer.getvalue())
        result = run.to_json()
        _write_json(final, result)
        partial_path.unlink(missing_ok=True)
        shutil.rmtree(ckpt_dir, ignore_errors=True)
        log.info(
            "%s: test NDCG@10 %.4f HR@10 %.4f (best epoch %d, %.1f s/epoch)",
            name,
            result["test"]["NDCG@10"],
            result["test"]["HR@10"],
            result["best_epoch"],
            result["mean_epoch_seconds"],
        )
        results.append(result)
    return results


def grid_configs(
    base: OfflineConfig,
    *,
    models: Sequence[str],
    optimizers: Sequence[str],
    graphs: Sequence[str],
    seeds: Sequence[int],
) -> list[OfflineConfig]:
    """The cross product, seed-major so that a stopped grid has complete seeds first."""
    configs = []
    for seed in seeds:
        for model in models:
            for optimizer in optimizers:
                for graph in graphs if optimizer == "sevo-adamw" else graphs[:1]:
                    configs.append(
                        replace(base, model=model, optimizer=optimizer, graph=graph, seed=seed)
                    )
    return configs


def _group_key(result: dict[str, Any]) -> tuple[str, str, str]:
    cfg = result["config"]
    graph = cfg["graph"] if cfg["optimizer"] == "sevo-adamw" else "-"
    return cfg["model"], cfg["optimizer"], graph


def compare_runs(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean ± std per (model, optimizer, graph) and SEvo-vs-AdamW paired tests per model.

    Two paired tests are reported: over seeds (per-seed test NDCG@10, matched by seed) and over
    users (each user's test NDCG@10 averaged over the seeds both arms share).
    """
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault(_group_key(r), []).append(r)
    rows = []
    for (model, optimizer, graph), runs in sorted(groups.items()):
        row: dict[str, Any] = {
            "model": model,
            "optimizer": optimizer,
            "graph": graph,
            "seeds": sorted(r["config"]["seed"] for r in runs),
            "mean_epoch_seconds": float(np.mean([r["mean_epoch_seconds"] for r in runs])),
            "best_epochs": [r["best_epoch"] for r in runs],
        }
        for m in METRICS:
            values = np.array([r["test"][m] for r in runs])
            row[m] = float(values.mean())
            row[f"{m}_std"] = float(values.std(ddof=1)) if values.size > 1 else 0.0
        rows.append(row)
    comparisons = []
    for (model, optimizer, graph), sevo_runs in sorted(groups.items()):
        base_runs = groups.get((model, "adamw", "-"))
        if optimizer != "sevo-adamw" or not base_runs:
            continue
        by_seed_base = {r["config"]["seed"]: r for r in base_runs}
        shared = sorted(s for s in (r["config"]["seed"] for r in sevo_runs) if s in by_seed_base)
        by_seed_sevo = {r["config"]["seed"]: r for r in sevo_runs}
        if not shared:
            continue
        a = np.array([by_seed_sevo[s]["test"]["NDCG@10"] for s in shared])
        b = np.array([by_seed_base[s]["test"]["NDCG@10"] for s in shared])
        users_a = np.mean([by_seed_sevo[s]["test_user_ndcg10"] for s in shared], axis=0)
        users_b = np.mean([by_seed_base[s]["test_user_ndcg10"] for s in shared], axis=0)
        seeds_test = paired_test(a, b)
        users_test = paired_test(users_a, users_b)
        time_a = np.mean([by_seed_sevo[s]["mean_epoch_seconds"] for s in shared])
        time_b = np.mean([by_seed_base[s]["mean_epoch_seconds"] for s in shared])
        comparisons.append(
            {
                "model": model,
                "graph": graph,
                "seeds": shared,
                "ndcg10_sevo": float(a.mean()),
                "ndcg10_adamw": float(b.mean()),
                "relative_gain": float(a.mean() / b.mean() - 1) if b.mean() > 0 else float("nan"),
                "p_seeds_ttest": seeds_test.get("t_pvalue"),
                "p_users_ttest": users_test.get("t_pvalue"),
                "p_users_wilcoxon": users_test.get("wilcoxon_pvalue"),
                "epoch_time_ratio": float(time_a / time_b) if time_b > 0 else float("nan"),
            }
        )
    return {"rows": rows, "comparisons": comparisons}


def markdown_table(
    summary: dict[str, Any], paper: dict[str, dict[str, float]] | None = None
) -> str:
    """Markdown: one row per (model, optimizer, graph) with mean ± std, then the comparisons."""
    lines = [
        "| model | optimizer | graph | seeds | " + " | ".join(METRICS) + " | s/epoch |",
        "|---|---|---|---|" + "---|" * len(METRICS) + "---|",
    ]
    for row in summary["rows"]:
        cells = [f"{row[m]:.4f} ± {row[m + '_std']:.4f}" for m in METRICS]
        lines.append(
            f"| {row['model']} | {row['optimizer']} | {row['graph']} | {len(row['seeds'])} | "
            + " | ".join(cells)
            + f" | {row['mean_epoch_seconds']:.1f} |"
        )
        key = f"{row['model']}/{row['optimizer']}"
        if paper and key in paper and row["graph"] in ("-", "interactions"):
            ref = paper[key]
            lines.append(
                f"| {row['model']} (paper) | {row['optimizer']} | | 5 | "
                + " | ".join(f"{ref[m]:.4f}" for m in METRICS)
                + " | |"
            )
    if summary["comparisons"]:
        lines += [
            "",
            "| model | graph | NDCG@10 SEvo | NDCG@10 AdamW | gain | p (seeds, t) | "
            "p (users, t) | p (users, Wilcoxon) | epoch time ratio |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for c in summary["comparisons"]:
            lines.append(
                f"| {c['model']} | {c['graph']} | {c['ndcg10_sevo']:.4f} | {c['ndcg10_adamw']:.4f} "
                f"| {100 * c['relative_gain']:+.1f}% | {_p(c['p_seeds_ttest'])} | "
                f"{_p(c['p_users_ttest'])} | {_p(c['p_users_wilcoxon'])} | "
                f"{c['epoch_time_ratio']:.2f} |"
            )
    return "\n".join(lines) + "\n"


def _p(value: float | None) -> str:
    if value is None or not np.isfinite(value):
        return "n/a"
    return f"{value:.2g}"


def write_summary(out_dir: Path, results: Sequence[dict[str, Any]], paper=None) -> dict[str, Any]:
    """Write ``summary.json`` and ``summary.md`` next to the runs; return the summary."""
    summary = compare_runs(results)
    _write_json(Path(out_dir) / "summary.json", summary)
    atomic_write_bytes(Path(out_dir) / "summary.md", markdown_table(summary, paper).encode())
    return summary
