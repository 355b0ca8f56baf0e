"""Does edge decay in the live graph matter? Prequential replays of a drifting synthetic stream.

The stream is :func:`engine.data.synthetic.drifting_stream` (data set name
``synthetic-drift:RATE:SEED:EVENTS``): users in latent item clusters whose next item is often the
previous item's *successor*; at every phase boundary (20 phases) each item's successor and
popularity rank are re-drawn with probability ``RATE``, so co-occurrence learned early goes
stale. ``RATE = 0`` is the stationary control. The generator's parameters and the drift rates
below were fixed before any decay result was seen; do not tune them to the decay.

Arms: SEvo-AdamW with every setting at :class:`~engine.config.OnlineConfig`'s default (SASRec),
with no edge decay or an event-count half-life (``decay_unit="events"``) of 10k, 25k, 50k or
100k events. Each (drift rate, half-life, seed) replay is test-then-train over the whole stream in
micro-batches of 256 (seed = the stream's seed and the model's); HR@10 / NDCG@10 are reported on
the events after the first ``--warmup`` fraction (the last 80% by default). The summary gives,
per drift rate, the mean over seeds of each arm and its NDCG@10 ratio to no decay (over the seeds
that both have).

Each replay is written to ``OUT/runs/`` as soon as it ends and a rerun skips the replays already
there (resumable); the summary (``summary.json``, ``summary.md``) is rewritten after every replay,
so a stopped job leaves the partial table. Replays run seed by seed, so the first seed's complete
table comes first.

    python benchmarks/decay_drift.py [--quick] [--seeds 0 1 2] [--jobs 1]
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
#: Drift rates (probability per item and phase of a re-drawn successor / popularity rank);
#: 0 is the stationary control. Fixed before any decay result was looked at.
DRIFT_RATES = (0.0, 0.03, 0.1, 0.3)
#: Edge half-lives in learned events; None = no decay (the reference arm).
HALF_LIVES = (None, 10_000, 25_000, 50_000, 100_000)
EVENTS = 100_000
QUICK_EVENTS = 20_000
BATCH = 256


def _hl_name(half_life: int | None) -> str:
    return "none" if half_life is None else f"{half_life // 1000}k"


def _replay(job: dict) -> dict:
    """One prequential replay (runs in a worker process); returns its summary."""
    import torch

    from engine.online import OnlineConfig, OnlineTrainer
    from streaming.config import PipelineConfig
    from streaming.pipeline import Pipeline
    from streaming.sources.log import LogSource

    torch.set_num_threads(1)
    half_life = None if job["half_life"] is None else float(job["half_life"])
    config = OnlineConfig(
        seed=job["seed"], half_life=half_life, decay_unit="events", sevo_smooth=job["sevo_smooth"]
    )
    source = LogSource(job["data"], batch_size=BATCH)
    pipeline_config = PipelineConfig.for_replay(
        prequential=True, progress=False, prequential_window=job["warmup_events"]
    )
    start = time.perf_counter()
    summary = Pipeline(OnlineTrainer(config), config=pipeline_config).run(source)
    windows = summary["prequential"]["windows"]
    rest = windows[1:]
    n_rest = sum(w["events"] for w in rest)

    def tail(metric: str) -> float:
        return sum(w[metric] * w["events"] for w in rest) / n_rest if n_rest else float("nan")

    return {
        **job,
        "events": summary["prequential"]["events"],
        "warmup": {m: windows[0][m] for m in ("events", "HR@10", "NDCG@10")},
        "rest": {"events": n_rest, "HR@10": tail("HR@10"), "NDCG@10": tail("NDCG@10")},
        "overall": {m: summary["prequential"][m] for m in ("HR@10", "NDCG@10")},
        "events_per_s": summary["events_per_s"],
        "wall_seconds": time.perf_counter() - start,
        "config": config.to_dict(),
    }


def _write(path: Path, value: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value, indent=1))
    tmp.replace(path)  # atomic: a killed job leaves no half file


def _summarise(results: dict[str, dict], jobs: list[dict], out: Path, protocol: dict) -> str:
    """Write summary.json / summary.md from the replays done so far; return the table."""
    rows = []
    for rate in protocol["drift_rates"]:
        runs = {
            (j["half_life"], j["seed"]): results[j["name"]]
            for j in jobs
            if j["drift_rate"] == rate and j["name"] in results
        }
        for hl in protocol["half_lives"]:
            seeds = sorted(s for (h, s) in runs if h == hl)
            if not seeds:
                continue
            ndcg = np.array([runs[hl, s]["rest"]["NDCG@10"] for s in seeds])
            hr = np.array([runs[hl, s]["rest"]["HR@10"] for s in seeds])
            paired = [s for s in seeds if (None, s) in runs]
            ref = np.array([runs[None, s]["rest"]["NDCG@10"] for s in paired])
            mine = np.array([runs[hl, s]["rest"]["NDCG@10"] for s in paired])
            rows.append(
                {
                    "drift_rate": rate,
                    "half_life_events": hl,
                    "seeds": seeds,
                    "HR@10": hr.tolist(),
                    "NDCG@10": ndcg.tolist(),
                    "vs_no_decay": float(mine.mean() / ref.mean()) if paired else None,
                    "vs_no_decay_seeds": paired,
                    "wins_over_no_decay": int(np.sum(mine > ref)) if paired else None,
                }
            )

    def pm(x: list[float]) -> str:
        a = np.array(x)
        return f"{a.mean():.4f} ± {a.std(ddof=1):.4f}" if a.size > 1 else f"{a.mean():.4f}"

    lines = [
        "| drift rate | edge half-life (events) | seeds | HR@10 | NDCG@10 | NDCG@10 vs no decay "
        "| seeds better |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        hl = "none" if r["half_life_events"] is None else f"{r['half_life_events']:,}"
        ratio = "—" if r["vs_no_decay"] is None else f"{r['vs_no_decay']:.3f}×"
        wins = (
            "—"
            if r["half_life_events"] is None or r["wins_over_no_decay"] is None
            else f"{r['wins_over_no_decay']}/{len(r['vs_no_decay_seeds'])}"
        )
        lines.append(
            f"| {r['drift_rate']:g} | {hl} | {len(r['seeds'])} | {pm(r['HR@10'])} | "
            f"{pm(r['NDCG@10'])} | {ratio} | {wins} |"
        )
    text = "\n".join(lines)
    (out / "summary.md").write_text(text + "\n")
    _write(
        out / "summary.json",
        {
            "protocol": protocol,
            "python": platform.python_version(),
            "replays_done": len(results),
            "replays_planned": len(jobs),
            "rows": rows,
        },
    )
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument(
        "--warmup", type=float, default=0.2, help="fraction of the stream left out of the metrics"
    )
    p.add_argument("--quick", action="store_true", help=f"{QUICK_EVENTS:,} events, seed 0 only")
    p.add_argument("--jobs", type=int, default=1, help="replays in parallel (one thread each)")
    p.add_argument(
        "--half-lives",
        type=int,
        nargs="+",
        default=[0 if hl is None else hl for hl in HALF_LIVES],
        help="edge half-lives in events to run (0 = no decay, the reference arm)",
    )
    p.add_argument(
        "--sevo-smooth",
        choices=("gradient", "update"),
        default="gradient",
        help="where SEvo's ψ acts (the engine's default: gradient)",
    )
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    half_lives = [None if hl == 0 else hl for hl in args.half_lives]
    if None not in half_lives:
        p.error("--half-lives must include 0 (no decay), the reference of every ratio")
    n_events = QUICK_EVENTS if args.quick else EVENTS
    if args.quick:
        args.seeds = args.seeds[:1]
    out = args.out or ROOT / "benchmarks/results" / (
        "decay-drift-quick" if args.quick else "decay-drift"
    )
    (out / "runs").mkdir(parents=True, exist_ok=True)
    warmup_events = max(BATCH, round(args.warmup * n_events / BATCH) * BATCH)
    protocol = {
        "stream": "engine.data.synthetic.drifting_stream (defaults but n_events)",
        "n_events": n_events,
        "drift_rates": list(DRIFT_RATES),
        "half_lives": half_lives,
        "sevo_smooth": args.sevo_smooth,
        "decay_unit": "events",
        "seeds": args.seeds,
        "batch_size": BATCH,
        "warmup_events": warmup_events,
        "optimizer": "OnlineConfig defaults (SASRec, SEvo-AdamW)",
        "quick": args.quick,
    }
    jobs = [
        {
            "name": f"drift{rate:g}_hl{_hl_name(hl)}_s{seed}",
            "data": f"synthetic-drift:{rate:g}:{seed}:{n_events}",
            "drift_rate": rate,
            "half_life": hl,
            "seed": seed,
            "warmup_events": warmup_events,
            "sevo_smooth": args.sevo_smooth,
        }
        for seed in args.seeds
        for rate in DRIFT_RATES
        for hl in half_lives
    ]
    results: dict[str, dict] = {}
    todo = []
    for job in jobs:
        path = out / "runs" / f"{job['name']}.json"
        if path.exists():
            results[job["name"]] = json.loads(path.read_text())
        else:
            todo.append(job)
    print(f"{len(todo)} replays to run ({len(results)} done earlier)", file=sys.stderr, flush=True)
    if todo:
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            for result in pool.map(_replay, todo):
                _write(out / "runs" / f"{result['name']}.json", result)
                results[result["name"]] = result
                _summarise(results, jobs, out, protocol)
                print(
                    f"{result['name']}: NDCG@10 {result['rest']['NDCG@10']:.4f} "
                    f"HR@10 {result['rest']['HR@10']:.4f} (after warm-up), "
                    f"{result['events_per_s']:.0f} events/s",
                    file=sys.stderr,
                    flush=True,
                )
    text = _summarise(results, jobs, out, protocol)
    print(text)
    print(f"wrote {out / 'summary.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
