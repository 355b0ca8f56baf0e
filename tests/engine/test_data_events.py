"""The one event record parser (engine.data.events) and the loader's reject-the-file policy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.data import DataFormatError, load_dataset, load_events
from engine.data.events import (
    REASONS,
    Event,
    RecordError,
    Rejected,
    parse_records,
    parse_time_text,
    parse_timestamp,
    validate_record,
)

T0 = 1_714_564_800.0  # 2024-05-01T12:00:00Z


@pytest.mark.parametrize(
    "value",
    [
        "2024-05-01T12:00:00Z",
        "2024-05-01T12:00:00z",
        "2024-05-01T12:00:00+00:00",
        "2024-05-01T14:00:00+02:00",
        "2024-05-01T07:00:00-05:00",
        "2024-05-01T12:00:00",  # no offset: UTC
        "2024-05-01 12:00:00",
        " 2024-05-01T12:00:00.000Z ",
        T0,
        int(T0),
    ],
)
def test_timestamps_are_numbers_or_iso_8601_and_naive_means_utc(value) -> None:
    assert parse_timestamp(value) == T0


def test_date_only_is_midnight_utc() -> None:
    assert parse_timestamp("1970-01-02") == 86_400.0
    assert parse_time_text("1970-01-02") == 86_400.0


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("1714564800", "bad_type"),  # a number as text is a producer bug, not a date
        ("yesterday", "bad_type"),
        (True, "bad_type"),
        ([2024], "bad_type"),
        ("2024-02-30T00:00:00Z", "bad_timestamp"),
        ("2024-05-01T25:00:00Z", "bad_timestamp"),
        ("2024-05-01Tnoon", "bad_timestamp"),
        ("1969-12-31T23:59:59Z", "bad_timestamp"),  # before the epoch: negative seconds
        (float("nan"), "bad_timestamp"),
        (-1, "bad_timestamp"),
        (10**400, "bad_timestamp"),
    ],
)
def test_bad_timestamps_have_reason_codes(value, reason) -> None:
    with pytest.raises(RecordError) as info:
        parse_timestamp(value)
    assert info.value.reason == reason and info.value.detail
    assert info.value.args == (reason, info.value.detail)  # a ValueError with (reason, detail)


def test_text_cells_accept_numeric_text() -> None:
    assert parse_time_text(" 5 ") == 5.0
    assert parse_time_text("2024-05-01T12:00:00Z") == T0
    for bad in ("soon", "nan", "-3", "2024-13-01"):
        with pytest.raises(RecordError, match="bad_timestamp"):
            parse_time_text(bad)


def test_parse_records_returns_events_and_rejects_in_order() -> None:
    raws = [
        '{"user_id": 1, "item_id": "a", "timestamp": "2024-05-01T12:00:00Z", "weight": 2}',
        "{",
        '{"user_id": "u", "item_id": "b", "timestamp": "2024-02-30"}',
        b'{"user_id": "u", "item_id": "c", "timestamp": 5, "event_type": "view"}',
    ]
    events, rejected = parse_records(raws)
    assert events == [Event("1", "a", T0, 2.0), Event("u", "c", 5.0, 1.0, "view")]
    assert [(r.index, r.reason) for r in rejected] == [(1, "invalid_json"), (2, "bad_timestamp")]
    assert all(isinstance(r, Rejected) and r.reason in REASONS and r.detail for r in rejected)


def test_future_check_only_with_now() -> None:
    record = {"user_id": "u", "item_id": "i", "timestamp": 10_000.0}
    assert validate_record(record).timestamp == 10_000.0
    with pytest.raises(RecordError, match="future_timestamp"):
        validate_record(record, now=0.0, max_future_s=60.0)


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_loader_rejects_the_whole_file_naming_line_and_reason(tmp_path: Path) -> None:
    good = '{"user_id": "u", "item_id": "i", "timestamp": 1}\n'
    cases = {
        '{"user_id": "u", "item_id": "i", "timestamp": "2024-02-30T00:00:00Z"}': "bad_timestamp",
        '{"user_id": "u", "item_id": "i", "timestamp": "1700000000"}': "bad_type",
        '{"user_id": true, "item_id": "i", "timestamp": 1}': "bad_type",
        '{"user_id": " ", "item_id": "i", "timestamp": 1}': "bad_id",
        '{"user_id": "u", "item_id": "i", "timestamp": 1, "weight": -1}': "bad_weight",
        "[1, 2]": "not_object",
    }
    for k, (bad, reason) in enumerate(cases.items()):
        path = _write(tmp_path / f"e{k}.jsonl", good + "\n" + bad + "\n" + good)
        with pytest.raises(DataFormatError, match=rf"e{k}\.jsonl, line 3: .*\[{reason}\]"):
            load_events(path)


def test_json_array_files_use_the_same_parser(tmp_path: Path) -> None:
    records = [
        {"user_id": "u", "item_id": "a", "timestamp": "2024-05-01T12:00:00Z"},
        {"user_id": "u", "item_id": "b", "timestamp": T0 - 1},
    ]
    inter = load_dataset(_write(tmp_path / "a.json", json.dumps(records)))
    assert inter.times.tolist() == [T0 - 1, T0]
    records.append({"user_id": "u", "item_id": "c", "timestamp": "2024-02-30"})
    with pytest.raises(DataFormatError, match=r"record 3: .*\[bad_timestamp\]"):
        load_dataset(_write(tmp_path / "b.json", json.dumps(records)))
    with pytest.raises(DataFormatError, match="invalid JSON"):
        load_dataset(_write(tmp_path / "c.json", "[1, 2"))


def test_csv_timestamps_may_be_iso_8601(tmp_path: Path) -> None:
    csv_path = _write(
        tmp_path / "e.csv",
        "user_id,item_id,timestamp\nu,a,2024-05-01T14:00:00+02:00\nu,b,2024-05-01T11:00:00\n",
    )
    inter = load_dataset(csv_path)
    assert inter.times.tolist() == [T0 - 3600, T0]
    assert inter.item_ids[inter.items].tolist() == ["b", "a"]
    bad = _write(tmp_path / "f.tsv", "user_id\titem_id\ttimestamp\nu\ta\t2024-02-30\n")
    with pytest.raises(DataFormatError, match=r"line 2: .*\[bad_timestamp\]"):
        load_dataset(bad)


def test_the_padding_item_id_is_a_bad_id():
    """Row 0 of every item table is the padding row named "<pad>": an event naming it would
    crash the trainer, so the parser rejects it (a dead letter in streaming)."""
    from engine.data.events import PAD_ITEM_ID, RecordError

    assert PAD_ITEM_ID == "<pad>"
    with pytest.raises(RecordError) as err:
        validate_record({"user_id": "u", "item_id": "<pad>", "timestamp": 1.0})
    assert err.value.args[0] == "bad_id"
    assert (
        validate_record({"user_id": "<pad>", "item_id": "i", "timestamp": 1.0}).user_id == "<pad>"
    )
