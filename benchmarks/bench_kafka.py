"""End-to-end latency through Kafka: production → effect in a checkpointable state.

A producer process publishes ML-100K events (in ``sevo produce`` order) at a fixed rate, each
stamped with the wall clock at the moment it is handed to the Kafka client (its event
``timestamp``); the engine consumes them with :class:`streaming.pipeline.Pipeline` on a Kafka
source (the code
behind ``sevo run``: micro-batches, dead-letter handling, periodic checkpoints + commits) and,
for every event, records ``applied_at - timestamp`` where ``applied_at`` is when
``learn_many`` returned for its batch — from then on the event is in the state the next
checkpoint writes. Each latency splits into *transport* (producer linger, broker, fetch wait,
micro-batch fill: when the batch was handed to the engine) and *processing* (validation +
``learn_many``). Per model it also reports the share of the consumer's wall time spent in
``learn_many`` and in the optimizer steps alone. MF is the peer SASRec is compared with
(ratios in the table).

The broker is a fresh Tansu on a free loopback port; producer and engine run on this machine,
so both use the same clock. The consumer joins before production starts (join time is not
counted).

Usage::

    python benchmarks/bench_kafka.py                 # 1000 events/s for 30 s, MF and SASRec
    python benchmarks/bench_kafka.py --quick         # 1000 events/s for 5 s
    python benchmarks/bench_kafka.py --models sasrec --rate 2000 --seconds 20
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streaming.events import Event  # noqa: E402

log = logging.getLogger("bench_kafka")


# ---------------------------------------------------------------------- the producer process
def _produce(bootstrap: str, topic: str, rate: float, count: int) -> int:
    """Wait for a line on stdin, then produce ``count`` ML-100K events at ``rate``/s, each
    stamped with the send time."""
    from streaming.kafka_client import produce_events
    from streaming.sources.log import LogSource

    batch = LogSource("ml-100k", batch_size=count, limit=count).next_batch()
    pairs = list(zip(batch.users.tolist(), batch.items.tolist()))
    while len(pairs) < count:  # more than ML-100K has: go round again
        pairs.extend(pairs[: count - len(pairs)])
    print("ready", flush=True)
    sys.stdin.readline()

    def events():
        for user, item in pairs:
            yield Event(user, item, time.time())

    start = time.perf_counter()
    n = produce_events(bootstrap, topic, events(), rate=rate)
    print(json.dumps({"produced": n, "seconds": time.perf_counter() - start}), flush=True)
    return 0


# ---------------------------------------------------------------------- one measured run
def _measure(
    bootstrap: str, model: str, batch_timeout_ms: int, args: argparse.Namespace, workdir: Path
) -> dict:
    import torch

    from engine.online import OnlineConfig, OnlineTrainer
    from streaming.checkpoint import CheckpointStore
    from streaming.config import PipelineConfig
    from streaming.kafka_client import ensure_topic
    from streaming.metrics import EngineMetrics
    from streaming.pipeline import Pipeline
    from streaming.sources.kafka import KafkaConfig, KafkaEventSource

    torch.set_num_threads(args.threads)
    count = int(args.rate * args.seconds)
    topic = f"bench-{model}-{batch_timeout_ms}-{int(time.time() * 1000)}"
    ensure_topic(bootstrap, topic, partitions=1)
    producer = subprocess.Popen(
        [
            *(sys.executable, __file__, "--role", "produce"),
            *("--bootstrap", bootstrap, "--topic", topic),
            *("--rate", str(args.rate), "--count", str(count)),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert producer.stdout.readline().strip() == "ready"

    # CLI defaults of `sevo run` (and `sevo replay`'s trainer defaults).
    config = OnlineConfig(model=model, optimizer=args.optimizer, lr=3e-3, steps_per_batch=2)
    trainer = OnlineTrainer(config)
    metrics = EngineMetrics()
    stop = threading.Event()
    latency, transport, sizes = [], [], []
    step_s = train_s = 0.0
    first_fetch = last_applied = None

    def on_batch(report) -> None:
        nonlocal step_s, train_s, first_fetch, last_applied
        fetched = report.applied_at - report.batch_s
        times = report.batch.times
        latency.append(report.applied_at - times)
        transport.append(fetched - times)
        sizes.append(report.batch.records)
        step_s += report.step_s
        if report.stats is not None:
            train_s += report.stats["seconds"]["train"]
        first_fetch = fetched if first_fetch is None else first_fetch
        last_applied = report.applied_at
        if sum(sizes) >= count:
            stop.set()

    kafka = KafkaConfig(
        bootstrap=bootstrap,
        topic=topic,
        group=f"g-{topic}",
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
        max_poll_records=args.max_batch,
    )
    out: dict = {}

    def consume() -> None:
        out["summary"] = Pipeline(
            trainer,
            CheckpointStore(workdir / topic),
            PipelineConfig(
                checkpoint_every_events=args.checkpoint_every,
                checkpoint_every_s=60.0,
                max_batch=args.max_batch,
                batch_timeout_ms=batch_timeout_ms,
                lag_every_s=1.0,
            ),
            metrics=metrics,
            on_batch=on_batch,
        ).run(KafkaEventSource(kafka), stop=stop)

    thread = threading.Thread(target=consume, name="engine")
    thread.start()
    deadline = time.monotonic() + 60
    while metrics.total_lag() is None:  # assigned and fetched once: ready
        if not thread.is_alive() or time.monotonic() > deadline:
            producer.kill()
            raise RuntimeError("the consumer did not get its partition")
        time.sleep(0.05)
    producer.stdin.write("go\n")
    producer.stdin.flush()
    thread.join(args.seconds * 10 + 120)
    if thread.is_alive():
        stop.set()
        thread.join()
    produced = json.loads(producer.stdout.readline())
    producer.wait(30)

    lat = np.concatenate(latency) if latency else np.zeros(0)
    tra = np.concatenate(transport) if transport else np.zeros(0)
    wall = (last_applied - first_fetch) if last_applied is not None else float("nan")
    summary = out.get("summary", {})

    def pct(x: np.ndarray, q: float) -> float:
        return float(np.percentile(x, q) * 1000) if x.size else float("nan")

    return {
        "model": model,
        "optimizer": args.optimizer,
        "batch_timeout_ms": batch_timeout_ms,
        "events": int(lat.size),
        "produced": produced["produced"],
        "producer_rate": produced["produced"] / produced["seconds"],
        "latency_ms": {
            "p50": pct(lat, 50),
            "p90": pct(lat, 90),
            "p99": pct(lat, 99),
            "max": pct(lat, 100),
        },
        "transport_ms": {"p50": pct(tra, 50), "p99": pct(tra, 99)},
        "processing_ms": {"p50": pct(lat - tra, 50), "p99": pct(lat - tra, 99)},
        "batches": len(sizes),
        "mean_batch": float(np.mean(sizes)) if sizes else float("nan"),
        "consumer_wall_s": wall,
        "learn_many_s": step_s,
        "optimizer_steps_s": train_s,
        "learn_many_share": step_s / wall if wall > 0 else float("nan"),
        "optimizer_steps_share": train_s / wall if wall > 0 else float("nan"),
        "capacity_events_per_s": lat.size / step_s if step_s > 0 else float("nan"),
        "checkpoints": summary.get("checkpoints"),
        "checkpoint_s": summary.get("seconds", {}).get("checkpoint"),
        "dead_letters": summary.get("dead_letters_total"),
    }


def _table(rows: list[dict]) -> str:
    head = (
        "| model | batch timeout | events | latency p50 / p99 / max (ms) | transport p50 / p99 | "
        "processing p50 / p99 | learn_many share | steps share | capacity ev/s |"
    )
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        lat, tra, pro = r["latency_ms"], r["transport_ms"], r["processing_ms"]
        lines.append(
            f"| {r['model']} | {r['batch_timeout_ms']} ms | {r['events']} | "
            f"{lat['p50']:.1f} / {lat['p99']:.1f} / "
            f"{lat['max']:.0f} | {tra['p50']:.1f} / {tra['p99']:.1f} | {pro['p50']:.1f} / "
            f"{pro['p99']:.1f} | {r['learn_many_share']:.1%} | {r['optimizer_steps_share']:.1%} | "
            f"{r['capacity_events_per_s']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 s per model")
    parser.add_argument("--models", nargs="+", default=["mf", "sasrec"])
    parser.add_argument("--optimizer", default="sevo-adamw", choices=["sevo-adamw", "adamw"])
    parser.add_argument("--rate", type=float, default=1000.0, help="events/s")
    parser.add_argument("--seconds", type=float, default=30.0, help="production time per model")
    parser.add_argument("--max-batch", type=int, default=500)
    parser.add_argument(
        "--batch-timeout-ms",
        type=int,
        nargs="+",
        default=[100, 20],
        help="micro-batch time bounds to measure (100 = the sevo run default)",
    )
    parser.add_argument("--checkpoint-every", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the engine")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/kafka.json")
    parser.add_argument(
        "--role", choices=["bench", "produce"], default="bench", help=argparse.SUPPRESS
    )
    parser.add_argument("--bootstrap", help=argparse.SUPPRESS)
    parser.add_argument("--topic", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role == "produce":
        return _produce(args.bootstrap, args.topic, args.rate, args.count)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)
    if args.quick:
        args.seconds = min(args.seconds, 5.0)

    import torch

    from devtools.services import TansuService, free_port

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-kafka-") as tmp:
        broker = TansuService(free_port(), Path(tmp) / "tansu")
        broker.start()
        try:
            for timeout_ms in args.batch_timeout_ms:
                for model in args.models:
                    log.info(
                        "%s, batch timeout %d ms: %.0f events/s for %.0f s",
                        model,
                        timeout_ms,
                        args.rate,
                        args.seconds,
                    )
                    rows.append(_measure(broker.bootstrap, model, timeout_ms, args, Path(tmp)))
                    log.info("%s: %s", model, rows[-1])
        finally:
            broker.stop()
    peers = {r["batch_timeout_ms"]: r for r in rows if r["model"] == "mf"}
    ratios = {}
    for r in rows:
        base = peers.get(r["batch_timeout_ms"])
        if base is not None and r is not base:
            ratios[f"{r['model']}/mf@{r['batch_timeout_ms']}ms"] = {
                "latency_p50": r["latency_ms"]["p50"] / base["latency_ms"]["p50"],
                "latency_p99": r["latency_ms"]["p99"] / base["latency_ms"]["p99"],
                "learn_many_share": r["learn_many_share"] / base["learn_many_share"],
            }
    report = {
        "benchmark": "kafka end-to-end: produce -> learn_many returned",
        "settings": {
            "rate": args.rate,
            "seconds": args.seconds,
            "max_batch": args.max_batch,
            "batch_timeout_ms": args.batch_timeout_ms,
            "checkpoint_every": args.checkpoint_every,
            "optimizer": args.optimizer,
            "torch_threads": args.threads,
            "quick": args.quick,
            "broker": "tansu (memory storage), loopback",
        },
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpus": __import__("os").cpu_count(),
        },
        "runs": rows,
        "ratios": ratios,
    }
    table = _table(rows)
    print(table)
    for name, r in ratios.items():
        print(
            f"{name}: latency p50 x{r['latency_p50']:.2f}, p99 x{r['latency_p99']:.2f}, "
            f"learn_many share x{r['learn_many_share']:.2f}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
