"""Training-time overhead of SEvo per epoch, and inference cost, against AdamW in the same run.

Two copies of the same model (same initial weights) train on the same data, one with
``torch.optim.AdamW`` and one with ``SEvoAdamW`` smoothing over the training item graph, each arm
with its own model and optimizer. Epochs are interleaved (A S, S A, A S, ...: the arm that goes
first alternates, so neither always runs on a cache the other warmed) so that machine drift hits
both alike; the report is the ratio of the per-arm median epoch times, and the median of the
per-epoch ratios next to it. Inference: full-ranking validation of each model, timed the same way
(SEvo changes only how the table is updated, so the models are identical at inference). The
optimizer step alone is also timed per step, and SEvo's split into smoothing (ψ) and the rest.

Usage::

    python benchmarks/bench_overhead.py --data beauty --model sasrec --epochs 4
    python benchmarks/bench_overhead.py --quick     # ML-100K, 2 epochs
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.experiments import load_split  # noqa: E402
from engine.models import build_model  # noqa: E402
from engine.train import (  # noqa: E402
    OfflineConfig,
    build_item_graph,
    build_optimizer,
    evaluate,
    train_epoch,
    trainable_users,
)


class TimedSmoother:
    """Wraps a smoother and accumulates the seconds spent in it (and each call's)."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.seconds = 0.0
        self.calls = 0
        self.per_call: list[float] = []

    def __call__(self, X):
        start = time.perf_counter()
        out = self.inner(X)
        elapsed = time.perf_counter() - start
        self.seconds += elapsed
        self.calls += 1
        self.per_call.append(elapsed)
        return out


def time_steps(optimizer) -> list[float]:
    """Record the seconds of every ``optimizer.step()`` call (an instance attribute wraps the
    bound method; train_epoch calls ``optimizer.step()``)."""
    seconds: list[float] = []
    inner = optimizer.step

    def step(*args, **kwargs):
        start = time.perf_counter()
        out = inner(*args, **kwargs)
        seconds.append(time.perf_counter() - start)
        return out

    optimizer.step = step
    return seconds


def _ms(values: list[float]) -> float:
    return 1e3 * statistics.median(values) if values else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--data", default="beauty")
    parser.add_argument("--model", default="sasrec")
    parser.add_argument("--epochs", type=int, default=4, help="timed epochs per optimizer")
    parser.add_argument(
        "--warmup",
        type=int,
        default=1,
        help="untimed epochs per optimizer first (state allocation, caches, one-off builds)",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.data, args.epochs, args.warmup = "ml-100k", 2, 1
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
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
    step_seconds = {name: time_steps(opt) for name, opt in optimizers.items()}
    order_rng = np.random.default_rng(0)
    users = trainable_users(split)
    arms = ("adamw", "sevo-adamw")
    epoch_seconds: dict[str, list[float]] = {"adamw": [], "sevo-adamw": []}
    epoch_order: list[list[str]] = []
    warmup_seconds: dict[str, list[float]] = {"adamw": [], "sevo-adamw": []}
    for epoch in range(args.warmup + args.epochs):
        if epoch == args.warmup:  # warm-up done: forget what it recorded
            for name in arms:
                warmup_seconds[name] = epoch_seconds[name][:]
                epoch_seconds[name].clear()
                step_seconds[name].clear()
            epoch_order.clear()
            for timer in timers:
                timer.seconds, timer.calls = 0.0, 0
                timer.per_call.clear()
        order = order_rng.permutation(users)  # the same users in the same order for both arms
        sequence = arms if epoch % 2 == 0 else arms[::-1]
        epoch_order.append(list(sequence))
        for name in sequence:
            generator = torch.Generator().manual_seed(epoch)
            start = time.perf_counter()
            train_epoch(models[name], optimizers[name], split, order, config_a, generator)
            epoch_seconds[name].append(time.perf_counter() - start)
            kind = "warm-up" if epoch < args.warmup else "epoch"
            print(f"{kind} {epoch + 1} {name:10s} {epoch_seconds[name][-1]:.2f} s", flush=True)
    smoothing_s = sum(t.seconds for t in timers) / args.epochs
    smoothing_per_step = [sum(calls) for calls in zip(*(t.per_call for t in timers))]
    sevo_rest = [
        step - smooth for step, smooth in zip(step_seconds["sevo-adamw"], smoothing_per_step)
    ]
    epoch_ratios = [
        s / a for s, a in zip(epoch_seconds["sevo-adamw"], epoch_seconds["adamw"], strict=True)
    ]
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
        "warmup_epochs_per_optimizer": args.warmup,
        "warmup_epoch_seconds": warmup_seconds,
        "graph_nnz": graph.nnz,
        "table_rows": split.num_items + 1,
        "epoch_seconds": epoch_seconds,
        "median_epoch_seconds": med,
        "epoch_time_ratio_sevo_vs_adamw": med["sevo-adamw"] / med["adamw"],
        "smoothing_seconds_per_epoch": smoothing_s,
        "smoothing_share_of_sevo_epoch": smoothing_s / med["sevo-adamw"],
        "eval_seconds": eval_seconds,
        "inference_time_ratio_sevo_vs_adamw": med_eval["sevo-adamw"] / med_eval["adamw"],
        "epoch_order": epoch_order,
        "epoch_time_ratios": epoch_ratios,
        "median_of_epoch_time_ratios": statistics.median(epoch_ratios),
        "steps_per_epoch": len(step_seconds["adamw"]) // max(args.epochs, 1),
        "optimizer_step_ms_median": {name: _ms(v) for name, v in step_seconds.items()},
        "sevo_smoothing_ms_median": _ms(smoothing_per_step),
        "sevo_step_without_smoothing_ms_median": _ms(sevo_rest),
        "optimizer_seconds_per_epoch": {
            name: sum(v) / args.epochs for name, v in step_seconds.items()
        },
        # The two arms run the same forward/backward, so the optimizer's extra seconds are the
        # overhead without the epoch-to-epoch noise of the rest (a low-noise cross-check).
        "optimizer_overhead_share_of_adamw_epoch": (
            sum(step_seconds["sevo-adamw"]) - sum(step_seconds["adamw"])
        )
        / args.epochs
        / med["adamw"],
        "load_average_1m_before": load_before,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    print(
        json.dumps(
            {k: v for k, v in report.items() if "seconds" not in k or "median" in k}, indent=1
        )
    )
    step_ms = report["optimizer_step_ms_median"]
    print(
        f"\nSEvo / AdamW epoch time: {report['epoch_time_ratio_sevo_vs_adamw']:.3f} "
        f"(median of per-epoch ratios {report['median_of_epoch_time_ratios']:.3f}; "
        f"smoothing {smoothing_s:.2f} s of {med['sevo-adamw']:.2f} s); "
        f"inference ratio {report['inference_time_ratio_sevo_vs_adamw']:.3f}\n"
        f"optimizer step (median): AdamW {step_ms['adamw']:.2f} ms, SEvo-AdamW "
        f"{step_ms['sevo-adamw']:.2f} ms = ψ {report['sevo_smoothing_ms_median']:.2f} ms + rest "
        f"{report['sevo_step_without_smoothing_ms_median']:.2f} ms; extra optimizer time "
        f"{100 * report['optimizer_overhead_share_of_adamw_epoch']:.1f}% of an AdamW epoch"
    )
    out = args.out or ROOT / "benchmarks" / "results" / f"overhead-{dataset}-{args.model}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
