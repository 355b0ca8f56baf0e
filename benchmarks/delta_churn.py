"""How many item rows move between publishes: the size of a serving delta (issue 5).

Replays ML-100K through the online trainer and, every ``--every`` micro-batches (one publish
interval), measures the fraction of item rows whose relative L2 change since the previous
publish exceeds each tolerance, i.e. the rows a :class:`~streaming.serving.SnapshotWriter`
delta with that ``delta_tolerance`` would hold. Reported over the last half of the replay
(the catalogue has grown by then).

    python benchmarks/delta_churn.py [--quick] [--out benchmarks/results/delta_churn.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from engine.online import OnlineConfig, OnlineTrainer
from streaming.sources.log import LogSource

TOLERANCES = (0.0, 1e-3, 1e-2, 3e-2, 1e-1)


def churn(model: str, optimizer: str, events: int, every: int, batch: int) -> dict:
    source = LogSource("ml-100k", batch_size=batch, limit=events)
    # The settings this benchmark has always run with (OnlineConfig's defaults before 3e-3 / 2).
    config = OnlineConfig(model=model, optimizer=optimizer, lr=1e-3, steps_per_batch=1)
    trainer = OnlineTrainer(config)
    previous = None
    fractions: list[list[float]] = []
    t0 = time.perf_counter()
    for step, b in enumerate(source, 1):
        trainer.learn_many(b.users, b.items, b.times, b.weights)
        if step % every:
            continue
        _, matrix = trainer.item_matrix()
        if previous is not None:
            n = previous.shape[0]
            moved = np.linalg.norm(matrix[:n] - previous, axis=1)
            norm = np.maximum(np.linalg.norm(previous, axis=1), 1e-12)
            fractions.append([float(np.mean(moved > tol * norm)) for tol in TOLERANCES])
        previous = matrix
    half = np.asarray(fractions[len(fractions) // 2 :])
    return {
        "model": model,
        "optimizer": optimizer,
        "items": trainer.num_items,
        "publishes": len(fractions),
        "seconds": round(time.perf_counter() - t0, 1),
        "changed_fraction": {
            str(tol): round(float(half[:, k].mean()), 4) for k, tol in enumerate(TOLERANCES)
        },
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="10k events, MF and SASRec with SEvo only")
    p.add_argument("--events", type=int, default=40_000)
    p.add_argument("--every", type=int, default=10, help="micro-batches per publish")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    events = 10_000 if args.quick else args.events
    arms = [("mf", "sevo-adamw"), ("sasrec", "sevo-adamw")]
    if not args.quick:
        arms += [("mf", "adamw"), ("sasrec", "adamw")]
    rows = []
    for model, optimizer in arms:
        row = churn(model, optimizer, events, args.every, args.batch_size)
        rows.append(row)
        print(
            f"{model:7s} {optimizer:11s} items {row['items']:5d}  changed fraction per publish: "
            + "  ".join(f"tol {k}: {v:.3f}" for k, v in row["changed_fraction"].items()),
            flush=True,
        )
    out = args.out or Path(
        "benchmarks/results/delta_churn-quick.json"
        if args.quick
        else "benchmarks/results/delta_churn.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "benchmark": "delta_churn",
        "events": events,
        "every_batches": args.every,
        "batch_size": args.batch_size,
        "tolerances": list(TOLERANCES),
        "runs": rows,
        "machine": {"python": platform.python_version(), "torch": torch.__version__},
    }
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
