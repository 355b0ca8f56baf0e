"""The run's metrics time series: ``metrics.jsonl`` in the checkpoint directory.

The pipeline of ``sevo replay`` and ``sevo run`` appends one JSON object per *sample* to
``<checkpoint-dir>/metrics.jsonl`` (``sevo report`` plots it). A sample is taken

* when a run starts (after the restore: ``"reason": "start"``),
* every :data:`DEFAULT_EVERY_S` seconds of wall time while it runs (``"interval"``; checked
  after each micro-batch and each empty poll),
* after every checkpoint (``"checkpoint"``), and
* when the run ends, unless the previous sample already shows the final state (``"end"``).

Fields of one sample (``null`` where a value is unknown or does not apply):

========================= ===============================================================
``t``                     wall clock (unix s)
``run``                   an id of the run (one ``Pipeline.run``; a restart starts another)
``reason``                ``start``, ``interval``, ``checkpoint`` or ``end``
``elapsed_s``             seconds since this run started
``events_applied``        events the trainer has learned in total (all runs, from the checkpoint)
``events``, ``records``   events learned and records read (events + dead letters) by this run
``batches``               micro-batches processed by this run
``events_per_s``          events learned per second since the previous sample of this run
``step_ms``, ``batch_ms`` mean ``learn_many`` and micro-batch time since the previous sample
                          (from :class:`~streaming.metrics.EngineMetrics`' histograms)
``positions``             next position per source key (what a checkpoint would record)
``lag``                   records behind the end of the source (a log: events not yet read;
                          Kafka: summed over owned partitions)
``watermark``             event time (unix s) of the newest event learned
``freshness``             live sources only: ``{"count", "sum", "buckets": {le: cumulative
                          count}}`` of ``sevo_event_freshness_seconds`` (wall clock at learning
                          minus event time) since this process started
``publish_age_s``         seconds since the last successful publish to Redis
``prequential``           with prequential evaluation: ``{"events", "HR@10", "NDCG@10"}`` over
                          all events so far, and ``"window"``: the same for the latest
                          (possibly still filling) window with its ``index`` and ``start``
``dead_letters``          dead letters by reason, all runs (``dead_letters_total`` their sum)
``graph_nodes``,          rows of the item graph; items and users known
``num_items``,
``num_users``
``checkpoints``           checkpoints written by this run
``rss_bytes``             resident set size now (Linux; ``peak_rss_bytes``: the peak)
========================= ===============================================================

**Crash safety.** The file is opened in append mode and each sample is one complete line
handed to the OS in a single unbuffered ``write``, so earlier lines are never rewritten. A
``kill -9`` (or a full disk) can at worst leave a torn last line: the next run first ends such a
line with a newline, and :func:`read_samples` skips any line that is not a JSON object. No fsync:
the series is for looking at a run, not for recovery (checkpoints are).

**Size bound.** When ``metrics.jsonl`` passes :data:`DEFAULT_MAX_BYTES` it is renamed to
``metrics.1.jsonl`` (replacing an older one) and a new file starts, so the two files hold at most
about twice that; :func:`read_samples` reads both, oldest first.

**Cost.** Per micro-batch only a clock read and a comparison; the work of a sample (a few
counters, a JSON line) happens once per interval or checkpoint, never per event.
"""

from __future__ import annotations

import json
import logging
import math
import os
import resource
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from streaming.pipeline import Pipeline

__all__ = [
    "DEFAULT_EVERY_S",
    "DEFAULT_MAX_BYTES",
    "METRICS_FILE",
    "ROTATED_FILE",
    "MetricsSeries",
    "read_samples",
]

log = logging.getLogger(__name__)

#: The time series' file name inside a checkpoint directory.
METRICS_FILE = "metrics.jsonl"
#: The previous file after a rotation.
ROTATED_FILE = "metrics.1.jsonl"
#: Seconds between two interval samples.
DEFAULT_EVERY_S = 2.0
#: Size at which ``metrics.jsonl`` is rotated.
DEFAULT_MAX_BYTES = 32 * 1024 * 1024


def _finite(value: Any) -> float | None:
    """A float, or None for None/NaN/inf (JSON has no NaN)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _values(metric: Any) -> dict[str, float]:
    """The samples of one unlabelled metric by name suffix (``""``, ``"_count"``, ``"_sum"``;
    0 when absent): read from the metric itself, not by scanning the whole registry."""
    out = {"_count": 0.0, "_sum": 0.0}
    for family in metric.collect():
        for s in family.samples:
            out[s.name[len(family.name) :]] = s.value
    return out


def _mean_ms(seconds: float, n: float) -> float | None:
    return 1000.0 * seconds / n if n > 0 else None


def _rss_bytes() -> tuple[int | None, int | None]:
    """``(current, peak)`` resident set size in bytes (current: Linux only)."""
    current = None
    try:
        with open("/proc/self/statm", "rb") as f:
            current = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak *= 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return current, int(peak)


class MetricsSeries:
    """Appends the samples of one pipeline to ``directory/metrics.jsonl``.

    Args:
        directory: the checkpoint directory.
        every_s: seconds between interval samples.
        max_bytes: rotate ``metrics.jsonl`` once it is larger than this.
        clock: monotonic clock for the interval and the rates, injectable.

    Writing errors (e.g. a full disk) are logged once and turn the series off: metrics never
    stop training.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        every_s: float = DEFAULT_EVERY_S,
        max_bytes: int = DEFAULT_MAX_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not every_s > 0 or max_bytes < 1:
            raise ValueError("every_s and max_bytes must be positive")
        self.path = Path(directory) / METRICS_FILE
        self.every_s = float(every_s)
        self.max_bytes = int(max_bytes)
        self.clock = clock
        self.samples = 0  # written by this object
        self._file: Any = None
        self._lock = threading.Lock()
        self._broken = False
        self._run = ""
        self._started = self._last_t = -math.inf
        self._last_events = 0
        # batches, step count and sum, batch count and sum at the previous sample
        self._last: tuple[int, float, float, float, float] = (0, 0.0, 0.0, 0.0, 0.0)

    # ------------------------------------------------------------------ the pipeline's calls
    def begin(self, pipeline: Pipeline) -> None:
        """A run starts (after the restore): reset the run's baselines, write a start sample."""
        self._run = os.urandom(4).hex()
        self._started = self._last_t = self.clock()
        self._last_events = pipeline.events
        self._last = (-1, *self._histograms(pipeline))
        self.record(pipeline, "start")

    def maybe_record(self, pipeline: Pipeline) -> None:
        """Write an interval sample if ``every_s`` passed since the previous sample."""
        if self.clock() - self._last_t >= self.every_s:
            self.record(pipeline, "interval")

    def end(self, pipeline: Pipeline) -> None:
        """The run ends: a last sample unless the previous one shows this state; close."""
        try:
            if self._last[0] != pipeline.batches:
                self.record(pipeline, "end")
        finally:
            self.close()

    def record(self, pipeline: Pipeline, reason: str) -> None:
        """Append one sample now."""
        if self._broken:
            return
        with self._lock:
            try:
                sample = self._sample(pipeline, reason)
                self._append((json.dumps(sample, separators=(",", ":")) + "\n").encode())
            except (OSError, TypeError, ValueError) as exc:
                self._broken = True
                log.warning("not writing %s any more: %s", self.path, exc)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    # ------------------------------------------------------------------ internals
    @staticmethod
    def _histograms(pipeline: Pipeline) -> tuple[float, float, float, float]:
        metrics = pipeline.metrics
        step, batch = _values(metrics.step_seconds), _values(metrics.batch_seconds)
        return step["_count"], step["_sum"], batch["_count"], batch["_sum"]

    def _sample(self, pipeline: Pipeline, reason: str) -> dict[str, Any]:
        now = self.clock()
        trainer, metrics = pipeline.trainer, pipeline.metrics
        _, steps0, step_sum0, nb0, batch_sum0 = self._last
        steps, step_sum, nb, batch_sum = self._histograms(pipeline)
        dt = now - self._last_t
        rate = None
        if reason != "start" and dt > 0 and math.isfinite(dt):
            rate = (pipeline.events - self._last_events) / dt
        sample: dict[str, Any] = {
            "t": time.time(),
            "run": self._run,
            "reason": reason,
            "elapsed_s": max(0.0, now - self._started),
            "events_applied": int(trainer.events_applied),
            "events": pipeline.events,
            "records": pipeline.records,
            "batches": pipeline.batches,
            "events_per_s": rate,
            "step_ms": _mean_ms(step_sum - step_sum0, steps - steps0),
            "batch_ms": _mean_ms(batch_sum - batch_sum0, nb - nb0),
        }
        sample.update(self._source_fields(pipeline))
        sample["watermark"] = pipeline.watermark
        sample["freshness"] = self._freshness(metrics)
        sample["publish_age_s"] = _finite(_values(metrics.publish_age_seconds).get(""))
        sample["prequential"] = self._prequential(pipeline)
        sample["dead_letters"] = dict(pipeline.counters)
        sample["dead_letters_total"] = int(sum(pipeline.counters.values()))
        sample["graph_nodes"] = int(trainer.graph.num_nodes)
        sample["num_items"] = int(trainer.num_items)
        sample["num_users"] = int(trainer.num_users)
        sample["checkpoints"] = pipeline.checkpoints
        sample["rss_bytes"], sample["peak_rss_bytes"] = _rss_bytes()
        self._last = (pipeline.batches, steps, step_sum, nb, batch_sum)
        self._last_events = pipeline.events
        self._last_t = now
        return sample

    @staticmethod
    def _source_fields(pipeline: Pipeline) -> dict[str, Any]:
        source = pipeline.source
        if source is None:
            return {"positions": None, "lag": None}
        positions = pipeline.reflected()
        if source.total is not None:  # a log: cheap and exact
            lag = source.lag()
            known = [v for v in lag.values() if v is not None]
            total_lag = int(sum(known)) if known else None
        else:  # Kafka: what the loop last read into the metrics (no broker call here)
            total_lag = pipeline.metrics.total_lag()
        return {"positions": positions, "lag": total_lag}

    @staticmethod
    def _freshness(metrics: Any) -> dict[str, Any] | None:
        count, total, buckets = 0.0, None, {}
        for family in metrics.event_freshness_seconds.collect():
            for s in family.samples:
                if s.name.endswith("_bucket"):
                    buckets[s.labels["le"]] = int(s.value)
                elif s.name.endswith("_count"):
                    count = s.value
                elif s.name.endswith("_sum"):
                    total = _finite(s.value)
        if not count:
            return None
        return {"count": int(count), "sum": total, "buckets": buckets}

    @staticmethod
    def _prequential(pipeline: Pipeline) -> dict[str, Any] | None:
        ev = pipeline.evaluator
        if ev is None or not ev.count:
            return None
        k = ev.k
        out: dict[str, Any] = {
            "events": ev.count,
            f"HR@{k}": ev.hits / ev.count,
            f"NDCG@{k}": ev.ndcg / ev.count,
        }
        if ev.windows:
            index = len(ev.windows) - 1
            n, hits, ndcg = ev.windows[index]
            out["window"] = {
                "index": index,
                "start": index * ev.window,
                "events": int(n),
                f"HR@{k}": hits / n if n else None,
                f"NDCG@{k}": ndcg / n if n else None,
            }
        return out

    def _append(self, line: bytes) -> None:
        if self._file is not None and self._file.tell() + len(line) > self.max_bytes:
            self.close()
            os.replace(self.path, self.path.with_name(ROTATED_FILE))
        if self._file is None:
            self._file = open(self.path, "ab", buffering=0)  # noqa: SIM115 (kept open)
            if self._file.tell() and not _ends_with_newline(self.path):
                self._file.write(b"\n")  # end a line torn by a crash; readers skip it
        self._file.write(line)
        self.samples += 1


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def _lines(path: Path) -> Iterator[bytes]:
    try:
        with open(path, "rb") as f:
            yield from f
    except FileNotFoundError:
        return


def read_samples(directory: str | os.PathLike[str]) -> tuple[list[dict[str, Any]], int]:
    """The samples of ``directory``'s time series, oldest first (the rotated file, then the
    current one), and how many lines were skipped (torn by a crash or not JSON objects)."""
    directory = Path(directory)
    samples, skipped = [], 0
    for name in (ROTATED_FILE, METRICS_FILE):
        for raw in _lines(directory / name):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except ValueError:
                skipped += 1
                continue
            if isinstance(obj, dict) and "t" in obj:
                samples.append(obj)
            else:
                skipped += 1
    return samples, skipped
