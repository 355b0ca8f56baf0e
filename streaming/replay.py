"""Replay an interaction log through the online trainer (DESIGN §4 "Replay", §6 "Streaming").

The same pipeline as the Kafka consumer, fed from a file or a named data set:
:class:`LogSource` yields micro-batches in event-time order with a resume position, and
:func:`run_replay` runs test-then-train (optional), learning, dead-letter handling and periodic
checkpoints, resuming from the newest valid checkpoint.

Example:
    >>> from engine.online import OnlineConfig, OnlineTrainer
    >>> source = LogSource("ml-100k", batch_size=1000, limit=5000)  # doctest: +SKIP
    >>> trainer = OnlineTrainer(OnlineConfig())
    >>> summary = run_replay(source, trainer, prequential=True)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from engine.data import DATASET_NAMES as _DATASET_NAMES
from engine.online import OnlineTrainer
from streaming.checkpoint import Checkpoint, CheckpointStore
from streaming.events import DeadLetter, DeadLetterSink, EventBatch, parse_records
from streaming.serving import EmbeddingPublisher

__all__ = ["LogSource", "Prequential", "run_replay"]

log = logging.getLogger(__name__)

_JSONL_SUFFIXES = (".jsonl", ".ndjson")


class LogSource:
    """A finite event log read into memory and served as micro-batches in event-time order.

    Sources: a data set name (``"ml-100k"``, ``"beauty"``), a JSONL file of the wire format
    (``.jsonl`` / ``.ndjson``: every line goes through :func:`~streaming.events.parse_records`, so
    bad lines become dead letters with position ``"path:line"`` and the replay goes on), or any
    file or directory :func:`engine.data.load_dataset` reads (CSV/TSV, MovieLens, Amazon; these
    loaders reject a malformed file as a whole).

    Valid events are sorted by timestamp with a stable sort (ties keep file order; for named data
    sets ties keep the loader's (user, time) order). Positions count valid events in that order:
    :meth:`position` is the index of the next event — a resume position after the last one
    yielded — and :meth:`seek` moves to one. The JSONL dead letters are attached to the batch that
    starts at position 0.

    Args:
        name_or_path: a data set name or a path.
        batch_size: events per micro-batch.
        rate: replay speed in events per second (sleeps between batches); ``None`` = as fast as
            possible.
        limit: only the first ``limit`` events (in event-time order) exist.
        now: "now" for the far-future check of JSONL records (default: the wall clock).
        sleep: the sleep function used for ``rate`` (injectable for tests).
    """

    def __init__(
        self,
        name_or_path: str | os.PathLike[str],
        *,
        batch_size: int = 1000,
        rate: float | None = None,
        limit: int | None = None,
        now: float | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if rate is not None and not (math.isfinite(rate) and rate > 0):
            raise ValueError(f"rate must be a positive number of events/s or None, got {rate!r}")
        if limit is not None and (isinstance(limit, bool) or int(limit) != limit or limit < 0):
            raise ValueError(f"limit must be a non-negative integer or None, got {limit!r}")
        self.batch_size = batch_size
        self.rate = None if rate is None else float(rate)
        self._sleep = sleep
        self.dead_letters: list[DeadLetter] = []
        text = str(name_or_path)
        path = Path(name_or_path).expanduser()
        if text.lower() in _DATASET_NAMES and not path.exists():
            self.key = f"file:{text.lower()}"
            users, items, times, weights = _load_dataset(text)
        else:
            if not path.exists():
                raise FileNotFoundError(f"{text!r} is neither a known data set nor a path")
            self.key = f"file:{path.resolve()}"
            if path.is_file() and path.suffix.lower() in _JSONL_SUFFIXES:
                users, items, times, weights = self._load_jsonl(
                    path, time.time() if now is None else now
                )
            else:
                users, items, times, weights = _load_dataset(path)
        order = np.argsort(times, kind="stable")
        if limit is not None:
            order = order[: int(limit)]
        self._users, self._items = users[order], items[order]
        self._times, self._weights = times[order], weights[order]
        self._pos = 0
        self._clock_start: float | None = None
        self._emitted = 0
        self._dead_pending = bool(self.dead_letters)

    def _load_jsonl(
        self, path: Path, now: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        raws, positions = [], []
        with path.open("rb") as fh:
            for lineno, line in enumerate(fh, start=1):
                if line.strip():
                    raws.append(line)
                    positions.append(f"{path}:{lineno}")
        events, dead = parse_records(raws, positions, now=now)
        self.dead_letters = dead
        if dead:
            log.warning("%s: %d invalid line(s) go to dead letters", path, len(dead))
        batch = EventBatch.from_events(events)
        return batch.users, batch.items, batch.times, batch.weights

    def __len__(self) -> int:
        return int(self._times.shape[0])

    def position(self) -> int:
        """Index of the next event to be yielded (``len(self)`` when exhausted)."""
        return self._pos

    def seek(self, position: int) -> None:
        """Continue from ``position`` (an earlier :meth:`position` value)."""
        if isinstance(position, bool) or int(position) != position:
            raise ValueError(f"position must be an integer, got {position!r}")
        if not 0 <= position <= len(self):
            raise ValueError(f"position {position} is outside [0, {len(self)}]")
        self._pos = int(position)
        self._clock_start, self._emitted = None, 0
        self._dead_pending = self._pos == 0 and bool(self.dead_letters)

    def next_batch(self) -> EventBatch | None:
        """The next micro-batch, or ``None`` at the end of the log."""
        start = self._pos
        if start >= len(self) and not self._dead_pending:
            return None
        end = min(start + self.batch_size, len(self))
        if self.rate is not None:
            now = time.monotonic()
            if self._clock_start is None:
                self._clock_start = now
            wait = self._clock_start + self._emitted / self.rate - now
            if wait > 0:
                self._sleep(wait)
            self._emitted += end - start
        self._pos = end
        dead = list(self.dead_letters) if self._dead_pending else []
        self._dead_pending = False
        return EventBatch(
            users=self._users[start:end],
            items=self._items[start:end],
            times=self._times[start:end],
            weights=self._weights[start:end],
            dead_letters=dead,
            start=start,
            end=end,
        )

    def __iter__(self) -> Iterator[EventBatch]:
        while True:
            batch = self.next_batch()
            if batch is None:
                return
            yield batch
            if batch.end >= len(self):
                return


def _load_dataset(name_or_path: str | Path) -> tuple[np.ndarray, ...]:
    from engine.data import load_dataset

    inter = load_dataset(name_or_path)
    users = inter.user_ids[inter.users]
    items = inter.item_ids[inter.items]
    return users, items, inter.times.copy(), np.ones(inter.num_interactions, dtype=np.float64)


def _rank_within(keys: np.ndarray) -> np.ndarray:
    """For each element, how many earlier elements have the same key."""
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    order = np.argsort(inverse, kind="stable")
    first = np.cumsum(counts) - counts
    out = np.empty(keys.shape[0], dtype=np.int64)
    out[order] = np.arange(keys.shape[0]) - np.repeat(first, counts)
    return out


# ---------------------------------------------------------------------- prequential metrics
_AGE_BUCKETS = ((0, 1, "0"), (1, 10, "1-9"), (10, 100, "10-99"), (100, None, "100+"))


class Prequential:
    """Test-then-train metrics: HR@K and NDCG@K over all events, per window and per item age.

    An event whose item was unknown when it was ranked (rank > number of known items) is a miss.
    The *item age* of an event is how many earlier events had the same item (first sight = 0).

    Args:
        k: the cut-off K.
        window: events per reporting window.
    """

    def __init__(self, k: int = 10, window: int = 10_000) -> None:
        if k < 1 or window < 1:
            raise ValueError("k and window must be positive")
        self.k, self.window = int(k), int(window)
        self.count = 0
        self.hits = 0.0
        self.ndcg = 0.0
        self.windows: list[list[float]] = []  # [events, hits, ndcg] per window
        self.ages = {name: [0, 0.0, 0.0] for _, _, name in _AGE_BUCKETS}

    def update(self, ranks: np.ndarray, num_known: int, ages: np.ndarray) -> None:
        """Add one batch: ``ranks`` from ``rank_before_learning`` taken with ``num_known`` items."""
        ranks = np.asarray(ranks, dtype=np.int64)
        hit = ((ranks <= self.k) & (ranks <= num_known)).astype(np.float64)
        gain = np.where(hit > 0, 1.0 / np.log2(ranks.astype(np.float64) + 1.0), 0.0)
        n = ranks.shape[0]
        idx = (self.count + np.arange(n)) // self.window
        first = int(idx[0]) if n else 0
        for w, (c, h, g) in enumerate(
            zip(
                np.bincount(idx - first),
                np.bincount(idx - first, weights=hit),
                np.bincount(idx - first, weights=gain),
            )
        ):
            while len(self.windows) <= first + w:
                self.windows.append([0, 0.0, 0.0])
            row = self.windows[first + w]
            row[0] += int(c)
            row[1] += float(h)
            row[2] += float(g)
        self.count += n
        self.hits += float(hit.sum())
        self.ndcg += float(gain.sum())
        for lo, hi, name in _AGE_BUCKETS:
            sel = (ages >= lo) if hi is None else ((ages >= lo) & (ages < hi))
            row = self.ages[name]
            row[0] += int(sel.sum())
            row[1] += float(hit[sel].sum())
            row[2] += float(gain[sel].sum())

    def rank_and_update(self, trainer: OnlineTrainer, users: np.ndarray, items: np.ndarray) -> None:
        """Rank a batch with the trainer as it is (before learning it) and add the result."""
        num_known = trainer.num_items
        ranks = trainer.rank_before_learning(users, items)
        ages = trainer.item_event_counts(items) + _rank_within(np.asarray(items))
        self.update(ranks, num_known, ages)

    def summary(self) -> dict[str, Any]:
        k = self.k

        def rates(n: float, h: float, g: float) -> dict[str, Any]:
            return {
                "events": int(n),
                f"HR@{k}": h / n if n else math.nan,
                f"NDCG@{k}": g / n if n else math.nan,
            }

        return {
            **rates(self.count, self.hits, self.ndcg),
            "window": self.window,
            "windows": [
                {"start": i * self.window, **rates(*row)} for i, row in enumerate(self.windows)
            ],
            "by_item_age": {name: rates(*row) for name, row in self.ages.items()},
        }

    def state(self) -> dict[str, Any]:
        """JSON-serialisable state (kept in checkpoint meta)."""
        return {
            "k": self.k,
            "window": self.window,
            "count": self.count,
            "hits": self.hits,
            "ndcg": self.ndcg,
            "windows": self.windows,
            "ages": self.ages,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Prequential:
        obj = cls(int(state["k"]), int(state["window"]))
        obj.count = int(state["count"])
        obj.hits, obj.ndcg = float(state["hits"]), float(state["ndcg"])
        obj.windows = [[int(r[0]), float(r[1]), float(r[2])] for r in state["windows"]]
        obj.ages.update(
            {k: [int(v[0]), float(v[1]), float(v[2])] for k, v in state["ages"].items()}
        )
        return obj


# ---------------------------------------------------------------------- the replay loop
def run_replay(
    source: LogSource,
    trainer: OnlineTrainer,
    *,
    checkpoint_store: CheckpointStore | None = None,
    checkpoint_every: int = 50_000,
    prequential: bool = False,
    dead_letters: DeadLetterSink | None = None,
    progress: bool = True,
    k: int = 10,
    window: int = 10_000,
    publisher: EmbeddingPublisher | None = None,
) -> dict[str, Any]:
    """Replay ``source`` through ``trainer``; return a summary.

    With a ``checkpoint_store``, the newest valid checkpoint is restored into ``trainer`` first
    (its config must equal the trainer's) and the source seeks to the checkpoint's offset for
    ``source.key``; a checkpoint is written every ``checkpoint_every`` events and at the end, so
    a rerun after any crash applies every event exactly once. Dead-letter counters and
    prequential sums travel in the checkpoint too.

    Args:
        source: the log.
        trainer: the trainer to update (restored in place from a checkpoint if there is one).
        checkpoint_store: where checkpoints go; ``None`` = no checkpoints, no resume.
        checkpoint_every: events between checkpoints.
        prequential: rank each event before learning it and report HR@K / NDCG@K.
        dead_letters: a sink for invalid records (they are counted either way).
        progress: show a tqdm bar.
        k: cut-off of the prequential metrics.
        window: events per prequential reporting window.
        publisher: publishes the trainer's embeddings to Redis while replaying (every
            ``publish_every_s`` of wall time and at the end); closed here.

    Returns:
        ``{"source", "events", "events_applied", "start_position", "end_position",
        "resumed_from_version", "events_per_s", "seconds": {...}, "prequential": {...} | None,
        "graph": {...}, "num_users", "num_items", "dead_letters": {reason: n},
        "dead_letters_total", "checkpoint": {...} | None, "loss": last batch loss}``.

    Raises:
        ValueError: a checkpoint of another source or another trainer config.
    """
    if checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be >= 1, got {checkpoint_every!r}")
    started = time.perf_counter()
    counters: Counter[str] = Counter()
    evaluator = Prequential(k, window) if prequential else None
    start, resumed = 0, None
    if checkpoint_store is not None:
        ckpt = checkpoint_store.latest_checkpoint()
        if ckpt is not None:
            if source.key not in ckpt.offsets:
                raise ValueError(
                    f"{checkpoint_store.directory} holds a checkpoint of {sorted(ckpt.offsets)}, "
                    f"not of {source.key}; use another --checkpoint-dir"
                )
            check_checkpoint_config(ckpt, trainer, checkpoint_store.directory)
            trainer.load_state_dict(ckpt.state)
            counters.update(ckpt.meta.get("dead_letters", {}))
            if evaluator is not None and ckpt.meta.get("prequential"):
                evaluator = Prequential.from_state(ckpt.meta["prequential"])
            start, resumed = ckpt.offsets[source.key], ckpt.version
            log.info(
                "resuming from checkpoint %d at position %d (%d events applied)",
                ckpt.version,
                start,
                trainer.events_applied,
            )
    source.seek(start)

    seconds = Counter()
    events = 0
    since_ckpt = 0
    last_ckpt: dict[str, Any] | None = None
    loss = math.nan

    def save_checkpoint() -> None:
        nonlocal last_ckpt, since_ckpt
        t = time.perf_counter()
        meta = {
            "source": source.key,
            "dead_letters": dict(counters),
            "dead_letters_total": int(sum(counters.values())),
            "prequential": None if evaluator is None else evaluator.state(),
            **trainer.summary(),
        }
        path = checkpoint_store.save(trainer.state_dict(), {source.key: source.position()}, meta)
        last_ckpt = {"path": str(path), "position": source.position()}
        since_ckpt = 0
        seconds["checkpoint"] += time.perf_counter() - t

    bar = tqdm(
        total=len(source),
        initial=start,
        disable=not progress,
        unit="ev",
        unit_scale=True,
        desc="replay",
        dynamic_ncols=True,
    )
    watermark: float | None = None
    if publisher is not None and trainer.num_items:
        publisher.observe(trainer, offsets={source.key: start}, force=True)
    try:
        for batch in source:
            if batch.dead_letters:
                counters.update(d.reason for d in batch.dead_letters)
                if dead_letters is not None:
                    dead_letters.write(batch.dead_letters)
            n = len(batch)
            if n:
                if evaluator is not None:
                    t = time.perf_counter()
                    evaluator.rank_and_update(trainer, batch.users, batch.items)
                    seconds["eval"] += time.perf_counter() - t
                stats = trainer.learn_many(batch.users, batch.items, batch.times, batch.weights)
                for key, value in stats["seconds"].items():
                    seconds[key] += value
                if not math.isnan(stats["loss"]):
                    loss = stats["loss"]
                events += n
                since_ckpt += n
                bar.update(n)
                newest = float(np.max(batch.times))
                watermark = newest if watermark is None else max(watermark, newest)
                if publisher is not None:
                    publisher.observe(
                        trainer,
                        batch.users,
                        watermark=watermark,
                        offsets={source.key: source.position()},
                    )
                if evaluator is not None and evaluator.count:
                    bar.set_postfix(
                        hr10=f"{evaluator.hits / evaluator.count:.3f}", items=trainer.num_items
                    )
            if checkpoint_store is not None and since_ckpt >= checkpoint_every:
                save_checkpoint()
        if checkpoint_store is not None and (since_ckpt or (events == 0 and resumed is None)):
            save_checkpoint()
    finally:
        bar.close()
        if publisher is not None:
            publisher.close(trainer, watermark=watermark, offsets={source.key: source.position()})

    return summarize_run(
        trainer,
        source=source.key,
        events=events,
        start_position=start,
        end_position=source.position(),
        resumed_from_version=resumed,
        total_s=time.perf_counter() - started,
        seconds=seconds,
        dead_letters=counters,
        checkpoint=last_ckpt,
        loss=loss,
        prequential=None if evaluator is None else evaluator.summary(),
    )


def check_checkpoint_config(ckpt: Checkpoint, trainer: OnlineTrainer, directory: Any) -> None:
    """Refuse a checkpoint written with another trainer config (one clear line, the keys).

    Raises:
        ValueError: naming the settings that differ.
    """
    saved, mine = ckpt.state.get("config"), trainer.config.to_dict()
    if saved != mine:
        saved = saved if isinstance(saved, dict) else {}
        diff = sorted(k for k in set(saved) | set(mine) if saved.get(k) != mine.get(k))
        raise ValueError(
            f"the checkpoint in {directory} was written with other "
            f"settings ({', '.join(diff)}); use the same settings or another directory"
        )


def summarize_run(
    trainer: OnlineTrainer,
    *,
    source: str,
    events: int,
    start_position: Any,
    end_position: Any,
    resumed_from_version: int | None,
    total_s: float,
    seconds: Mapping[str, float],
    dead_letters: Mapping[str, int],
    checkpoint: dict[str, Any] | None,
    loss: float,
    prequential: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The summary of a run of the online pipeline (replay or Kafka consumer).

    ``seconds`` holds the summed ``learn_many`` timings (``ids``, ``graph``, ``state``,
    ``train``) plus ``eval`` and ``checkpoint``; whatever they do not account for is ``other``.
    """
    accounted = sum(
        seconds.get(k, 0.0) for k in ("ids", "graph", "state", "train", "eval", "checkpoint")
    )
    graph = trainer.graph
    summary = trainer.summary()
    return {
        "source": source,
        "events": events,
        "events_applied": trainer.events_applied,
        "start_position": start_position,
        "end_position": end_position,
        "resumed_from_version": resumed_from_version,
        "events_per_s": events / total_s if total_s > 0 else math.nan,
        "seconds": {
            "total": total_s,
            "train": seconds.get("train", 0.0),
            "graph": seconds.get("graph", 0.0),
            "state": seconds.get("ids", 0.0) + seconds.get("state", 0.0),
            "prequential_eval": seconds.get("eval", 0.0),
            "checkpoint": seconds.get("checkpoint", 0.0),
            "other": max(0.0, total_s - accounted),
        },
        "prequential": prequential,
        "graph": {
            "nodes": graph.num_nodes,
            "nnz": summary["graph_nnz"],
            "total_weight": summary["graph_total_weight"],
            "half_life": graph.half_life,
            "t_latest": graph.t_latest,
        },
        "num_users": trainer.num_users,
        "num_items": trainer.num_items,
        "dead_letters": dict(dead_letters),
        "dead_letters_total": int(sum(dead_letters.values())),
        "checkpoint": checkpoint,
        "loss": loss,
    }
