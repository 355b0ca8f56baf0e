"""Where online SEvo-AdamW's time goes, and how far the sparse product can be pushed.

Three measurements per (data, model), written to JSON and markdown:

1. **Breakdown** — one in-process ``sevo replay`` per arm (AdamW and SEvo-AdamW with the default
   gradient form) under ``cProfile``, one thread. From the profile: the trainer's training
   seconds, ψ's sparse products (``torch.addmm`` calls made by the smoother), the rest of ψ
   (snapshot, row factors, accumulation), the lazy AdamW step, and the steps' count. The
   AdamW arm is the peer: its training seconds are what the SEvo arm's extra time is compared to.
2. **Kernels** — the final live graph's ``Ã·X`` product (X: item rows × 64) by torch CSR
   ``addmm`` (int32 and int64 indices), CSR ``mm``, COO ``sparse.mm``, scipy CSR, and torch
   CSR after a reverse Cuthill–McKee reordering (locality): is a faster kernel available?
3. **Pruning** — the same product over the graph cut to each row's k strongest edges (kept in
   both directions): stored entries, share of the edge weight kept, ms per product. This is the
   size of the saving an approximate smoothing graph could buy, not something the engine does.

Usage::

    python benchmarks/sevo_cost.py [--quick] [--data ml-100k beauty] [--models mf sasrec]

``--quick`` replays the first 20,000 events of ML-100K with MF only. Beauty needs
``SEVO_BEAUTY_DIR`` (see the README). Timings share the machine with whatever else runs: the
breakdown's shares are what to read, and both arms run in the same process one after the other.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import platform
import pstats
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from graph_store.graph import ItemGraph, _symmetric_top_k  # noqa: E402
from streaming.checkpoint import CheckpointStore  # noqa: E402
from streaming.cli import main as sevo  # noqa: E402

ARMS = {
    "adamw": ["--optimizer", "adamw"],
    "sevo-gradient": ["--optimizer", "sevo-adamw", "--sevo-smooth", "gradient"],
}


def _seconds(stats: pstats.Stats, file_part: str, func: str) -> tuple[float, int]:
    """Cumulative seconds and calls of the function ``func`` defined in a file ending with
    ``file_part``."""
    total, calls = 0.0, 0
    for (filename, _line, name), (_cc, nc, _tt, ct, _callers) in stats.stats.items():
        if name == func and filename.endswith(file_part):
            total += ct
            calls += nc
    return total, calls


def _addmm_under(stats: pstats.Stats, caller_parts: tuple[str, ...]) -> float:
    """Seconds in ``torch.addmm`` called directly from functions whose file:name matches."""
    total = 0.0
    for (_f, _l, name), (_cc, _nc, _tt, _ct, callers) in stats.stats.items():
        if "addmm" not in name:
            continue
        for (cf, _cl, cname), (_c1, _c2, tt, _ct2) in callers.items():
            if any(f"{cf}:{cname}".endswith(part) for part in caller_parts):
                total += tt
    return total


def breakdown(data: str, model: str, arm: str, limit: int | None, ckpt: Path | None) -> dict:
    """Profile one in-process replay; returns the time split (seconds)."""
    argv = ["replay", data, "--model", model, *ARMS[arm], "--threads", "1", "--no-progress"]
    if limit:
        argv += ["--max-events", str(limit)]
    if ckpt is not None:
        argv += ["--checkpoint-dir", str(ckpt)]
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    code = sevo(argv)
    prof.disable()
    wall = time.perf_counter() - t0
    if code != 0:
        raise RuntimeError(f"sevo {' '.join(argv)} exited {code}")
    st = pstats.Stats(prof)
    train, _ = _seconds(st, "engine/online/trainer.py", "_train")
    psi, steps = _seconds(st, "engine/sevo.py", "__call__")
    lazy_masked, _ = _seconds(st, "engine/optim.py", "_lazy_step_masked")
    lazy_gathered, _ = _seconds(st, "engine/optim.py", "_lazy_step_gathered")
    products = _addmm_under(
        st,
        (
            "graph_store/graph.py:adjacency_mm",
            "engine/sevo.py:_neumann_horner",
        ),
    )
    return {
        "wall_s": wall,
        "train_s": train,
        "psi_s": psi,
        "psi_products_s": products,
        "psi_other_s": psi - products,
        "lazy_step_s": lazy_masked + lazy_gathered,
        "smoothed_steps": steps,
    }


def _bench(fn, repeats: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats * 1e3


def _torch_csr(A: sp.csr_matrix, index=np.int32) -> torch.Tensor:
    A = A.tocsr()
    A.sort_indices()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.sparse_csr_tensor(
            torch.from_numpy(A.indptr.astype(index)),
            torch.from_numpy(A.indices.astype(index)),
            torch.from_numpy(A.data.astype(np.float32)),
            size=A.shape,
        )


def kernels_and_pruning(graph: ItemGraph, repeats: int, ks: list[int]) -> dict:
    """ms per ``Ã·X`` (X: n × 64) for the kernels and pruned graphs described above."""
    from scipy.sparse.csgraph import reverse_cuthill_mckee

    A = graph.to_scipy().astype(np.float32).tocsr()
    A.sort_indices()
    n = A.shape[0]
    X = torch.randn(n, 64, generator=torch.Generator().manual_seed(0))
    Xn = X.numpy()
    csr32, csr64 = _torch_csr(A), _torch_csr(A, np.int64)
    coo = csr64.to_sparse_coo().coalesce()
    perm = reverse_cuthill_mckee(A, symmetric_mode=True)
    csr_rcm = _torch_csr(A[perm][:, perm])
    kernels = {
        "torch_csr_addmm_int32": _bench(lambda: torch.addmm(X, csr32, X), repeats),
        "torch_csr_addmm_int64": _bench(lambda: torch.addmm(X, csr64, X), repeats),
        "torch_csr_mm": _bench(lambda: csr32 @ X, repeats),
        "torch_coo_sparse_mm": _bench(lambda: torch.sparse.mm(coo, X), repeats),
        "scipy_csr": _bench(lambda: A @ Xn, repeats),
        "torch_csr_addmm_rcm_order": _bench(lambda: torch.addmm(X, csr_rcm, X), repeats),
    }
    pruned = []
    total = float(A.sum())
    for k in ks:
        B = _symmetric_top_k(A, k)
        M = _torch_csr(B)
        pruned.append(
            {
                "k": k,
                "nnz": int(B.nnz),
                "weight_kept": float(B.sum()) / total if total else 0.0,
                "ms_per_product": _bench(lambda M=M: torch.addmm(X, M, X), repeats),
            }
        )
    degree = np.diff(A.indptr)
    return {
        "nodes": int(n),
        "nnz": int(A.nnz),
        "mean_degree": float(degree.mean()),
        "median_degree": float(np.median(degree)),
        "kernels_ms": kernels,
        "pruned": pruned,
    }


def _final_graph(directory: Path) -> ItemGraph:
    ckpt = CheckpointStore(directory).latest_checkpoint()
    arrays = {k: v.numpy() for k, v in ckpt.state["graph"].items()}
    return ItemGraph.from_state_arrays(arrays)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="ML-100K, MF, first 20k events")
    p.add_argument("--data", nargs="+", default=["ml-100k", "beauty"])
    p.add_argument("--models", nargs="+", default=["mf", "sasrec"])
    p.add_argument("--max-events", type=int, default=None)
    p.add_argument("--repeats", type=int, default=50, help="repeats of each timed product")
    p.add_argument("--top-k", nargs="+", type=int, default=[4, 8, 16, 32])
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.data, args.models, args.max_events, args.repeats = ["ml-100k"], ["mf"], 20_000, 10
    torch.set_num_threads(1)
    name = "sevo-cost-quick" if args.quick else "sevo-cost"
    out = args.out or ROOT / "benchmarks" / "results" / name
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {
        "machine": {"python": platform.python_version(), "torch": torch.__version__},
        "max_events": args.max_events,
        "rows": [],
        "graphs": {},
    }
    lines = [
        "| data | model | AdamW train s | SEvo train s | extra s | ψ products | ψ other | "
        "lazy step | rest | steps | ms/step extra |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for data in args.data:
        for model in args.models:
            with tempfile.TemporaryDirectory() as tmp:
                base = breakdown(data, model, "adamw", args.max_events, None)
                mine = breakdown(data, model, "sevo-gradient", args.max_events, Path(tmp))
                if data not in report["graphs"]:
                    report["graphs"][data] = kernels_and_pruning(
                        _final_graph(Path(tmp)), args.repeats, args.top_k
                    )
            extra = mine["train_s"] - base["train_s"]
            rest = extra - mine["psi_s"] - mine["lazy_step_s"]
            row = {"data": data, "model": model, "adamw": base, "sevo_gradient": mine}
            report["rows"].append(row)

            def share(x: float, extra: float = extra) -> str:
                return f"{x:.2f} ({x / extra:.0%})" if extra > 0 else f"{x:.2f}"

            lines.append(
                f"| {data} | {model} | {base['train_s']:.2f} | {mine['train_s']:.2f} | "
                f"{extra:.2f} | {share(mine['psi_products_s'])} | {share(mine['psi_other_s'])} | "
                f"{share(mine['lazy_step_s'])} | {share(rest)} | {mine['smoothed_steps']} | "
                f"{extra / max(mine['smoothed_steps'], 1) * 1e3:.2f} |"
            )
            print(lines[-1], flush=True)
            (out / "sevo_cost.json").write_text(json.dumps(report, indent=2) + "\n")
    lines += [
        "",
        "| data | nodes | nnz | mean degree | kernel | ms per Ã·X |",
        "|---|---|---|---|---|---|",
    ]
    for data, g in report["graphs"].items():
        for kernel, ms in g["kernels_ms"].items():
            lines.append(
                f"| {data} | {g['nodes']:,} | {g['nnz']:,} | {g['mean_degree']:.1f} | "
                f"{kernel} | {ms:.3f} |"
            )
    lines += ["", "| data | top-k | nnz | edge weight kept | ms per Ã·X |", "|---|---|---|---|---|"]
    for data, g in report["graphs"].items():
        for row in g["pruned"]:
            lines.append(
                f"| {data} | {row['k']} | {row['nnz']:,} | {row['weight_kept']:.0%} | "
                f"{row['ms_per_product']:.3f} |"
            )
    (out / "sevo_cost.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "sevo_cost.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
