"""Training-time overhead of SEvo per epoch, and inference cost, against AdamW in the same run.

Two copies of the same model (same initial weights) train on the same data, one with
``torch.optim.AdamW`` and one with ``SEvoAdamW`` smoothing over the training item graph. Epochs
alternate between the two (A, S, A, S, ...) so that machine noise hits both alike; the report is
the ratio of median epoch times. Inference: full-ranking validation of each model, timed the same
way (SEvo changes only how the table is updated, so the models are identical at inference).
The optimizer step alone is also timed, split into smoothing and the rest.

Usage::

    python benchmarks/bench_overhead.py --data beauty --model sasrec --epochs 4
    python benchmarks/bench_overhead.py --quick     # ML-100K, 2 epochs
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.models import build_model  # noqa: E402
from engine.train import (  # noqa: E402
    OfflineConfig,
    build_item_graph,
    build_optimizer,
    evaluate,
    train_epoch,
    trainable_users,
)
from streaming.experiments import load_split  # noqa: E402


class TimedSmoother:
    """Wraps a smoother and accumulates the seconds spent in it."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.seconds = 0.0
        self.calls = 0

    def __call__(self, X):
        start = time.perf_counter()
        out = self.inner(X)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--data", default="beauty")
    parser.add_argument("--model", default="sasrec")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per optimizer")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.data, args.epochs = "ml-100k", 2
    torch.set_num_threads(args.threads)
    dataset, split = load_split(args.data)
    config_a = OfflineConfig(model=args.model, optimizer="adamw")
    config_s = OfflineConfig(model=args.model, optimizer="sevo-adamw")
    models = {
        name: build_model(args.model, num_items=split.num_items, num_users=split.num_users, seed=0)
        for name in ("adamw", "sevo-adamw")
    }
    graph = build_item_graph(split, config_s)
    optimizers = {
        "adamw": build_optimizer(models["adamw"], config_a, None),
        "sevo-adamw": build_optimizer(models["sevo-adamw"], config_s, graph),
    }
    timers = []
    for group in optimizers["sevo-adamw"].param_groups:
        if group.get("smoother") is not None:
            group["smoother"] = TimedSmoother(group["smoother"])
            timers.append(group["smoother"])
    order_rng = np.random.default_rng(0)
    users = trainable_users(split)
    epoch_seconds: dict[str, list[float]] = {"adamw": [], "sevo-adamw": []}
    for epoch in range(args.epochs):
        order = order_rng.permutation(users)
        for name in ("adamw", "sevo-adamw"):
            generator = torch.Generator().manual_seed(epoch)
            start = time.perf_counter()
            train_epoch(models[name], optimizers[name], split, order, config_a, generator)
            epoch_seconds[name].append(time.perf_counter() - start)
            print(f"epoch {epoch + 1} {name:10s} {epoch_seconds[name][-1]:.2f} s", flush=True)
    smoothing_s = sum(t.seconds for t in timers) / args.epochs
    eval_seconds: dict[str, list[float]] = {"adamw": [], "sevo-adamw": []}
    for _ in range(2):
        for name in ("adamw", "sevo-adamw"):
            start = time.perf_counter()
            evaluate(models[name], split, "valid", maxlen=config_a.maxlen)
            eval_seconds[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in epoch_seconds.items()}
    med_eval = {k: statistics.median(v) for k, v in eval_seconds.items()}
    report = {
        "data": dataset,
        "model": args.model,
        "threads": args.threads,
        "epochs_per_optimizer": args.epochs,
        "graph_nnz": graph.nnz,
        "table_rows": split.num_items + 1,
        "epoch_seconds": epoch_seconds,
        "median_epoch_seconds": med,
        "epoch_time_ratio_sevo_vs_adamw": med["sevo-adamw"] / med["adamw"],
        "smoothing_seconds_per_epoch": smoothing_s,
        "smoothing_share_of_sevo_epoch": smoothing_s / med["sevo-adamw"],
        "eval_seconds": eval_seconds,
        "inference_time_ratio_sevo_vs_adamw": med_eval["sevo-adamw"] / med_eval["adamw"],
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    print(
        json.dumps(
            {k: v for k, v in report.items() if "seconds" not in k or "median" in k}, indent=1
        )
    )
    print(
        f"\nSEvo / AdamW epoch time: {report['epoch_time_ratio_sevo_vs_adamw']:.3f} "
        f"(smoothing {smoothing_s:.2f} s of {med['sevo-adamw']:.2f} s); "
        f"inference ratio {report['inference_time_ratio_sevo_vs_adamw']:.3f}"
    )
    out = args.out or ROOT / "benchmarks" / "results" / f"overhead-{dataset}-{args.model}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
