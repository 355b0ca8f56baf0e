"""The fault table: every fault the engine is meant to survive, injected against real services.

Each scenario starts what it needs on free loopback ports with ``devtools.services`` (a Tansu
broker, with its log in a moto S3 server where it must survive a kill; Redis; a tmpfs for the
checkpoint directory) and stops it after. The engine runs as real ``sevo run`` / ``sevo replay``
subprocesses, as a user would run it. Per scenario the script records:

* what the engine did: exit codes, and the log lines it printed about the fault (quoted);
* events lost and doubled: the final checkpoint (``sevo inspect DIR --json``: events_applied,
  offsets, graph nnz and total weight, prequential count) against an uninterrupted reference
  run over the same input (one partition, so the order and the graph are the same):
  lost = expected - applied when positive; doubled = applied beyond the expected, or ranked
  (prequential count) beyond it;
* recovery time: from the end of the fault (service restarted, disk freed, process restarted)
  to the engine applying events again (``sevo_events_applied_total`` on ``--metrics-port``),
  publishing again (``sevo_redis_up``) or checkpointing again (a new durable checkpoint).

Scenarios: kill -9 of ``sevo run`` repeated at seeded random points; broker kill -9 + restart;
broker down at start (never back / back later); Redis kill -9 + restart (appendonly); a Redis
outage (60 s, shorter with ``--quick``); the checkpoint directory full / read-only mid-run and
at start (needs root: tmpfs mounts); a corrupt newest checkpoint; fuzzed records (random bytes,
bad JSON, wrong types, NaN/infinite/negative/huge weights and timestamps, ids over the parser's
limit, records over the size limit) mixed into a topic of valid events; SIGINT/SIGTERM of
``sevo replay`` and ``sevo run``.

Usage::

    python benchmarks/faults.py            # full: writes benchmarks/results/faults.{json,md}
    python benchmarks/faults.py --quick    # CI-sized: writes faults-quick.{json,md}
    python benchmarks/faults.py --only fuzz,kill9 --seed 3

Exit status 1 when a scenario's checks failed (the table says which and why).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import platform
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from devtools.disk import fill, read_only_over, tmpfs, unmount  # noqa: E402
from devtools.services import (  # noqa: E402
    RedisService,
    S3Service,
    TansuService,
    free_port,
)
from devtools.services import scrape_metrics as scrape  # noqa: E402
from engine.data.events import MAX_RECORD_BYTES, MAX_WEIGHT  # noqa: E402
from streaming.events import Event, encode_event  # noqa: E402
from streaming.kafka_client import (  # noqa: E402
    PRODUCER_MAX_REQUEST_BYTES,
    ensure_topic,
    produce_events,
)

TINY = ["--model", "mf", "--dim", "8", "--threads", "1"]
GROUP = ["--session-timeout-ms", "3000"]
# A broker keeping its log in S3 answers a fetch in tens of ms: a 10 ms fetch wait comes back
# empty (as in tests/streaming/test_broker_faults.py).
SLOW_FETCH = ["--fetch-max-wait-ms", "500"]
_STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ ")


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------- helpers


def ml100k_events(n: int) -> list[Event]:
    """The first ``n`` ML-100K events in ``sevo produce`` / ``sevo replay`` order."""
    from streaming.sources.log import LogSource

    batch = LogSource("ml-100k", batch_size=n, limit=n).next_batch()
    return [
        Event(u, i, t, w)
        for u, i, t, w in zip(
            batch.users.tolist(), batch.items.tolist(), batch.times.tolist(), batch.weights.tolist()
        )
    ]


def publishes_ok(metrics: dict[str, float]) -> float:
    return sum(v for k, v in metrics.items() if k.startswith("sevo_publishes_total") and 'ok"' in k)


def wait(predicate: Callable[[], bool], what: str, timeout_s: float = 120.0) -> float:
    """Poll ``predicate`` every 50 ms; returns the monotonic time it became true."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.05)
    return time.monotonic()


def newest_sidecar(directory: Path) -> dict | None:
    for path in sorted(Path(directory).glob("ckpt-*.json"), reverse=True):
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            continue
    return None


def inspect(directory: Path) -> dict:
    """``sevo inspect DIR --json`` (in-process)."""
    from streaming.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["inspect", str(directory), "--json"])
    if code != 0:
        raise RuntimeError(f"sevo inspect {directory} exited {code}")
    return json.loads(out.getvalue())


_ENGINES: list[Engine] = []  # every subprocess started, killed at exit if still running


class Engine:
    """One ``sevo run`` / ``sevo replay`` subprocess with its log file and metrics port."""

    def __init__(self, workdir: Path, name: str, argv: list[str], *, metrics: bool = True):
        self.port = free_port() if metrics else None
        self.log_path = workdir / f"{name}.log"
        extra = ["--metrics-port", str(self.port)] if metrics else []
        self.started = time.monotonic()
        self.wall_started = time.time()
        with self.log_path.open("wb") as fh:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "streaming.cli", *argv, *extra],
                cwd=ROOT,
                stdout=fh,
                stderr=subprocess.STDOUT,
            )
        _ENGINES.append(self)

    def metrics(self) -> dict[str, float]:
        return scrape(self.port) if self.port else {}

    def applied(self) -> float:
        return self.metrics().get("sevo_events_applied_total", 0.0)

    def applying_after(self, timeout_s: float = 60.0) -> float | None:
        """Seconds from the spawn until it applied an event (None: nothing came in time)."""
        try:
            t = wait(lambda: self.applied() > 0 or not self.alive(), "applying", timeout_s)
        except TimeoutError:
            return None
        return t - self.started if self.alive() or self.applied() > 0 else None

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_exit(self, timeout_s: float = 180.0) -> int:
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise TimeoutError(
                f"{self.log_path.name}: still running after {timeout_s:.0f} s"
            ) from None

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.alive():
            self.proc.kill()
            self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def lines(self, *patterns: str) -> list[str]:
        """Log lines containing any of ``patterns`` (timestamps stripped)."""
        return [
            _STAMP.sub("", line)
            for line in self.log().splitlines()
            if any(p in line for p in patterns)
        ]

    def first_line(self, *patterns: str) -> str | None:
        found = self.lines(*patterns)
        return found[0] if found else None

    def line_after_s(self, *patterns: str) -> float | None:
        """Seconds from the spawn to the first log line containing one of ``patterns``."""
        import datetime as dt

        for line in self.log().splitlines():
            if any(p in line for p in patterns) and _STAMP.match(line):
                stamp = dt.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
                return stamp.timestamp() - self.wall_started
        return None

    def traceback(self) -> bool:
        return "Traceback" in self.log()


def run_argv(bootstrap: str, topic: str, ckpt: Path, group: str, *extra: str) -> list[str]:
    return [
        "run",
        "--bootstrap",
        bootstrap,
        "--topic",
        topic,
        "--group",
        group,
        "--checkpoint-dir",
        str(ckpt),
        *GROUP,
        *TINY,
        *extra,
    ]


def compare(got: dict, ref: dict, expected: int, *, prequential: bool = False) -> dict:
    """Lost / doubled events and state equality of a faulted run against the reference."""
    applied = int(got["events_applied"])
    ranked = int((got.get("prequential") or {}).get("events", 0)) if prequential else None
    doubled = max(0, applied - expected)
    if ranked is not None:
        doubled = max(doubled, ranked - expected)
    same = (
        got["events_applied"] == ref["events_applied"]
        and got["graph_nnz"] == ref["graph_nnz"]
        and got["offsets"] == ref["offsets"]
        and got.get("num_items") == ref.get("num_items")
        and got.get("num_users") == ref.get("num_users")
        and math.isclose(got["graph_total_weight"], ref["graph_total_weight"], rel_tol=1e-9)
    )
    return {
        "expected": expected,
        "applied": applied,
        "prequential_ranked": ranked,
        "lost": max(0, expected - applied),
        "doubled": doubled,
        "state_equals_reference": same,
        "graph_nnz": [got["graph_nnz"], ref["graph_nnz"]],
        "graph_total_weight": [got["graph_total_weight"], ref["graph_total_weight"]],
        "offsets": [got["offsets"], ref["offsets"]],
    }


class Producer(threading.Thread):
    """``produce_events`` at a rate, in the background."""

    def __init__(self, bootstrap: str, topic: str, events: list, rate: float | None):
        super().__init__(daemon=True)
        self.args = (bootstrap, topic, events)
        self.rate = rate
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            produce_events(*self.args, rate=self.rate)
        except BaseException as exc:  # reported by the scenario
            self.error = exc


class Ctx:
    """What every scenario gets: the mode, a seeded rng, a work directory, names."""

    def __init__(self, quick: bool, seed: int, workdir: Path):
        self.quick = quick
        self.seed = seed
        self.rng = random.Random(seed)
        self.workdir = workdir
        self._n = 0

    def name(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}-{self.seed}-{self._n}"

    def dir(self, name: str) -> Path:
        path = self.workdir / name
        path.mkdir(parents=True, exist_ok=True)
        return path


@contextlib.contextmanager
def memory_broker(ctx: Ctx, name: str):
    broker = TansuService(free_port(), ctx.dir(f"{name}-tansu"))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@contextlib.contextmanager
def durable_broker(ctx: Ctx, name: str):
    s3 = S3Service(free_port(), ctx.dir(f"{name}-s3"))
    s3.start()
    broker = TansuService(free_port(), ctx.dir(f"{name}-tansu"), s3=s3)
    try:
        broker.start()
        yield broker
    finally:
        broker.stop()
        s3.stop()


def reference_run(ctx: Ctx, bootstrap: str, topic: str, *extra: str) -> dict:
    """An uninterrupted ``sevo run`` over the whole topic (its own group and directory)."""
    ckpt = ctx.workdir / ctx.name("reference")
    engine = Engine(
        ctx.workdir,
        ckpt.name,
        run_argv(bootstrap, topic, ckpt, ctx.name("g"), "--idle-exit", "3", *extra),
        metrics=False,
    )
    code = engine.wait_exit(300)
    if code != 0:
        raise RuntimeError(f"reference run exited {code}: {engine.log()[-1500:]}")
    return inspect(ckpt)


def can_mount() -> bool:
    if os.geteuid() != 0:
        return False
    with tempfile.TemporaryDirectory() as d:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", d], capture_output=True
        )
        if done.returncode != 0:
            return False
        subprocess.run(["umount", d], check=False)
    return True


def fmt_s(x: float | None) -> str:
    return "—" if x is None else f"{x:.1f} s"


# --------------------------------------------------------------------------- scenarios
# Each returns a row: {"fault", "injected", "engine", "lines", "lost", "doubled",
# "recovery", "checks": {name: bool}, "test", "details"}.


def scenario_kill9(ctx: Ctx) -> dict:
    kills = 2 if ctx.quick else 5
    n, rate = (3000, 200.0) if ctx.quick else (12_000, 200.0)
    events = ml100k_events(n)
    points = [round(ctx.rng.uniform(0.3, 4.0), 2) for _ in range(kills)]
    say(f"kill9: {kills} kills of sevo run at {points} s after it applies (seed {ctx.seed})")
    with memory_broker(ctx, "kill9") as broker:
        topic, group = ctx.name("kill9"), ctx.name("g")
        ensure_topic(broker.bootstrap, topic, partitions=1)
        ckpt = ctx.workdir / topic
        argv = run_argv(
            broker.bootstrap,
            topic,
            ckpt,
            group,
            "--prequential",
            "--checkpoint-every",
            "500",
            "--max-batch",
            "100",
        )
        producer = Producer(broker.bootstrap, topic, events, rate)
        recoveries, at_kill, codes = [], [], []
        engines = []
        for k, after in enumerate(points):
            engine = Engine(ctx.workdir, f"kill9-{k}", argv)
            engines.append(engine)
            if k == 0:  # the stream starts once the engine is up
                wait(lambda e=engine: e.metrics() or not e.alive(), "the metrics endpoint")
                producer.start()
            t_applying = wait(lambda e=engine: e.applied() > 0 or not e.alive(), "applying")
            if not engine.alive():
                raise RuntimeError(f"run {k} exited: {engine.log()[-1500:]}")
            if k > 0:  # the fault ends when the process is restarted
                recoveries.append(t_applying - engine.started)
            time.sleep(after)
            applied = engine.applied()
            engine.kill9()
            codes.append(engine.proc.returncode)
            side = newest_sidecar(ckpt) or {}
            at_kill.append(
                {"applied_by_process": int(applied), "durable_offsets": side.get("offsets")}
            )
            say(f"  kill {k + 1}: SIGKILL after {after} s, durable {side.get('offsets')}")
        producer.join()
        final = Engine(ctx.workdir, "kill9-final", [*argv, "--idle-exit", "3"])
        after = final.applying_after(30)
        if after is not None:
            recoveries.append(after)
        code = final.wait_exit()
        got, ref = inspect(ckpt), reference_run(ctx, broker.bootstrap, topic, "--prequential")
    result = compare(got, ref, n, prequential=True)
    resumed = [e.first_line("resuming from checkpoint") for e in [*engines[1:], final]]
    restored = [e.line_after_s("resuming from checkpoint") or 0.0 for e in [*engines[1:], final]]
    return {
        "fault": f"kill -9 of `sevo run`, {kills}× at random points",
        "injected": (
            f"SIGKILL {kills}× at seeded random times {points} s after the process starts "
            f"applying (seed {ctx.seed}) while {n:,} events arrive at {rate:.0f}/s; restarted "
            "at once; a last run drains with --idle-exit"
        ),
        "engine": f"killed ({codes[0]}); each restart resumed from the newest checkpoint, "
        f"last run exit {code}",
        "lines": [line for line in resumed if line][:1],
        "lost": result["lost"],
        "doubled": result["doubled"],
        "recovery_s": max(recoveries),
        "recovery": f"restart → applying: median {sorted(recoveries)[len(recoveries) // 2]:.1f} s,"
        f" max {max(recoveries):.1f} s (process start and restore: median "
        f"{sorted(restored)[len(restored) // 2]:.1f} s; then the group join)",
        "checks": {
            "exit 0 at the end": code == 0,
            "state equals the reference": result["state_equals_reference"],
            "no traceback": not any(e.traceback() for e in [*engines, final]),
        },
        "test": "tests/streaming/test_consumer.py::"
        "test_kill_9_then_restart_applies_every_event_exactly_once",
        "details": {
            **result,
            "kill_points_s": points,
            "at_kill": at_kill,
            "recoveries": recoveries,
        },
    }


def scenario_broker_kill(ctx: Ctx) -> dict:
    down_s = 3.0 if ctx.quick else 10.0
    n = 3000
    events = ml100k_events(n)
    with durable_broker(ctx, "bkill") as broker:
        topic, group = ctx.name("bkill"), ctx.name("g")
        ensure_topic(broker.bootstrap, topic, partitions=1)
        produce_events(broker.bootstrap, topic, events[: n // 2])
        ckpt = ctx.workdir / topic
        argv = run_argv(
            broker.bootstrap,
            topic,
            ckpt,
            group,
            *SLOW_FETCH,
            "--checkpoint-every",
            "300",
            "--max-batch",
            "100",
            "--idle-exit",
            "10",
        )
        engine = Engine(ctx.workdir, "bkill", argv)
        wait(lambda: engine.applied() >= n // 2 or not engine.alive(), "the first half")
        applied_before = engine.applied()
        say(f"broker-kill: SIGKILL of the broker for {down_s:.0f} s")
        t_kill = time.monotonic()
        broker.kill()
        t_seen = wait(lambda: engine.metrics().get("sevo_broker_up") == 0.0, "broker_up 0", 30)
        time.sleep(max(0.0, down_s - (time.monotonic() - t_kill)))
        broker.start()
        t_back = time.monotonic()
        producer = Producer(broker.bootstrap, topic, events[n // 2 :], 1500.0)
        producer.start()
        t_up = wait(lambda: engine.metrics().get("sevo_broker_up") == 1.0, "broker_up 1", 60)
        t_applied = wait(lambda: engine.applied() > applied_before, "applying again", 60)
        producer.join()
        code = engine.wait_exit()
        got = inspect(ckpt)
        ref = reference_run(ctx, broker.bootstrap, topic, *SLOW_FETCH)
    result = compare(got, ref, n)
    warn = engine.first_line("unreachable: waiting for it")
    back = engine.first_line("reachable again after")
    return {
        "fault": "broker kill -9 + restart",
        "injected": f"SIGKILL of the broker (log kept in S3) mid-run, restarted {down_s:.0f} s "
        f"later; the second half of {n:,} events produced after the restart",
        "engine": f"kept running, waited with backoff (`sevo_broker_up` 0 after "
        f"{t_seen - t_kill:.1f} s), exit {code} at idle",
        "lines": [x for x in (warn, back) if x],
        "lost": result["lost"],
        "doubled": result["doubled"],
        "recovery_s": t_applied - t_back,
        "recovery": f"broker restarted → `sevo_broker_up` 1: {t_up - t_back:.1f} s, "
        f"→ applying: {t_applied - t_back:.1f} s",
        "checks": {
            "exit 0": code == 0,
            "one warning, one recovery line": (
                len(engine.lines("unreachable: waiting for it")) == 1
                and len(engine.lines("reachable again after")) == 1
            ),
            "state equals the reference": result["state_equals_reference"],
            "no traceback": not engine.traceback(),
        },
        "test": "tests/streaming/test_broker_faults.py::"
        "test_broker_kill_9_and_restart_loses_and_doubles_nothing",
        "details": result,
    }


def scenario_broker_down_at_start(ctx: Ctx) -> list[dict]:
    rows = []
    # (a) never there
    port = free_port()
    ckpt = ctx.workdir / ctx.name("nobroker")
    timeout = "5"
    engine = Engine(
        ctx.workdir,
        ckpt.name,
        run_argv(f"127.0.0.1:{port}", "t", ckpt, "g", "--connect-timeout", timeout),
    )
    code = engine.wait_exit(120)
    first_try = engine.line_after_s("unreachable")
    took = time.monotonic() - engine.started - (first_try or 0.0)
    found = engine.lines("unreachable")
    line = found[-1] if found else None
    rows.append(
        {
            "fault": "broker down at start (never comes)",
            "injected": f"`sevo run --connect-timeout {timeout}` against a port nothing listens on",
            "engine": f"retried with backoff, then exit {code} {took:.1f} s after its first "
            "attempt; nothing read, no checkpoint",
            "lines": [line] if line else [],
            "lost": 0,
            "doubled": 0,
            "recovery_s": None,
            "recovery": "— (exits; a supervisor restarts it)",
            "checks": {
                "exit 1": code == 1,
                "one clear line": line is not None,
                "no traceback": not engine.traceback(),
                "no checkpoint": newest_sidecar(ckpt) is None,
            },
            "test": "tests/streaming/test_consumer.py::"
            "test_run_against_a_down_broker_fails_with_one_clear_line",
            "details": {},
        }
    )
    # (b) back within --connect-timeout
    down_s = 3.0 if ctx.quick else 8.0
    n = 2000
    events = ml100k_events(n)
    with durable_broker(ctx, "late") as broker:
        topic = ctx.name("late")
        ensure_topic(broker.bootstrap, topic, partitions=1)
        produce_events(broker.bootstrap, topic, events)
        broker.kill()
        ckpt = ctx.workdir / topic
        engine = Engine(
            ctx.workdir,
            topic,
            run_argv(
                broker.bootstrap,
                topic,
                ckpt,
                ctx.name("g"),
                *SLOW_FETCH,
                "--connect-timeout",
                "120",
                "--idle-exit",
                "5",
            ),
        )
        wait(lambda: engine.first_line("unreachable") or not engine.alive(), "a retry", 60)
        say(f"broker-late: sevo run retrying; broker back in {down_s:.0f} s")
        time.sleep(down_s)
        alive_while_down = engine.alive()
        broker.start()
        t_back = time.monotonic()
        t_applied = wait(lambda: engine.applied() > 0 or not engine.alive(), "applying", 120)
        code = engine.wait_exit()
        got = inspect(ckpt)
        ref = reference_run(ctx, broker.bootstrap, topic, *SLOW_FETCH)
    result = compare(got, ref, n)
    line = engine.first_line("unreachable", "retrying", "waiting")
    rows.append(
        {
            "fault": "broker down at start, back later",
            "injected": f"broker (log in S3) killed before `sevo run` starts, started "
            f"{down_s:.0f} s after the run's first failed attempt (`--connect-timeout 120`); "
            f"{n:,} events waiting",
            "engine": f"retried with backoff, connected, read everything, exit {code} at idle",
            "lines": [line] if line else [],
            "lost": result["lost"],
            "doubled": result["doubled"],
            "recovery_s": t_applied - t_back,
            "recovery": f"broker started → applying: {t_applied - t_back:.1f} s",
            "checks": {
                "waited (alive while down)": alive_while_down,
                "exit 0": code == 0,
                "state equals the reference": result["state_equals_reference"],
                "no traceback": not engine.traceback(),
            },
            "test": "tests/streaming/test_kafka_io.py::"
            "test_source_connects_once_a_late_broker_starts (source level)",
            "details": result,
        }
    )
    return rows


def _redis_scenario(ctx: Ctx, *, kill: bool, down_s: float) -> dict:
    from streaming.serving import EmbeddingClient

    rate = 200.0
    n = int(rate * (down_s + 14))
    events = ml100k_events(n)
    with memory_broker(ctx, "redis") as broker:
        redis = RedisService(free_port(), ctx.dir(ctx.name("redis")), appendonly=kill)
        redis.start()
        try:
            topic = ctx.name("redis")
            ensure_topic(broker.bootstrap, topic, partitions=1)
            ckpt = ctx.workdir / topic
            engine = Engine(
                ctx.workdir,
                topic,
                run_argv(
                    broker.bootstrap,
                    topic,
                    ckpt,
                    ctx.name("g"),
                    "--redis-url",
                    redis.url,
                    "--namespace",
                    topic,
                    "--publish-every",
                    "0.5",
                    "--idle-exit",
                    "3",
                ),
            )
            producer = Producer(broker.bootstrap, topic, events, rate)
            producer.start()
            wait(
                lambda: publishes_ok(engine.metrics()) >= 2 or not engine.alive(),
                "the first publishes",
            )
            how = "SIGKILL" if kill else "stopped"
            say(f"redis: {how} for {down_s:.0f} s")
            applied_at_fault = engine.applied()
            if kill:
                redis.kill()
            else:
                redis.stop()
            t_down = time.monotonic()
            wait(lambda: engine.metrics().get("sevo_redis_up") == 0.0, "redis_up 0", 30)
            time.sleep(max(0.0, down_s - (time.monotonic() - t_down)))
            applied_during = engine.applied() - applied_at_fault
            ok_before = publishes_ok(engine.metrics())
            redis.start()
            t_back = time.monotonic()
            t_up = wait(
                lambda: (
                    engine.metrics().get("sevo_redis_up") == 1.0
                    and publishes_ok(engine.metrics()) > ok_before
                ),
                "a publish after the restart",
                60,
            )
            producer.join()
            code = engine.wait_exit()
            got = inspect(ckpt)
            pointer = EmbeddingClient(redis.url, namespace=topic).pointer() or {}
            served = pointer.get("offsets")
            ref = reference_run(ctx, broker.bootstrap, topic)
        finally:
            redis.stop()
    result = compare(got, ref, n)
    warn = engine.first_line("publisher: Redis", "unavailable")
    back = engine.first_line("back after")
    label = "Redis kill -9 + restart" if kill else f"Redis outage of {down_s:.0f} s"
    injected = (
        f"SIGKILL of an appendonly Redis mid-run, restarted {down_s:.0f} s later"
        if kill
        else f"Redis (no persistence) stopped mid-run for {down_s:.0f} s, then started empty"
    )
    return {
        "fault": label,
        "injected": f"{injected}; `sevo run` publishing every 0.5 s, {n:,} events at {rate:.0f}/s",
        "engine": f"training went on ({int(applied_during):,} events applied during the outage), "
        f"publisher retried with backoff and caught up with a full snapshot; exit {code}",
        "lines": [x for x in (warn, back) if x],
        "lost": result["lost"],
        "doubled": result["doubled"],
        "recovery_s": t_up - t_back,
        "recovery": f"Redis restarted → `sevo_redis_up` 1 and a publish: {t_up - t_back:.1f} s",
        "checks": {
            "exit 0": code == 0,
            "trained during the outage": applied_during > 0,
            "served offsets = final offsets": served == got["offsets"],
            "one warning, one recovery line": (
                len(engine.lines("unavailable")) == 1 and len(engine.lines("back after")) == 1
            ),
            "state equals the reference": result["state_equals_reference"],
            "no traceback": not engine.traceback(),
        },
        "test": "tests/streaming/test_serving_integration.py::"
        "test_publisher_survives_an_outage_and_an_appendonly_restart (publisher level)",
        "details": {**result, "served_offsets": served},
    }


def scenario_redis_kill(ctx: Ctx) -> dict:
    return _redis_scenario(ctx, kill=True, down_s=2.0 if ctx.quick else 5.0)


def scenario_redis_outage(ctx: Ctx) -> dict:
    return _redis_scenario(ctx, kill=False, down_s=10.0 if ctx.quick else 60.0)


def _disk_mid_run(ctx: Ctx, fault: str, has_root: bool) -> dict:
    label = {"full": "checkpoint directory full", "ro": "checkpoint directory read-only"}[fault]
    test = (
        "tests/streaming/test_disk_faults.py::"
        "test_checkpoint_refused_mid_run_training_goes_on_and_recovers"
        f"[{'full' if fault == 'full' else 'read-only'}]"
    )
    if not has_root:
        return skipped(label + " (mid-run)", "needs root to mount a tmpfs", test)
    down_s = 4.0 if ctx.quick else 10.0
    rate = 400.0
    n = int(rate * (down_s + 12))
    events = ml100k_events(n)
    with memory_broker(ctx, f"disk-{fault}") as broker:
        topic = ctx.name(f"disk-{fault}")
        ensure_topic(broker.bootstrap, topic, partitions=1)
        with tmpfs(ctx.workdir / f"{topic}-mnt", "32m") as mount:
            ckpt = mount / "ckpt"
            engine = Engine(
                ctx.workdir,
                topic,
                run_argv(
                    broker.bootstrap,
                    topic,
                    ckpt,
                    ctx.name("g"),
                    "--checkpoint-every",
                    "400",
                    "--checkpoint-interval",
                    "1",
                    "--idle-exit",
                    "3",
                ),
            )
            producer = Producer(broker.bootstrap, topic, events, rate)
            producer.start()
            wait(lambda: newest_sidecar(ckpt) is not None or not engine.alive(), "a checkpoint")
            say(f"disk-{fault}: checkpoint directory refuses writes for {down_s:.0f} s")
            filler = None
            if fault == "full":
                filler = fill(mount)
            else:
                read_only_over(ckpt)
            version_at_fault = (newest_sidecar(ckpt) or {}).get("version")
            applied_at_fault = engine.applied()
            t0 = time.monotonic()
            try:
                time.sleep(down_s)
            finally:
                metrics = engine.metrics()
                if filler is not None:
                    filler.unlink()
                else:
                    unmount(ckpt)
            t_free = time.monotonic()
            applied_during = engine.applied() - applied_at_fault
            failures = metrics.get("sevo_checkpoint_failures_total", 0.0)
            unsaved = metrics.get("sevo_unsaved_records", 0.0)
            newest_names = lambda: sorted(p.name for p in ckpt.glob("ckpt-*.json"))  # noqa: E731
            before = newest_names()
            t_ckpt = wait(lambda: newest_names() != before, "a checkpoint after the fault", 120)
            producer.join()
            code = engine.wait_exit()
            got = inspect(ckpt)
            partial = [p.name for p in ckpt.iterdir() if p.name.endswith(".tmp")]
            stems = {p.stem for p in ckpt.glob("ckpt-*")}
            orphans = [s for s in stems if not (ckpt / f"{s}.json").exists()]
        ref = reference_run(ctx, broker.bootstrap, topic)
    result = compare(got, ref, n)
    err = engine.first_line("No space left on device", "Read-only file system")
    again = engine.first_line("written again after")
    return {
        "fault": f"{label} (mid-run)",
        "injected": (
            "filler file fills the tmpfs holding the checkpoint directory"
            if fault == "full"
            else "read-only bind mount over the checkpoint directory"
        )
        + f" for {down_s:.0f} s while {n:,} events arrive at {rate:.0f}/s (checkpoint every "
        "400 records or 1 s)",
        "engine": f"kept training ({int(applied_during):,} events during the fault, "
        f"{int(failures)} failed checkpoint(s), {int(unsaved):,} unsaved records at the end of "
        f"it), retried with backoff, no partial files; exit {code}",
        "lines": [x for x in (err, again) if x],
        "lost": result["lost"],
        "doubled": result["doubled"],
        "recovery_s": t_ckpt - t_free,
        "recovery": f"space freed / mount lifted → next durable checkpoint: "
        f"{t_ckpt - t_free:.1f} s (retry backoff 1 s doubling); training never stopped",
        "checks": {
            "exit 0": code == 0,
            "trained during the fault": applied_during > 0,
            "checkpoint refused meanwhile": failures >= 1,
            "no partial files": not partial and not orphans,
            "state equals the reference": result["state_equals_reference"],
            "no traceback": not engine.traceback(),
        },
        "test": test,
        "details": {
            **result,
            "version_at_fault": version_at_fault,
            "fault_s": t_free - t0,
            "checkpoint_failures": failures,
        },
    }


def scenario_disk_full(ctx: Ctx, has_root: bool) -> dict:
    return _disk_mid_run(ctx, "full", has_root)


def scenario_disk_ro(ctx: Ctx, has_root: bool) -> dict:
    return _disk_mid_run(ctx, "ro", has_root)


def scenario_disk_at_start(ctx: Ctx, has_root: bool) -> dict:
    test = "tests/streaming/test_disk_faults.py::test_read_only_directory_fails_before_training"
    label = "checkpoint directory full / read-only at start"
    if not has_root:
        return skipped(label, "needs root to mount a tmpfs", test)
    out = {}
    for fault in ("full", "ro"):
        with tmpfs(ctx.workdir / ctx.name(f"start-{fault}"), "4m") as mount:
            ckpt = mount / "ckpt"
            ckpt.mkdir()
            if fault == "full":
                fill(mount)
            else:
                subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
            try:
                engine = Engine(
                    ctx.workdir,
                    f"start-{fault}",
                    [
                        "replay",
                        "ml-100k",
                        "--max-events",
                        "500",
                        "--no-progress",
                        "--checkpoint-dir",
                        str(ckpt),
                        *TINY,
                    ],
                    metrics=False,
                )
                code = engine.wait_exit(120)
            finally:
                if fault == "ro":
                    subprocess.run(["mount", "-o", "remount,rw", str(mount)], check=False)
        out[fault] = {
            "code": code,
            "line": engine.first_line("does not take writes"),
            "traceback": engine.traceback(),
            "trained": "throughput" in engine.log(),
        }
    return {
        "fault": label,
        "injected": "`sevo replay` with its checkpoint directory on a full tmpfs, then on a "
        "read-only one",
        "engine": f"exit {out['full']['code']} / {out['ro']['code']} before reading a record",
        "lines": [x["line"] for x in out.values() if x["line"]],
        "lost": 0,
        "doubled": 0,
        "recovery_s": None,
        "recovery": "— (exits at once; start again once the directory takes writes)",
        "checks": {
            "exit 1 both": all(x["code"] == 1 for x in out.values()),
            "one clear line both": all(x["line"] for x in out.values()),
            "nothing trained": not any(x["trained"] for x in out.values()),
            "no traceback": not any(x["traceback"] for x in out.values()),
        },
        "test": test + " (read-only)",
        "details": out,
    }


def scenario_corrupt(ctx: Ctx) -> dict:
    n = 3000
    events = ml100k_events(n)
    with memory_broker(ctx, "corrupt") as broker:
        topic = ctx.name("corrupt")
        ensure_topic(broker.bootstrap, topic, partitions=1)
        produce_events(broker.bootstrap, topic, events)
        ckpt = ctx.workdir / topic
        argv = run_argv(
            broker.bootstrap,
            topic,
            ckpt,
            ctx.name("g"),
            "--checkpoint-every",
            "500",
            "--max-batch",
            "100",
        )
        first = Engine(ctx.workdir, f"{topic}-1", [*argv, "--max-events", str(n // 2)])
        code1 = first.wait_exit()
        newest = sorted(ckpt.glob("ckpt-*.pt"))[-1]
        data = bytearray(newest.read_bytes())
        for i in range(len(data) // 3, len(data) // 3 + 64):  # flip bytes mid-payload
            data[i] ^= 0xFF
        newest.write_bytes(bytes(data))
        say(f"corrupt: flipped 64 bytes of {newest.name}; restarting")
        second = Engine(ctx.workdir, f"{topic}-2", [*argv, "--idle-exit", "3"])
        t_applied = wait(lambda: second.applied() > 0 or not second.alive(), "applying")
        code2 = second.wait_exit()
        got = inspect(ckpt)
        ref = reference_run(ctx, broker.bootstrap, topic)
    result = compare(got, ref, n)
    line = second.first_line("skipping checkpoint")
    resumed = second.first_line("resuming from checkpoint")
    return {
        "fault": "corrupt newest checkpoint",
        "injected": f"64 bytes flipped in the newest checkpoint payload after a run stopped at "
        f"{n // 2:,} of {n:,} records; `sevo run` restarted",
        "engine": f"skipped it (sha256 mismatch) with one warning, resumed from the previous "
        f"checkpoint and re-applied the records after it; exit {code1} / {code2}",
        "lines": [x for x in (line, resumed) if x],
        "lost": result["lost"],
        "doubled": result["doubled"],
        "recovery_s": t_applied - second.started,
        "recovery": f"restart → applying: {t_applied - second.started:.1f} s (restored "
        f"after {second.line_after_s('resuming from checkpoint') or 0:.1f} s)",
        "checks": {
            "exit 0": code1 == 0 and code2 == 0,
            "one warning naming the checkpoint": line is not None
            and f"checkpoint {int(newest.stem[5:])} " in line,
            "state equals the reference": result["state_equals_reference"],
            "no traceback": not second.traceback(),
        },
        "test": "tests/streaming/test_checkpoint.py::"
        "test_corrupt_newest_checkpoint_falls_back_to_the_previous (store level)",
        "details": result,
    }


# ---- fuzz


def _fuzz_record(rng: random.Random, k: int) -> tuple[str, bytes, str | None]:
    """One fuzzed record: (category, bytes, the expected dead-letter reason or None if valid)."""
    user, item = f"fz{k % 97}", f"fi{k % 53}"
    base = {"user_id": user, "item_id": item, "timestamp": 1_600_000_000 + k}

    def obj(**fields) -> bytes:
        return json.dumps({**base, **fields}).encode()

    def raw_json(ts="1600000000", weight=None, **ids) -> bytes:
        extra = f', "weight": {weight}' if weight is not None else ""
        return (
            f'{{"user_id": "{ids.get("user_id", user)}", "item_id": "{item}", '
            f'"timestamp": {ts}{extra}}}'
        ).encode()

    choice = rng.randrange(100)
    if choice < 12:  # random bytes (a leading 0xff: never UTF-8, never JSON)
        return "random bytes", b"\xff" + rng.randbytes(rng.randrange(0, 300)), "invalid_json"
    if choice < 22:
        good = obj()
        cut = [good[: rng.randrange(1, len(good))], good + b" trailing", b"{'a': 1}", b""]
        return "bad JSON", rng.choice(cut), "invalid_json"
    if choice < 27:
        return "not an object", rng.choice([b"[1, 2]", b'"x"', b"null", b"42"]), "not_object"
    if choice < 32:
        field = rng.choice(["user_id", "item_id", "timestamp"])
        return "missing field", json.dumps({**base, field: None}).encode(), "missing_field"
    if choice < 44:
        wrong = rng.choice(
            [
                {"user_id": True},
                {"item_id": 1.5},
                {"item_id": ["a"]},
                {"user_id": {"id": 1}},
                {"timestamp": "1600000000"},
                {"timestamp": False},
                {"weight": "2"},
                {"weight": True},
                {"event_type": 3},
            ]
        )
        return "wrong types", obj(**wrong), "bad_type"
    if choice < 52:
        ts = rng.choice(["NaN", "Infinity", "-Infinity"])
        return "NaN/±∞ timestamp", raw_json(ts=ts), "bad_timestamp"
    if choice < 58:
        w = rng.choice(["NaN", "Infinity"])
        return "NaN/∞ weight", raw_json(weight=w), "bad_weight"
    if choice < 63:
        return "negative timestamp", obj(timestamp=-rng.uniform(1, 1e9)), "bad_timestamp"
    if choice < 68:
        return "negative weight", obj(weight=-rng.uniform(1e-9, 1e9)), "bad_weight"
    if choice < 73:
        ts = rng.choice([1e13, 1e100, 1e300, "1" + "0" * 400])
        reason = "bad_timestamp" if isinstance(ts, str) else "future_timestamp"
        return "huge timestamp", raw_json(ts=str(ts)), reason
    if choice < 78:  # finite and non-negative: valid up to MAX_WEIGHT (1e6), then bad_weight
        w = rng.choice([1e6, 1e12, 1e30])
        return "huge weight", obj(weight=w), None if w <= MAX_WEIGHT else "bad_weight"
    if choice < 86:
        long_id = "x" * rng.randrange(257, 5000)
        which = rng.choice(["user_id", "item_id"])
        return "oversized id", obj(**{which: long_id}), "bad_id"
    if choice < 89:
        return "oversized event_type", obj(event_type="v" * rng.randrange(257, 3000)), "bad_type"
    if choice < 90:  # above MAX_RECORD_BYTES, below the producer's limit
        size = rng.randrange(MAX_RECORD_BYTES + 1, PRODUCER_MAX_REQUEST_BYTES // 2)
        if rng.random() < 0.5:
            return "above the size limit", obj(extra="p" * size), "too_large"
        return "above the size limit", b"\xff" * size, "too_large"
    valid = [
        obj(),
        obj(user_id=k, item_id=k % 53),
        obj(timestamp="2024-05-01T12:00:00Z"),
        obj(weight=0),
        obj(user_id="ü" * 256),
        obj(event_type="view", extra={"nested": [1, 2]}),
    ]
    return "edge cases (valid)", rng.choice(valid), None


def scenario_fuzz(ctx: Ctx) -> dict:
    from kafka import KafkaConsumer

    fuzzed = 1000 if ctx.quick else 10_000
    valid_n = 2000 if ctx.quick else 10_000
    rng = random.Random(ctx.seed + 1)
    valid = [encode_event(e) for e in ml100k_events(valid_n)]
    slots = sorted(rng.sample(range(valid_n + fuzzed), fuzzed))
    records: list[bytes] = []
    meta: list[tuple[str, str | None]] = []  # per offset: (category, expected reason)
    vi = fi = 0
    slot_set = set(slots)
    for offset in range(valid_n + fuzzed):
        if offset in slot_set:
            cat, raw, reason = _fuzz_record(rng, fi)
            fi += 1
        else:
            cat, raw, reason = "valid event", valid[vi], None
            vi += 1
        records.append(raw)
        meta.append((cat, reason))
    too_big = b"{" + b" " * (2 * PRODUCER_MAX_REQUEST_BYTES) + b"}"
    say(f"fuzz: {fuzzed:,} fuzzed records among {valid_n:,} valid events")
    with memory_broker(ctx, "fuzz") as broker:
        topic, dlq = ctx.name("fuzz"), ctx.name("dlq")
        ensure_topic(broker.bootstrap, topic, partitions=1)
        ensure_topic(broker.bootstrap, dlq, partitions=1)
        produce_events(broker.bootstrap, topic, records)
        producer_refusal = None
        scratch = ctx.name("scratch")
        ensure_topic(broker.bootstrap, scratch, partitions=1)
        try:
            produce_events(broker.bootstrap, scratch, [too_big])
        except Exception as exc:  # expected: the producer refuses it
            producer_refusal = f"{type(exc).__name__}: {str(exc)[:160]}"
        ckpt = ctx.workdir / topic
        engine = Engine(
            ctx.workdir,
            topic,
            run_argv(
                broker.bootstrap,
                topic,
                ckpt,
                ctx.name("g"),
                "--dead-letter-topic",
                dlq,
                "--idle-exit",
                "5",
            ),
        )
        code = engine.wait_exit(600)
        got = inspect(ckpt)
        consumer = KafkaConsumer(
            dlq,
            bootstrap_servers=[broker.bootstrap],
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            consumer_timeout_ms=5000,
            fetch_max_bytes=16 * 2**20,
        )
        letters = [json.loads(m.value) for m in consumer]
        consumer.close()
    by_offset: dict[int, str] = {}
    duplicates = 0
    for letter in letters:
        offset = int(letter["position"].rsplit(":", 1)[1])
        duplicates += offset in by_offset
        by_offset[offset] = letter["reason"]
    expected_valid = sum(1 for _, reason in meta if reason is None)
    table: dict[str, Counter] = {}
    mismatches = []
    for offset, (cat, reason) in enumerate(meta):
        got_reason = by_offset.get(offset)
        table.setdefault(cat, Counter())[got_reason or "applied"] += 1
        if got_reason != reason:
            mismatches.append(
                {"offset": offset, "category": cat, "want": reason, "got": got_reason}
            )
    reasons = Counter(by_offset.values())
    applied = int(got["events_applied"])
    truncated = sum(1 for x in letters if x.get("raw_truncated"))
    lost = max(0, expected_valid - applied)
    doubled = max(0, applied - expected_valid) + duplicates
    weight_ok = math.isfinite(got["graph_total_weight"])
    return {
        "fault": f"{fuzzed:,} fuzzed records",
        "injected": f"{fuzzed:,} fuzzed records (seeded) at random offsets among {valid_n:,} "
        "valid ML-100K events, one partition, `--dead-letter-topic`; plus one record of "
        f"{len(too_big) / 2**20:.0f} MiB offered to the producer",
        "engine": f"kept running, exit {code} at idle; every record applied or dead-lettered "
        f"with a reason ({len(letters):,} letters; {truncated} of them cut to a 1 KiB prefix); "
        f"dead letters by reason: "
        + ", ".join(f"{r} {c:,}" for r, c in sorted(reasons.items()))
        + f"; producer refused the 2 MiB record ({(producer_refusal or 'not refused')[:60]}…)",
        "lines": [x for x in [engine.first_line("stopped (")] if x],
        "lost": lost,
        "doubled": doubled,
        "recovery_s": None,
        "recovery": "— (no interruption)",
        "checks": {
            "exit 0": code == 0,
            "every record applied or dead-lettered as expected": not mismatches,
            "applied = valid records": applied == expected_valid,
            "no valid event dead-lettered": all(
                by_offset.get(o) is None for o, (c, _) in enumerate(meta) if c == "valid event"
            ),
            "graph weight finite": weight_ok,
            "producer refused > 1 MiB": producer_refusal is not None,
            "no traceback": not engine.traceback(),
        },
        "test": "tests/streaming/test_consumer.py::"
        "test_malformed_messages_go_to_the_dead_letter_topic_with_reasons; "
        "tests/streaming/test_kafka_io.py::"
        "test_oversized_records_pass_the_producer_and_reach_the_dead_letter_topic_cut",
        "details": {
            "by_category": {c: dict(v) for c, v in sorted(table.items())},
            "reasons": dict(reasons),
            "mismatches": mismatches[:20],
            "mismatch_count": len(mismatches),
            "applied": applied,
            "expected_valid": expected_valid,
            "producer_refusal": producer_refusal,
            "graph_total_weight": got["graph_total_weight"],
            "limits": {
                "max_record_bytes": MAX_RECORD_BYTES,
                "producer_max_request_bytes": PRODUCER_MAX_REQUEST_BYTES,
            },
        },
    }


# ---- signals


def _metrics_start_time(ckpt: Path, run_index: int) -> float | None:
    """Wall time of the ``start`` sample of the ``run_index``-th run in metrics.jsonl."""
    from streaming.timeseries import read_samples

    samples, _ = read_samples(ckpt)
    starts = [s for s in samples if s.get("reason") == "start"]
    return starts[run_index]["t"] if len(starts) > run_index else None


def scenario_replay_signals(ctx: Ctx) -> dict:
    n, rate = (30_000, 4000) if ctx.quick else (60_000, 4000)
    ckpt = ctx.workdir / ctx.name("replay-sig")
    argv = [
        "replay",
        "ml-100k",
        "--max-events",
        str(n),
        "--checkpoint-dir",
        str(ckpt),
        "--checkpoint-every",
        "5000",
        "--rate",
        str(rate),
        "--no-progress",
        "--prequential",
        *TINY,
    ]
    codes, lines, recoveries, stops = [], [], [], []
    for k, sig in enumerate((signal.SIGINT, signal.SIGTERM)):
        wall0 = time.time()
        engine = Engine(ctx.workdir, f"replay-{sig.name}", argv, metrics=False)
        start_t = wait(lambda k=k: _metrics_start_time(ckpt, k) is not None, "the start sample")
        if k > 0:
            recoveries.append(_metrics_start_time(ckpt, k) - wall0)
        time.sleep(ctx.rng.uniform(1.0, 2.5))
        engine.proc.send_signal(sig)
        codes.append(engine.wait_exit(120))
        stops.append((newest_sidecar(ckpt) or {}).get("offsets"))
        lines.append(engine.first_line(f"{sig.name} received"))
        say(
            f"replay: {sig.name} after {time.monotonic() - start_t:.1f} s → exit {codes[-1]}, "
            f"checkpoint at {stops[-1]}"
        )
    wall0 = time.time()
    final = Engine(ctx.workdir, "replay-final", argv, metrics=False)
    codes.append(final.wait_exit(300))
    t = _metrics_start_time(ckpt, 2)
    if t is not None:
        recoveries.append(t - wall0)
    ref_dir = ctx.workdir / ctx.name("replay-ref")
    ref_argv = [*argv]
    ref_argv[ref_argv.index("--checkpoint-dir") + 1] = str(ref_dir)
    reference = Engine(ctx.workdir, "replay-ref", ref_argv, metrics=False)
    reference.wait_exit(300)
    got, ref = inspect(ckpt), inspect(ref_dir)
    result = compare(got, ref, n, prequential=True)
    return {
        "fault": "SIGINT / SIGTERM of `sevo replay`",
        "injected": f"SIGINT, then (after a restart) SIGTERM at random points of a replay of "
        f"{n:,} ML-100K events (`--rate {rate}`); restarted to the end",
        "engine": f"finished the batch, wrote a final checkpoint, exit {codes[0]} / {codes[1]}; "
        f"restarts resumed there (final exit {codes[2]})",
        "lines": [x for x in lines if x],
        "lost": result["lost"],
        "doubled": result["doubled"],
        "recovery_s": max(recoveries) if recoveries else None,
        "recovery": "restart → restored and applying (metrics.jsonl start sample): "
        + ", ".join(f"{r:.1f} s" for r in recoveries),
        "checks": {
            "exit 0 on each signal": codes[:2] == [0, 0],
            "signal line logged": all(lines),
            "final checkpoint at each stop": all(stops),
            "state equals the reference": result["state_equals_reference"],
            "no traceback": not final.traceback(),
        },
        "test": "tests/streaming/test_replay.py::test_replay_checkpoints_and_exits_0_on_a_signal",
        "details": {**result, "stopped_at": stops},
    }


def scenario_run_signals(ctx: Ctx) -> dict:
    n, rate = (4000, 200.0) if ctx.quick else (6000, 200.0)
    events = ml100k_events(n)
    with memory_broker(ctx, "run-sig") as broker:
        topic = ctx.name("run-sig")
        ensure_topic(broker.bootstrap, topic, partitions=1)
        ckpt = ctx.workdir / topic
        argv = run_argv(
            broker.bootstrap,
            topic,
            ckpt,
            ctx.name("g"),
            "--prequential",
            "--checkpoint-every",
            "1000000",
            "--checkpoint-interval",
            "3600",
        )
        producer = Producer(broker.bootstrap, topic, events, rate)
        codes, lines, stops, recoveries = [], [], [], []
        for k, sig in enumerate((signal.SIGTERM, signal.SIGINT)):
            engine = Engine(ctx.workdir, f"run-{sig.name}", argv)
            if k == 0:  # the stream starts once the engine is up
                wait(lambda e=engine: e.metrics() or not e.alive(), "the metrics endpoint")
                producer.start()
            t_applying = wait(lambda e=engine: e.applied() > 0 or not e.alive(), "applying")
            if k > 0:
                recoveries.append(t_applying - engine.started)
            time.sleep(ctx.rng.uniform(1.0, 3.0))
            engine.proc.send_signal(sig)
            codes.append(engine.wait_exit(120))
            stops.append((newest_sidecar(ckpt) or {}).get("offsets"))
            lines.append(engine.first_line(f"{sig.name} received"))
            say(f"run: {sig.name} → exit {codes[-1]}, final checkpoint at {stops[-1]}")
        producer.join()
        final = Engine(ctx.workdir, "run-final", [*argv, "--idle-exit", "3"])
        after = final.applying_after(30)
        if after is not None:
            recoveries.append(after)
        codes.append(final.wait_exit())
        got = inspect(ckpt)
        ref = reference_run(ctx, broker.bootstrap, topic, "--prequential")
    result = compare(got, ref, n, prequential=True)
    return {
        "fault": "SIGTERM / SIGINT of `sevo run`",
        "injected": f"SIGTERM, then (after a restart) SIGINT at random points while {n:,} "
        f"events arrive at {rate:.0f}/s; periodic checkpoints off (only the final one can "
        "save the work)",
        "engine": f"finished the batch, final checkpoint, commit, exit {codes[0]} / {codes[1]}; "
        f"restarts resumed there (final exit {codes[2]})",
        "lines": [x for x in lines if x],
        "lost": result["lost"],
        "doubled": result["doubled"],
        "recovery_s": max(recoveries),
        "recovery": "restart → applying: " + ", ".join(f"{r:.1f} s" for r in recoveries),
        "checks": {
            "exit 0 on each signal": codes[:2] == [0, 0],
            "signal line logged": all(lines),
            "final checkpoint at each stop": all(stops),
            "state equals the reference": result["state_equals_reference"],
            "no traceback": not final.traceback(),
        },
        "test": "tests/streaming/test_consumer.py::"
        "test_sigterm_stops_cleanly_with_a_final_checkpoint",
        "details": {**result, "stopped_at": stops},
    }


def skipped(fault: str, why: str, test: str | None) -> dict:
    return {
        "fault": fault,
        "injected": "—",
        "engine": f"skipped: {why}",
        "lines": [],
        "lost": None,
        "doubled": None,
        "recovery_s": None,
        "recovery": "—",
        "checks": {},
        "skipped": why,
        "test": test,
        "details": {},
    }


# --------------------------------------------------------------------------- output


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown(result: dict) -> str:
    mode = (
        "quick (CI-sized: fewer kills, shorter outages, fewer fuzzed records)"
        if result["quick"]
        else "full"
    )
    out = [
        f"Fault table — {mode} mode, seed {result['seed']}, {result['elapsed_s']:.0f} s "
        f"({result['host']})",
        "",
        "| fault | how it is injected | what the engine did (key log line) | lost / doubled "
        "| recovery | checks | test |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        line = "; ".join(f"`{_cell(x)[:160]}`" for x in row["lines"])
        did = _cell(row["engine"]) + (f" — {line}" if line else "")
        lost = "—" if row["lost"] is None else f"{row['lost']:,} / {row['doubled']:,}"
        checks = row["checks"]
        failed = [k for k, ok in checks.items() if not ok]
        status = (
            "skipped"
            if row.get("skipped")
            else ("error: " + _cell(row["error"])[:200])
            if row.get("error")
            else "all pass"
            if not failed
            else "FAILED: " + ", ".join(failed)
        )
        test = f"`{row['test']}`" if row.get("test") else "—"
        out.append(
            f"| {_cell(row['fault'])} | {_cell(row['injected'])} | {did} | {lost} "
            f"| {_cell(row['recovery'])} | {status} | {test} |"
        )
    return "\n".join(out) + "\n"


SCENARIOS = {
    "kill9": scenario_kill9,
    "broker-kill": scenario_broker_kill,
    "broker-start": scenario_broker_down_at_start,
    "redis-kill": scenario_redis_kill,
    "redis-outage": scenario_redis_outage,
    "disk-full": scenario_disk_full,
    "disk-ro": scenario_disk_ro,
    "disk-start": scenario_disk_at_start,
    "corrupt": scenario_corrupt,
    "fuzz": scenario_fuzz,
    "replay-signals": scenario_replay_signals,
    "run-signals": scenario_run_signals,
}
NEEDS_ROOT = {"disk-full", "disk-ro", "disk-start"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="CI-sized scenarios")
    parser.add_argument("--seed", type=int, default=0, help="kill points, fuzz records")
    parser.add_argument("--only", default=None, help=f"comma list of {','.join(SCENARIOS)}")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    names = list(SCENARIOS) if not args.only else [s.strip() for s in args.only.split(",")]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {unknown}")
    mode = (
        "QUICK mode (CI-sized: fewer kills, shorter outages, fewer fuzzed records)"
        if (args.quick)
        else "full mode"
    )
    say(f"fault table, {mode}, seed {args.seed}")
    has_root = can_mount()
    if not has_root:
        say("not root or no tmpfs: the checkpoint-directory faults are skipped")
    rows: list[dict] = []
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="sevo-faults-") as tmp:
        ctx = Ctx(args.quick, args.seed, Path(tmp))
        for name in names:
            say(f"--- {name}")
            fn = SCENARIOS[name]
            started = time.monotonic()
            try:
                produced = fn(ctx, has_root) if name in NEEDS_ROOT else fn(ctx)
            except Exception as exc:
                traceback.print_exc()
                for engine in _ENGINES:
                    engine.stop()
                produced = {
                    **skipped(name, "error", None),
                    "skipped": None,
                    "error": f"{type(exc).__name__}: {exc}",
                    "engine": "scenario error (see error)",
                }
            for row in produced if isinstance(produced, list) else [produced]:
                row["scenario"] = name
                row["scenario_s"] = round(time.monotonic() - started, 1)
                rows.append(row)
                failed = [k for k, ok in row["checks"].items() if not ok]
                say(
                    f"{row['fault']}: lost {row['lost']}, doubled {row['doubled']}, "
                    f"recovery {row['recovery']}; "
                    + ("FAILED " + ", ".join(failed) if failed else row.get("error") or "ok")
                )
    result = {
        "quick": args.quick,
        "seed": args.seed,
        "elapsed_s": time.monotonic() - t0,
        "host": f"{platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "command": "python benchmarks/faults.py"
        + (" --quick" if args.quick else "")
        + (f" --seed {args.seed}" if args.seed else "")
        + (f" --only {args.only}" if args.only else ""),
        "limits": {
            "max_record_bytes": MAX_RECORD_BYTES,
            "producer_max_request_bytes": PRODUCER_MAX_REQUEST_BYTES,
        },
        "rows": rows,
    }
    stem = "faults-quick" if args.quick else "faults"
    if args.only:
        stem += "-partial"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    table = markdown(result)
    (args.out / f"{stem}.md").write_text(table)
    print(table)
    say(f"wrote {args.out / stem}.json and .md ({mode})")
    for engine in _ENGINES:
        engine.stop()
    bad = [r for r in rows if r.get("error") or not all(r["checks"].values())]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
