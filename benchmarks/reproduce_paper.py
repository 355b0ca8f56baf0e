"""Reproduce the SEvo paper's offline comparison (AdamW vs SEvo-AdamW), resumably.

Runs a grid of (model × optimizer × graph × seed) with the paper's settings on a dataset, several
runs in parallel (one torch thread each: small recommendation models scale better across
processes than across threads on a few cores), and writes into ``--out``:

* ``runs/<name>.json`` per finished run (``.partial.json`` with the learning curve while running);
* ``summary.json`` / ``summary.md``: mean ± std over seeds next to the paper's numbers, the
  relative gain, paired tests (over seeds and over users) and the epoch-time ratio;
* ``curves.png``: validation NDCG@10 per epoch for every run (needs matplotlib).

Stopping and restarting continues where it stopped (finished runs are loaded, unfinished ones
continue from their last checkpoint under ``<out>/checkpoints``).

``--preset NAME...`` (or preset names in ``--models``) starts each model from the SEvo authors'
settings for it (:mod:`engine.presets`: ``sasrec-beauty``, ``bert4rec-beauty``,
``stosa-beauty``, ...); the flags typed next to it override the preset's values.

Usage::

    python benchmarks/reproduce_paper.py --data beauty --models sasrec --seeds 0 1 2 \\
        --epochs 200 --jobs 2 --out benchmarks/results/beauty-sasrec
    python benchmarks/reproduce_paper.py --preset bert4rec-beauty stosa-beauty --seeds 0 1 2
    python benchmarks/reproduce_paper.py --quick   # ML-100K, 2 epochs: checks the plumbing
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.config import MODEL_NAMES  # noqa: E402
from engine.experiments import (  # noqa: E402
    PAPER_RESULTS,
    grid_configs,
    markdown_table,
    run_grid,
    write_summary,
)
from engine.presets import PRESETS, RecordGiven, given_options, preset_config  # noqa: E402
from engine.train import OfflineConfig  # noqa: E402

log = logging.getLogger("reproduce")


def _worker(
    data: str, config: OfflineConfig, out: str, core: int, max_users: int | None, save: bool
) -> dict:
    import torch

    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    (result,) = run_grid(
        data,
        [config],
        Path(out),
        core=core,
        max_users=max_users,
        progress=False,
        save_embeddings=save,
    )
    return result


def finished_runs(out: Path) -> list[dict]:
    """Every finished run in ``out/runs`` (earlier grids into the same directory included)."""
    return [
        json.loads(p.read_text())
        for p in sorted((out / "runs").glob("*.json"))
        if not p.name.endswith(".partial.json")
    ]


def plot_curves(out: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib not installed: skipping curves.png")
        return None
    fig, ax = plt.subplots(figsize=(8, 5))
    for path in sorted((out / "runs").glob("*.json")):
        run = json.loads(path.read_text())
        curve = run.get("curve", [])
        if not curve:
            continue
        cfg = run["config"]
        style = "-" if cfg["optimizer"] == "sevo-adamw" else "--"
        label = path.name.replace(".partial.json", " (running)").replace(".json", "")
        ax.plot(
            [p["epoch"] for p in curve], [p["valid_NDCG@10"] for p in curve], style, label=label
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation NDCG@10")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    target = out / "curves.png"
    fig.tight_layout()
    fig.savefig(target, dpi=110)
    plt.close(fig)
    return target


def parse_model_options(options: list[str]) -> dict[str, object]:
    """``["block=query-norm", "attend_padding=true", "dropout=0.4"]`` → typed overrides."""
    parsed: dict[str, object] = {}
    for option in options:
        key, sep, raw = option.partition("=")
        if not sep or not key:
            raise SystemExit(f"--model-option wants KEY=VALUE, got {option!r}")
        lowered = raw.lower()
        value: object
        if lowered in ("true", "false"):
            value = lowered == "true"
        else:
            try:
                value = int(raw)
            except ValueError:
                try:
                    value = float(raw)
                except ValueError:
                    value = raw
        parsed[key.replace("-", "_")] = value
    return parsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="ML-100K slice, 2 epochs, 1 seed: checks the plumbing in seconds",
    )
    record = {"action": RecordGiven}  # typed flags override a preset's values
    parser.add_argument("--data", default=None, help="default: the presets' data set, else beauty")
    parser.add_argument(
        "--models",
        nargs="+",
        default=["sasrec"],
        **record,
        help=f"models ({', '.join(MODEL_NAMES)}) or preset names ({', '.join(PRESETS)})",
    )
    parser.add_argument(
        "--preset",
        nargs="+",
        default=[],
        metavar="NAME",
        help="start from named settings, one per model (see engine/presets.py)",
    )
    parser.add_argument("--optimizers", nargs="+", default=["adamw", "sevo-adamw"])
    parser.add_argument("--graphs", nargs="+", default=["interactions"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=200, **record)
    parser.add_argument("--eval-every", type=int, default=5, **record)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--max-users", type=int, default=None)
    parser.add_argument("--core", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--save-embeddings", action="store_true", help="keep each run's item matrix (.items.npy)"
    )
    parser.add_argument(
        "--max-category-size", type=int, default=500, help="see `sevo offline --help`", **record
    )
    parser.add_argument("--batch-size", type=int, default=OfflineConfig().batch_size, **record)
    parser.add_argument(
        "--maxlen",
        type=int,
        default=OfflineConfig().maxlen,
        help="sequence length (the SEvo authors use 50 on Amazon, 200 on MovieLens)",
        **record,
    )
    parser.add_argument("--lr", type=float, default=OfflineConfig().lr, **record)
    parser.add_argument(
        "--weight-decay", type=float, default=OfflineConfig().weight_decay, **record
    )
    parser.add_argument(
        "--device",
        default="cpu",
        help="torch device of every run (e.g. cuda; default cpu)",
        **record,
    )
    parser.add_argument(
        "--checkpoint-every-epochs",
        type=int,
        default=OfflineConfig().checkpoint_every_epochs,
        help="each run checkpoints into OUT/checkpoints/<run> this often; a restarted grid "
        "continues unfinished runs from there",
        **record,
    )
    parser.add_argument(
        "--model-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a model config field (repeatable), e.g. block=query-norm, "
        "attend_padding=true, dropout=0.4; runs with options belong in their own --out",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    given = given_options(args)
    if args.quick:
        args.data, args.epochs, args.eval_every, args.seeds = "ml-100k", 2, 1, [0]
        args.max_users = args.max_users or 200
        given |= {"epochs", "eval_every"}  # a quick run stays quick whatever the preset says
    # --models may name presets too; with --preset, the default --models adds nothing
    named = args.models if ("models" in given or not args.preset) else []
    presets = list(args.preset) + [m for m in named if m in PRESETS]
    models = [m for m in named if m not in PRESETS]
    unknown = [m for m in models if m not in MODEL_NAMES] + [p for p in presets if p not in PRESETS]
    if unknown:
        parser.error(f"unknown model(s) or preset(s) {unknown}")
    preset_data = {PRESETS[p].data for p in presets}
    if args.data is None:
        if len(preset_data) > 1:
            parser.error(f"presets {presets} are for different data sets: pass --data")
        args.data = preset_data.pop() if preset_data else "beauty"
    out = args.out or ROOT / "benchmarks" / "results" / f"{args.data}-{'-'.join(presets + models)}"
    flags = {
        "epochs": args.epochs,
        "eval_every": args.eval_every,
        "batch_size": args.batch_size,
        "maxlen": args.maxlen,
        "lr": args.lr,
        "weight_decay": args.weight_decay,
        "max_category_size": args.max_category_size or None,
        "device": args.device,
        "checkpoint_every_epochs": args.checkpoint_every_epochs,
    }
    options = parse_model_options(args.model_option)
    configs = []
    if models:
        base = OfflineConfig(**flags, model_overrides=options)
        configs += grid_configs(
            base, models=models, optimizers=args.optimizers, graphs=args.graphs, seeds=args.seeds
        )
    for name in presets:
        preset = PRESETS[name]
        values = {k: v for k, v in flags.items() if k not in preset.config or k in given}
        base = preset_config(preset, {**values, "model_overrides": options})
        configs += grid_configs(
            base,
            models=[preset.model],
            optimizers=args.optimizers,
            graphs=args.graphs,
            seeds=args.seeds,
        )
    keys = [(c.model, c.optimizer, c.graph if c.uses_sevo else "-", c.seed) for c in configs]
    if len(keys) != len(set(keys)):
        parser.error("two presets or models of one grid share a model (and result files)")
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = [
            pool.submit(
                _worker, args.data, c, str(out), args.core, args.max_users, args.save_embeddings
            )
            for c in configs
        ]
        paper = PAPER_RESULTS.get(args.data)
        for future in as_completed(futures):
            future.result()
            plot_curves(out)
            write_summary(out, finished_runs(out), paper)  # after every finished run
    summary = write_summary(out, finished_runs(out), paper)
    print(markdown_table(summary, paper), end="")
    png = plot_curves(out)
    print(f"wrote {out / 'summary.md'}" + (f" and {png}" if png else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
