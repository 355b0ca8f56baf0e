"""Redis serving micro-benchmarks: snapshot publishing and the reading client.

Against a real ``redis-server`` started on a free loopback port (a temporary directory, no
persistence; stopped at the end), this measures:

* **full publish** of a 100k × 64 float32 table with 100k string ids
  (:meth:`SnapshotWriter.publish_full`: chunks + ids + metadata + checksum + pointer switch +
  retention), p50/p99 over repeats (target ≤ 150 ms). Peers in the same run: the *naive
  layout* (one key per row, the 100k ``SET`` s pipelined) and the *raw chunk write* (the same
  chunked bytes ``SET`` in one pipeline, no ids, metadata, checksum or pointer), whose
  difference to the full publish is the cost of making the snapshot versioned and verifiable;
  the CPU parts of that difference are timed on their own (``breakdown_ms``);
* **delta publish** of 10k changed rows out of 100k (:meth:`SnapshotWriter.publish_delta`,
  ``delta_tolerance=0``; other rows each repeat), p50/p99 (target ≤ 30 ms);
* **client** (:class:`EmbeddingClient`) over a 12k × 64 snapshot: ``item_vectors`` of one
  random known item (target p99 ≤ 2 ms) and ``recommend(user, k=10)`` with a published user
  vector (target p99 ≤ 5 ms), against the round-trip floor of one plain redis-py ``GET``;
  both also with ``max_staleness_s=1`` (the pointer check skipped between calls);
* **cold load** of the 100k × 64 snapshot (``refresh()`` on a fresh client), also of a
  version carrying a chain of deltas.

Usage::

    python benchmarks/bench_serving.py            # -> benchmarks/results/serving.json
    python benchmarks/bench_serving.py --quick    # fewer repeats -> serving-quick.json
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import logging
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streaming.serving import EmbeddingClient, SnapshotWriter, connect  # noqa: E402

log = logging.getLogger("bench_serving")

TARGETS_MS = {
    "full_publish_p50": 150.0,
    "full_publish_p99": 150.0,
    "delta_publish_p50": 30.0,
    "delta_publish_p99": 30.0,
    "item_vectors_p99": 2.0,
    "recommend_p99": 5.0,
}


def stats_ms(samples: list[float]) -> dict[str, float]:
    """p50/p99/min/max/mean in ms of samples in seconds."""
    x = np.asarray(samples, dtype=np.float64) * 1e3
    return {
        "n": int(x.size),
        "p50": float(np.percentile(x, 50)),
        "p99": float(np.percentile(x, 99)),
        "min": float(x.min()),
        "max": float(x.max()),
        "mean": float(x.mean()),
    }


def timed(fn: Callable[[int], object], repeats: int, warmup: int = 1) -> list[float]:
    """Seconds of ``fn(i)`` for ``repeats`` calls after ``warmup`` untimed calls."""
    for i in range(warmup):
        fn(-1 - i)
    samples = []
    for i in range(repeats):
        start = time.perf_counter()
        fn(i)
        samples.append(time.perf_counter() - start)
    return samples


def _raw_chunk_set(client, prefix: str, data: bytes, chunk_bytes: int) -> None:
    view = memoryview(data)
    pipe = client.pipeline(transaction=False)
    for i in range(0, len(data), chunk_bytes):
        pipe.set(f"{prefix}:chunk:{i // chunk_bytes}", view[i : i + chunk_bytes])
    pipe.execute()


def _naive_set(client, keys: list[str], rows: np.ndarray) -> None:
    pipe = client.pipeline(transaction=False)
    for key, row in zip(keys, rows):
        pipe.set(key, row.tobytes())
    pipe.execute()


def _copy_and_norms(matrix: np.ndarray) -> np.ndarray:
    copy = matrix.copy()
    return np.einsum("ij,ij->i", copy, copy)


# ---------------------------------------------------------------------- 1. full publish
def bench_full(client, args, rng) -> tuple[dict, np.ndarray, list[str]]:
    n, dim = args.rows, args.dim
    matrix = rng.standard_normal((n, dim)).astype(np.float32)
    ids = [f"item-{i}" for i in range(n)]
    # grace_s=1: versions that fall out of retention expire at once (the repeats would
    # otherwise keep ~26 MB each in Redis for the default minute).
    writer = SnapshotWriter(client, "bench-full", keep_versions=2, grace_s=1.0)
    out: dict = {"rows": n, "dim": dim, "bytes": n * dim * 4, "chunk_rows": writer.chunk_rows}

    log.info("full publish: %d x %d, %d repeats", n, dim, args.full_repeats)
    full = timed(lambda _i: writer.publish_full(ids, matrix, model="bench"), args.full_repeats, 2)
    out["publish_full_ms"] = stats_ms(full)

    data = matrix.tobytes()
    chunk_bytes = writer.chunk_rows * dim * 4
    n_chunks = -(-len(data) // chunk_bytes)
    log.info("raw pipelined chunk SET: %d repeats", args.full_repeats)
    # Fresh keys every repeat, as a new snapshot version has; the previous repeat's keys get
    # the 1 s TTL that retention gives old versions (untimed).
    raw = []
    for i in range(args.full_repeats + 2):
        start = time.perf_counter()
        _raw_chunk_set(client, f"{{bench-raw:v{i}}}", data, chunk_bytes)
        if i >= 2:
            raw.append(time.perf_counter() - start)
        pipe = client.pipeline(transaction=False)
        for j in range(n_chunks):
            pipe.expire(f"{{bench-raw:v{i}}}:chunk:{j}", 1)
        pipe.execute()
    out["raw_chunk_set_ms"] = stats_ms(raw)
    overwrite = timed(
        lambda _i: _raw_chunk_set(client, "{bench-raw}", data, chunk_bytes), args.full_repeats, 2
    )
    out["raw_chunk_set_overwrite_ms"] = stats_ms(overwrite)
    client.delete(*(f"{{bench-raw}}:chunk:{j}" for j in range(n_chunks)))

    log.info("naive one-key-per-row pipelined SET: %d repeats", args.naive_repeats)
    keys = [f"bench-naive:{i}" for i in ids]
    naive = timed(lambda _i: _naive_set(client, keys, matrix), args.naive_repeats, 1)
    out["naive_per_row_set_ms"] = stats_ms(naive)
    for lo in range(0, len(keys), 10_000):
        client.delete(*keys[lo : lo + 10_000])

    # The CPU work publish_full adds on top of the raw chunk write, each part on its own.
    reps = max(3, args.full_repeats // 3)

    def med(fn: Callable[[], object]) -> float:
        return float(np.median(timed(lambda _i: fn(), reps, 1)) * 1e3)

    out["breakdown_ms"] = {
        "as_rows_isfinite": med(lambda: np.all(np.isfinite(matrix))),
        "ids_to_str_and_unique": med(lambda: len(set(list(map(str, ids))))),
        "tobytes": med(matrix.tobytes),
        "sha256": med(lambda: hashlib.sha256(data).hexdigest()),
        "ids_json": med(lambda: json.dumps(ids, separators=(",", ":")).encode()),
        "copy_and_row_norms": med(lambda: _copy_and_norms(matrix)),
        "retention_and_switch": med(lambda: writer._apply_retention(writer.version or 0)),
    }
    out["ratios"] = {
        "naive_over_full_p50": out["naive_per_row_set_ms"]["p50"] / out["publish_full_ms"]["p50"],
        "full_over_raw_p50": out["publish_full_ms"]["p50"] / out["raw_chunk_set_ms"]["p50"],
        "metadata_checksum_overhead_ms_p50": out["publish_full_ms"]["p50"]
        - out["raw_chunk_set_ms"]["p50"],
    }
    return out, matrix, ids


# ---------------------------------------------------------------------- 2. delta publish
def bench_delta(client, args, rng, matrix: np.ndarray, ids: list[str]) -> dict:
    n, dim = matrix.shape
    live = matrix.copy()
    writer = SnapshotWriter(client, "bench-delta", keep_versions=2, grace_s=1.0, delta_tolerance=0)
    writer.publish_full(ids, live, model="bench")
    # max_chain_factor=2 (default): a version takes at most 2n rows of deltas, i.e. 19 deltas
    # of n/10 rows, then publish_delta writes a full snapshot. Rebase untimed before that.
    per_version = int(writer.max_chain_factor * n) // args.delta_rows - 1
    samples, rebases = [], 0
    log.info("delta publish: %d of %d rows, %d repeats", args.delta_rows, n, args.delta_repeats)
    for i in range(args.delta_repeats + 2):
        if writer.seq >= per_version:
            writer.publish_full(ids, live, model="bench", reason="bench rebase")
            rebases += 1
        rows = rng.choice(n, args.delta_rows, replace=False)
        live[rows] += rng.standard_normal((rows.size, dim)).astype(np.float32) * 0.01
        start = time.perf_counter()
        result = writer.publish_delta(ids, live)
        took = time.perf_counter() - start
        if result.kind != "delta" or result.rows != args.delta_rows:
            raise RuntimeError(f"expected a delta of {args.delta_rows} rows, got {result}")
        if i >= 2:  # two warm-up deltas
            samples.append(took)
    # Breakdown: the changed-row scan over the whole table (NumPy only, no Redis).
    changed = timed(lambda _i: writer.changed_rows(live), max(5, args.delta_repeats // 3), 1)
    out = {
        "rows": n,
        "changed_rows": args.delta_rows,
        "delta_tolerance": 0.0,
        "publish_delta_ms": stats_ms(samples),
        "changed_rows_scan_ms": stats_ms(changed),
        "untimed_rebases": rebases,
    }
    # Cold load of a version with a chain of deltas (what a reader does after a restart).
    out["chain_seq"] = writer.seq
    return out


# ---------------------------------------------------------------------- 3. the client
def bench_client(client, url: str, args, rng) -> dict:
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional: only for the BLAS-1-thread variant
        threadpool_limits = None
    n, dim = args.client_rows, args.dim
    ns = "bench-client"
    matrix = rng.standard_normal((n, dim)).astype(np.float32)
    ids = [f"item-{i}" for i in range(n)]
    writer = SnapshotWriter(client, ns)
    writer.publish_full(ids, matrix, model="bench")
    users = [f"user-{u}" for u in range(args.users)]
    recent = [[ids[j] for j in rng.choice(n, 20, replace=False)] for _ in users]
    writer.publish_users(users, rng.standard_normal((len(users), dim)).astype(np.float32), recent)
    client.set("bench-plain-row", matrix[0].tobytes())

    out: dict = {"rows": n, "dim": dim, "calls": args.calls}
    item_idx = rng.integers(0, n, size=args.calls + 10)
    user_idx = rng.integers(0, len(users), size=args.calls + 10)
    for label, staleness in (("", 0.0), ("_cached_pointer", 1.0)):
        reader = EmbeddingClient(url, namespace=ns, max_staleness_s=staleness)
        reader.refresh()
        got = reader.recommend(users[0], k=10)
        assert len(got) == 10 and not set(r.item_id for r in got) & set(recent[0])
        log.info("client%s: item_vectors / recommend x %d", label, args.calls)
        out[f"item_vectors{label}_ms"] = stats_ms(
            timed(lambda i, r=reader: r.item_vectors([ids[item_idx[i]]]), args.calls, 10)
        )
        out[f"recommend{label}_ms"] = stats_ms(
            timed(lambda i, r=reader: r.recommend(users[user_idx[i]], k=10), args.calls, 10)
        )
        if not label and threadpool_limits is not None:
            # The same with BLAS limited to one thread: OpenBLAS' worker threads compete
            # for the cores with Redis and the caller, which shows in recommend's tail.
            with threadpool_limits(limits=1, user_api="blas"):
                out["recommend_blas1_ms"] = stats_ms(
                    timed(lambda i, r=reader: r.recommend(users[user_idx[i]], k=10), args.calls, 10)
                )
        reader.redis.close()
    plain = connect(url)
    out["plain_get_ms"] = stats_ms(timed(lambda _i: plain.get("bench-plain-row"), args.calls, 10))
    plain.close()
    floor = out["plain_get_ms"]
    out["ratios"] = {
        f"{op}_over_get_{q}": out[f"{op}_ms"][q] / floor[q]
        for op in ("item_vectors", "recommend", "recommend_blas1", "item_vectors_cached_pointer")
        for q in ("p50", "p99")
        if f"{op}_ms" in out
    }
    return out


def bench_cold_load(url: str, namespace: str, repeats: int) -> dict:
    def load(_i: int) -> None:
        reader = EmbeddingClient(url, namespace=namespace, timeout_s=10.0)
        reader.refresh()
        reader.redis.close()

    probe = EmbeddingClient(url, namespace=namespace, timeout_s=10.0)
    pointer = probe.refresh() or {}
    probe.redis.close()
    return {
        "namespace": namespace,
        "rows": pointer.get("rows"),
        "seq": pointer.get("seq"),
        "refresh_ms": stats_ms(timed(load, repeats, 1)),
    }


def _table(report: dict) -> str:
    full, delta, cl = report["full_publish"], report["delta_publish"], report["client"]
    rows = [
        ("full publish 100k x 64 (publish_full)", full["publish_full_ms"], "<= 150"),
        ("  peer: raw pipelined chunk SET, fresh keys", full["raw_chunk_set_ms"], ""),
        ("  peer: raw pipelined chunk SET, same keys", full["raw_chunk_set_overwrite_ms"], ""),
        ("  peer: naive one key per row, pipelined", full["naive_per_row_set_ms"], ""),
        ("delta 10k of 100k rows (publish_delta)", delta["publish_delta_ms"], "<= 30"),
        ("  of which changed-row scan", delta["changed_rows_scan_ms"], ""),
        ("item_vectors, 1 row (12k x 64)", cl["item_vectors_ms"], "p99 <= 2"),
        ("recommend k=10 (12k x 64)", cl["recommend_ms"], "p99 <= 5"),
        ("recommend k=10, BLAS 1 thread", cl.get("recommend_blas1_ms"), ""),
        ("item_vectors, max_staleness_s=1", cl["item_vectors_cached_pointer_ms"], ""),
        ("recommend, max_staleness_s=1", cl["recommend_cached_pointer_ms"], ""),
        ("  peer: plain redis-py GET", cl["plain_get_ms"], ""),
        ("cold load 100k x 64 (refresh)", report["cold_load"]["full"]["refresh_ms"], ""),
        (
            f"cold load 100k x 64 + {report['cold_load']['with_deltas']['seq']} deltas",
            report["cold_load"]["with_deltas"]["refresh_ms"],
            "",
        ),
    ]
    lines = ["| operation | n | p50 ms | p99 ms | max ms | target |", "|---|---|---|---|---|---|"]
    for name, s, target in rows:
        if s is None:
            continue
        lines.append(
            f"| {name} | {s['n']} | {s['p50']:.3f} | {s['p99']:.3f} | {s['max']:.3f} | {target} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (well under 1 min)")
    parser.add_argument("--rows", type=int, default=100_000, help="rows of the published table")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--client-rows", type=int, default=12_000, help="rows the client reads")
    parser.add_argument("--delta-rows", type=int, default=10_000, help="changed rows per delta")
    parser.add_argument("--users", type=int, default=1000, help="published user vectors")
    parser.add_argument("--full-repeats", type=int, default=40)
    parser.add_argument("--naive-repeats", type=int, default=5)
    parser.add_argument("--delta-repeats", type=int, default=100)
    parser.add_argument("--calls", type=int, default=5000, help="client calls per operation")
    parser.add_argument("--cold-repeats", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.quick:
        args.full_repeats = min(args.full_repeats, 8)
        args.naive_repeats = min(args.naive_repeats, 2)
        args.delta_repeats = min(args.delta_repeats, 20)
        args.calls = min(args.calls, 1000)
        args.cold_repeats = min(args.cold_repeats, 3)
    if args.out is None:
        name = "serving-quick.json" if args.quick else "serving.json"
        args.out = ROOT / "benchmarks/results" / name

    import redis

    from devtools.services import RedisService, free_port

    rng = np.random.default_rng(args.seed)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        service = RedisService(free_port(), Path(tmp) / "redis")
        service.start()
        try:
            client = connect(service.url, timeout_s=30.0)
            server = client.info("server")
            full, matrix, ids = bench_full(client, args, rng)
            log.info("full publish: %s", full["publish_full_ms"])
            delta = bench_delta(client, args, rng, matrix, ids)
            log.info("delta publish: %s", delta["publish_delta_ms"])
            del matrix
            gc.collect()
            log.info("cold load: %d repeats", args.cold_repeats)
            cold = {
                "full": bench_cold_load(service.url, "bench-full", args.cold_repeats),
                "with_deltas": bench_cold_load(service.url, "bench-delta", args.cold_repeats),
            }
            cl = bench_client(client, service.url, args, rng)
            used_mb = client.info("memory")["used_memory"] / 2**20
            client.close()
        finally:
            service.stop()

    checks = {
        "full_publish_p50": full["publish_full_ms"]["p50"],
        "full_publish_p99": full["publish_full_ms"]["p99"],
        "delta_publish_p50": delta["publish_delta_ms"]["p50"],
        "delta_publish_p99": delta["publish_delta_ms"]["p99"],
        "item_vectors_p99": cl["item_vectors_ms"]["p99"],
        "recommend_p99": cl["recommend_ms"]["p99"],
    }
    report = {
        "benchmark": "redis serving: snapshot publish, delta publish, client reads",
        "settings": {
            "rows": args.rows,
            "dim": args.dim,
            "client_rows": args.client_rows,
            "delta_rows": args.delta_rows,
            "users": args.users,
            "full_repeats": args.full_repeats,
            "naive_repeats": args.naive_repeats,
            "delta_repeats": args.delta_repeats,
            "calls": args.calls,
            "cold_repeats": args.cold_repeats,
            "quick": args.quick,
            "redis": f"redis-server {server.get('redis_version')}, loopback TCP, no persistence",
        },
        "machine": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "redis_py": redis.__version__,
            "cpus": os.cpu_count(),
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
        },
        "full_publish": full,
        "delta_publish": delta,
        "client": cl,
        "cold_load": cold,
        "redis_used_memory_mb_at_end": used_mb,
        "targets_ms": {
            name: {"target": TARGETS_MS[name], "measured": value, "met": value <= TARGETS_MS[name]}
            for name, value in checks.items()
        },
    }
    print(_table(report))
    fr, cr = full["ratios"], cl["ratios"]
    print(
        f"naive per-row / publish_full (p50): x{fr['naive_over_full_p50']:.1f}; "
        f"publish_full / raw chunk SET: x{fr['full_over_raw_p50']:.2f} "
        f"(+{fr['metadata_checksum_overhead_ms_p50']:.1f} ms for ids, metadata, checksum, pointer)"
    )
    print(
        "publish_full CPU parts (ms): "
        + ", ".join(f"{k} {v:.1f}" for k, v in full["breakdown_ms"].items())
    )
    print(
        f"item_vectors / GET: p50 x{cr['item_vectors_over_get_p50']:.2f}, "
        f"p99 x{cr['item_vectors_over_get_p99']:.2f}; recommend / GET: "
        f"p50 x{cr['recommend_over_get_p50']:.2f}, p99 x{cr['recommend_over_get_p99']:.2f}"
    )
    for name, t in report["targets_ms"].items():
        print(f"target {name}: {t['measured']:.2f} ms <= {t['target']} ms: {t['met']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
