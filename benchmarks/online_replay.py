"""Prequential (test-then-train) replay of a log: SEvo's new-item policies against AdamW.

Replays a data set in event-time order through :class:`engine.online.OnlineTrainer`, ranking each
event before learning it, once per variant:

* ``adamw``: the same optimizer without smoothing (the peer every ratio is taken against);
* ``sevo/passthrough``: SEvo-AdamW, nodes without edges get their raw update (the default);
* ``sevo/paper``: SEvo-AdamW with the paper's ψ everywhere;
* ``sevo/young``: SEvo-AdamW, items with fewer than 10 learned events get their raw update.

Prints a table (HR@10 / NDCG@10 overall and HR@10 by item age = the number of earlier events of
the event's item, events/s) and writes JSON.

Usage::

    python benchmarks/online_replay.py [--quick] [--data ml-100k] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.online import OnlineConfig, OnlineTrainer  # noqa: E402
from streaming.config import PipelineConfig  # noqa: E402
from streaming.pipeline import Pipeline  # noqa: E402
from streaming.sources.log import LogSource  # noqa: E402

VARIANTS = {
    "adamw": {"optimizer": "adamw"},
    "sevo/passthrough": {"new_item_policy": "passthrough"},
    "sevo/paper": {"new_item_policy": "paper"},
    "sevo/young": {"new_item_policy": "young", "young_item_events": 10},
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="ml-100k")
    parser.add_argument("--quick", action="store_true", help="first 20k events only")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--steps-per-batch", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/online_replay.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    limit = 20_000 if args.quick else None
    results = {}
    for name, overrides in VARIANTS.items():
        config = OnlineConfig(
            lr=args.lr, steps_per_batch=args.steps_per_batch, seed=args.seed, **overrides
        )
        source = LogSource(args.data, batch_size=args.batch_size, limit=limit)
        start = time.perf_counter()
        summary = Pipeline(
            OnlineTrainer(config),
            config=PipelineConfig.for_replay(prequential=True, progress=False),
        ).run(source)
        summary["wall_seconds"] = time.perf_counter() - start
        summary["config"] = config.to_dict()
        results[name] = summary
        print(f"{name}: done in {summary['wall_seconds']:.0f} s", file=sys.stderr)

    base = results["adamw"]["prequential"]
    ages = list(base["by_item_age"])
    header = ["variant", "HR@10", "NDCG@10", "NDCG@10 / adamw"] + [f"HR@10 age {a}" for a in ages]
    rows = []
    for name, summary in results.items():
        p = summary["prequential"]
        rows.append(
            [
                name,
                f"{p['HR@10']:.4f}",
                f"{p['NDCG@10']:.4f}",
                f"{p['NDCG@10'] / base['NDCG@10']:.3f}x",
                *(f"{p['by_item_age'][a]['HR@10']:.4f}" for a in ages),
            ]
        )
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    counts = ", ".join(f"age {a}: {base['by_item_age'][a]['events']}" for a in ages)
    print(f"\nevents per age bucket: {counts}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "data": args.data,
                "quick": args.quick,
                "python": platform.python_version(),
                "torch": torch.__version__,
                "results": results,
            },
            indent=1,
        )
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
