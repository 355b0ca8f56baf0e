"""The JSON event record: its schema, field validation with reason codes, and the one parser.

One record is one JSON object (a Kafka message, a line of a JSONL file, an element of a JSON
array)::

    {"user_id": "u1", "item_id": 42, "timestamp": 1700000000.5, "weight": 1.0, "event_type": "view"}

* ``user_id`` / ``item_id``: strings or integers, kept as strings (an integer becomes its decimal
  string, so ``7`` and ``"7"`` are the same id).
* ``timestamp``: unix seconds (an int or a float), or an ISO-8601 date-time string such as
  ``"2024-05-01T12:00:00Z"``, ``"2024-05-01T14:00:00+02:00"`` or ``"2024-05-01"``. A date-time
  without an offset is taken as UTC (logs are usually written in UTC, and reading them in the
  local zone would make a data set's meaning depend on the machine). Either form becomes unix
  seconds (float). A string that is not shaped like a date (``"1700000000"``) is a type error: a
  number sent as text points to a producer bug that should be seen, not guessed around.
* ``weight`` (default 1) and ``event_type`` are optional; other fields are ignored.

:func:`parse_records` never raises on a bad record: it returns the valid ones as :class:`Event`
and the others as :class:`Rejected` with a short machine reason code:

==================== =========================================================================
reason               cause
==================== =========================================================================
``invalid_json``     not UTF-8, or not parseable as JSON
``not_object``       valid JSON but not an object (``[1, 2]``, ``"x"``, ``null``)
``missing_field``    ``user_id``, ``item_id`` or ``timestamp`` absent or ``null``
``bad_type``         a field of the wrong type (bool is not a number; ids must be str or int;
                     ``timestamp`` a number or a date-shaped string; ``weight`` a number;
                     ``event_type`` a string of at most ``max_id_len`` characters)
``bad_id``           an empty / blank id, one longer than ``max_id_len`` characters, or the
                     reserved item id ``"<pad>"``
``bad_timestamp``    NaN, infinite or negative time, or a date-shaped string that is not a valid
                     ISO-8601 date-time (``"2024-02-30"``)
``future_timestamp`` time more than ``max_future_s`` after ``now`` (only checked given ``now``)
``bad_weight``       negative, NaN or infinite weight, or one above :data:`MAX_WEIGHT` (a
                     weight scales the event's graph edges: one huge weight would own the graph)
``too_large``        more than ``max_record_bytes`` bytes (:data:`MAX_RECORD_BYTES`), refused
                     before it is decoded
==================== =========================================================================

One parse, two policies: the engine's file loader (:func:`engine.data.load_events`, behind
``sevo data stats`` and ``sevo offline``) rejects a file with any bad record as a whole, naming
the line and the reason, because a model must not be trained on a silently trimmed data set;
the streaming edge (``streaming.events.parse_records``, behind ``sevo replay`` of a JSONL file
and the Kafka consumer) turns each bad record into a dead letter and goes on, because one bad
message must not stop a live pipeline.

Example:
    >>> events, rejected = parse_records(
    ...     [b'{"user_id": 1, "item_id": "a", "timestamp": "1970-01-01T00:00:05Z"}', b"{"]
    ... )
    >>> events[0].user_id, events[0].timestamp, [(r.index, r.reason) for r in rejected]
    ('1', 5.0, [(1, 'invalid_json')])
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

__all__ = [
    "MAX_RECORD_BYTES",
    "PAD_ITEM_ID",
    "REASONS",
    "Event",
    "RecordError",
    "Rejected",
    "decode_record",
    "parse_records",
    "parse_time_text",
    "parse_timestamp",
    "record_size",
    "validate_record",
]

REASONS: tuple[str, ...] = (
    "invalid_json",
    "not_object",
    "missing_field",
    "bad_type",
    "bad_id",
    "bad_timestamp",
    "future_timestamp",
    "bad_weight",
    "too_large",
)
"""Every reason code a rejected record can carry."""

MAX_RECORD_BYTES = 65_536
#: Largest accepted event weight. Weights are relative (a purchase may count more than a view);
#: beyond this a value is a unit mistake or garbage, and it would dominate every degree it joins.
MAX_WEIGHT = 1e6
"""The largest record (bytes, UTF-8) the parser decodes; a larger one is rejected as
``too_large`` without decoding it. A valid event is a few hundred bytes at most (ids and
``event_type`` are bounded by ``max_id_len``), so this leaves room for ignored extra fields and
stays far below Kafka's default message size (1 MiB), which the producer's and the consumer's
limits follow (``streaming.kafka_client.PRODUCER_MAX_REQUEST_BYTES``)."""

_REQUIRED = ("user_id", "item_id", "timestamp")

PAD_ITEM_ID = "<pad>"
"""The item id of the models' padding row (row 0): reserved, so no event may name it."""

# A date-time string starts with a full calendar date; anything else (a number as text, a word)
# is not treated as a date at all, so a bare number can never be read as a year.
_DATE_SHAPED = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


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
class Rejected:
    """A record that failed parsing or validation.

    Attributes:
        index: position of the record in the input sequence.
        reason: one of :data:`REASONS`.
        detail: a human-readable explanation.
    """

    index: int
    reason: str
    detail: str


class RecordError(ValueError):
    """An invalid record; ``args == (reason, detail)`` with ``reason`` one of :data:`REASONS`.

    Attributes:
        reason: the reason code.
        detail: a human-readable explanation.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason, detail)
        self.reason, self.detail = reason, detail

    def __str__(self) -> str:
        return f"{self.detail} [{self.reason}]"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_seconds(ts: float) -> float:
    if not math.isfinite(ts) or ts < 0:
        raise RecordError("bad_timestamp", f"timestamp must be finite and >= 0, got {ts!r}")
    return ts


def _parse_iso(text: str) -> float:
    """Unix seconds of a date-shaped ISO-8601 string; no offset means UTC."""
    # Python before 3.11 does not read a trailing "Z"; it means UTC, like "+00:00".
    normalised = text[:-1] + "+00:00" if text[-1:] in ("Z", "z") else text
    try:
        parsed = datetime.fromisoformat(normalised)
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=timezone.utc)
        seconds = parsed.timestamp()
    except (ValueError, OverflowError, OSError):
        raise RecordError(
            "bad_timestamp", f"timestamp {text!r} is not a valid ISO-8601 date-time"
        ) from None
    return _check_seconds(seconds)


def parse_timestamp(value: Any) -> float:
    """Unix seconds of a record's ``timestamp`` field: a number, or an ISO-8601 date-time string.

    Args:
        value: the decoded JSON value.

    Returns:
        Unix seconds (finite, >= 0). A date-time without an offset is read as UTC.

    Raises:
        RecordError: ``bad_type`` for a value that is neither a number nor a date-shaped string
            (bools and numbers written as text included), ``bad_timestamp`` for NaN, infinite,
            negative or out-of-range times and for invalid dates.
    """
    if isinstance(value, str):
        text = value.strip()
        if not _DATE_SHAPED.match(text):
            raise RecordError(
                "bad_type",
                f"timestamp must be a number (unix seconds) or an ISO-8601 date-time string, "
                f"got {value[:64]!r}",
            )
        return _parse_iso(text)
    if not _is_number(value):
        raise RecordError(
            "bad_type",
            f"timestamp must be a number or an ISO-8601 string, got {type(value).__name__}",
        )
    try:
        seconds = float(value)
    except OverflowError:  # an int too large for a float
        raise RecordError("bad_timestamp", "timestamp is out of range") from None
    return _check_seconds(seconds)


def parse_time_text(text: str) -> float:
    """Unix seconds of a timestamp cell of a text table (CSV/TSV): numeric text or ISO-8601.

    In a text table every value is text, so numeric text is accepted here (unlike in a JSON
    record, where a number must be a JSON number).

    Args:
        text: the cell.

    Returns:
        Unix seconds (finite, >= 0).

    Raises:
        RecordError: ``bad_timestamp`` for anything else.
    """
    stripped = text.strip()
    if _DATE_SHAPED.match(stripped):
        return _parse_iso(stripped)
    try:
        seconds = float(stripped)
    except ValueError:
        raise RecordError(
            "bad_timestamp",
            f"bad timestamp {text[:64]!r} (expected unix seconds or an ISO-8601 date-time)",
        ) from None
    return _check_seconds(seconds)


def _check_id(name: str, value: Any, max_id_len: int) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise RecordError(
            "bad_type", f"{name} must be a string or an integer, got {type(value).__name__}"
        )
    text = value if isinstance(value, str) else str(value)
    if not text.strip():
        raise RecordError("bad_id", f"{name} is empty")
    if len(text) > max_id_len:
        raise RecordError("bad_id", f"{name} is longer than {max_id_len} characters")
    if name == "item_id" and text == PAD_ITEM_ID:
        raise RecordError("bad_id", f"item_id {PAD_ITEM_ID!r} is reserved (the padding row)")
    return text


def _check_weight(weight: Any) -> float:
    if weight is None:
        return 1.0
    if not _is_number(weight):
        raise RecordError("bad_type", f"weight must be a number, got {type(weight).__name__}")
    try:
        value = float(weight)
    except OverflowError:
        raise RecordError("bad_weight", "weight is out of range") from None
    if not math.isfinite(value) or value < 0:
        raise RecordError("bad_weight", f"weight must be finite and >= 0, got {value!r}")
    if value > MAX_WEIGHT:
        raise RecordError("bad_weight", f"weight {value!r} is above the limit {MAX_WEIGHT:g}")
    return value


def _check_event_type(event_type: Any, max_id_len: int) -> str | None:
    if event_type is None:
        return None
    if not isinstance(event_type, str):
        raise RecordError(
            "bad_type", f"event_type must be a string, got {type(event_type).__name__}"
        )
    if len(event_type) > max_id_len:
        raise RecordError("bad_type", f"event_type is longer than {max_id_len} characters")
    return event_type


def validate_record(
    obj: Any,
    *,
    now: float | None = None,
    max_future_s: float = 86_400.0,
    max_id_len: int = 256,
) -> Event:
    """Validates one decoded JSON value and returns it as an :class:`Event`.

    Args:
        obj: the decoded value.
        now: the current time in unix seconds for the far-future check; ``None`` skips that check
            (a file of past events read offline has no "now" to compare with).
        max_future_s: a timestamp more than this after ``now`` is rejected.
        max_id_len: ids (and ``event_type``) longer than this are rejected.

    Returns:
        The event.

    Raises:
        RecordError: when the record is invalid (a ``ValueError`` with
            ``args == (reason, detail)``).
    """
    if not isinstance(obj, dict):
        raise RecordError("not_object", f"expected a JSON object, got {type(obj).__name__}")
    missing = [k for k in _REQUIRED if obj.get(k) is None]
    if missing:
        raise RecordError("missing_field", f"missing field(s) {missing}")
    user = _check_id("user_id", obj["user_id"], max_id_len)
    item = _check_id("item_id", obj["item_id"], max_id_len)
    ts = parse_timestamp(obj["timestamp"])
    if now is not None and ts > now + max_future_s:
        raise RecordError(
            "future_timestamp", f"timestamp {ts} is more than {max_future_s} s after now ({now})"
        )
    weight = _check_weight(obj.get("weight"))
    event_type = _check_event_type(obj.get("event_type"), max_id_len)
    return Event(user, item, ts, weight, event_type)


def decode_record(raw: bytes | str) -> Any:
    """Decodes one JSON record (UTF-8 bytes or str).

    Raises:
        RecordError: ``invalid_json`` when ``raw`` is not UTF-8 or not JSON.
    """
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, TypeError) as exc:
        raise RecordError("invalid_json", f"invalid JSON ({str(exc)[:200]})") from None
    except RecursionError:
        raise RecordError("invalid_json", "invalid JSON (nested too deeply)") from None


def record_size(raw: bytes | str) -> int:
    """Size of a record in bytes (a str counts as its UTF-8 encoding)."""
    if isinstance(raw, (bytes, bytearray, memoryview)):
        return len(raw)
    return len(raw.encode("utf-8", "surrogatepass"))


def _too_large(raw: bytes | str, max_record_bytes: int) -> bool:
    if isinstance(raw, str) and len(raw) * 4 <= max_record_bytes:
        return False  # a character is at most 4 bytes: no need to encode
    return record_size(raw) > max_record_bytes


def parse_records(
    raws: Sequence[bytes | str],
    *,
    now: float | None = None,
    max_future_s: float = 86_400.0,
    max_id_len: int = 256,
    max_record_bytes: int = MAX_RECORD_BYTES,
) -> tuple[list[Event], list[Rejected]]:
    """Decodes and validates records; never raises on bad input.

    Args:
        raws: the records (Kafka message values, JSONL lines), bytes or str.
        now: the current time in unix seconds for the far-future check (``None`` skips it); pass
            it explicitly so that tests and replays are deterministic.
        max_future_s: a timestamp more than this after ``now`` is rejected.
        max_id_len: ids (and ``event_type``) longer than this are rejected.
        max_record_bytes: a record larger than this is rejected (``too_large``) undecoded.

    Returns:
        ``(events, rejected)``; both keep the input order, and ``Rejected.index`` is the record's
        position in ``raws``.
    """
    events: list[Event] = []
    rejected: list[Rejected] = []
    for index, raw in enumerate(raws):
        if _too_large(raw, max_record_bytes):
            detail = f"{record_size(raw)} bytes, more than the limit of {max_record_bytes}"
            rejected.append(Rejected(index, "too_large", detail))
            continue
        try:
            obj = decode_record(raw)
            events.append(
                validate_record(obj, now=now, max_future_s=max_future_s, max_id_len=max_id_len)
            )
        except RecordError as exc:
            rejected.append(Rejected(index, exc.reason, exc.detail))
    return events, rejected
