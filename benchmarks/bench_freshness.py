"""End-to-end freshness: an event sent to Kafka → its effect visible to Redis readers.

A client process (producer + readers, as an application would be) sends ML-100K events (in
``sevo produce`` order) to Kafka at a fixed rate with kafka-python, recording for each event
its send time (wall clock, also its event ``timestamp``) and, from the send future's
``RecordMetadata``, its partition and offset. The engine consumes them with
:class:`streaming.pipeline.Pipeline` on a Kafka source (the code behind ``sevo run``) and
publishes through an
:class:`~streaming.serving.EmbeddingPublisher` every ``publish_every_s``. In the client
process:

* a **pointer poller** reads the current-version pointer (:meth:`SnapshotStore.pointer`, one
  ``GET``) every ``--poll-ms`` and records each new pointer with the time it was first seen;
  the pointer's ``offsets`` (``{"topic:partition": next_offset}``) say which events the served
  embeddings reflect. **Freshness** of an event = first time a pointer covering its offset
  was seen − its send time. It splits into *learned* (send → ``learn_many`` returned, measured
  in the engine), the wait for the next publish plus the publish itself (→ the pointer's
  ``published_at``), and the poll delay (→ seen);
* a **user poller** follows a sample of events (``--user-samples``, distinct users spread
  over the run): user freshness = first time :meth:`EmbeddingClient.user_state` shows
  ``updated`` ≥ the event's send time (``user_fresh``, the definition of the brief: a lower
  bound, since a publish that started after the send but before the event was learned also
  passes), and first time ``updated`` ≥ the ``published_at`` of the first pointer that covers
  the event (``user_reflects``: exact, as the publisher writes a batch's users right after
  the pointer switch of the publish that covers the batch, stamped with a later time).

Publishes by kind and their durations come from ``publisher.results``. Runs compare
``publish_every_s`` values and models (MF is the peer SASRec is compared with). Target:
freshness p99 ≤ 2 s at 1000 events/s.

The broker is a fresh Tansu and Redis a fresh ``redis-server``, both on free loopback ports;
everything runs on this machine, so all times share one clock. The consumer joins before
production starts (the join is not counted); each run uses its own topic and namespace.

Usage::

    python benchmarks/bench_freshness.py            # mf, sasrec x publish_every 0.25, 1.0; 30 s
    python benchmarks/bench_freshness.py --quick    # mf, publish_every 1.0, 10 s
    python benchmarks/bench_freshness.py --models sasrec --publish-every 0.5 --rate 2000
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

log = logging.getLogger("bench_freshness")

TARGET_P99_S = 2.0


# ---------------------------------------------------------------------- the client process
def _sample_indices(users: list[str], count: int, samples: int) -> list[int]:
    """About ``samples`` event indices spread over the run, each of a different user."""
    chosen: list[int] = []
    seen: set[str] = set()
    for target in np.linspace(count * 0.02, count * 0.95, samples).astype(int).tolist():
        i = max(target, chosen[-1] + 1 if chosen else 0)
        while i < count and users[i] in seen:
            i += 1
        if i < count:
            chosen.append(i)
            seen.add(users[i])
    return chosen


def _client(args: argparse.Namespace) -> int:
    """Produce ``--count`` events at ``--rate`` after a line on stdin while polling Redis;
    write the raw measurements to ``--data`` (npz + json)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s client: %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)
    from kafka import KafkaProducer

    from streaming.events import Event, encode_event
    from streaming.serving import EmbeddingClient, SnapshotStore, connect
    from streaming.sources.log import LogSource

    count = args.count
    batch = LogSource("ml-100k", batch_size=count, limit=count).next_batch()
    users, items = batch.users.tolist(), batch.items.tolist()
    while len(users) < count:  # more than ML-100K has: go round again
        users.extend(users[: count - len(users)])
        items.extend(items[: count - len(items)])
    samples = _sample_indices(users, count, args.user_samples)
    sample_of = {i: k for k, i in enumerate(samples)}

    producer = KafkaProducer(  # the settings of streaming.sources.kafka.produce_events
        bootstrap_servers=[args.bootstrap], client_id="bench-freshness", acks="all", linger_ms=5
    )
    producer.partitions_for(args.topic)  # metadata before the clock starts
    store = SnapshotStore(connect(args.redis_url), args.namespace)
    reader = EmbeddingClient(args.redis_url, namespace=args.namespace)

    send_t = np.full(count, np.nan)
    partition = np.full(count, -1, dtype=np.int32)
    offset = np.full(count, -1, dtype=np.int64)
    failures: list[BaseException] = []
    changes: list[tuple[float, float, int, int, dict]] = []  # seen, published_at, v, seq, offsets
    polls = [0, 0]  # pointer polls, user-state reads
    user_updated = np.full(len(samples), np.nan)  # seen time: updated >= send time
    user_reflects = np.full(len(samples), np.nan)  # seen time: written by a covering publish
    pending: dict[int, tuple[str, int, float]] = {}
    lock = threading.Lock()
    stop = threading.Event()
    poll_s = args.poll_ms / 1000.0

    def poll_pointer() -> None:
        last = None
        while not stop.is_set():
            pointer = store.pointer()
            seen = time.time()
            polls[0] += 1
            if pointer is not None:
                ident = (pointer["version"], pointer["seq"], pointer.get("published_at"))
                if ident != last:
                    last = ident
                    changes.append(
                        (
                            seen,
                            float(pointer.get("published_at") or np.nan),
                            int(pointer["version"]),
                            int(pointer["seq"]),
                            dict(pointer.get("offsets") or {}),
                        )
                    )
            stop.wait(poll_s)

    def poll_users() -> None:
        while not stop.is_set():
            with lock:
                todo = list(pending.items())
            for k, (user, i, sent) in todo:
                state = reader.user_state(user)
                seen = time.time()
                polls[1] += 1
                if state is None or not state["updated"] >= sent:
                    continue
                if np.isnan(user_updated[k]):
                    user_updated[k] = seen
                if offset[i] < 0:
                    continue  # not acknowledged yet
                key = f"{args.topic}:{partition[i]}"
                covering = next(
                    (c[1] for c in list(changes) if c[4].get(key, -1) > offset[i]), None
                )
                if covering is not None and state["updated"] >= covering:
                    user_reflects[k] = seen
                    with lock:
                        pending.pop(k, None)
            stop.wait(poll_s)

    def on_sent(i: int, metadata) -> None:
        partition[i], offset[i] = metadata.partition, metadata.offset

    threads = [
        threading.Thread(target=poll_pointer, name="poll-pointer", daemon=True),
        threading.Thread(target=poll_users, name="poll-users", daemon=True),
    ]
    for t in threads:
        t.start()
    print("ready", flush=True)
    sys.stdin.readline()

    start = time.perf_counter()
    try:
        for i in range(count):
            ahead = start + i / args.rate - time.perf_counter()
            if ahead > 0:
                time.sleep(ahead)
            sent = time.time()
            future = producer.send(
                args.topic,
                value=encode_event(Event(users[i], items[i], sent)),
                key=users[i].encode("utf-8"),
            )
            send_t[i] = sent
            future.add_callback(on_sent, i)
            future.add_errback(failures.append)
            k = sample_of.get(i)
            if k is not None:
                with lock:
                    pending[k] = (users[i], i, sent)
        producer.flush()
        produce_s = time.perf_counter() - start
        # Wait (bounded) until the served pointer covers every event and the sampled users.
        need: dict[str, int] = {}
        for p in np.unique(partition[partition >= 0]).tolist():
            need[f"{args.topic}:{p}"] = int(offset[partition == p].max()) + 1
        deadline = time.monotonic() + args.tail_timeout
        while time.monotonic() < deadline:
            newest = changes[-1][4] if changes else {}
            with lock:
                users_done = not pending
            if users_done and all(newest.get(key, -1) >= n for key, n in need.items()):
                break
            time.sleep(0.02)
    finally:
        stop.set()
        for t in threads:
            t.join(5)
        producer.close(timeout=5)
        store.redis.close()
        reader.redis.close()

    n_part = max(1, int(partition.max()) + 1 if (partition >= 0).any() else 1)
    covered = np.full((len(changes), n_part), -1, dtype=np.int64)
    for r, change in enumerate(changes):
        for p in range(n_part):
            covered[r, p] = change[4].get(f"{args.topic}:{p}", -1)
    np.savez(
        args.data,
        send_t=send_t,
        partition=partition,
        offset=offset,
        seen_t=np.array([c[0] for c in changes], dtype=np.float64),
        published_at=np.array([c[1] for c in changes], dtype=np.float64),
        version=np.array([c[2] for c in changes], dtype=np.int64),
        seq=np.array([c[3] for c in changes], dtype=np.int64),
        covered=covered,
        sample_index=np.array(samples, dtype=np.int64),
        user_updated=user_updated,
        user_reflects=user_reflects,
    )
    summary = {
        "produced": count - len(failures),
        "failures": len(failures),
        "produce_s": produce_s,
        "pointer_polls": polls[0],
        "user_state_reads": polls[1],
        "pointer_changes": len(changes),
    }
    Path(str(args.data) + ".json").write_text(json.dumps(summary))
    return 0


# ---------------------------------------------------------------------- one measured run
def _pct(x: np.ndarray, qs=(50, 95, 99, 100)) -> dict[str, float]:
    names = {50: "p50", 90: "p90", 95: "p95", 99: "p99", 100: "max"}
    if x.size == 0:
        return {names[q]: float("nan") for q in qs} | {"n": 0}
    return {names[q]: float(np.percentile(x, q)) for q in qs} | {"n": int(x.size)}


def _freshness(data) -> dict:
    """Per-event freshness (s) from the client's raw measurements."""
    send_t, partition, offset = data["send_t"], data["partition"], data["offset"]
    seen_t, published_at, covered = data["seen_t"], data["published_at"], data["covered"]
    visible = np.full(send_t.size, np.nan)
    published = np.full(send_t.size, np.nan)
    for p in range(covered.shape[1]):
        mask = partition == p
        if not mask.any() or covered.shape[0] == 0:
            continue
        reach = np.maximum.accumulate(covered[:, p])  # rollbacks never happen here
        k = np.searchsorted(reach, offset[mask], side="right")
        ok = k < reach.size
        vis = np.full(k.size, np.nan)
        pub = np.full(k.size, np.nan)
        vis[ok], pub[ok] = seen_t[k[ok]], published_at[k[ok]]
        visible[mask], published[mask] = vis, pub
    fresh = visible - send_t
    ok = ~np.isnan(fresh)
    return {
        "events": int(send_t.size),
        "acknowledged": int((offset >= 0).sum()),
        "never_visible": int((~ok).sum()),
        "freshness_s": _pct(fresh[ok]),
        "send_to_published_s": _pct((published - send_t)[ok]),
        "poll_delay_ms": _pct(((visible - published)[ok]) * 1e3, (50, 99, 100)),
        "user_fresh_s": _pct(
            (data["user_updated"] - send_t[data["sample_index"]])[~np.isnan(data["user_updated"])]
        ),
        "user_reflects_s": _pct(
            (data["user_reflects"] - send_t[data["sample_index"]])[~np.isnan(data["user_reflects"])]
        ),
        "user_samples": int(data["sample_index"].size),
        "pointer_changes": int(seen_t.size),
        "_fresh": fresh,
    }


def _measure(
    bootstrap: str,
    redis_url: str,
    model: str,
    publish_every_s: float,
    args: argparse.Namespace,
    workdir: Path,
) -> dict:
    import torch

    from engine.online import OnlineConfig, OnlineTrainer
    from streaming.checkpoint import CheckpointStore
    from streaming.config import PipelineConfig
    from streaming.kafka_client import ensure_topic
    from streaming.metrics import EngineMetrics
    from streaming.pipeline import Pipeline
    from streaming.serving import EmbeddingPublisher, PublishConfig
    from streaming.sources.kafka import KafkaConfig, KafkaEventSource

    torch.set_num_threads(args.threads)
    count = int(args.rate * args.seconds)
    tag = f"{model}-{int(publish_every_s * 1000)}ms-{int(time.time() * 1000)}"
    topic = f"fresh-{tag}"
    ensure_topic(bootstrap, topic, partitions=args.partitions)
    data_path = workdir / f"{tag}.npz"
    client = subprocess.Popen(
        [
            *(sys.executable, __file__, "--role", "client"),
            *("--bootstrap", bootstrap, "--topic", topic),
            *("--redis-url", redis_url, "--namespace", tag),
            *("--rate", str(args.rate), "--count", str(count)),
            *("--user-samples", str(args.user_samples), "--poll-ms", str(args.poll_ms)),
            *("--tail-timeout", str(args.tail_timeout), "--data", str(data_path)),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    stop = threading.Event()
    thread: threading.Thread | None = None
    out: dict = {}
    applied: list[np.ndarray] = []
    span = [np.inf, -np.inf, 0.0]  # first batch fetched, last applied, learn_many seconds
    try:
        if client.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the client process failed to start (exit {client.poll()})")

        # CLI defaults of `sevo run` (and bench_kafka's), publishing as `--redis-url` does.
        trainer = OnlineTrainer(
            OnlineConfig(model=model, optimizer=args.optimizer, lr=3e-3, steps_per_batch=2)
        )
        metrics = EngineMetrics()
        publisher = EmbeddingPublisher(
            PublishConfig(redis_url=redis_url, namespace=tag, publish_every_s=publish_every_s),
            metrics=metrics,
        )

        def on_batch(report) -> None:
            times = report.batch.times
            applied.append(report.applied_at - times)
            span[0] = min(span[0], report.applied_at - report.batch_s)
            span[1] = report.applied_at
            span[2] += report.step_s

        kafka = KafkaConfig(
            bootstrap=bootstrap,
            topic=topic,
            group=f"g-{topic}",
            session_timeout_ms=6000,
            heartbeat_interval_ms=1000,
            max_poll_records=args.max_batch,
        )

        def consume() -> None:
            try:
                out["summary"] = Pipeline(
                    trainer,
                    CheckpointStore(workdir / topic),
                    PipelineConfig(
                        checkpoint_every_events=args.checkpoint_every,
                        checkpoint_every_s=60.0,
                        max_batch=args.max_batch,
                        batch_timeout_ms=args.batch_timeout_ms,
                        lag_every_s=1.0,
                    ),
                    metrics=metrics,
                    on_batch=on_batch,
                    publisher=publisher,
                ).run(KafkaEventSource(kafka), stop=stop)
            except BaseException as exc:  # reported by the caller
                out["error"] = exc
                publisher.close()

        thread = threading.Thread(target=consume, name="engine")
        thread.start()
        deadline = time.monotonic() + 60
        while metrics.total_lag() is None:  # assigned and fetched once: ready
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the consumer did not get its partitions: {out.get('error')}")
            time.sleep(0.05)
        log.info("%s: consumer ready; producing %d events at %.0f/s", tag, count, args.rate)
        client.stdin.write("go\n")
        client.stdin.flush()
        rc = client.wait(args.seconds * 3 + args.tail_timeout + 60)
        if rc != 0:
            raise RuntimeError(f"the client process exited with {rc}")
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
        stop.set()
        if thread is not None:
            thread.join(120)
    if "error" in out:
        raise RuntimeError(f"the consumer failed: {out['error']!r}") from out["error"]

    produced = json.loads(Path(str(data_path) + ".json").read_text())
    with np.load(data_path) as data:
        fresh = _freshness(data)
        send_t = data["send_t"]
    fresh_all = fresh.pop("_fresh")
    lat = np.concatenate(applied) if applied else np.zeros(0)
    summary = out.get("summary", {})
    results = publisher.results
    kinds = Counter(r.kind for r in results)
    durations = {
        kind: _pct(np.array([r.seconds for r in results if r.kind == kind]) * 1e3, (50, 99, 100))
        for kind in sorted(kinds)
    }
    # "delta chain of 2198 rows for 851" -> "delta chain" (the counts are in delta_rows)
    reasons = Counter(r.reason.split(" of ")[0] for r in results if r.kind == "full")
    fulls = [r for r in results if r.kind == "full"]
    delta_rows = np.array([r.rows for r in results if r.kind == "delta"], dtype=np.float64)
    # Freshness per 5 s window of send time: does it drift (the engine falling behind)?
    windows = []
    if send_t.size:
        edges = np.arange(send_t.min(), send_t.max() + 5.0, 5.0)
        for lo in edges:
            sel = (send_t >= lo) & (send_t < lo + 5.0) & ~np.isnan(fresh_all)
            if sel.any():
                windows.append(
                    {
                        "t0_s": float(lo - send_t.min()),
                        "p50_s": float(np.percentile(fresh_all[sel], 50)),
                        "p99_s": float(np.percentile(fresh_all[sel], 99)),
                    }
                )
    row = {
        "model": model,
        "publish_every_s": publish_every_s,
        "rate": args.rate,
        "produced": produced["produced"],
        "producer_rate": produced["produced"] / produced["produce_s"],
        "engine_events": int(lat.size),
        "engine_events_per_s": float(lat.size / (span[1] - span[0]))
        if span[1] > span[0]
        else float("nan"),
        "capacity_events_per_s": float(lat.size / span[2]) if span[2] > 0 else float("nan"),
        **fresh,
        "learned_s": _pct(lat),
        "publishes": dict(kinds),
        "full_reasons": dict(reasons),
        "publish_ms": durations,
        "delta_rows": _pct(delta_rows, (50, 100)),
        "table_rows_at_last_full": fulls[-1].rows if fulls else None,
        "publish_errors": publisher.errors,
        "pointer_polls": produced["pointer_polls"],
        "user_state_reads": produced["user_state_reads"],
        "windows_5s": windows,
        "checkpoints": summary.get("checkpoints"),
        "dead_letters": summary.get("dead_letters_total"),
    }
    row["target_met"] = bool(
        row["freshness_s"]["p99"] <= TARGET_P99_S and row["never_visible"] == 0
    )
    return row


def _table(rows: list[dict]) -> str:
    head = (
        "| model | publish_every | events | ev/s sent / engine "
        "| freshness p50 / p95 / p99 / max (s) | learned p50 / p99 (s) | send→published p99 "
        "| user fresh p50 / p99 (n) | "
        "user reflects p50 / p99 (n) | publishes (full/delta/none) |"
    )
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        f, le, u, ui = r["freshness_s"], r["learned_s"], r["user_fresh_s"], r["user_reflects_s"]
        p = r["publishes"]
        lines.append(
            f"| {r['model']} | {r['publish_every_s']} s | {r['events']} | "
            f"{r['producer_rate']:.0f} / {r['engine_events_per_s']:.0f} | "
            f"{f['p50']:.3f} / {f['p95']:.3f} / {f['p99']:.3f} / {f['max']:.3f} | "
            f"{le['p50']:.3f} / {le['p99']:.3f} | {r['send_to_published_s']['p99']:.3f} | "
            f"{u['p50']:.3f} / {u['p99']:.3f} ({u['n']}/{r['user_samples']}) | "
            f"{ui['p50']:.3f} / {ui['p99']:.3f} ({ui['n']}) | "
            f"{p.get('full', 0)}/{p.get('delta', 0)}/{p.get('none', 0)} |"
        )
    return "\n".join(lines)


def _ratios(rows: list[dict]) -> dict:
    ratios = {}
    by = {(r["model"], r["publish_every_s"]): r for r in rows}
    for (model, pe), r in by.items():
        base = by.get(("mf", pe))
        if model != "mf" and base is not None:
            ratios[f"{model}/mf@{pe}s"] = {
                q: r["freshness_s"][q] / base["freshness_s"][q] for q in ("p50", "p99")
            }
        slowest = max(p for m, p in by if m == model)
        if pe != slowest:
            other = by[(model, slowest)]
            ratios[f"{model}:{pe}s/{slowest}s"] = {
                q: r["freshness_s"][q] / other["freshness_s"][q] for q in ("p50", "p99")
            }
    return ratios


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="mf only, one publish interval, 10 s")
    parser.add_argument("--models", nargs="+", default=None, help="default mf sasrec (quick: mf)")
    parser.add_argument(
        "--publish-every",
        type=float,
        nargs="+",
        default=None,
        help="publish_every_s values (default 0.25 1.0; quick: 1.0)",
    )
    parser.add_argument("--optimizer", default="sevo-adamw", choices=["sevo-adamw", "adamw"])
    parser.add_argument("--rate", type=float, default=1000.0, help="events/s")
    parser.add_argument(
        "--seconds", type=float, default=None, help="production time (30; quick 10)"
    )
    parser.add_argument("--partitions", type=int, default=1)
    parser.add_argument("--max-batch", type=int, default=500)
    parser.add_argument("--batch-timeout-ms", type=int, default=20)
    parser.add_argument("--checkpoint-every", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the engine")
    parser.add_argument("--user-samples", type=int, default=50)
    parser.add_argument("--poll-ms", type=float, default=5.0, help="reader poll interval")
    parser.add_argument(
        "--tail-timeout", type=float, default=20.0, help="max wait for the last events to show"
    )
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--role", choices=["bench", "client"], default="bench", help=argparse.SUPPRESS
    )
    parser.add_argument("--bootstrap", help=argparse.SUPPRESS)
    parser.add_argument("--topic", help=argparse.SUPPRESS)
    parser.add_argument("--redis-url", help=argparse.SUPPRESS)
    parser.add_argument("--namespace", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role == "client":
        return _client(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)
    args.models = args.models or (["mf"] if args.quick else ["mf", "sasrec"])
    args.publish_every = args.publish_every or ([1.0] if args.quick else [0.25, 1.0])
    if args.seconds is None:
        args.seconds = 10.0 if args.quick else 30.0
    if args.out is None:
        name = "freshness-quick.json" if args.quick else "freshness.json"
        args.out = ROOT / "benchmarks/results" / name

    import torch

    from devtools.services import RedisService, TansuService, free_port

    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-freshness-") as tmp:
        broker = TansuService(free_port(), Path(tmp) / "tansu")
        redis_service = RedisService(free_port(), Path(tmp) / "redis")
        try:
            broker.start()
            redis_service.start()
            for model in args.models:
                for every in args.publish_every:
                    log.info(
                        "%s, publish every %.2f s: %.0f events/s for %.0f s",
                        model,
                        every,
                        args.rate,
                        args.seconds,
                    )
                    row = _measure(
                        broker.bootstrap, redis_service.url, model, every, args, Path(tmp)
                    )
                    rows.append(row)
                    log.info(
                        "%s @ %.2f s: freshness %s, publishes %s",
                        model,
                        every,
                        {k: round(v, 3) for k, v in row["freshness_s"].items()},
                        row["publishes"],
                    )
        finally:
            redis_service.stop()
            broker.stop()
    ratios = _ratios(rows)
    report = {
        "benchmark": "freshness: kafka send -> pointer covering the event seen in redis",
        "settings": {
            "rate": args.rate,
            "seconds": args.seconds,
            "models": args.models,
            "publish_every_s": args.publish_every,
            "optimizer": args.optimizer,
            "partitions": args.partitions,
            "max_batch": args.max_batch,
            "batch_timeout_ms": args.batch_timeout_ms,
            "checkpoint_every": args.checkpoint_every,
            "torch_threads": args.threads,
            "user_samples": args.user_samples,
            "poll_ms": args.poll_ms,
            "quick": args.quick,
            "publisher": "PublishConfig defaults (full_every_s 300, delta_tolerance 1e-3)",
            "services": "tansu (memory storage) + redis-server, loopback",
        },
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpus": os.cpu_count(),
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
        },
        "target": {"freshness_p99_s": TARGET_P99_S, "at_rate": 1000.0},
        "runs": rows,
        "ratios": ratios,
    }
    print(_table(rows))
    for name, r in ratios.items():
        print(f"{name}: freshness p50 x{r['p50']:.2f}, p99 x{r['p99']:.2f}")
    for r in rows:
        print(
            f"target {r['model']} @ {r['publish_every_s']} s: p99 "
            f"{r['freshness_s']['p99']:.3f} s <= {TARGET_P99_S} s: {r['target_met']}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
