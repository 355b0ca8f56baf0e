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
        [--cells 100000:2000:2000 1000000:2000:2000 1000000:100000:2000 ...]

A cell is EVENTS:USERS:ITEMS. Writes ``benchmarks/results/memory.json`` (``memory-quick.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CELLS = [
    "100000:2000:2000",
    "1000000:2000:2000",
    "1000000:100000:2000",
    "1000000:2000:50000",
    "1000000:100000:50000",
]
QUICK_CELLS = ["20000:2000:2000", "100000:2000:2000"]
GRAPH_ENTRIES = re.compile(r"graph\s+(\d+) stored entries")


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


def _nbytes(obj) -> int:
    """Bytes of the arrays and tensors held by ``obj`` (dicts, lists, tuples walked)."""
    import numpy as np
    import torch

    if isinstance(obj, np.ndarray):
        return int(obj.nbytes)
    if isinstance(obj, torch.Tensor):
        if obj.layout == torch.sparse_csr:
            parts = (obj.crow_indices(), obj.col_indices(), obj.values())
            return sum(int(t.numel() * t.element_size()) for t in parts)
        return int(obj.numel() * obj.element_size())
    if isinstance(obj, dict):
        return sum(_nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_nbytes(v) for v in obj)
    return 0


def _python_bytes(strings: list, mapping: dict) -> int:
    """Bytes of an id list and its reverse dict: the objects, not only their pointers."""
    return (
        sys.getsizeof(strings)
        + sys.getsizeof(mapping)
        + sum(sys.getsizeof(s) for s in strings)
        + sum(sys.getsizeof(v) for v in mapping.values())
    )


def breakdown(cell: str, model: str) -> dict:
    """Replay one cell in this process and measure what the live state holds, per component,
    and per event / user / item / graph entry."""
    import torch

    from engine.online import OnlineConfig, OnlineTrainer
    from streaming.config import PipelineConfig
    from streaming.pipeline import Pipeline
    from streaming.sources.log import LogSource

    torch.set_num_threads(1)
    events, users, items = (int(x) for x in cell.split(":"))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "stream.csv"
        _write_stream(path, events, users, items)
        source = LogSource(path, batch_size=256)
        trainer = OnlineTrainer(OnlineConfig(model=model))
        config = PipelineConfig.for_replay(progress=False, prequential=True)
        Pipeline(trainer, None, config).run(source)
        graph = trainer.graph
        entries = int(graph.to_scipy(raw=True).nnz)
        ids = trainer._ids
        st = trainer._users
        parts = {
            "model parameters": sum(_nbytes(p) for p in trainer.model.parameters()),
            "optimizer moments": _nbytes(trainer.optimizer.state_dict()["state"]),
            "graph (CSR, pending, degrees, float32 copy)": _nbytes(vars(graph)),
            "user windows and slots": _nbytes([st.windows, st.slot_of_user, st.slot_user])
            + _nbytes(st.last_seen),
            "user histories (exact exclusion)": _nbytes(list(st.histories)),
            "id maps (Python strings and dicts)": _python_bytes(ids.item_ids, ids.item_rows)
            + _python_bytes(ids.user_ids, ids.user_rows)
            + _nbytes(ids.item_counts),
            "log in memory (codes, times, weights)": _nbytes(
                [source._users, source._items, source._times, source._weights, source._user_ids]
            )
            + _nbytes(source._item_ids),
        }
    counts = {
        "events": events,
        "users": trainer.num_users,
        "items": trainer.num_items,
        "graph entries": entries,
    }
    return {"cell": cell, "model": model, "bytes": parts, "counts": counts}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help=f"cells {' '.join(QUICK_CELLS)}")
    p.add_argument("--cells", nargs="+", default=None, help="EVENTS:USERS:ITEMS")
    p.add_argument("--model", default="sasrec", choices=("sasrec", "mf"))
    p.add_argument("--out", type=Path, default=None)
    p.add_argument(
        "--breakdown",
        metavar="CELL",
        default=None,
        help="replay CELL in-process and report what the live state holds, per component",
    )
    args = p.parse_args(argv)
    if args.breakdown:
        result = breakdown(args.breakdown, args.model)
        out = args.out or ROOT / "benchmarks" / "results" / "memory-breakdown.json"
        out.write_text(json.dumps(result, indent=1) + "\n")
        c = result["counts"]
        print(f"{args.breakdown}: {c}")
        for name, size in result["bytes"].items():
            print(f"  {name:45s} {size / 2**20:8.1f} MiB")
        return 0
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
                mb, wall, text = _peak_rss_mb(cmd)
                key = "prequential" if prequential else "plain"
                row[f"peak_rss_mib_{key}"] = mb
                row[f"wall_seconds_{key}"] = wall
                found = GRAPH_ENTRIES.search(text)
                row["graph_entries"] = int(found.group(1)) if found else None
                print(f"{cell} {key}: peak RSS {mb:,.0f} MiB in {wall:.0f} s", flush=True)
            rows.append(row)
            _write_report(args, baseline_mb, rows, partial=cell != cells[-1])
    return 0


def _growth_lines(rows: list[dict]) -> list[str]:
    """Bytes per event / user / item between cells that differ in that one size only."""
    out = []
    for a in rows:
        for b in rows:
            changed = [k for k in ("events", "users", "items") if a[k] != b[k]]
            if len(changed) != 1 or b[changed[0]] <= a[changed[0]]:
                continue
            unit = changed[0]
            n = b[unit] - a[unit]
            per = {
                key: (b[f"peak_rss_mib_{key}"] - a[f"peak_rss_mib_{key}"]) * 2**20 / n
                for key in ("plain", "prequential")
            }
            out.append(
                f"| {unit[:-1]} | {a['events']:,}:{a['users']:,}:{a['items']:,} → "
                f"{b['events']:,}:{b['users']:,}:{b['items']:,} | {per['plain']:,.0f} | "
                f"{per['prequential']:,.0f} |"
            )
    return out


def _write_report(args: argparse.Namespace, baseline_mb: float, rows: list[dict], partial: bool):
    lines = [
        "| events | users | items | graph entries | peak RSS, replay (MiB) | "
        "with --prequential (MiB) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['events']:,} | {r['users']:,} | {r['items']:,} | {r['graph_entries'] or 0:,} | "
            f"{r['peak_rss_mib_plain']:,.0f} | {r['peak_rss_mib_prequential']:,.0f} |"
        )
    growth = _growth_lines(rows)
    if growth:
        lines += [
            "",
            "| per | cells (events:users:items) | bytes, replay | bytes, --prequential |",
            "|---|---|---|---|",
            *growth,
        ]
    print(f"(interpreter + imports alone: {baseline_mb:,.0f} MiB)")
    print("\n".join(lines))
    report = {
        "model": args.model,
        "partial": partial,
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


if __name__ == "__main__":
    raise SystemExit(main())
