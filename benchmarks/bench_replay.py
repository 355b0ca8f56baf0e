"""Replay throughput: events/s through ``sevo replay`` for MF and SASRec, SEvo-AdamW against AdamW.

Each measurement is one ``sevo replay DATA --model M <arm> --threads T --no-progress``
subprocess (a fresh interpreter, so no run warms the next one's caches or allocator), with no
prequential ranking and no checkpoints: what is timed is validation, the live graph and the
training steps. The peer of every SEvo-AdamW figure is AdamW (the same trainer without smoothing)
measured in the same run, and the order of the arms rotates between repeats. The arms are AdamW,
SEvo-AdamW smoothing the update (the paper's) and SEvo-AdamW smoothing the gradient with lazy
rows. The report holds the median events/s of ``--repeats`` runs per (data, model, arm, threads),
the ratio to AdamW, and the share of time spent training (from the replay's own breakdown).

Usage::

    python benchmarks/bench_replay.py [--quick] [--data ml-100k beauty] [--threads 1 2]

Reference targets (2 cores): MF >= 30k events/s, SASRec >= 5k events/s. torch's OpenMP workers
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


#: Benchmark arms: the optimizer settings of each ``sevo replay`` run.
ARMS = {
    "adamw": ["--optimizer", "adamw"],
    "sevo-update": ["--optimizer", "sevo-adamw", "--sevo-smooth", "update"],
    "sevo-gradient": ["--optimizer", "sevo-adamw", "--sevo-smooth", "gradient"],
}


def replay_once(data: str, model: str, arm: str, threads: int, limit: int | None) -> dict:
    """One ``sevo replay`` subprocess; returns events, events/s and training seconds."""
    cmd = [
        sys.executable,
        "-m",
        "streaming.cli",
        "replay",
        data,
        "--model",
        model,
        *ARMS[arm],
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
    p.add_argument("--data", nargs="+", default=["ml-100k"])
    p.add_argument("--models", nargs="+", default=["mf", "sasrec"])
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if "adamw" not in args.arms:
        p.error("--arms must include adamw, the peer of every ratio")
    limit = None
    if args.quick:
        limit, args.repeats, args.threads = 20_000, 1, [1]
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    runs: dict[str, list[dict]] = {}
    for repeat in range(args.repeats):
        # Interleaved: each repeat runs every arm once, in an order that rotates.
        shift = repeat % len(args.arms)
        arms = args.arms[shift:] + args.arms[:shift]
        for data in args.data:
            for model in args.models:
                for threads in args.threads:
                    for arm in arms:
                        key = f"{data}/{model}/{arm}/threads{threads}"
                        run = replay_once(data, model, arm, threads, limit)
                        runs.setdefault(key, []).append(run)
                        print(f"{key}: {run['events_per_s']:.0f} events/s", flush=True)
    rows = []
    lines = [
        "| data | model | threads | arm | events/s (median) | vs AdamW | train share | target |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for data in args.data:
        for model in args.models:
            for threads in args.threads:
                base = statistics.median(
                    r["events_per_s"] for r in runs[f"{data}/{model}/adamw/threads{threads}"]
                )
                for arm in args.arms:
                    mine = runs[f"{data}/{model}/{arm}/threads{threads}"]
                    row = {
                        "data": data,
                        "model": model,
                        "threads": threads,
                        "arm": arm,
                        "events_per_s": statistics.median(r["events_per_s"] for r in mine),
                        "train_share": statistics.median(r["train_share"] for r in mine),
                        "target_events_per_s": TARGETS.get(model),
                    }
                    row["ratio_vs_adamw"] = row["events_per_s"] / base
                    rows.append(row)
                    target = row["target_events_per_s"]
                    met = (
                        ""
                        if target is None
                        else (" met" if row["events_per_s"] >= target else " no")
                    )
                    lines.append(
                        f"| {data} | {model} | {threads} | {arm} | {row['events_per_s']:,.0f} | "
                        f"{row['ratio_vs_adamw']:.2f} | {row['train_share']:.0%} | "
                        f"{target or '-'}{met} |"
                    )
    print("\n".join(lines))
    report = {
        "data": args.data,
        "events_limit": limit,
        "repeats": args.repeats,
        "rows": rows,
        "runs": runs,
        "load_average_1m_before": load_before,
        "load_average_1m_after": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }
    out = args.out or ROOT / "benchmarks" / "results" / (
        "replay-quick.json" if args.quick else "replay.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
