"""Peak memory of ``sevo replay`` against stream length and catalogue size.

Each cell writes a stationary synthetic stream (``engine.data.synthetic.drifting_stream`` with
drift 0) of E events over U users and I items to a CSV file, then replays it with
``sevo replay FILE [--prequential] --no-progress --threads 1`` in a fresh subprocess and reads
the child's peak resident set size (``ru_maxrss`` from ``os.wait4``). The peer of every figure is
the same replay without ``--prequential`` (no exact history exclusion, no ranking), measured in
the same run, and an empty interpreter that only imports the engine (the fixed cost). The
report gives peak RSS per cell and the growth per event, per user and per item between cells.

Usage::

    python benchmarks/bench_memory.py [--quick]
        [--cells 100000:2000:2000 1000000:2000:2000 1000000:100000:50000]

A cell is EVENTS:USERS:ITEMS. Writes ``benchmarks/results/memory.json`` (``memory-quick.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CELLS = ["100000:2000:2000", "1000000:2000:2000", "1000000:100000:50000"]
QUICK_CELLS = ["20000:2000:2000", "100000:2000:2000"]


def _write_stream(path: Path, events: int, users: int, items: int) -> None:
    import numpy as np

    from engine.data.synthetic import drifting_stream

    inter = drifting_stream(0.0, seed=0, n_events=events, n_users=users, n_items=items)
    order = np.argsort(inter.times, kind="stable")
    with path.open("w") as f:
        f.write("user_id,item_id,timestamp\n")
        u = inter.user_ids[inter.users[order]]
        i = inter.item_ids[inter.items[order]]
        t = inter.times[order]
        f.writelines(f"{a},{b},{c:.0f}\n" for a, b, c in zip(u.tolist(), i.tolist(), t.tolist()))


def _peak_rss_mb(cmd: list[str]) -> tuple[float, float, str]:
    """Run ``cmd``; return (peak RSS of the child in MiB, wall seconds, its stdout)."""
    start = time.perf_counter()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read().decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{text[-2000:]}")
    return usage.ru_maxrss / 1024.0, time.perf_counter() - start, text  # Linux: KiB


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help=f"cells {' '.join(QUICK_CELLS)}")
    p.add_argument("--cells", nargs="+", default=None, help="EVENTS:USERS:ITEMS")
    p.add_argument("--model", default="sasrec", choices=("sasrec", "mf"))
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    cells = args.cells or (QUICK_CELLS if args.quick else DEFAULT_CELLS)
    baseline_mb, _, _ = _peak_rss_mb(
        [sys.executable, "-c", "import streaming.cli, engine.online, torch"]
    )
    print(f"interpreter + imports: {baseline_mb:.0f} MiB", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for cell in cells:
            events, users, items = (int(x) for x in cell.split(":"))
            path = Path(tmp) / f"stream-{events}-{users}-{items}.csv"
            _write_stream(path, events, users, items)
            row = {"events": events, "users": users, "items": items}
            for prequential in (False, True):
                cmd = [sys.executable, "-m", "streaming.cli", "replay", str(path)]
                cmd += ["--model", args.model, "--threads", "1", "--no-progress"]
                if prequential:
                    cmd.append("--prequential")
                mb, wall, _ = _peak_rss_mb(cmd)
                key = "prequential" if prequential else "plain"
                row[f"peak_rss_mib_{key}"] = mb
                row[f"wall_seconds_{key}"] = wall
                print(f"{cell} {key}: peak RSS {mb:,.0f} MiB in {wall:.0f} s", flush=True)
            rows.append(row)
    lines = [
        "| events | users | items | peak RSS, replay (MiB) | with --prequential (MiB) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['events']:,} | {r['users']:,} | {r['items']:,} | "
            f"{r['peak_rss_mib_plain']:,.0f} | {r['peak_rss_mib_prequential']:,.0f} |"
        )
    print(f"(interpreter + imports alone: {baseline_mb:,.0f} MiB)")
    print("\n".join(lines))
    report = {
        "model": args.model,
        "baseline_mib": baseline_mb,
        "rows": rows,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }
    out = args.out or ROOT / "benchmarks" / "results" / (
        "memory-quick.json" if args.quick else "memory.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    out.with_suffix(".md").write_text(
        f"interpreter + imports alone: {baseline_mb:,.0f} MiB\n\n" + "\n".join(lines) + "\n"
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
