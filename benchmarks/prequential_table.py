"""Prequential comparison for the README: SEvo-AdamW vs AdamW, with and without edge decay.

Replays each data set in event-time order through :class:`engine.online.OnlineTrainer`,
ranking every event against all known items (the user's history excluded) before learning it
(test-then-train), once per arm:

* ``adamw`` / ``sevo-adamw`` — the optimizer (the peer of every ratio is ``adamw`` without decay);
* ``half_life`` — none, or ``--half-life`` seconds (edge weights halve over that much event time).

Each finished run is written to ``OUT/runs/<data>_<optimizer>_<decay>.json`` at once, and a
rerun skips runs already there, so a long job can be stopped and resumed. The table goes to
``OUT/summary.md`` and ``OUT/summary.json``.

    python benchmarks/prequential_table.py [--quick] [--data ml-100k beauty] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from engine.online import OnlineConfig, OnlineTrainer
from streaming.config import PipelineConfig
from streaming.pipeline import Pipeline
from streaming.sources.log import LogSource

ROOT = Path(__file__).resolve().parents[1]
DAY = 86_400.0


def arms(half_life_s: float | None, only_sevo: bool = False) -> list[tuple[str, float | None]]:
    """(optimizer, half-life) pairs; ``half_life_s=None`` leaves out the decay arms."""
    decays = [None] if half_life_s is None else [None, half_life_s]
    return [
        (optimizer, decay)
        for decay in decays
        for optimizer in ("adamw", "sevo-adamw")
        if not (only_sevo and optimizer == "adamw")
    ]


def run_name(
    data: str, optimizer: str, half_life: float | None, beta: float = 0.99, carry: bool = True
) -> str:
    decay = "nodecay" if half_life is None else f"hl{half_life / DAY:g}d"
    tag = "" if optimizer == "adamw" or beta == 0.99 else f"_beta{beta:g}"
    if optimizer != "adamw" and not carry:
        tag += "_nocarry"
    return f"{data}_{optimizer}_{decay}{tag}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", nargs="+", default=["ml-100k", "beauty"])
    p.add_argument("--quick", action="store_true", help="ml-100k, first 20k events")
    p.add_argument("--model", default="sasrec", choices=("sasrec", "gru4rec", "mf"))
    p.add_argument("--half-life", type=float, default=30 * DAY, help="seconds (default 30 days)")
    p.add_argument("--no-decay-arms", action="store_true", help="only the arms without decay")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--steps-per-batch", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sevo-beta", type=float, default=0.99, help="SEvo's β (0.99: the paper)")
    p.add_argument("--only-sevo", action="store_true", help="skip the AdamW arms")
    p.add_argument(
        "--no-carry-unsampled",
        action="store_true",
        help="SEvo-AdamW without the unsampled-row correction (their moments decay as in AdamW)",
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    decay_arm = None if args.no_decay_arms else args.half_life
    carry = not args.no_carry_unsampled
    datasets = ["ml-100k"] if args.quick else args.data
    limit = 20_000 if args.quick else None
    out = args.out or ROOT / (
        "benchmarks/results/prequential-quick" if args.quick else "benchmarks/results/prequential"
    )
    (out / "runs").mkdir(parents=True, exist_ok=True)

    results: dict[str, dict] = {}
    for data in datasets:
        for optimizer, half_life in arms(decay_arm, args.only_sevo):
            name = run_name(data, optimizer, half_life, args.sevo_beta, carry)
            path = out / "runs" / f"{name}.json"
            if path.exists():
                results[name] = json.loads(path.read_text())
                print(f"{name}: done earlier", file=sys.stderr)
                continue
            config = OnlineConfig(
                model=args.model,
                optimizer=optimizer,
                half_life=half_life,
                decay_unit="seconds",
                sevo_beta=args.sevo_beta,
                lr=args.lr,
                steps_per_batch=args.steps_per_batch,
                seed=args.seed,
                carry_unsampled=carry,
            )
            source = LogSource(data, batch_size=args.batch_size, limit=limit)
            print(f"{name}: replaying {len(source)} events ...", file=sys.stderr, flush=True)
            start = time.perf_counter()
            summary = Pipeline(
                OnlineTrainer(config),
                config=PipelineConfig.for_replay(prequential=True, progress=False),
            ).run(source)
            summary.update(
                data=data,
                optimizer=optimizer,
                half_life_s=half_life,
                wall_seconds=time.perf_counter() - start,
                config=config.to_dict(),
            )
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(summary, indent=1))
            tmp.replace(path)  # atomic: a killed run leaves no half file
            results[name] = summary
            pq = summary["prequential"]
            print(
                f"{name}: HR@10 {pq['HR@10']:.4f} NDCG@10 {pq['NDCG@10']:.4f} "
                f"in {summary['wall_seconds']:.0f} s",
                file=sys.stderr,
                flush=True,
            )

    lines = [
        "| data | optimizer | edge half-life | events | HR@10 | NDCG@10 | NDCG@10 vs AdamW "
        "(no decay) | events/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for data in datasets:
        peer_name = run_name(data, "adamw", None)
        peer_path = out / "runs" / f"{peer_name}.json"
        if peer_name not in results and peer_path.exists():  # --only-sevo: the earlier peer
            results[peer_name] = json.loads(peer_path.read_text())
        peer = results.get(peer_name)
        for optimizer, half_life in arms(decay_arm, args.only_sevo):
            r = results.get(run_name(data, optimizer, half_life, args.sevo_beta, carry))
            if r is None:
                continue
            pq = r["prequential"]
            ratio = pq["NDCG@10"] / peer["prequential"]["NDCG@10"] if peer else float("nan")
            decay = "none" if half_life is None else f"{half_life / DAY:g} days"
            label = optimizer if optimizer == "adamw" else f"{optimizer} (β {args.sevo_beta:g})"
            if optimizer != "adamw" and not carry:
                label += ", unsampled rows decay"
            lines.append(
                f"| {data} | {label} | {decay} | {r['events']} | {pq['HR@10']:.4f} | "
                f"{pq['NDCG@10']:.4f} | {ratio:.3f}x | {r['events_per_s']:.0f} |"
            )
    table = "\n".join(lines)
    print(table)
    suffix = "" if args.sevo_beta == 0.99 and not args.only_sevo else f"-beta{args.sevo_beta:g}"
    suffix += "" if carry else "-nocarry"
    (out / f"summary{suffix}.md").write_text(table + "\n")
    (out / f"summary{suffix}.json").write_text(
        json.dumps(
            {
                "model": args.model,
                "sevo_beta": args.sevo_beta,
                "half_life_s": args.half_life,
                "batch_size": args.batch_size,
                "lr": args.lr,
                "steps_per_batch": args.steps_per_batch,
                "seed": args.seed,
                "quick": args.quick,
                "python": platform.python_version(),
                "torch": torch.__version__,
                "runs": {
                    k: {kk: v[kk] for kk in ("data", "optimizer", "half_life_s", "events")}
                    | {"prequential": {m: v["prequential"][m] for m in ("HR@10", "NDCG@10")}}
                    | {"events_per_s": v["events_per_s"], "wall_seconds": v["wall_seconds"]}
                    for k, v in results.items()
                },
            },
            indent=1,
        )
    )
    print(f"wrote {out / f'summary{suffix}.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
