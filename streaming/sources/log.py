"""A finite event log as a pipeline source: a named data set or a file, in event-time order.

Every record is parsed by the one wire-format parser (:mod:`engine.data.events`) or by the
data-set loaders of :mod:`engine.data`, so a file means the same thing to ``sevo data stats``,
``sevo offline`` and ``sevo replay``.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from engine.data import is_dataset_name
from streaming.events import DeadLetter, EventBatch, parse_records

__all__ = ["LogSource"]

log = logging.getLogger(__name__)

_JSONL_SUFFIXES = (".jsonl", ".ndjson")
_JSONL_CHUNK_LINES = 65_536  # lines parsed at a time (bounds the loader's transient objects)


class LogSource:
    """A finite event log read into memory and served as micro-batches in event-time order.

    Sources: a data set name (``"ml-100k"``, ``"beauty"``, ``"synthetic-drift:0.1"``), a JSONL
    file of the wire format (``.jsonl`` / ``.ndjson``: every line goes through
    :func:`~streaming.events.parse_records`, so bad lines become dead letters with position
    ``"path:line"`` and the replay goes on), or any
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
        batch_size: int = 256,
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
        if is_dataset_name(text) and not path.exists():
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
        # Per event the log keeps int32 codes into id tables (decoded per batch), the time and,
        # only when some event has another weight than 1, the weight: ids held as strings per
        # event would cost several times as much for a long log.
        self._user_ids, self._users = _codes(users, order)
        self._item_ids, self._items = _codes(items, order)
        self._times = times[order]
        self._weights = None if bool(np.all(weights == 1.0)) else weights[order]
        self._pos = 0
        self._clock_start: float | None = None
        self._emitted = 0
        self._dead_pending = bool(self.dead_letters)

    def _load_jsonl(
        self, path: Path, now: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Parse the file in chunks of lines: each chunk's Python objects (raw lines, position
        strings, events) become columnar arrays before the next chunk is read."""
        columns: list[list[np.ndarray]] = [[], [], [], []]
        raws: list[bytes] = []
        numbers: list[int] = []

        def flush() -> None:
            events, dead = parse_records(raws, [f"{path}:{n}" for n in numbers], now=now)
            self.dead_letters.extend(dead)
            batch = EventBatch.from_events(events)
            for column, values in zip(
                columns, (batch.users, batch.items, batch.times, batch.weights), strict=True
            ):
                column.append(values)
            raws.clear()
            numbers.clear()

        with path.open("rb") as fh:
            for lineno, line in enumerate(fh, start=1):
                if line.strip():
                    raws.append(line)
                    numbers.append(lineno)
                    if len(raws) >= _JSONL_CHUNK_LINES:
                        flush()
        flush()
        if self.dead_letters:
            log.warning("%s: %d invalid line(s) go to dead letters", path, len(self.dead_letters))
        users, items, times, weights = (np.concatenate(c) for c in columns)
        return users, items, times, weights

    def __len__(self) -> int:
        return int(self._times.shape[0])

    def position(self) -> int:
        """Index of the next event to be yielded (``len(self)`` when exhausted)."""
        return self._pos

    def seek(self, position: int | Mapping[str, int]) -> None:
        """Continue from ``position`` (an earlier :meth:`position` value, or a checkpoint's
        positions ``{key: position}``; a mapping without this source's key means the start,
        one with it means a resume, after the file's dead letters were delivered)."""
        checkpointed = isinstance(position, Mapping) and self.key in position
        if isinstance(position, Mapping):
            position = int(position.get(self.key, 0))
        if isinstance(position, bool) or int(position) != position:
            raise ValueError(f"position must be an integer, got {position!r}")
        if not 0 <= position <= len(self):
            raise ValueError(f"position {position} is outside [0, {len(self)}]")
        self._pos = int(position)
        self._clock_start, self._emitted = None, 0
        # The file's dead letters travel with the first batch; a checkpoint of this log was
        # written after that batch, so resuming from one never delivers (or counts) them again.
        self._dead_pending = self._pos == 0 and bool(self.dead_letters) and not checkpointed

    def next_batch(self, max_records: int | None = None, timeout_ms: int = 0) -> EventBatch | None:
        """The next micro-batch (at most ``batch_size`` and ``max_records`` events), or
        ``None`` at the end of the log. ``timeout_ms`` is ignored: a log never waits."""
        start = self._pos
        if start >= len(self) and not self._dead_pending:
            return None
        size = self.batch_size if max_records is None else min(self.batch_size, int(max_records))
        if size < 1:
            raise ValueError(f"max_records must be positive, got {max_records!r}")
        end = min(start + size, len(self))
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
            users=self._user_ids[self._users[start:end]],
            items=self._item_ids[self._items[start:end]],
            times=self._times[start:end],
            weights=(
                np.ones(end - start, dtype=np.float64)
                if self._weights is None
                else self._weights[start:end]
            ),
            dead_letters=dead,
            start=start,
            end=end,
        )

    # ------------------------------------------------------------------ source contract

    group = None  # a log is read by one process: no consumer group

    @property
    def total(self) -> int:
        """Events in the log (for progress)."""
        return len(self)

    def owns(self, position_key: str) -> bool:
        """Whether a checkpoint position key names this log."""
        return position_key == self.key

    def attach(self, listener: object) -> None:
        """A log has no rebalances: nothing to route."""

    def positions(self, *, resolve: bool = True) -> dict[str, int]:
        """``{key: position}``: where a resume continues."""
        return {self.key: self._pos}

    def commit(self, positions: Mapping[str, int]) -> bool:
        """A file has no consumer group to tell: nothing to commit."""
        return False

    def lag(self) -> dict[str, int]:
        """Events not yet yielded."""
        return {self.key: len(self) - self._pos}

    def close(self) -> None:
        """Nothing to release (the log is in memory)."""

    def __iter__(self) -> Iterator[EventBatch]:
        while True:
            batch = self.next_batch()
            if batch is None:
                return
            yield batch
            if batch.end >= len(self):
                return


def _load_dataset(name_or_path: str | Path) -> tuple[Any, Any, np.ndarray, np.ndarray]:
    """(users, items, times, weights) of a data set; ids as ``(codes, id table)`` pairs."""
    from engine.data import load_dataset

    inter = load_dataset(name_or_path)
    users = (inter.users, inter.user_ids)
    items = (inter.items, inter.item_ids)
    return users, items, inter.times.copy(), np.ones(inter.num_interactions, dtype=np.float64)


def _codes(ids: Any, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(id table, int32 codes in ``order``)`` of per-event ids given as a str array or as a
    ``(codes, id table)`` pair."""
    if isinstance(ids, tuple):
        codes, table = ids
    else:
        table, codes = np.unique(np.asarray(ids, dtype=str), return_inverse=True)
    index = np.int32 if len(table) < np.iinfo(np.int32).max else np.int64
    return np.asarray(table, dtype=str), np.asarray(codes).reshape(-1)[order].astype(index)
