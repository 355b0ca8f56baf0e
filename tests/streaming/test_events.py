"""Validation at the edge: every reason code, never an exception on bad input."""

from __future__ import annotations

import json

import pytest

from streaming.events import (
    DEAD_LETTER_RAW_PREFIX,
    MAX_RECORD_BYTES,
    REASONS,
    DeadLetter,
    DeadLetterSink,
    Event,
    EventBatch,
    JsonlDeadLetterSink,
    encode_event,
    parse_records,
)

NOW = 1_700_000_000.0


def _rec(**fields) -> str:
    base = {"user_id": "u1", "item_id": "i1", "timestamp": 1_600_000_000}
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not _DROP})


_DROP = object()

BAD = [
    (b"\xff\xfe not utf-8", "invalid_json"),
    ("{", "invalid_json"),
    ("", "invalid_json"),
    ('{"user_id": "u", "item_id": "i", "timestamp": 1} trailing', "invalid_json"),
    ("[" * 20_000 + "]" * 20_000, "invalid_json"),  # nested too deeply
    ("[1, 2]", "not_object"),
    ('"just a string"', "not_object"),
    ("null", "not_object"),
    (_rec(user_id=_DROP), "missing_field"),
    (_rec(item_id=None), "missing_field"),
    (_rec(timestamp=_DROP), "missing_field"),
    (_rec(user_id=True), "bad_type"),
    (_rec(item_id=1.5), "bad_type"),
    (_rec(item_id=["a"]), "bad_type"),
    (_rec(user_id={"id": 1}), "bad_type"),
    (_rec(timestamp="1600000000"), "bad_type"),
    (_rec(timestamp=False), "bad_type"),
    (_rec(weight="2"), "bad_type"),
    (_rec(weight=True), "bad_type"),
    (_rec(event_type=3), "bad_type"),
    (_rec(event_type="x" * 300), "bad_type"),
    (_rec(user_id=""), "bad_id"),
    (_rec(item_id="   "), "bad_id"),
    (_rec(item_id="x" * 257), "bad_id"),
    (_rec(user_id=10**300), "bad_id"),
    ('{"user_id": "u", "item_id": "i", "timestamp": NaN}', "bad_timestamp"),
    ('{"user_id": "u", "item_id": "i", "timestamp": Infinity}', "bad_timestamp"),
    ('{"user_id": "u", "item_id": "i", "timestamp": -Infinity}', "bad_timestamp"),
    (_rec(timestamp=-1), "bad_timestamp"),
    ('{"user_id": "u", "item_id": "i", "timestamp": 1' + "0" * 400 + "}", "bad_timestamp"),
    (_rec(timestamp=NOW + 86_400 + 1), "future_timestamp"),
    (_rec(weight=-0.5), "bad_weight"),
    ('{"user_id": "u", "item_id": "i", "timestamp": 1, "weight": NaN}', "bad_weight"),
    ('{"user_id": "u", "item_id": "i", "timestamp": 1, "weight": Infinity}', "bad_weight"),
    (_rec(weight=1e30), "bad_weight"),  # finite, but it would own every degree it joins
    (_rec(extra="x" * MAX_RECORD_BYTES), "too_large"),
    (b"\xff" * (MAX_RECORD_BYTES + 1), "too_large"),
    ("é" * (MAX_RECORD_BYTES // 2 + 1), "too_large"),  # counted in UTF-8 bytes
]


@pytest.mark.parametrize(("raw", "reason"), BAD, ids=[f"{r}-{i}" for i, (_, r) in enumerate(BAD)])
def test_bad_records_become_dead_letters_with_a_reason(raw, reason):
    events, dead = parse_records([raw], ["t:0:7"], now=NOW)
    assert events == []
    (letter,) = dead
    assert letter.reason == reason
    assert letter.raw == raw and letter.position == "t:0:7" and letter.detail


def test_every_reason_code_is_covered_by_the_table():
    assert {reason for _, reason in BAD} == set(REASONS)


def test_valid_records_normalise_ids_and_defaults():
    raws = [
        b'{"user_id": 7, "item_id": "a", "timestamp": 1600000000}',
        '{"user_id": "u", "item_id": 0, "timestamp": 1.5, "weight": 2, "event_type": "buy", '
        '"extra": [1]}',
        _rec(timestamp=NOW + 86_400),  # exactly at the allowed future bound
        _rec(weight=0),
        _rec(weight=1e6),  # exactly at the weight limit
    ]
    events, dead = parse_records(raws, ["a", "b", "c", "d", "e"], now=NOW)
    assert dead == []
    assert events[0] == Event("7", "a", 1_600_000_000.0, 1.0, None)
    assert events[1] == Event("u", "0", 1.5, 2.0, "buy")
    assert events[2].timestamp == NOW + 86_400
    assert events[3].weight == 0.0 and events[4].weight == 1e6
    assert all(isinstance(e.timestamp, float) for e in events)


def test_mixed_batch_keeps_order_and_positions():
    raws = [_rec(item_id="a"), "{", _rec(item_id="b"), _rec(weight=-1), _rec(item_id="c")]
    positions = [f"t:1:{i}" for i in range(5)]
    events, dead = parse_records(raws, positions, now=NOW)
    assert [e.item_id for e in events] == ["a", "b", "c"]
    assert [(d.position, d.reason) for d in dead] == [
        ("t:1:1", "invalid_json"),
        ("t:1:3", "bad_weight"),
    ]


def test_limits_are_configurable():
    raw = _rec(item_id="abcdef", timestamp=NOW + 10)
    assert parse_records([raw], ["p"], now=NOW, max_id_len=5)[1][0].reason == "bad_id"
    assert parse_records([raw], ["p"], now=NOW, max_future_s=5)[1][0].reason == "future_timestamp"


def test_length_mismatch_is_a_caller_bug():
    with pytest.raises(ValueError, match="positions"):
        parse_records(["{}"], [], now=NOW)


def test_encode_event_round_trips():
    for event in (Event("u", "i", 12.25), Event("ü", "7", 0.0, 0.5, "view")):
        (back,), dead = parse_records([encode_event(event)], ["p"], now=NOW)
        assert dead == [] and back == event
    assert json.loads(encode_event(Event("u", "i", 1.0))) == {
        "user_id": "u",
        "item_id": "i",
        "timestamp": 1.0,
    }


def test_event_batch_from_events_is_columnar():
    batch = EventBatch.from_events([Event("u", "a", 1.0), Event("v", "b", 2.0, 3.0)], start=5)
    assert len(batch) == 2 and (batch.start, batch.end) == (5, 7)
    assert batch.users.tolist() == ["u", "v"] and batch.weights.tolist() == [1.0, 3.0]


def test_jsonl_sink_appends_flushed_lines(tmp_path):
    path = tmp_path / "dlq" / "dead.jsonl"
    sink = JsonlDeadLetterSink(path)
    assert isinstance(sink, DeadLetterSink)
    sink.write([DeadLetter(b"\xff{", "invalid_json", "f:1", "bad")])
    sink.write([])
    # Flushed: readable before close.
    first = json.loads(path.read_text().splitlines()[0])
    assert first["raw"] == "\ufffd{" and first["reason"] == "invalid_json"
    assert first["position"] == "f:1" and first["detail"] == "bad" and first["time"] > 0
    sink.close()
    with JsonlDeadLetterSink(path) as again:
        again.write([DeadLetter("x", "not_object", "f:2")])
    lines = [json.loads(s) for s in path.read_text().splitlines()]
    assert [row["position"] for row in lines] == ["f:1", "f:2"]


def test_record_size_limit_is_configurable_and_exact():
    at_limit = _rec(extra="")
    at_limit = _rec(extra="x" * (MAX_RECORD_BYTES - len(at_limit)))
    assert len(at_limit.encode()) == MAX_RECORD_BYTES
    assert parse_records([at_limit], ["p"], now=NOW)[1] == []
    (letter,) = parse_records([at_limit + " "], ["p"], now=NOW)[1]
    assert letter.reason == "too_large" and str(MAX_RECORD_BYTES) in letter.detail
    small = parse_records([_rec()], ["p"], now=NOW, max_record_bytes=10)[1]
    assert [d.reason for d in small] == ["too_large"]


def test_dead_letters_of_oversized_records_keep_a_prefix(tmp_path):
    raw = b"\xff" * (4 * MAX_RECORD_BYTES)  # not UTF-8: would triple as replacement characters
    (letter,) = parse_records([raw], ["t:0:9"], now=NOW)[1]
    assert letter.raw == raw and letter.sink_raw() == raw[:DEAD_LETTER_RAW_PREFIX]
    obj = letter.to_json(1.0)
    assert obj["raw_truncated"] is True and obj["raw_bytes"] == len(raw)
    assert len(json.dumps(obj, ensure_ascii=False).encode()) < 4 * DEAD_LETTER_RAW_PREFIX
    small = DeadLetter("{", "invalid_json", "t:0:1").to_json(1.0)
    assert "raw_truncated" not in small and small["raw"] == "{"


def test_producer_and_consumer_size_limits_are_aligned():
    """Every record the parser accepts can be produced and fetched in one request; a producer
    request fits one partition fetch; a dead letter (raw at most MAX_RECORD_BYTES, tripled by
    replacement characters, plus base64) fits a producer request."""
    from streaming.kafka_client import PRODUCER_MAX_REQUEST_BYTES
    from streaming.sources.kafka import KafkaConfig

    config = KafkaConfig(bootstrap="h:1", topic="t")
    assert config.max_record_bytes == MAX_RECORD_BYTES
    assert config.max_partition_fetch_bytes == PRODUCER_MAX_REQUEST_BYTES
    assert config.fetch_max_bytes >= config.max_partition_fetch_bytes
    worst_letter = 3 * MAX_RECORD_BYTES + 4 * MAX_RECORD_BYTES // 3 + 4096
    assert MAX_RECORD_BYTES < worst_letter < PRODUCER_MAX_REQUEST_BYTES
