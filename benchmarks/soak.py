"""Soak: a fixed event rate through the real broker → ``sevo run`` → Redis for a long time.

Starts a Tansu broker and a ``redis-server`` on free loopback ports, creates a topic, and runs
``sevo run`` as a subprocess (the command a deployment runs: SASRec with SEvo-AdamW at its
defaults, ``--threads 1``, ``--prequential``, publishing to Redis every second, a checkpoint
directory, the Prometheus exporter on a free port). A producer thread in this process sends
events at ``--rate`` per second for ``--minutes``, each stamped with the wall clock at send time
(so the engine's freshness histogram measures send → learned, including the producer's linger).

The producer lingers ``--linger-ms`` (default 1 s) before it closes a record batch. The test
broker (Tansu with its in-memory storage) pays per produce and per fetch request a cost that
grows with the number of record batches the topic holds; with one batch per event or two (a
5 ms linger at a few hundred events/s) that cost, multiplied by the consumer's fetch rate,
saturates the broker within minutes and the consumer lag grows for the broker's sake, not the
engine's. Fewer, larger batches keep the broker out of the measurement for the length of a
soak; its CPU share is sampled (``broker_cpu_pct``) so a reader can check. (A deployment runs
Apache Kafka, not Tansu.)

The stream (``--data``):

* ``ml-100k`` (default): MovieLens-100K in ``sevo produce`` order, cycled. The catalogue is
  fixed (943 users, 1,682 items); at the default rate every id has been seen after the first
  pass over the log, so in the second half of a full run no state should grow with new ids and
  a rising RSS is growth per event, not per id.
* ``synthetic``: :func:`engine.data.synthetic.drifting_stream` over ``--users`` users and
  ``--items`` items (Zipf popularity), so new ids keep appearing through the run; its RSS
  slope then includes the legitimate growth of the tables.

Every ``--sample-every`` seconds a sampler records: the engine's RSS and CPU time
(``/proc/PID``), the broker's and Redis' RSS, and from the engine's ``/metrics``: p50/p99 of
``sevo_batch_seconds`` and ``sevo_step_seconds`` and p50/p99 of
``sevo_event_freshness_seconds`` over the interval (from the histograms' bucket deltas, linear
within a bucket, so their resolution is the bucket grid) and the exact means of
``learn_many`` time and freshness (from the histograms' sums and counts), the summed
``sevo_consumer_lag``, ``sevo_events_applied_total``, ``sevo_publish_age_seconds``,
``sevo_redis_up``, ``sevo_broker_up``; and the newest line of the run's ``metrics.jsonl``
(items, users). After production the run waits until every event is applied, stops the engine
with SIGTERM and records its exit status.

Trend check (decided before the first full run, not tuned afterwards): for each series the
second half of the production window is cut into 15 equal time bins, a least-squares line is
fitted to the bin means (bins average out the sampling noise and most of its autocorrelation),
and the verdict is **upward trend** when both (a) the slope's 95% confidence interval (Student
t, bins − 2 degrees of freedom) lies above zero and (b) the fitted line rises over the second
half by more than a relative threshold of its value at the start of the half (2% for RSS, 10%
for the latency, freshness and lag series; the denominator is at least 1 MiB, 1 ms, 10 ms or 1
record, so near-zero series are not judged by noise); otherwise **no upward trend**.

Writes ``benchmarks/results/soak.{csv,json,png}`` (``--quick``: ``soak-quick.*``); the PNG has
four panels over time: RSS, p99 latency, freshness, lag.

Usage::

    python benchmarks/soak.py                 # 30 minutes at 200 events/s
    python benchmarks/soak.py --quick         # 2 minutes at the same rate (CI-sized)
    python benchmarks/soak.py --minutes 60 --rate 300 --data synthetic
    python benchmarks/soak.py --replot        # redraw soak.png from soak.csv
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

log = logging.getLogger("soak")

# series judged by the trend check: column -> (label, unit, per-hour unit, threshold, floor)
TREND_SERIES = {
    "rss_mib": ("engine RSS", "MiB", "MiB/h", 0.02, 1.0),
    "batch_p99_ms": ("micro-batch p99", "ms", "ms/h", 0.10, 1.0),
    "step_p99_ms": ("learn_many p99", "ms", "ms/h", 0.10, 1.0),
    "step_mean_ms": ("learn_many mean", "ms", "ms/h", 0.10, 1.0),
    "freshness_mean_s": ("freshness mean", "s", "s/h", 0.10, 0.01),
    "freshness_p50_s": ("freshness p50", "s", "s/h", 0.10, 0.01),
    "freshness_p99_s": ("freshness p99", "s", "s/h", 0.10, 0.01),
    "lag": ("consumer lag", "records", "records/h", 0.10, 1.0),
}
TREND_BINS = 15

COLUMNS = [
    "t_s",
    "rss_mib",
    "engine_cpu_pct",
    "batch_p50_ms",
    "batch_p99_ms",
    "step_p50_ms",
    "step_p99_ms",
    "step_mean_ms",
    "freshness_mean_s",
    "freshness_p50_s",
    "freshness_p99_s",
    "lag",
    "events_applied",
    "events_per_s",
    "produced",
    "publish_age_s",
    "redis_up",
    "broker_up",
    "items",
    "users",
    "graph_nnz",
    "broker_rss_mib",
    "broker_cpu_pct",
    "redis_rss_mib",
    "load1",
    "producing",
]


# ---------------------------------------------------------------------- the stream
def _pairs(args: argparse.Namespace, count: int) -> tuple[list[str], list[str]]:
    """``count`` (user, item) pairs of the chosen stream, cycled if it is shorter."""
    if args.data == "ml-100k":
        from streaming.sources.log import LogSource

        n = min(count, 100_000)
        batch = LogSource("ml-100k", batch_size=n, limit=n).next_batch()
        users, items = batch.users.tolist(), batch.items.tolist()
    else:
        from engine.data.synthetic import drifting_stream

        inter = drifting_stream(0.0, seed=0, n_events=count, n_users=args.users, n_items=args.items)
        users = inter.user_ids[inter.users].tolist()  # external ids "u..", "i.."
        items = inter.item_ids[inter.items].tolist()
    users, items = [str(u) for u in users], [str(i) for i in items]
    base = len(users)
    while len(users) < count:
        take = min(base, count - len(users))
        users.extend(users[:take])
        items.extend(items[:take])
    return users[:count], items[:count]


def _produce(
    bootstrap: str, topic: str, users, items, rate: float, linger_ms: int, out: dict
) -> None:
    """Send the events at ``rate``/s (paced on the send count, as ``sevo produce``), each
    stamped with the wall clock when it is handed to the client; key = user id."""
    from kafka import KafkaProducer

    from streaming.events import Event, encode_event

    producer = KafkaProducer(
        bootstrap_servers=[bootstrap],
        client_id="soak-producer",
        acks="all",
        linger_ms=linger_ms,
        batch_size=1 << 20,  # the linger, not the size, closes a batch
    )
    failures: list[BaseException] = []
    start = time.perf_counter()
    try:
        for i, (user, item) in enumerate(zip(users, items)):
            ahead = start + i / rate - time.perf_counter()
            if ahead > 0:
                time.sleep(ahead)
            future = producer.send(
                topic, value=encode_event(Event(user, item, time.time())), key=user.encode()
            )
            future.add_errback(failures.append)
            out["sent"] = i + 1
        producer.flush(120)
    except BaseException as exc:  # reported in the summary
        out["error"] = repr(exc)
    finally:
        producer.close(timeout=10)
    out["seconds"] = time.perf_counter() - start
    out["failures"] = len(failures)
    out["produced"] = out.get("sent", 0) - len(failures)


# ---------------------------------------------------------------------- sampling
_TICK = os.sysconf("SC_CLK_TCK")


def _rss_mib(pid: int | None) -> float:
    if pid is None:
        return math.nan
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return math.nan


def _cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK  # utime + stime
    except (OSError, IndexError, ValueError):
        return math.nan


def _scrape(url: str) -> dict[str, list[tuple[dict, float]]]:
    """Metric samples by name: ``[(labels, value), ...]``."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode("utf-8")
    out: dict[str, list[tuple[dict, float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((dict(s.labels), float(s.value)))
    return out


def _one(samples: dict, name: str) -> float:
    values = samples.get(name)
    return values[0][1] if values else math.nan


def _buckets(samples: dict, name: str) -> np.ndarray:
    """Cumulative bucket counts of histogram ``name`` as rows (upper bound, count)."""
    rows = [(float(labels["le"]), v) for labels, v in samples.get(f"{name}_bucket", [])]
    return np.array(sorted(rows), dtype=np.float64).reshape(-1, 2)


def _quantile(now: np.ndarray, before: np.ndarray | None, q: float) -> float:
    """Quantile ``q`` of the observations between two scrapes of a cumulative histogram,
    linear within the bucket (NaN: no observations; the +Inf bucket gives its lower bound)."""
    if now.size == 0:
        return math.nan
    bounds, cum = now[:, 0], now[:, 1].copy()
    if before is not None and before.shape == now.shape:
        cum -= before[:, 1]
    total = cum[-1]
    if total <= 0:
        return math.nan
    rank = q * total
    k = int(np.searchsorted(cum, rank, side="left"))
    lo = 0.0 if k == 0 else bounds[k - 1]
    if math.isinf(bounds[k]):
        return float(lo)
    below = 0.0 if k == 0 else cum[k - 1]
    inside = cum[k] - below
    frac = (rank - below) / inside if inside > 0 else 1.0
    return float(lo + frac * (bounds[k] - lo))


def _last_jsonl(path: Path) -> dict:
    """The newest complete sample of the engine's ``metrics.jsonl`` ({} if none)."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 8192))
            lines = f.read().splitlines()
    except OSError:
        return {}
    for line in reversed(lines):
        try:
            sample = json.loads(line)
        except ValueError:
            continue
        if isinstance(sample, dict):
            return sample
    return {}


class Sampler:
    def __init__(self, engine_pid: int, broker_pid, redis_pid, metrics_url: str, jsonl: Path):
        self.pid, self.broker_pid, self.redis_pid = engine_pid, broker_pid, redis_pid
        self.url, self.jsonl = metrics_url, jsonl
        self.prev: dict | None = None
        self.t0 = time.monotonic()

    def sample(self, produced: int) -> dict:
        now = time.monotonic()
        cpu, broker_cpu = _cpu_s(self.pid), _cpu_s(self.broker_pid)
        scraped = _scrape(self.url)
        hist = {
            name: _buckets(scraped, f"sevo_{name}")
            for name in ("batch_seconds", "step_seconds", "event_freshness_seconds")
        }
        applied = _one(scraped, "sevo_events_applied_total")
        prev = self.prev
        dt = now - prev["mono"] if prev else math.nan

        def q(name: str, p: float, scale: float) -> float:
            return scale * _quantile(hist[name], prev["hist"][name] if prev else None, p)

        def mean(name: str, scale: float) -> float:
            n = _one(scraped, f"sevo_{name}_count") - (prev[name][0] if prev else 0.0)
            total = _one(scraped, f"sevo_{name}_sum") - (prev[name][1] if prev else 0.0)
            return scale * total / n if n > 0 else math.nan

        sums = {
            name: (_one(scraped, f"sevo_{name}_count"), _one(scraped, f"sevo_{name}_sum"))
            for name in ("step_seconds", "event_freshness_seconds")
        }
        lags = scraped.get("sevo_consumer_lag", [])
        tail = _last_jsonl(self.jsonl)
        row = {
            "t_s": now - self.t0,
            "rss_mib": _rss_mib(self.pid),
            "engine_cpu_pct": 100 * (cpu - prev["cpu"]) / dt if prev else math.nan,
            "batch_p50_ms": q("batch_seconds", 0.50, 1e3),
            "batch_p99_ms": q("batch_seconds", 0.99, 1e3),
            "step_p50_ms": q("step_seconds", 0.50, 1e3),
            "step_p99_ms": q("step_seconds", 0.99, 1e3),
            "step_mean_ms": mean("step_seconds", 1e3),
            "freshness_mean_s": mean("event_freshness_seconds", 1.0),
            "freshness_p50_s": q("event_freshness_seconds", 0.50, 1.0),
            "freshness_p99_s": q("event_freshness_seconds", 0.99, 1.0),
            "lag": sum(v for _, v in lags) if lags else math.nan,
            "events_applied": applied,
            "events_per_s": (applied - prev["applied"]) / dt if prev else math.nan,
            "produced": produced,
            "publish_age_s": _one(scraped, "sevo_publish_age_seconds"),
            "redis_up": _one(scraped, "sevo_redis_up"),
            "broker_up": _one(scraped, "sevo_broker_up"),
            "items": tail.get("num_items", math.nan),
            "users": tail.get("num_users", math.nan),
            "graph_nnz": _one(scraped, "sevo_graph_nnz"),
            "broker_rss_mib": _rss_mib(self.broker_pid),
            "broker_cpu_pct": 100 * (broker_cpu - prev["broker_cpu"]) / dt if prev else math.nan,
            "redis_rss_mib": _rss_mib(self.redis_pid),
            "load1": os.getloadavg()[0],
            "producing": 0,
        }
        self.prev = {
            "mono": now,
            "cpu": cpu,
            "broker_cpu": broker_cpu,
            "hist": hist,
            "applied": applied,
            **sums,
        }
        return row


# ---------------------------------------------------------------------- trend check
def _trend(t_s: np.ndarray, y: np.ndarray, threshold: float, floor: float) -> dict:
    """The criterion of the module docstring on the second half of (t, y)."""
    from scipy import stats

    ok = np.isfinite(y)
    t_s, y = t_s[ok], y[ok]
    if t_s.size < 4:
        return {"verdict": "too few samples"}
    half = t_s[0] + (t_s[-1] - t_s[0]) / 2
    edges = np.linspace(half, t_s[-1], TREND_BINS + 1)
    idx = np.clip(np.searchsorted(edges, t_s, side="right") - 1, 0, TREND_BINS - 1)
    sel = t_s >= half
    bt = np.array(
        [t_s[sel & (idx == b)].mean() for b in range(TREND_BINS) if (sel & (idx == b)).any()]
    )
    by = np.array(
        [y[sel & (idx == b)].mean() for b in range(TREND_BINS) if (sel & (idx == b)).any()]
    )
    if bt.size < 4:
        return {"verdict": "too few samples"}
    hours = bt / 3600.0
    fit = stats.linregress(hours, by)
    tcrit = stats.t.ppf(0.975, bt.size - 2)
    ci = (fit.slope - tcrit * fit.stderr, fit.slope + tcrit * fit.stderr)
    span_h = (t_s[-1] - half) / 3600.0
    start = fit.intercept + fit.slope * half / 3600.0
    rise = fit.slope * span_h
    relative = rise / max(abs(start), floor)
    upward = bool(ci[0] > 0 and relative > threshold)
    return {
        "bins": int(bt.size),
        "slope_per_hour": float(fit.slope),
        "slope_ci95": [float(ci[0]), float(ci[1])],
        "fit_start": float(start),
        "fit_end": float(start + rise),
        "rise_over_second_half": float(rise),
        "relative_rise": float(relative),
        "threshold": threshold,
        "verdict": "upward trend" if upward else "no upward trend",
        "_line": (half, t_s[-1], float(start), float(start + rise)),
    }


def _edge_median(t_s: np.ndarray, y: np.ndarray, first: bool) -> float:
    """Median of the first or last 10% of the run (by time)."""
    ok = np.isfinite(y)
    t_s, y = t_s[ok], y[ok]
    if t_s.size == 0:
        return math.nan
    cut = t_s[0] + 0.1 * (t_s[-1] - t_s[0])
    sel = t_s <= cut if first else t_s >= t_s[-1] - 0.1 * (t_s[-1] - t_s[0])
    return float(np.median(y[sel]))


# ---------------------------------------------------------------------- plot
def _plot(rows: list[dict], trends: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.array([r["t_s"] for r in rows]) / 60.0
    col = {c: np.array([r[c] for r in rows], dtype=np.float64) for c in COLUMNS}
    produced = np.flatnonzero(col["producing"] > 0)
    stop = t[produced[-1]] if produced.size else None  # production ends; the drain follows
    fig, axes = plt.subplots(4, 1, figsize=(10, 11), sharex=True)
    panels = [
        ("engine RSS (MiB)", [("rss_mib", "RSS", "C0")]),
        (
            "latency per interval (ms)",
            [
                ("batch_p99_ms", "micro-batch p99", "C1"),
                ("step_p99_ms", "learn_many p99", "C2"),
                ("step_mean_ms", "learn_many mean", "C6"),
            ],
        ),
        (
            "freshness send → learned (s)",
            [
                ("freshness_p99_s", "p99", "C3"),
                ("freshness_p50_s", "p50", "C4"),
                ("freshness_mean_s", "mean", "C7"),
            ],
        ),
        ("consumer lag (records)", [("lag", "lag", "C5")]),
    ]
    for ax, (ylabel, series) in zip(axes, panels):
        for name, label, color in series:
            ax.plot(t, col[name], color=color, lw=0.9, label=label)
            tr = trends.get(name, {})
            line = tr.get("_line")
            if line:
                ax.plot(
                    [line[0] / 60, line[1] / 60],
                    [line[2], line[3]],
                    color="black",
                    ls="--",
                    lw=1.2,
                )
                ax.annotate(
                    f"{label}: {tr['slope_per_hour']:+.3g} {TREND_SERIES[name][2]}, "
                    f"{tr['verdict']}",
                    xy=(0.01, 0.97 - 0.13 * series.index((name, label, color))),
                    xycoords="axes fraction",
                    va="top",
                    fontsize=8,
                    color=color,
                )
        if stop is not None:
            ax.axvline(stop, color="grey", ls=":", lw=1)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if len(series) > 1:
            ax.legend(loc="upper right", fontsize=8)
        low, high = ax.get_ylim()
        ax.set_ylim(min(0.0, low), high * 1.25 if high > 0 else high)
    axes[-1].set_xlabel(
        "minutes since the engine joined (dashed: fit over the second half of production; "
        "dotted: production ends)"
    )
    fig.suptitle(
        title + "\np50/p99: from the engine's histogram buckets, linear within a bucket "
        "(bounds … 0.05, 0.1, 0.25, 0.5, 1, 2.5 s); means: exact",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _trends(rows: list[dict]) -> dict:
    """The trend check of every judged series, over the production window only (not the
    drain after it)."""
    window = [r for r in rows if r["producing"]]
    t = np.array([r["t_s"] for r in window], dtype=np.float64)
    trends = {}
    for name, (label, unit, per_h, threshold, floor) in TREND_SERIES.items():
        y = np.array([r[name] for r in window], dtype=np.float64)
        tr = _trend(t, y, threshold, floor)
        tr.update(
            label=label,
            unit=unit,
            slope_unit=per_h,
            first_10pct_median=_edge_median(t, y, True),
            last_10pct_median=_edge_median(t, y, False),
        )
        trends[name] = tr
    return trends


def _title(args: argparse.Namespace) -> str:
    return (
        f"soak: {args.model} (SEvo-AdamW), {args.rate:.0f} events/s for {args.minutes:g} min, "
        f"{args.data}, --threads {args.threads}, prequential {'on' if args.prequential else 'off'}"
        f", publish every {args.publish_every:g} s; {os.cpu_count()} shared cores"
    )


def replot(args: argparse.Namespace) -> int:
    """Redraw the PNG of an earlier run from its CSV (the same trend check)."""
    name = "soak-quick" if args.quick else "soak"
    with (args.out_dir / f"{name}.csv").open() as f:
        rows = [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]
    settings = json.loads((args.out_dir / f"{name}.json").read_text())["settings"]
    for key in ("minutes", "rate", "data", "model", "threads", "prequential"):
        setattr(args, key, settings[key])
    args.publish_every = settings["publish_every_s"]
    _plot(rows, _trends(rows), args.out_dir / f"{name}.png", _title(args))
    print(_table(_trends(rows)))
    return 0


# ---------------------------------------------------------------------- the run
def _engine_command(
    args: argparse.Namespace,
    bootstrap: str,
    redis_url: str,
    topic: str,
    ckpt: Path,
    metrics_port: int,
) -> list[str]:
    cmd = [
        *(sys.executable, "-m", "streaming.cli", "run"),
        *("--bootstrap", bootstrap, "--topic", topic, "--group", f"g-{topic}"),
        *("--checkpoint-dir", str(ckpt), "--model", args.model, "--threads", str(args.threads)),
        *("--metrics-port", str(metrics_port), "--redis-url", redis_url),
        *("--namespace", "soak", "--publish-every", str(args.publish_every)),
    ]
    if args.prequential:
        cmd.append("--prequential")
    return cmd


def run(args: argparse.Namespace) -> int:
    from devtools.services import RedisService, TansuService, free_port
    from streaming.kafka_client import ensure_topic

    seconds = args.minutes * 60.0
    count = round(args.rate * seconds)
    log.info("building the stream: %d events (%s)", count, args.data)
    users, items = _pairs(args, count)
    load_before = os.getloadavg()
    rows: list[dict] = []
    summary: dict = {}
    prod: dict = {"sent": 0}
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        tmp = Path(tmp)
        if args.workdir is not None:  # kept: the engine's log, checkpoints and metrics.jsonl
            tmp = args.workdir
            tmp.mkdir(parents=True, exist_ok=True)
        broker = TansuService(free_port(), tmp / "tansu")
        redis_service = RedisService(free_port(), tmp / "redis")
        engine = None
        engine_log = tmp / "engine.log"
        try:
            broker.start()
            redis_service.start()
            topic = f"soak-{int(time.time())}"
            ensure_topic(broker.bootstrap, topic, partitions=1)
            ckpt = tmp / "ckpt"
            port = free_port()
            cmd = _engine_command(args, broker.bootstrap, redis_service.url, topic, ckpt, port)
            log.info("engine: %s", " ".join(cmd))
            with engine_log.open("wb") as out:
                engine = subprocess.Popen(
                    cmd,
                    cwd=ROOT,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"},
                )
            url = f"http://127.0.0.1:{port}/metrics"
            deadline = time.monotonic() + 120
            while True:  # ready: the exporter answers and a lag was read (partition assigned)
                if engine.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"the engine did not start (exit {engine.poll()}):\n"
                        + engine_log.read_text()[-3000:]
                    )
                try:
                    if _scrape(url).get("sevo_consumer_lag"):
                        break
                except OSError:
                    pass
                time.sleep(0.2)
            sampler = Sampler(
                engine.pid, broker.proc.pid, redis_service.proc.pid, url, ckpt / "metrics.jsonl"
            )
            rows.append(sampler.sample(0))
            producer = threading.Thread(
                target=_produce,
                args=(broker.bootstrap, topic, users, items, args.rate, args.linger_ms, prod),
                name="producer",
                daemon=True,
            )
            producer.start()
            log.info("producing %.0f events/s for %.1f min", args.rate, args.minutes)
            next_t = time.monotonic()
            drain_deadline = None
            while True:
                next_t += args.sample_every
                time.sleep(max(0.0, next_t - time.monotonic()))
                if engine.poll() is not None:
                    summary["engine_died"] = True
                    log.error("the engine exited early with status %s", engine.returncode)
                    break
                producing = producer.is_alive()
                row = sampler.sample(prod.get("sent", 0))
                row["producing"] = int(producing)
                rows.append(row)
                if len(rows) % max(1, int(60 / args.sample_every)) == 0:
                    log.info(
                        "t=%.0f s sent %d applied %.0f rss %.0f MiB batch p99 %.0f ms "
                        "fresh p99 %.2f s lag %s cpu %.0f%% load %.1f",
                        row["t_s"],
                        row["produced"],
                        row["events_applied"],
                        row["rss_mib"],
                        row["batch_p99_ms"],
                        row["freshness_p99_s"],
                        row["lag"],
                        row["engine_cpu_pct"],
                        row["load1"],
                    )
                if not producer.is_alive():
                    drain_deadline = drain_deadline or time.monotonic() + 120
                    target = prod.get("produced", prod.get("sent", 0))
                    if row["events_applied"] >= target or time.monotonic() > drain_deadline:
                        break
            producer.join(60)
            if engine.poll() is None:
                engine.send_signal(signal.SIGTERM)
                try:
                    engine.wait(120)
                except subprocess.TimeoutExpired:
                    engine.kill()
                    engine.wait()
                    summary["engine_killed"] = True
            summary["engine_exit"] = engine.returncode
            summary["engine_log_tail"] = engine_log.read_text()[-2000:].splitlines()[-8:]
        finally:
            if engine is not None and engine.poll() is None:
                engine.kill()
                engine.wait()
            redis_service.stop()
            broker.stop()

    import torch

    window = [r for r in rows if r["producing"]]
    trends = _trends(rows)
    t = np.array([r["t_s"] for r in window], dtype=np.float64)
    half = t[0] + (t[-1] - t[0]) / 2 if t.size else 0.0
    in_half = [r for r in window if r["t_s"] >= half]
    last = rows[-1] if rows else {}
    summary.update(
        produced=prod.get("produced"),
        producer_seconds=prod.get("seconds"),
        producer_error=prod.get("error"),
        events_applied=last.get("events_applied"),
        samples=len(rows),
        # while producing (the sample before the first publish has redis_up 0)
        redis_up_min=float(np.nanmin([r["redis_up"] for r in window])) if window else None,
        broker_up_min=float(np.nanmin([r["broker_up"] for r in window])) if window else None,
        publish_age_max_s=float(np.nanmax([r["publish_age_s"] for r in window]))
        if window
        else None,
        engine_cpu_pct_median=float(np.nanmedian([r["engine_cpu_pct"] for r in rows]))
        if rows
        else None,
        load1_median=float(np.nanmedian([r["load1"] for r in rows])) if rows else None,
        catalogue_second_half={
            "items": [in_half[0]["items"], in_half[-1]["items"]] if in_half else None,
            "users": [in_half[0]["users"], in_half[-1]["users"]] if in_half else None,
        },
    )
    name = "soak-quick" if args.quick else "soak"
    out_dir = args.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / f"{name}.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    title = _title(args)
    _plot(rows, trends, out_dir / f"{name}.png", title)
    report = {
        "benchmark": "soak: fixed rate through tansu -> sevo run -> redis",
        "settings": {
            "minutes": args.minutes,
            "rate": args.rate,
            "data": args.data,
            "users": args.users if args.data == "synthetic" else None,
            "items": args.items if args.data == "synthetic" else None,
            "model": args.model,
            "threads": args.threads,
            "prequential": args.prequential,
            "publish_every_s": args.publish_every,
            "producer_linger_ms": args.linger_ms,
            "sample_every_s": args.sample_every,
            "quick": args.quick,
            "engine": "sevo run, defaults otherwise (max batch 500, batch timeout 100 ms, "
            "checkpoint every 10,000 records or 60 s)",
            "services": "tansu (memory storage) + redis-server, loopback",
        },
        "criterion": (
            f"second half in {TREND_BINS} time bins, OLS on bin means; upward trend iff the "
            "slope's 95% CI is above 0 and the fitted rise over the half exceeds the threshold "
            "relative to the fitted start value (floored)"
        ),
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpus": os.cpu_count(),
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
        },
        "summary": summary,
        "trends": {k: {kk: vv for kk, vv in v.items() if kk != "_line"} for k, v in trends.items()},
    }
    (out_dir / f"{name}.json").write_text(json.dumps(report, indent=1) + "\n")
    print(_table(trends))
    print(
        f"produced {summary['produced']}, applied {summary['events_applied']}, engine exit "
        f"{summary.get('engine_exit')}; wrote {out_dir / name}.{{csv,json,png}}"
    )
    ok = summary.get("engine_exit") == 0 and not summary.get("producer_error")
    return 0 if ok else 1


def _table(trends: dict) -> str:
    lines = [
        "| series | first 10% (median) | last 10% (median) | slope, 2nd half (95% CI) "
        "| fitted rise / start | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for tr in trends.values():
        if "slope_per_hour" not in tr:
            lines.append(f"| {tr['label']} | | | | | {tr['verdict']} |")
            continue
        lo, hi = tr["slope_ci95"]
        lines.append(
            f"| {tr['label']} ({tr['unit']}) | {tr['first_10pct_median']:.4g} | "
            f"{tr['last_10pct_median']:.4g} | {tr['slope_per_hour']:+.3g} {tr['slope_unit']} "
            f"({lo:+.3g} … {hi:+.3g}) | {tr['relative_rise']:+.1%} (limit "
            f"{tr['threshold']:.0%}) | {tr['verdict']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 minutes (CI-sized)")
    parser.add_argument("--minutes", type=float, default=None, help="production time (30)")
    parser.add_argument("--rate", type=float, default=200.0, help="events/s")
    parser.add_argument("--data", choices=["ml-100k", "synthetic"], default="ml-100k")
    parser.add_argument("--users", type=int, default=50_000, help="synthetic: users")
    parser.add_argument("--items", type=int, default=20_000, help="synthetic: items")
    parser.add_argument("--model", default="sasrec", choices=["sasrec", "gru4rec", "mf"])
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the engine")
    parser.add_argument(
        "--prequential",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the engine with --prequential",
    )
    parser.add_argument("--publish-every", type=float, default=1.0, help="seconds")
    parser.add_argument(
        "--linger-ms",
        type=int,
        default=1000,
        help="producer linger: the test broker's per-request cost grows with the number of "
        "record batches it stores, so the soak sends few, large batches",
    )
    parser.add_argument("--sample-every", type=float, default=None, help="seconds (5; quick 2)")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks/results")
    parser.add_argument(
        "--replot",
        action="store_true",
        help="only redraw the PNG from the CSV and JSON of an earlier run in --out-dir",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="keep the services' and engine's files here (default: a temporary directory)",
    )
    args = parser.parse_args(argv)
    if args.minutes is None:
        args.minutes = 2.0 if args.quick else 30.0
    if args.sample_every is None:
        args.sample_every = 2.0 if args.quick else 5.0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)
    # Stop cleanly (engine, broker and Redis stopped) on SIGTERM, and on SIGINT even when
    # started in the background by a shell that ignores it.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    return replot(args) if args.replot else run(args)


if __name__ == "__main__":
    raise SystemExit(main())
