"""Online training throughput against catalogue size: SEvo-AdamW arms against AdamW.

A stationary synthetic stream (``engine.data.synthetic.drifting_stream`` with drift 0) of
``--events`` events over N items and N users, for N in ``--items``, is learned micro-batch by
micro-batch (256 events, the replay's batch) by an :class:`~engine.online.OnlineTrainer`: ids,
the live graph, user state and the optimizer steps — what ``sevo replay`` times, without
validation, prequential ranking or checkpoints. Each (N, model, arm) runs in a fresh
subprocess on one thread, and the arms alternate order between repeats. The report holds the
median events/s per cell and the ratio to AdamW at the same N, plus where SEvo's training time
went (ψ, the optimizer step, the rest), from a second, profiled run of the SEvo arm.

Usage::

    python benchmarks/bench_catalogue.py [--quick] [--items 10000 50000 200000] [--repeats 1]

Writes ``benchmarks/results/catalogue.json`` (``catalogue-quick.json`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BATCH = 256
ARMS = {
    "adamw": {"optimizer": "adamw"},
    "sevo-update": {"optimizer": "sevo-adamw", "sevo_smooth": "update"},
    "sevo-gradient": {"optimizer": "sevo-adamw", "sevo_smooth": "gradient"},
}


def run_one(n_items: int, model: str, arm: str, events: int, profile: bool) -> dict:
    """Learn the stream in this process; events/s (and a time split when ``profile``)."""
    import numpy as np
    import torch

    torch.set_num_threads(1)
    import engine.optim as optim
    from engine.config import OnlineConfig
    from engine.data.synthetic import drifting_stream
    from engine.online import OnlineTrainer
    from engine.sevo import Smoother

    inter = drifting_stream(0.0, seed=0, n_events=events, n_users=n_items, n_items=n_items)
    order = np.argsort(inter.times, kind="stable")
    users = inter.user_ids[inter.users[order]]
    items = inter.item_ids[inter.items[order]]
    times = inter.times[order]
    spent = {"psi": 0.0, "step": 0.0}
    if profile:
        smoother_call = Smoother.__call__
        step = optim.SEvoAdamW.step

        def timed_psi(self, X):
            t0 = time.perf_counter()
            try:
                return smoother_call(self, X)
            finally:
                spent["psi"] += time.perf_counter() - t0

        def timed_step(self, closure=None):
            t0 = time.perf_counter()
            try:
                return step(self, closure)
            finally:
                spent["step"] += time.perf_counter() - t0

        Smoother.__call__ = timed_psi
        optim.SEvoAdamW.step = timed_step
    trainer = OnlineTrainer(OnlineConfig(model=model, **ARMS[arm]))
    train = 0.0
    start = time.perf_counter()
    for s in range(0, len(users), BATCH):
        out = trainer.learn_many(users[s : s + BATCH], items[s : s + BATCH], times[s : s + BATCH])
        train += out["seconds"]["train"]
    wall = time.perf_counter() - start
    result = {
        "items": n_items,
        "items_seen": trainer.num_items,
        "model": model,
        "arm": arm,
        "events": len(users),
        "events_per_s": len(users) / wall,
        "wall_seconds": wall,
        "train_seconds": train,
        "graph_nnz": trainer.graph.nnz,
    }
    if profile:
        result["psi_seconds"] = spent["psi"]
        result["step_seconds_incl_psi"] = spent["step"]
    return result


def _subprocess(n_items: int, model: str, arm: str, events: int, profile: bool) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--one",
        str(n_items),
        model,
        arm,
        "--events",
        str(events),
    ]
    if profile:
        cmd.append("--profile")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="10k and 50k items, 30k events")
    p.add_argument("--items", type=int, nargs="+", default=[10_000, 50_000, 200_000])
    p.add_argument("--models", nargs="+", default=["mf", "sasrec"])
    p.add_argument("--arms", nargs="+", default=["adamw", "sevo-gradient"], choices=list(ARMS))
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--one", nargs=3, metavar=("ITEMS", "MODEL", "ARM"), help=argparse.SUPPRESS)
    p.add_argument("--profile", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        n, model, arm = args.one
        print(json.dumps(run_one(int(n), model, arm, args.events, args.profile)))
        return 0
    if "adamw" not in args.arms:
        p.error("--arms must include adamw, the peer of every ratio")
    if args.quick:
        args.items, args.events, args.repeats = [10_000, 50_000], 30_000, 1
    runs: dict[str, list[dict]] = {}
    profiles: dict[str, dict] = {}
    for repeat in range(args.repeats):
        shift = repeat % len(args.arms)
        arms = args.arms[shift:] + args.arms[:shift]
        for n in args.items:
            for model in args.models:
                for arm in arms:
                    run = _subprocess(n, model, arm, args.events, profile=False)
                    runs.setdefault(f"{n}/{model}/{arm}", []).append(run)
                    print(
                        f"{n} items {model} {arm}: {run['events_per_s']:.0f} events/s", flush=True
                    )
    for n in args.items:
        for model in args.models:
            for arm in args.arms:
                if arm != "adamw":
                    profiles[f"{n}/{model}/{arm}"] = _subprocess(n, model, arm, args.events, True)
    rows = []
    lines = [
        "| items | model | arm | events/s | vs AdamW | ψ share of time | optimizer step share |",
        "|---|---|---|---|---|---|---|",
    ]
    for n in args.items:
        for model in args.models:
            base = statistics.median(r["events_per_s"] for r in runs[f"{n}/{model}/adamw"])
            for arm in args.arms:
                rate = statistics.median(r["events_per_s"] for r in runs[f"{n}/{model}/{arm}"])
                prof = profiles.get(f"{n}/{model}/{arm}")
                row = {
                    "items": n,
                    "model": model,
                    "arm": arm,
                    "events_per_s": rate,
                    "ratio_vs_adamw": rate / base,
                }
                psi = step = "-"
                if prof:
                    row["psi_share"] = prof["psi_seconds"] / prof["wall_seconds"]
                    row["step_share"] = prof["step_seconds_incl_psi"] / prof["wall_seconds"]
                    psi, step = f"{row['psi_share']:.0%}", f"{row['step_share']:.0%}"
                rows.append(row)
                lines.append(
                    f"| {n:,} | {model} | {arm} | {rate:,.0f} | {row['ratio_vs_adamw']:.2f} | "
                    f"{psi} | {step} |"
                )
    print("\n".join(lines))
    report = {
        "events": args.events,
        "repeats": args.repeats,
        "rows": rows,
        "runs": runs,
        "profiles": profiles,
        "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }
    out = args.out or ROOT / "benchmarks" / "results" / (
        "catalogue-quick.json" if args.quick else "catalogue.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
