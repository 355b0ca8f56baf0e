"""Prequential comparison over seeds, each arm with its learning rate tuned on the stream's head.

The protocol of the README's online table: for every data set, arm and seed (the seed sets the
model initialisation and the training generator: negatives, dropout),

1. replay the first ``--tune-fraction`` of the stream (a whole number of batches) once per
   learning rate of ``--lrs`` and keep the rate with the best prequential NDCG@10 there;
2. replay the whole stream with that rate and report HR@10 / NDCG@10 on the rest of it (the
   last 80% by default), which the tuning never saw.

Arms: ``adamw`` (no graph), ``sevo-update`` (the paper's SEvo-AdamW: ψ on AdamW's update of
every item row) and ``sevo-gradient`` (ψ on the batch's gradient, lazy moments). Every other
setting is :class:`~engine.config.OnlineConfig`'s default and the same for every data set.

The table gives mean ± std over seeds of each arm, its ratio to AdamW's mean NDCG@10 and a
paired t-test over seeds against AdamW. Each replay is written to ``OUT/runs/`` as soon as it
ends and a rerun skips replays already there, so the job can be stopped and resumed.

    python benchmarks/prequential_seeds.py [--quick] [--data ml-100k beauty] [--jobs 2]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
#: Arm name → OnlineConfig fields.
ARMS = {
    "adamw": {"optimizer": "adamw"},
    "sevo-update": {"optimizer": "sevo-adamw", "sevo_smooth": "update"},
    "sevo-gradient": {"optimizer": "sevo-adamw", "sevo_smooth": "gradient"},
}
BATCH = 256


def _replay(job: dict) -> dict:
    """One prequential replay (runs in a worker process); returns its summary."""
    import torch

    from engine.online import OnlineConfig, OnlineTrainer
    from streaming.config import PipelineConfig
    from streaming.pipeline import Pipeline
    from streaming.sources.log import LogSource

    torch.set_num_threads(1)
    config = OnlineConfig(
        model=job["model"], lr=job["lr"], seed=job["seed"], **ARMS[job["arm"]], **job["extra"]
    )
    source = LogSource(job["data"], batch_size=BATCH, limit=job["limit"])
    pipeline_config = PipelineConfig.for_replay(
        prequential=True, progress=False, prequential_window=job["head"]
    )
    start = time.perf_counter()
    summary = Pipeline(OnlineTrainer(config), config=pipeline_config).run(source)
    windows = summary["prequential"]["windows"]
    head, rest = windows[0], windows[1:]
    n_rest = sum(w["events"] for w in rest)

    def tail(metric: str) -> float:
        return sum(w[metric] * w["events"] for w in rest) / n_rest if n_rest else float("nan")

    return {
        **job,
        "events": summary["prequential"]["events"],
        "head": {m: head[m] for m in ("events", "HR@10", "NDCG@10")},
        "rest": {"events": n_rest, "HR@10": tail("HR@10"), "NDCG@10": tail("NDCG@10")},
        "overall": {m: summary["prequential"][m] for m in ("HR@10", "NDCG@10")},
        "events_per_s": summary["events_per_s"],
        "wall_seconds": time.perf_counter() - start,
        "config": config.to_dict(),
    }


def _stream_length(data: str) -> int:
    from streaming.sources.log import LogSource

    return len(LogSource(data, batch_size=BATCH))


def _write(path: Path, value: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value, indent=1))
    tmp.replace(path)  # atomic: a killed job leaves no half file


def _run_all(jobs: list[dict], out: Path, workers: int) -> dict[str, dict]:
    """Run the jobs not on disk yet; return every job's result by name."""
    results, todo = {}, []
    for job in jobs:
        path = out / "runs" / f"{job['name']}.json"
        if path.exists():
            results[job["name"]] = json.loads(path.read_text())
        else:
            todo.append(job)
    if not todo:
        return results
    print(f"{len(todo)} replays to run ({len(results)} done earlier)", file=sys.stderr, flush=True)
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for result in pool.map(_replay, todo):
            _write(out / "runs" / f"{result['name']}.json", result)
            results[result["name"]] = result
            part = "head" if result["name"].endswith("_head") else "rest"
            print(
                f"{result['name']}: NDCG@10 {result[part]['NDCG@10']:.4f} ({part}), "
                f"{result['events_per_s']:.0f} events/s",
                file=sys.stderr,
                flush=True,
            )
    return results


def _paired_t(a: np.ndarray, b: np.ndarray) -> float:
    from scipy import stats

    if len(a) < 2:
        return float("nan")
    return float(stats.ttest_rel(a, b).pvalue)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--data", nargs="+", default=["ml-100k", "beauty"])
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 2e-3, 5e-3, 1e-2, 2e-2])
    p.add_argument("--tune-fraction", type=float, default=0.2)
    p.add_argument("--model", default="sasrec", choices=("sasrec", "gru4rec", "mf"))
    p.add_argument(
        "--half-life",
        default="none",
        help="edge half-life in --decay-unit units, or 'none' (no decay, the table's protocol)",
    )
    p.add_argument("--decay-unit", choices=("seconds", "events"), default="events")
    p.add_argument("--quick", action="store_true", help="ml-100k's first 20k events, 2 seeds")
    p.add_argument("--jobs", type=int, default=1, help="replays in parallel (one thread each)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.data, args.seeds = ["ml-100k"], args.seeds[:2]
    out = args.out or ROOT / "benchmarks/results" / (
        "prequential-seeds-quick" if args.quick else "prequential-seeds"
    )
    (out / "runs").mkdir(parents=True, exist_ok=True)
    args.half_life = None if args.half_life.lower() == "none" else float(args.half_life)
    extra = {"half_life": args.half_life, "decay_unit": args.decay_unit}

    rows, table = {}, {}
    for data in args.data:
        n = 20_000 if args.quick else _stream_length(data)
        head = max(BATCH, round(args.tune_fraction * n / BATCH) * BATCH)
        common = {"data": data, "model": args.model, "head": head, "extra": extra}
        tuning = [
            {**common, "arm": arm, "seed": seed, "lr": lr, "limit": head,
             "name": f"{data}_{arm}_s{seed}_lr{lr:g}_head"}
            for seed in args.seeds
            for arm in args.arms
            for lr in args.lrs
        ]  # fmt: skip
        tuned = _run_all(tuning, out, args.jobs)
        chosen = {
            (arm, seed): max(
                args.lrs,
                key=lambda lr: tuned[f"{data}_{arm}_s{seed}_lr{lr:g}_head"]["head"]["NDCG@10"],
            )
            for arm in args.arms
            for seed in args.seeds
        }
        finals = [
            {**common, "arm": arm, "seed": seed, "lr": chosen[arm, seed],
             "limit": None if not args.quick else n,
             "name": f"{data}_{arm}_s{seed}_lr{chosen[arm, seed]:g}_full"}
            for seed in args.seeds
            for arm in args.arms
        ]  # fmt: skip
        done = _run_all(finals, out, args.jobs)
        for arm in args.arms:
            runs = [done[f"{data}_{arm}_s{s}_lr{chosen[arm, s]:g}_full"] for s in args.seeds]
            rows[data, arm] = runs
        peer = np.array([r["rest"]["NDCG@10"] for r in rows.get((data, "adamw"), [])])
        for arm in args.arms:
            runs = rows[data, arm]
            ndcg = np.array([r["rest"]["NDCG@10"] for r in runs])
            hr = np.array([r["rest"]["HR@10"] for r in runs])
            table[f"{data}/{arm}"] = {
                "data": data,
                "arm": arm,
                "seeds": args.seeds,
                "lrs": [r["lr"] for r in runs],
                "events_rest": runs[0]["rest"]["events"],
                "HR@10": [float(x) for x in hr],
                "NDCG@10": [float(x) for x in ndcg],
                "vs_adamw": float(ndcg.mean() / peer.mean()) if peer.size else float("nan"),
                "p_paired_t": _paired_t(ndcg, peer) if peer.size and arm != "adamw" else None,
                "events_per_s": [r["events_per_s"] for r in runs],
            }

    lines = [
        "| data | arm | lr chosen (per seed) | HR@10 | NDCG@10 | NDCG@10 vs AdamW | "
        "p (paired t, seeds) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in table.values():
        hr, ndcg = np.array(row["HR@10"]), np.array(row["NDCG@10"])
        p_value = "—" if row["p_paired_t"] is None else f"{row['p_paired_t']:.2g}"
        lines.append(
            f"| {row['data']} | {row['arm']} | {', '.join(f'{x:g}' for x in row['lrs'])} | "
            f"{hr.mean():.4f} ± {hr.std(ddof=1) if hr.size > 1 else 0:.4f} | "
            f"{ndcg.mean():.4f} ± {ndcg.std(ddof=1) if ndcg.size > 1 else 0:.4f} | "
            f"{row['vs_adamw']:.3f}× | {p_value} |"
        )
    text = "\n".join(lines)
    print(text)
    (out / "summary.md").write_text(text + "\n")
    _write(
        out / "summary.json",
        {
            "protocol": {
                "tune_fraction": args.tune_fraction,
                "lrs": args.lrs,
                "batch_size": BATCH,
                "model": args.model,
                "half_life": args.half_life,
                "decay_unit": args.decay_unit,
                "quick": args.quick,
            },
            "python": platform.python_version(),
            "rows": table,
        },
    )
    print(f"wrote {out / 'summary.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
