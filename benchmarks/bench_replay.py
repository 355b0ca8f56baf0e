"""Replay throughput: events/s through ``sevo replay`` for MF and SASRec, SEvo-AdamW against AdamW.

Each measurement is one ``sevo replay DATA --model M --optimizer O --threads T --no-progress``
subprocess (a fresh interpreter, so no run warms the next one's caches or allocator), with no
prequential ranking and no checkpoints: what is timed is validation, the live graph and the
training steps. The peer of every SEvo-AdamW figure is AdamW (the same trainer without smoothing)
measured in the same run, and the order of the runs alternates between repeats. The report holds
the median events/s of ``--repeats`` runs per (model, optimizer, threads), the SEvo/AdamW ratio,
and the share of time spent training (from the replay's own breakdown).

Usage::

    python benchmarks/bench_replay.py [--quick] [--data ml-100k] [--repeats 3] [--threads 1 2]

Targets (issue 4, 2 cores): MF >= 30k events/s, SASRec >= 5k events/s. torch's OpenMP workers
busy-wait between operations; on a machine shared with other CPU-bound jobs ``--threads 2`` can
then be many times slower than one thread (``OMP_WAIT_POLICY=PASSIVE`` avoids that).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
THROUGHPUT = re.compile(r"throughput\s+(\d+) events/s \(train ([\d.]+) s")
EVENTS = re.compile(r"events\s+(\d+) this run")
TARGETS = {"mf": 30_000, "sasrec": 5_000}


def replay_once(data: str, model: str, optimizer: str, threads: int, limit: int | None) -> dict:
    """One ``sevo replay`` subprocess; returns events, events/s and training seconds."""
    cmd = [
        sys.executable,
        "-m",
        "streaming.cli",
        "replay",
        data,
        "--model",
        model,
        "--optimizer",
        optimizer,
        "--threads",
        str(threads),
        "--no-progress",
    ]
    if limit is not None:
        cmd += ["--max-events", str(limit)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    rate, train = THROUGHPUT.search(done.stdout).groups()
    (events,) = EVENTS.search(done.stdout).groups()
    seconds = int(events) / float(rate)
    return {
        "events": int(events),
        "events_per_s": float(rate),
        "train_share": float(train) / seconds,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="first 20k events, 1 repeat, 1 thread")
    p.add_argument("--data", default="ml-100k")
    p.add_argument("--models", nargs="+", default=["mf", "sasrec"])
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    limit = None
    if args.quick:
        limit, args.repeats, args.threads = 20_000, 1, [1]
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    runs: dict[str, list[dict]] = {}
    for repeat in range(args.repeats):
        optimizers = ("sevo-adamw", "adamw") if repeat % 2 == 0 else ("adamw", "sevo-adamw")
        for model in args.models:
            for threads in args.threads:
                for optimizer in optimizers:
                    key = f"{model}/{optimizer}/threads{threads}"
                    run = replay_once(args.data, model, optimizer, threads, limit)
                    runs.setdefault(key, []).append(run)
                    print(f"{key}: {run['events_per_s']:.0f} events/s", flush=True)
    rows = []
    lines = [
        "| model | threads | SEvo-AdamW events/s | AdamW events/s | SEvo / AdamW | train share "
        "| target |",
        "|---|---|---|---|---|---|---|",
    ]
    for model in args.models:
        for threads in args.threads:
            sevo = runs[f"{model}/sevo-adamw/threads{threads}"]
            base = runs[f"{model}/adamw/threads{threads}"]
            row = {
                "model": model,
                "threads": threads,
                "sevo_events_per_s": statistics.median(r["events_per_s"] for r in sevo),
                "adamw_events_per_s": statistics.median(r["events_per_s"] for r in base),
                "sevo_train_share": statistics.median(r["train_share"] for r in sevo),
                "target_events_per_s": TARGETS.get(model),
            }
            row["ratio_sevo_vs_adamw"] = row["sevo_events_per_s"] / row["adamw_events_per_s"]
            rows.append(row)
            target = row["target_events_per_s"]
            met = "" if target is None else ("met" if row["sevo_events_per_s"] >= target else "no")
            lines.append(
                f"| {model} | {threads} | {row['sevo_events_per_s']:,.0f} | "
                f"{row['adamw_events_per_s']:,.0f} | {row['ratio_sevo_vs_adamw']:.2f} | "
                f"{row['sevo_train_share']:.0%} | {target or '-'} {met} |"
            )
    print("\n".join(lines))
    report = {
        "data": args.data,
        "events_limit": limit,
        "repeats": args.repeats,
        "rows": rows,
        "runs": runs,
        "load_average_1m_before": load_before,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }
    out = args.out or ROOT / "benchmarks" / "results" / (
        "replay-quick.json" if args.quick else "replay.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
