"""Events on the wire, validation at the edge, and dead letters (DESIGN §4).

Wire format: one JSON object per Kafka message (key = user id) or per JSONL line::

    {"user_id": "u1", "item_id": 42, "timestamp": 1700000000.5, "weight": 1.0, "event_type": "view"}

``user_id`` / ``item_id`` are strings or integers (kept as strings inside the engine),
``timestamp`` is unix seconds (int or float), ``weight`` (default 1) and ``event_type`` are
optional; other fields are ignored.

Bad input is data, not an exception (CONVENTIONS 7): :func:`parse_records` never raises on a bad
record; it returns the good ones as :class:`Event` and the rest as :class:`DeadLetter` with a short
machine reason code:

================== ===========================================================================
reason             cause
================== ===========================================================================
``invalid_json``   not UTF-8, or not parseable as JSON
``not_object``     valid JSON but not an object (``[1, 2]``, ``"x"``, ``null``)
``missing_field``  ``user_id``, ``item_id`` or ``timestamp`` absent or ``null``
``bad_type``       a field of the wrong type (bool is not a number; ids must be str or int;
                   ``weight`` a number; ``event_type`` a string)
``bad_id``         an empty / blank id, or one longer than ``max_id_len`` characters
``bad_timestamp``  NaN, infinite or negative time
``future_timestamp`` time more than ``max_future_s`` after ``now``
``bad_weight``     negative, NaN or infinite weight
================== ===========================================================================

Example:
    >>> events, dead = parse_records([b'{"user_id": 1, "item_id": "a", "timestamp": 5}', b"{"],
    ...                              ["t:0:0", "t:0:1"], now=10.0)
    >>> events[0].user_id, [d.reason for d in dead]
    ('1', ['invalid_json'])
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = [
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

REASONS: tuple[str, ...] = (
    "invalid_json",
    "not_object",
    "missing_field",
    "bad_type",
    "bad_id",
    "bad_timestamp",
    "future_timestamp",
    "bad_weight",
)
"""Every reason code a dead letter can carry."""

_REQUIRED = ("user_id", "item_id", "timestamp")


@dataclass(frozen=True, slots=True)
class Event:
    """One validated interaction.

    Attributes:
        user_id: external user id (ints on the wire become their decimal string).
        item_id: external item id.
        timestamp: event time, unix seconds.
        weight: non-negative finite weight (scales the event's graph edges).
        event_type: free-form type ("view", "purchase", ...), or None.
    """

    user_id: str
    item_id: str
    timestamp: float
    weight: float = 1.0
    event_type: str | None = None


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

    def to_json(self, now: float | None = None) -> dict[str, Any]:
        """The JSON object a sink writes (raw decoded as UTF-8 with replacement characters)."""
        raw = (
            self.raw.decode("utf-8", errors="replace") if isinstance(self.raw, bytes) else self.raw
        )
        return {
            "raw": raw,
            "reason": self.reason,
            "position": self.position,
            "detail": self.detail,
            "time": time.time() if now is None else now,
        }


class _InvalidRecordError(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_id(name: str, value: Any, max_id_len: int) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise _InvalidRecordError(
            "bad_type", f"{name} must be a string or an integer, got {type(value).__name__}"
        )
    text = value if isinstance(value, str) else str(value)
    if not text.strip():
        raise _InvalidRecordError("bad_id", f"{name} is empty")
    if len(text) > max_id_len:
        raise _InvalidRecordError("bad_id", f"{name} is longer than {max_id_len} characters")
    return text


def validate_record(
    obj: Any, *, now: float, max_future_s: float = 86_400.0, max_id_len: int = 256
) -> Event:
    """Validate one decoded JSON value and return it as an :class:`Event`.

    Raises:
        ValueError: with ``args == (reason, detail)`` when the record is invalid (used by
            :func:`parse_records`, which turns it into a dead letter).
    """
    try:
        return _validate(obj, now, max_future_s, max_id_len)
    except _InvalidRecordError as exc:
        raise ValueError(exc.reason, exc.detail) from None


def _validate(obj: Any, now: float, max_future_s: float, max_id_len: int) -> Event:
    if not isinstance(obj, dict):
        raise _InvalidRecordError("not_object", f"expected a JSON object, got {type(obj).__name__}")
    missing = [k for k in _REQUIRED if obj.get(k) is None]
    if missing:
        raise _InvalidRecordError("missing_field", f"missing field(s) {missing}")
    user = _check_id("user_id", obj["user_id"], max_id_len)
    item = _check_id("item_id", obj["item_id"], max_id_len)
    ts = obj["timestamp"]
    if not _is_number(ts):
        raise _InvalidRecordError(
            "bad_type", f"timestamp must be a number, got {type(ts).__name__}"
        )
    try:
        ts = float(ts)
    except OverflowError:  # an int too large for a float
        raise _InvalidRecordError("bad_timestamp", "timestamp is out of range") from None
    if not math.isfinite(ts) or ts < 0:
        raise _InvalidRecordError("bad_timestamp", f"timestamp must be finite and >= 0, got {ts!r}")
    if ts > now + max_future_s:
        raise _InvalidRecordError(
            "future_timestamp", f"timestamp {ts} is more than {max_future_s} s after now ({now})"
        )
    weight = obj.get("weight")
    if weight is None:
        weight = 1.0
    elif not _is_number(weight):
        raise _InvalidRecordError(
            "bad_type", f"weight must be a number, got {type(weight).__name__}"
        )
    else:
        try:
            weight = float(weight)
        except OverflowError:
            raise _InvalidRecordError("bad_weight", "weight is out of range") from None
        if not math.isfinite(weight) or weight < 0:
            raise _InvalidRecordError(
                "bad_weight", f"weight must be finite and >= 0, got {weight!r}"
            )
    event_type = obj.get("event_type")
    if event_type is not None:
        if not isinstance(event_type, str):
            raise _InvalidRecordError(
                "bad_type", f"event_type must be a string, got {type(event_type).__name__}"
            )
        if len(event_type) > max_id_len:
            raise _InvalidRecordError(
                "bad_type", f"event_type is longer than {max_id_len} characters"
            )
    return Event(user, item, ts, weight, event_type)


def parse_records(
    raws: Sequence[bytes | str],
    positions: Sequence[str],
    *,
    now: float,
    max_future_s: float = 86_400.0,
    max_id_len: int = 256,
) -> tuple[list[Event], list[DeadLetter]]:
    """Decode and validate wire records; never raises on bad input.

    Args:
        raws: the records (Kafka message values or JSONL lines), bytes or str.
        positions: where each record came from, same length (kept on dead letters).
        now: the current time in unix seconds (far-future check); pass it explicitly so that
            tests and replays are deterministic.
        max_future_s: a timestamp more than this after ``now`` is a dead letter.
        max_id_len: ids (and ``event_type``) longer than this are dead letters.

    Returns:
        ``(events, dead_letters)``; events keep the input order.

    Raises:
        ValueError: only if ``raws`` and ``positions`` differ in length (a caller bug).
    """
    if len(raws) != len(positions):
        raise ValueError(f"{len(raws)} records but {len(positions)} positions")
    events: list[Event] = []
    dead: list[DeadLetter] = []
    for raw, position in zip(raws, positions):
        try:
            try:
                obj = json.loads(raw)
            except (UnicodeDecodeError, json.JSONDecodeError, TypeError) as exc:
                raise _InvalidRecordError("invalid_json", str(exc)[:200]) from None
            except RecursionError:
                raise _InvalidRecordError("invalid_json", "nested too deeply") from None
            events.append(_validate(obj, now, max_future_s, max_id_len))
        except _InvalidRecordError as exc:
            dead.append(DeadLetter(raw, exc.reason, position, exc.detail))
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
