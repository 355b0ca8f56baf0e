"""Data-parallel online training: 1 vs 2 ranks on one topic, and what a step exchanges.

Three measurements, each against its peer in the same run:

1. **End to end** (``throughput``): ML-100K events produced to a 2-partition Tansu topic
   (keyed by user), then consumed by ``sevo run`` with one process and by ``sevo run
   --world-size 2``, the same SASRec settings and micro-batch size per process. Events/s is the
   group's events over the pipeline's run time minus the ``--idle-exit`` wait; the step time
   splits into compute (forward/backward), the optimizer step (ψ included) and the time spent
   in collectives (waiting for the other rank included); bytes sent per step by rank 0.
2. **Gradient exchange** (``exchange``): two gloo ranks exchange an item table's gradient at
   10k–1M items (D = 64) either densely (one all-reduce of the whole table) or sparsely (an
   all-gather of the touched rows and their indices, then a scatter-add), with the touched
   rows of a typical micro-batch.
3. **ψ placement** (``psi``): ψ (L = 3 hops of β-weighted Ã products) computed whole on each
   rank vs split by row blocks (each rank multiplies its half of Ã's rows, then one
   all-gather per hop), on a random graph of average degree 20.

Usage::

    python benchmarks/bench_data_parallel.py            # 20k events; 10k / 100k / 1M items
    python benchmarks/bench_data_parallel.py --quick    # 4k events; 10k / 100k items

Writes ``benchmarks/results/data-parallel.json`` (``--out``) after each part.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

IDLE_EXIT_S = 3.0
DIM = 64


# ---------------------------------------------------------------- 1. end to end
def _sevo_run(bootstrap: str, topic: str, ckpt: Path, world: int, args) -> dict:
    argv = [
        sys.executable,
        "-m",
        "streaming.cli",
        "run",
        "--bootstrap",
        bootstrap,
        "--topic",
        topic,
        "--group",
        f"bench-{world}-{time.time_ns()}",
        "--checkpoint-dir",
        str(ckpt),
        "--idle-exit",
        str(IDLE_EXIT_S),
        "--max-batch",
        str(args.max_batch),
        "--threads",
        "1",
        "--json",
        "--max-restarts",
        "0",
        "--world-size",
        str(world),
        "--session-timeout-ms",
        "3000",
    ]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"sevo run (world {world}) failed:\n{done.stderr[-3000:]}")
    out = done.stdout
    summary = json.loads(out[out.index("{") :])
    sec = summary["seconds"]
    busy = sec["total"] - IDLE_EXIT_S
    steps = max(summary["group"]["steps"], 1)
    return {
        "world_size": world,
        "events": summary["events_applied"],
        "events_per_s": summary["events_applied"] / busy,
        "seconds": busy,
        "steps": summary["group"]["steps"],
        "step_ms": {
            "learn_many": 1000 * (sec["train"] + sec["graph"] + sec["state"]) / steps,
            "forward_backward": 1000 * (sec["train"] - sec["optimizer"]) / steps,
            "optimizer_incl_psi": 1000 * sec["optimizer"] / steps,
            "collectives": 1000 * sec["exchange"] / steps,
        },
        "bytes_sent_per_step_rank0": summary["group"]["bytes_sent"] / steps,
    }


def throughput(args) -> dict:
    from devtools.services import TansuService, free_port
    from streaming.events import Event
    from streaming.kafka_client import ensure_topic, produce_events
    from streaming.sources.log import LogSource

    batch = LogSource("ml-100k", batch_size=args.events, limit=args.events).next_batch()
    events = [
        Event(u, i, t, w)
        for u, i, t, w in zip(
            batch.users.tolist(), batch.items.tolist(), batch.times.tolist(), batch.weights.tolist()
        )
    ]
    with tempfile.TemporaryDirectory() as tmp:
        broker = TansuService(free_port(), Path(tmp) / "tansu")
        broker.start()
        try:
            topic = "bench-dp"
            ensure_topic(broker.bootstrap, topic, partitions=2)
            produce_events(broker.bootstrap, topic, events)
            rows = []
            for round_ in range(args.rounds):  # interleaved: 1, 2, 1, 2, ...
                for world in (1, 2):
                    ckpt = Path(tmp) / f"ckpt-{world}-{round_}"
                    rows.append(_sevo_run(broker.bootstrap, topic, ckpt, world, args))
                    print(json.dumps(rows[-1]), flush=True)
        finally:
            broker.stop()
    med = {
        w: statistics.median(r["events_per_s"] for r in rows if r["world_size"] == w)
        for w in (1, 2)
    }
    return {
        "events": args.events,
        "max_batch_per_rank": args.max_batch,
        "runs": rows,
        "median_events_per_s": med,
        "ratio_2_over_1": med[2] / med[1],
    }


# ---------------------------------------------------------------- 2-3. two gloo ranks
def _touched_rows(n_items: int, rows: int, rng: np.random.Generator) -> np.ndarray:
    return np.unique(rng.integers(1, n_items, rows))


def _one_size(n: int, rank: int, touched: int, rng: np.random.Generator, timed) -> tuple:
    """The gradient exchange and ψ placement at ``n`` items on this rank."""
    result: dict = {"exchange": [], "psi": []}
    grad = torch.zeros(n, DIM)
    rows = torch.from_numpy(_touched_rows(n, touched, rng))
    grad[rows] = torch.randn(rows.numel(), DIM)

    def dense() -> None:
        g = grad.clone()
        dist.all_reduce(g)

    def sparse() -> None:
        idx = grad.abs().amax(1).nonzero().squeeze(1)
        vals = grad[idx]
        size = torch.tensor([idx.numel()])
        sizes_ = [torch.zeros(1, dtype=torch.int64) for _ in range(2)]
        dist.all_gather(sizes_, size)
        longest = int(max(sizes_))
        pad_i = torch.zeros(longest, dtype=torch.int64)
        pad_v = torch.zeros(longest, DIM)
        pad_i[: idx.numel()], pad_v[: idx.numel()] = idx, vals
        all_i = [torch.empty_like(pad_i) for _ in range(2)]
        all_v = [torch.empty_like(pad_v) for _ in range(2)]
        dist.all_gather(all_i, pad_i)
        dist.all_gather(all_v, pad_v)
        out_g = torch.zeros_like(grad)
        for k, s in enumerate(sizes_):
            out_g.index_add_(0, all_i[k][: int(s)], all_v[k][: int(s)])

    result["exchange"].append(
        {
            "items": n,
            "touched_rows_per_rank": int(rows.numel()),
            "dense_ms": 1000 * timed(dense),
            "sparse_ms": 1000 * timed(sparse),
            "dense_bytes_per_rank": n * DIM * 4,
            "sparse_bytes_per_rank": int(rows.numel()) * (DIM * 4 + 8),
        }
    )

    # psi: the same random graph on both ranks (seeded by n)
    g_rng = np.random.default_rng(n)
    m = n * 10
    A = sp.coo_matrix(
        (np.ones(m), (g_rng.integers(0, n, m), g_rng.integers(0, n, m))), shape=(n, n)
    ).tocsr()
    A = A + A.T
    deg = np.asarray(A.sum(1)).ravel()
    inv = 1.0 / np.sqrt(np.maximum(deg, 1.0))
    A_n = sp.diags(inv) @ A @ sp.diags(inv)
    A_t = torch.sparse_csr_tensor(
        torch.from_numpy(A_n.indptr).long(),
        torch.from_numpy(A_n.indices).long(),
        torch.from_numpy(A_n.data).float(),
        size=(n, n),
    )
    half = n // 2
    lo, hi = (0, half) if rank == 0 else (half, n)
    block = A_n[lo:hi].tocsr()
    B_t = torch.sparse_csr_tensor(
        torch.from_numpy(block.indptr).long(),
        torch.from_numpy(block.indices).long(),
        torch.from_numpy(block.data).float(),
        size=(hi - lo, n),
    )
    X = torch.randn(n, DIM)
    beta, L = 0.99, 3

    def whole() -> None:
        Y = X
        for _ in range(L):
            Y = beta * (A_t @ Y) + (1 - beta) * X

    def split() -> None:
        Y = X
        for _ in range(L):
            mine = beta * (B_t @ Y) + (1 - beta) * X[lo:hi]
            # gloo all_gather needs equal sizes: pad the first block to the second's
            pad = torch.zeros(n - half, DIM)
            pad[: mine.shape[0]] = mine
            gathered = [torch.empty(n - half, DIM) for _ in range(2)]
            dist.all_gather(gathered, pad)
            Y = torch.cat([gathered[0][:half], gathered[1]])

    result["psi"].append(
        {
            "items": n,
            "nnz": int(A_n.nnz),
            "whole_ms": 1000 * timed(whole),
            "split_with_exchange_ms": 1000 * timed(split),
        }
    )
    return result["exchange"][0], result["psi"][0]


def _rank(rank: int, port: int, sizes: list[int], touched: int, repeat: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=timedelta(seconds=600))
    torch.set_num_threads(1)
    rng = np.random.default_rng(rank)
    result: dict = {"exchange": [], "psi": []}

    def timed(fn) -> float:
        times = []
        for _ in range(repeat):
            dist.barrier()
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    for n in sizes:
        exchange, psi = _one_size(n, rank, touched, rng, timed)
        result["exchange"].append(exchange)
        result["psi"].append(psi)
    if rank == 0:
        Path(out).write_text(json.dumps(result))
    dist.barrier()  # leave together (see tests/engine/test_data_parallel.py)
    dist.destroy_process_group()


def two_rank_parts(args) -> dict:
    from devtools.services import free_port

    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "parts.json")
        mp.start_processes(
            _rank,
            args=(free_port(), args.items, args.touched, args.repeat, out),
            nprocs=2,
            join=True,
            start_method="spawn",
        )
        return json.loads(Path(out).read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4k events, 10k/100k items")
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved 1/2-rank runs")
    parser.add_argument("--max-batch", type=int, default=100, help="records per rank per step")
    parser.add_argument("--items", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--touched", type=int, default=3000, help="touched rows per rank")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/data-parallel.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.events, args.rounds, args.items, args.repeat = 4000, 1, [10_000, 100_000], 3
    result: dict = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "torch": torch.__version__,
        "quick": args.quick,
    }

    def save() -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))

    result.update(two_rank_parts(args))
    save()
    print(json.dumps({k: result[k] for k in ("exchange", "psi")}, indent=1), flush=True)
    if not args.skip_throughput:
        result["throughput"] = throughput(args)
        save()
        t = result["throughput"]
        print(
            f"events/s: 1 rank {t['median_events_per_s'][1]:.0f}, 2 ranks "
            f"{t['median_events_per_s'][2]:.0f} ({t['ratio_2_over_1']:.2f}x)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
