"""Benchmark the graph store and SEvo optimizer against peers measured in the same run.

Measures, on a synthetic 100k-node graph with ~2M non-zeros and on the Amazon Beauty item graph
(skipped with a message if the data is absent):

* edge ingest: ``ItemGraph.add_edges`` in batches of 10k vs a naive peer that adds each batch
  into a scipy CSR (``A = A + batch``);
* ``propagate`` (Ã·X, 64 columns) vs a static, pre-normalised ``torch.sparse`` CSR product on the
  same matrix (target ≤ 1.3×) and vs the same product in scipy (target: faster), both with the
  pending buffer merged and with ~5% of the non-zeros still pending;
* the cost of L = 3 smoothing (ψ);
* one SEvoAdamW step vs one ``torch.optim.AdamW`` step on a Beauty-sized item table.

Usage::

    python benchmarks/bench_graph.py [--quick] [--out benchmarks/results/graph.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.data import beauty_dir  # noqa: E402
from engine.optim import SEvoAdamW  # noqa: E402
from engine.sevo import Smoother  # noqa: E402
from graph_store import ItemGraph, sequence_edges  # noqa: E402


def timeit(fn, repeats: int, warmup: int = 2) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return {"median_ms": 1e3 * statistics.median(samples), "min_ms": 1e3 * min(samples)}


def synthetic_edges(num_nodes: int, num_edges: int, seed: int = 0):
    """Skewed random edges (popular items get more edges, as in real logs)."""
    rng = np.random.default_rng(seed)
    popularity = rng.permutation(np.arange(1, num_nodes + 1) ** -0.6)
    p = popularity / popularity.sum()
    src = rng.choice(num_nodes, num_edges, p=p)
    dst = rng.choice(num_nodes, num_edges, p=p)
    keep = src != dst
    return src[keep], dst[keep], rng.uniform(0.5, 2.0, keep.sum())


def ingest(num_nodes, src, dst, w, batch: int) -> tuple[ItemGraph, dict]:
    graph = ItemGraph(num_nodes)
    start = time.perf_counter()
    for lo in range(0, src.size, batch):
        graph.add_edges(src[lo : lo + batch], dst[lo : lo + batch], w[lo : lo + batch])
    ours = time.perf_counter() - start
    # Peer: the naive way, a scipy CSR rebuilt by adding each batch (O(nnz) per batch).
    peer_edges = src.size
    A = sp.csr_matrix((num_nodes, num_nodes))
    start = time.perf_counter()
    for lo in range(0, peer_edges, batch):
        s, d, x = src[lo : lo + batch], dst[lo : lo + batch], w[lo : lo + batch]
        A = A + sp.csr_matrix(
            (np.concatenate([x, x]), (np.concatenate([s, d]), np.concatenate([d, s]))),
            shape=(num_nodes, num_nodes),
        )
    peer = time.perf_counter() - start
    return graph, {
        "edges": int(src.size),
        "batch": batch,
        "increments_per_s": src.size / ours,
        "peer_scipy_rebuild_increments_per_s": peer_edges / peer,
        "speedup_vs_peer": (src.size / ours) / (peer_edges / peer),
    }


def normalised_static(graph: ItemGraph) -> tuple[torch.Tensor, sp.csr_matrix]:
    A = graph.to_scipy(raw=True).astype(np.float64)
    d = np.asarray(A.sum(axis=1)).ravel()
    s = np.where(d > 0, 1.0 / np.sqrt(np.where(d > 0, d, 1.0)), 0.0)
    At = (sp.diags(s) @ A @ sp.diags(s)).tocsr().astype(np.float32)
    At.sort_indices()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
        torch_csr = torch.sparse_csr_tensor(
            torch.from_numpy(At.indptr.astype(np.int64)),
            torch.from_numpy(At.indices.astype(np.int64)),
            torch.from_numpy(At.data),
            size=At.shape,
            check_invariants=False,
        )
    return torch_csr, At


def propagate_block(graph: ItemGraph, dim: int, repeats: int, label: str) -> dict:
    n = graph.num_nodes
    X = torch.randn(n, dim)
    Xn = X.numpy()
    static_torch, static_scipy = normalised_static(graph)
    expected = static_torch @ X
    got = graph.propagate(X)
    err = float((got - expected).abs().max())
    ours = timeit(lambda: graph.propagate(X), repeats)
    peer_torch = timeit(lambda: torch.sparse.mm(static_torch, X), repeats)
    peer_scipy = timeit(lambda: static_scipy @ Xn, repeats)
    psi = Smoother(graph, beta=0.99, L=3)
    smooth = timeit(lambda: psi(X), max(3, repeats // 2))
    return {
        "case": label,
        "nodes": n,
        "nnz": int(static_scipy.nnz),
        "pending_entries": int(graph._pending_nnz),
        "max_abs_error_vs_static": err,
        "propagate_ms": ours["median_ms"],
        "static_torch_csr_ms": peer_torch["median_ms"],
        "static_scipy_csr_ms": peer_scipy["median_ms"],
        "ratio_vs_torch_csr": ours["median_ms"] / peer_torch["median_ms"],
        "ratio_vs_scipy": ours["median_ms"] / peer_scipy["median_ms"],
        "smooth_L3_ms": smooth["median_ms"],
    }


def with_pending(graph: ItemGraph, fraction: float, seed: int = 1) -> ItemGraph:
    """A copy of ``graph`` with ~fraction·nnz increments left in the pending buffer."""
    copy = ItemGraph.from_state_arrays(graph.state_arrays())
    copy.merge_fraction = 1e9  # keep the buffer unmerged for the measurement
    copy.min_merge = 1 << 62
    entries = int(fraction * graph.nnz / 2)
    src, dst, w = synthetic_edges(graph.num_nodes, entries, seed)
    copy.add_edges(src, dst, w)
    return copy


def optimizer_block(graph: ItemGraph, dim: int, repeats: int) -> dict:
    n = graph.num_nodes
    gen = torch.Generator().manual_seed(0)
    results = {}
    for name in ["torch AdamW", "SEvoAdamW (no smoother)", "SEvoAdamW (β=0.99, L=3)"]:
        table = torch.nn.Parameter(torch.randn(n, dim, generator=gen) * 0.01)
        grad = torch.randn(n, dim, generator=gen)
        grad[torch.rand(n, generator=gen) < 0.7] = 0  # a batch touches a subset of items
        if name == "torch AdamW":
            opt = torch.optim.AdamW([table], lr=1e-3, weight_decay=0.1)
        elif name.startswith("SEvoAdamW (no"):
            opt = SEvoAdamW([table], lr=1e-3, weight_decay=0.1)
        else:
            opt = SEvoAdamW(
                [{"params": [table], "smoother": Smoother(graph)}], lr=1e-3, weight_decay=0.1
            )

        def step(table=table, grad=grad, opt=opt):
            table.grad = grad
            opt.step()

        results[name] = timeit(step, repeats)["median_ms"]
    base = results["torch AdamW"]
    return {
        "table_rows": n,
        "dim": dim,
        "step_ms": results,
        "ratio_sevo_vs_adamw": results["SEvoAdamW (β=0.99, L=3)"] / base,
        "ratio_unsmoothed_vs_adamw": results["SEvoAdamW (no smoother)"] / base,
    }


def beauty_graph(path: Path) -> ItemGraph | None:
    inter = path / "interactions.tsv"
    if not inter.exists():
        return None
    data = np.loadtxt(inter, delimiter="\t", skiprows=1, dtype=np.int64)
    users, items, times = data[:, 0], data[:, 1], data[:, 2]
    order = np.lexsort((times, users))  # stable within equal (user, time): keeps file order
    users, items = users[order], items[order]
    counts = np.bincount(users)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    n = int(items.max()) + 1
    src, dst, w = sequence_edges((items, offsets), n, hops=1, maxlen=50)
    graph = ItemGraph(n)
    graph.add_edges(src, dst, w)
    graph.merge()
    return graph


def print_table(rows: list[dict], columns: list[str]) -> None:
    widths = [max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for r in rows:
        print("  ".join(_fmt(r.get(c)).ljust(w) for c, w in zip(columns, widths)))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:,.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller graph, fewer repeats")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "graph.json")
    parser.add_argument("--beauty", type=Path, default=beauty_dir())
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    nodes, edges = (20_000, 200_000) if args.quick else (100_000, 1_000_000)
    repeats = 5 if args.quick else 20
    report: dict = {
        "quick": args.quick,
        "threads": args.threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
    }

    src, dst, w = synthetic_edges(nodes, edges)
    graph, ingest_stats = ingest(nodes, src, dst, w, batch=10_000)
    graph.merge()
    report["ingest_synthetic"] = ingest_stats
    print(f"\n== edge ingest ({nodes:,} nodes, {src.size:,} edges, batches of 10k)")
    print_table([ingest_stats], list(ingest_stats))

    prop_rows = [
        propagate_block(graph, 64, repeats, "synthetic, merged"),
        propagate_block(with_pending(graph, 0.05), 64, repeats, "synthetic, 5% pending"),
    ]
    beauty = beauty_graph(args.beauty)
    if beauty is None:
        print(f"\n(Beauty data not found at {args.beauty}: skipping the Beauty rows)")
        report["beauty"] = "skipped: data not found"
    else:
        prop_rows.append(propagate_block(beauty, 64, repeats * 2, "beauty items, merged"))
    report["propagate"] = prop_rows
    print("\n== propagate Ã·X, X of 64 columns (median ms; ratios ours / peer)")
    print_table(
        prop_rows,
        [
            "case",
            "nodes",
            "nnz",
            "pending_entries",
            "propagate_ms",
            "static_torch_csr_ms",
            "static_scipy_csr_ms",
            "ratio_vs_torch_csr",
            "ratio_vs_scipy",
            "smooth_L3_ms",
        ],
    )

    opt_graph = beauty if beauty is not None else ItemGraph.from_state_arrays(graph.state_arrays())
    if beauty is None:  # a Beauty-sized stand-in: 12,102 rows
        s2, d2, w2 = synthetic_edges(12_102, 60_000, seed=3)
        opt_graph = ItemGraph(12_102)
        opt_graph.add_edges(s2, d2, w2)
    report["optimizer_step"] = optimizer_block(opt_graph, 64, repeats * 2)
    print("\n== one optimizer step on a Beauty-sized item table (median ms)")
    for k, v in report["optimizer_step"]["step_ms"].items():
        print(f"  {k:28s} {v:8.3f}")
    print(f"  ratio SEvoAdamW / AdamW      {report['optimizer_step']['ratio_sevo_vs_adamw']:8.2f}")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
