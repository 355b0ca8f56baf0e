"""The streaming side of the event wire format: dead letters, their sinks, and micro-batches.

Wire format: one JSON object per Kafka message (key = user id) or per JSONL line::

    {"user_id": "u1", "item_id": 42, "timestamp": 1700000000.5, "weight": 1.0, "event_type": "view"}

The record schema, its validation and the reason codes live in :mod:`engine.data.events`, the one
parser that the engine's file loaders use too (``timestamp`` is unix seconds or an ISO-8601
date-time string; one without an offset is read as UTC). This module applies the streaming
policy to it: bad input is data, not an exception, because one malformed message must not stop
a live pipeline. :func:`parse_records` never raises on a bad record; it returns the good ones as
:class:`Event` and the rest as :class:`DeadLetter` with the parser's reason code (one of
:data:`REASONS`) and the record's position.

Example:
    >>> events, dead = parse_records([b'{"user_id": 1, "item_id": "a", "timestamp": 5}', b"{"],
    ...                              ["t:0:0", "t:0:1"], now=10.0)
    >>> events[0].user_id, [d.reason for d in dead]
    ('1', ['invalid_json'])
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from engine.data import events as _wire
from engine.data.events import MAX_RECORD_BYTES, REASONS, Event, record_size, validate_record

__all__ = [
    "DEAD_LETTER_RAW_PREFIX",
    "MAX_RECORD_BYTES",
    "REASONS",
    "DeadLetter",
    "DeadLetterSink",
    "Event",
    "EventBatch",
    "JsonlDeadLetterSink",
    "encode_event",
    "parse_records",
    "validate_record",
]

log = logging.getLogger(__name__)

DEAD_LETTER_RAW_PREFIX = 1024
"""Bytes of a record above :data:`MAX_RECORD_BYTES` that its dead letter keeps: the sinks write
this prefix (with ``raw_truncated`` and ``raw_bytes``), so a dead-letter message stays within
the producer's request limit whatever was received."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record that failed validation.

    Attributes:
        raw: the record exactly as received.
        reason: one of :data:`REASONS`.
        position: where it came from ("topic:partition:offset" or "path:line").
        detail: a human-readable explanation.
    """

    raw: bytes | str
    reason: str
    position: str
    detail: str = ""

    def sink_raw(self) -> bytes | str:
        """The raw record as sinks write it: whole, or its first :data:`DEAD_LETTER_RAW_PREFIX`
        bytes when it is larger than :data:`MAX_RECORD_BYTES`."""
        if record_size(self.raw) <= MAX_RECORD_BYTES:
            return self.raw
        raw = self.raw if isinstance(self.raw, bytes) else self.raw.encode("utf-8", "surrogatepass")
        return raw[:DEAD_LETTER_RAW_PREFIX]

    def to_json(self, now: float | None = None) -> dict[str, Any]:
        """The JSON object a sink writes (raw decoded as UTF-8 with replacement characters; a
        record above :data:`MAX_RECORD_BYTES` cut to its prefix, with ``raw_truncated`` and
        ``raw_bytes``)."""
        raw = self.sink_raw()
        text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
        obj: dict[str, Any] = {
            "raw": text,
            "reason": self.reason,
            "position": self.position,
            "detail": self.detail,
            "time": time.time() if now is None else now,
        }
        if raw is not self.raw:
            obj["raw_truncated"] = True
            obj["raw_bytes"] = record_size(self.raw)
        return obj


def parse_records(
    raws: Sequence[bytes | str],
    positions: Sequence[str],
    *,
    now: float,
    max_future_s: float = 86_400.0,
    max_id_len: int = 256,
    max_record_bytes: int = MAX_RECORD_BYTES,
) -> tuple[list[Event], list[DeadLetter]]:
    """Decode and validate wire records; never raises on bad input.

    Args:
        raws: the records (Kafka message values or JSONL lines), bytes or str.
        positions: where each record came from, same length (kept on dead letters).
        now: the current time in unix seconds (far-future check); pass it explicitly so that
            tests and replays are deterministic.
        max_future_s: a timestamp more than this after ``now`` is a dead letter.
        max_id_len: ids (and ``event_type``) longer than this are dead letters.
        max_record_bytes: a record larger than this is a dead letter (``too_large``).

    Returns:
        ``(events, dead_letters)``; events keep the input order.

    Raises:
        ValueError: only if ``raws`` and ``positions`` differ in length (a caller bug).
    """
    if len(raws) != len(positions):
        raise ValueError(f"{len(raws)} records but {len(positions)} positions")
    events, rejected = _wire.parse_records(
        raws,
        now=now,
        max_future_s=max_future_s,
        max_id_len=max_id_len,
        max_record_bytes=max_record_bytes,
    )
    dead = [DeadLetter(raws[r.index], r.reason, positions[r.index], r.detail) for r in rejected]
    return events, dead


def encode_event(event: Event) -> bytes:
    """The wire encoding of ``event`` (compact JSON, UTF-8); optional fields only when set."""
    obj: dict[str, Any] = {
        "user_id": event.user_id,
        "item_id": event.item_id,
        "timestamp": event.timestamp,
    }
    if event.weight != 1.0:
        obj["weight"] = event.weight
    if event.event_type is not None:
        obj["event_type"] = event.event_type
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


@dataclass(frozen=True, eq=False)
class EventBatch:
    """A micro-batch of validated events in columnar form (what the trainer consumes).

    Attributes:
        users: ``(n,)`` external user ids (numpy str array).
        items: ``(n,)`` external item ids.
        times: ``(n,)`` float64 unix seconds.
        weights: ``(n,)`` float64.
        dead_letters: records rejected while producing this batch.
        start: source position of the first event (a resume position).
        end: source position after the last event.
    """

    users: np.ndarray
    items: np.ndarray
    times: np.ndarray
    weights: np.ndarray
    dead_letters: list[DeadLetter] = field(default_factory=list)
    start: int = 0
    end: int = 0

    def __len__(self) -> int:
        return int(self.users.shape[0])

    @property
    def records(self) -> int:
        """Records read to make this batch: its events and its dead letters."""
        return len(self) + len(self.dead_letters)

    @classmethod
    def empty(cls) -> EventBatch:
        """A batch with nothing in it (a live source that received nothing in time)."""
        return cls.from_events(())

    @classmethod
    def from_events(
        cls,
        events: Sequence[Event],
        dead_letters: Sequence[DeadLetter] = (),
        *,
        start: int = 0,
        end: int | None = None,
    ) -> EventBatch:
        """Columnar view of a list of :class:`Event`."""
        n = len(events)
        return cls(
            users=np.array([e.user_id for e in events], dtype=str),
            items=np.array([e.item_id for e in events], dtype=str),
            times=np.fromiter((e.timestamp for e in events), dtype=np.float64, count=n),
            weights=np.fromiter((e.weight for e in events), dtype=np.float64, count=n),
            dead_letters=list(dead_letters),
            start=start,
            end=start + n if end is None else end,
        )


@runtime_checkable
class DeadLetterSink(Protocol):
    """Where dead letters go (a file, a Kafka topic). Counters are kept by the pipeline."""

    def write(self, letters: list[DeadLetter]) -> None: ...


class JsonlDeadLetterSink:
    """Appends dead letters to a JSON-lines file, one object per letter, flushed per write.

    Each line is ``{"raw": text, "reason": ..., "position": ..., "detail": ..., "time": unix s}``.
    Delivery is at-least-once: a replay that restarts from an older checkpoint writes the
    letters after that checkpoint again.

    Args:
        path: the file (created with its parent directories; appended to if it exists).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = self.path.open("a", encoding="utf-8")
        self._lock = threading.Lock()

    def write(self, letters: list[DeadLetter]) -> None:
        if not letters:
            return
        now = time.time()
        text = "".join(
            json.dumps(letter.to_json(now), ensure_ascii=False) + "\n" for letter in letters
        )
        with self._lock:
            self._fh.write(text)
            self._fh.flush()

    def close(self) -> None:
        with self._lock:
            if not self._fh.closed:
                self._fh.close()

    def __enter__(self) -> JsonlDeadLetterSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
