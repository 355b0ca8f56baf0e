"""Tests for engine.data: loaders, k-core filter, leave-one-out split, MovieLens-100K from PyPI."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.data import (
    ML100K_GENRES,
    DataFormatError,
    Interactions,
    SequenceSplit,
    build_interactions,
    core_filter,
    dataset_stats,
    fetch_ml100k,
    load_amazon,
    load_dataset,
    load_events,
    load_movielens_1m,
    load_movielens_100k,
    split_leave_one_out,
)
from engine.data import datasets as datasets_mod
from engine.metrics import target_ranks

# ------------------------------------------------------------------------------------ helpers


def _random_log(seed: int, num_users: int = 60, num_items: int = 40, repeats: bool = True):
    """A random log with 1..12 events per user, equal timestamps common (ties)."""
    rng = np.random.default_rng(seed)
    users, items, times = [], [], []
    for u in range(num_users):
        n = int(rng.integers(1, 13))
        if repeats:
            its = rng.integers(1, num_items + 1, n)
        else:
            its = rng.choice(np.arange(1, num_items + 1), size=n, replace=False)
        users += [f"u{u}"] * n
        items += [f"i{i}" for i in its]
        times += rng.integers(0, 4, n).tolist()  # coarse -> many ties
    perm = rng.permutation(len(users))  # file order interleaves users
    return (
        np.array(users)[perm],
        np.array(items)[perm],
        np.array(times, dtype=float)[perm],
    )


def _full_sequences(inter: Interactions) -> list[list[int]]:
    off = inter.user_offsets()
    return [inter.items[off[u] : off[u + 1]].tolist() for u in range(inter.num_users)]


def _assert_no_leak(split: SequenceSplit, full: list[list[int]]) -> None:
    """Held-out interactions are exactly the last two of each user; train is the rest."""
    for u, seq in enumerate(full):
        train = split.train_sequence(u).tolist()
        if len(seq) >= 3:
            assert train == seq[:-2]
            assert split.valid_items[u] == seq[-2]
            assert split.test_items[u] == seq[-1]
        else:
            assert train == seq
            assert split.valid_items[u] == 0 and split.test_items[u] == 0


def _write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_text(text, encoding=encoding)
    return path


# ------------------------------------------------------------------------- build / Interactions


def test_build_interactions_numeric_order_and_padding() -> None:
    inter = build_interactions(["10", "9", "10"], ["2", "10", "1"], [5.0, 1.0, 3.0])
    assert inter.user_ids.tolist() == ["9", "10"]  # numeric, not "10" < "9"
    assert inter.item_ids.tolist() == ["<pad>", "1", "2", "10"]
    assert inter.users.tolist() == [0, 1, 1]
    assert inter.items.tolist() == [3, 1, 2]  # user "10": item "1" @3 before item "2" @5
    assert inter.times.tolist() == [1.0, 3.0, 5.0]
    assert inter.users.dtype == np.int64 and inter.items.dtype == np.int64
    assert inter.times.dtype == np.float64
    assert (inter.num_users, inter.num_items, inter.num_interactions) == (2, 3, 3)
    assert "users=2" in repr(inter)


def test_non_numeric_ids_sort_lexicographically() -> None:
    inter = build_interactions(["b", "a", "10"], ["x", "y", "z"], [0, 0, 0])
    assert inter.user_ids.tolist() == ["10", "a", "b"]


def test_stable_tie_order_keeps_file_order() -> None:
    # all events of user "a" share a timestamp: file order must survive, never re-sorted by item
    users = ["a", "b", "a", "a", "b", "a"]
    items = ["9", "1", "3", "7", "2", "1"]
    times = [5.0, 1.0, 5.0, 5.0, 1.0, 2.0]
    inter = build_interactions(users, items, times)
    seqs = _full_sequences(inter)
    ext = inter.item_ids
    assert [ext[i] for i in seqs[0]] == ["1", "9", "3", "7"]
    assert [ext[i] for i in seqs[1]] == ["1", "2"]


def test_build_interactions_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="equal length"):
        build_interactions(["a"], ["x", "y"], [0.0])
    with pytest.raises(ValueError, match="finite"):
        build_interactions(["a"], ["x"], [np.nan])
    with pytest.raises(ValueError, match="padding"):
        build_interactions(["a"], ["<pad>"], [0.0])


def test_interactions_validates_invariants() -> None:
    ok = dict(
        users=np.array([0, 0, 1]),
        items=np.array([1, 2, 1]),
        times=np.array([0.0, 1.0, 0.0]),
        user_ids=np.array(["a", "b"]),
        item_ids=np.array(["<pad>", "x", "y"]),
    )
    Interactions(**ok)
    with pytest.raises(ValueError, match="sorted"):
        Interactions(**{**ok, "times": np.array([1.0, 0.0, 0.0])})
    with pytest.raises(ValueError, match="sorted"):
        Interactions(**{**ok, "users": np.array([1, 0, 0])})
    with pytest.raises(ValueError, match="padding"):
        Interactions(**{**ok, "items": np.array([0, 2, 1])})
    with pytest.raises(ValueError, match="<pad>"):
        Interactions(**{**ok, "item_ids": np.array(["x", "y", "z"])})
    with pytest.raises(ValueError, match="integers"):
        Interactions(**{**ok, "users": np.array([0.0, 0.0, 1.0])})
    with pytest.raises(ValueError, match="item_categories"):
        Interactions(**ok, item_categories=[np.array([], dtype=np.int64)])


# ---------------------------------------------------------------------------------- core_filter


def test_core_filter_is_iterative() -> None:
    # k=2. Round 1 drops u4 and u5 (one event each). That leaves items c and d with one event
    # each, so round 2 drops them, and then u3 has nothing left. A single pass would keep u3.
    users = ["u1", "u1", "u2", "u2", "u3", "u3", "u4", "u5"]
    items = ["a", "b", "a", "b", "c", "d", "c", "d"]
    times = [1, 2, 1, 2, 1, 2, 1, 1]
    cats = {"a": ["g1"], "b": ["g2", "g1"], "c": ["g3"], "d": []}
    inter = build_interactions(users, items, times, item_categories=cats, name="toy")
    out = core_filter(inter, k=2)
    assert out.user_ids.tolist() == ["u1", "u2"]
    assert out.item_ids.tolist() == ["<pad>", "a", "b"]
    assert out.users.tolist() == [0, 0, 1, 1]
    assert out.items.tolist() == [1, 2, 1, 2]
    assert out.times.tolist() == [1, 2, 1, 2]
    assert out.name == "toy"
    # categories follow their items; category ids and names unchanged
    assert out.category_names.tolist() == inter.category_names.tolist()
    assert [c.tolist() for c in out.item_categories] == [[], [0], [0, 1]]
    # a fixed point: filtering again changes nothing
    again = core_filter(out, k=2)
    assert again.num_interactions == out.num_interactions
    # every survivor has >= k events
    assert np.bincount(out.users).min() >= 2 and np.bincount(out.items)[1:].min() >= 2


def test_core_filter_random_log_invariants() -> None:
    inter = build_interactions(*_random_log(1, num_users=200, num_items=30))
    for k in (1, 3, 5):
        out = core_filter(inter, k=k)
        if out.num_interactions:
            assert np.bincount(out.users, minlength=out.num_users).min() >= k
            assert np.bincount(out.items, minlength=out.num_items + 1)[1:].min() >= k
        # order kept: surviving rows appear in the same relative order with the same ext ids
        kept_pairs = list(zip(out.user_ids[out.users], out.item_ids[out.items], strict=True))
        orig_pairs = list(
            zip(inter.user_ids[inter.users], inter.item_ids[inter.items], strict=True)
        )
        it = iter(orig_pairs)
        assert all(p in it for p in kept_pairs)  # subsequence check


def test_core_filter_k0_and_bad_k() -> None:
    inter = build_interactions(["a", "b"], ["x", "y"], [0, 0])
    assert core_filter(inter, k=0).num_interactions == 2
    assert core_filter(inter, k=2).num_interactions == 0
    for bad in (-1, 2.5, True):
        with pytest.raises(ValueError, match="non-negative integer"):
            core_filter(inter, k=bad)


# ------------------------------------------------------------------------------------- split


def test_split_handmade_and_padded_sequences() -> None:
    # user a: 5 events, user b: 2 events (train only), user c: 3 events
    users = ["a"] * 5 + ["b"] * 2 + ["c"] * 3
    items = ["5", "6", "7", "8", "9", "1", "2", "3", "4", "5"]
    times = [0, 1, 2, 3, 4, 0, 1, 0, 1, 2]
    inter = build_interactions(users, items, times)
    sp = split_leave_one_out(inter)
    # internal item index == external id here (ids 1..9 contiguous)
    assert sp.train_sequence(0).tolist() == [5, 6, 7]
    assert sp.train_sequence(1).tolist() == [1, 2]
    assert sp.train_sequence(2).tolist() == [3]
    assert sp.valid_items.tolist() == [8, 0, 4]
    assert sp.test_items.tolist() == [9, 0, 5]
    assert sp.eval_users("test").tolist() == [0, 2]
    assert sp.train_offsets.tolist() == [0, 3, 5, 6]

    np.testing.assert_array_equal(
        sp.padded_sequences([0, 1, 2], maxlen=5, which="train"),
        [[0, 0, 5, 6, 7], [0, 0, 0, 1, 2], [0, 0, 0, 0, 3]],
    )
    np.testing.assert_array_equal(
        sp.padded_sequences([0, 1, 2], maxlen=5, which="valid"),
        sp.padded_sequences([0, 1, 2], maxlen=5, which="train"),
    )
    np.testing.assert_array_equal(
        sp.padded_sequences([0, 1, 2], maxlen=5, which="test"),
        [[0, 5, 6, 7, 8], [0, 0, 0, 1, 2], [0, 0, 0, 3, 4]],
    )
    # truncation keeps the most recent items
    np.testing.assert_array_equal(sp.padded_sequences([0], maxlen=2, which="train"), [[6, 7]])
    np.testing.assert_array_equal(sp.padded_sequences([0], maxlen=2, which="test"), [[7, 8]])
    assert sp.padded_sequences(np.array([], dtype=np.int64), 4, "test").shape == (0, 4)

    hist = sp.history_for("test")
    assert [hist.row(u).tolist() for u in range(3)] == [[5, 6, 7, 8], [1, 2], [3, 4]]
    assert sp.history_for("valid").row(0).tolist() == [5, 6, 7]
    rows, its = sp.exclusion_pairs(np.array([2, 0]), "test")
    assert rows.tolist() == [0, 0, 1, 1, 1, 1]
    assert its.tolist() == [3, 4, 5, 6, 7, 8]


def test_split_bad_arguments() -> None:
    sp = split_leave_one_out(build_interactions(["a"] * 3, ["1", "2", "3"], [0, 1, 2]))
    with pytest.raises(ValueError, match="maxlen"):
        sp.padded_sequences([0], maxlen=0, which="train")
    with pytest.raises(ValueError, match="which"):
        sp.padded_sequences([0], maxlen=3, which="tset")
    with pytest.raises(ValueError, match="which"):
        sp.history_for("train")
    with pytest.raises(ValueError, match="users"):
        sp.padded_sequences([1], maxlen=3, which="train")
    with pytest.raises(ValueError, match="out of range"):
        sp.train_sequence(5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_split_random_no_leak(seed: int) -> None:
    inter = build_interactions(*_random_log(seed, repeats=True))
    sp = split_leave_one_out(inter)
    full = _full_sequences(inter)
    _assert_no_leak(sp, full)
    held_out = np.count_nonzero(sp.valid_items) + np.count_nonzero(sp.test_items)
    assert sp.train_items.shape[0] + held_out == inter.num_interactions

    # without repeated items, held-out items never occur anywhere in the user's train sequence
    inter2 = build_interactions(*_random_log(seed, repeats=False))
    sp2 = split_leave_one_out(inter2)
    _assert_no_leak(sp2, _full_sequences(inter2))
    n1 = sp2.num_items + 1
    train_users = np.repeat(np.arange(sp2.num_users), np.diff(sp2.train_offsets))
    train_keys = train_users * n1 + sp2.train_items
    for held in (sp2.valid_items, sp2.test_items):
        users = np.flatnonzero(held)
        assert not np.isin(users * n1 + held[users], train_keys).any()

    # padded "test" inputs end with the validation item, "valid" inputs with the last train item
    users = sp2.eval_users("test")
    pt = sp2.padded_sequences(users, maxlen=4, which="test")
    np.testing.assert_array_equal(pt[:, -1], sp2.valid_items[users])
    pv = sp2.padded_sequences(users, maxlen=4, which="valid")
    last_train = np.array([s[-1] if len(s) else 0 for s in map(sp2.train_sequence, users)])
    np.testing.assert_array_equal(pv[:, -1], last_train)


def test_exclusion_pairs_feed_target_ranks() -> None:
    inter = build_interactions(*_random_log(3, num_users=20, num_items=15))
    sp = split_leave_one_out(inter)
    users = sp.eval_users("test")
    scores = torch.rand(len(users), sp.num_items + 1, generator=torch.Generator().manual_seed(0))
    rows, items = sp.exclusion_pairs(users, "test")
    ranks = target_ranks(scores, torch.as_tensor(sp.test_items[users]), (rows, items))
    hist = sp.history_for("test")
    for b, u in enumerate(users):
        t = sp.test_items[u]
        excl = set(hist.row(u).tolist()) - {t}
        others = [j for j in range(1, sp.num_items + 1) if j != t and j not in excl]
        assert int(ranks[b]) == 1 + sum(bool(scores[b, j] >= scores[b, t]) for j in others)


def test_dataset_stats_small() -> None:
    inter = build_interactions(["a", "a", "b"], ["x", "y", "x"], [0.0, 86400.0, 43200.0])
    st = dataset_stats(inter)
    assert st["users"] == 2 and st["items"] == 2 and st["interactions"] == 3
    assert st["density"] == pytest.approx(0.75)
    assert st["seq_len_max"] == 2 and st["seq_len_min"] == 1 and st["seq_len_p50"] == 1.5
    assert st["time_min"] == 0.0 and st["time_max"] == 86400.0 and st["time_span_days"] == 1.0
    json.dumps(st)  # serialisable


# ----------------------------------------------------------------------------- file loaders


_UDATA = "1\t10\t5\t100\n2\t10\t3\t50\n1\t20\t4\t100\n\n1\t30\t4\t90\n"


def _uitem(item: str, flags: list[int]) -> str:
    return f"{item}|Movie {item} (1995)|01-Jan-1995||http://x|" + "|".join(map(str, flags))


def test_load_movielens_100k_grouplens_layout(tmp_path: Path) -> None:
    _write(tmp_path / "u.data", _UDATA)
    flags = {"10": [0, 1] + [0] * 17, "20": [0] * 18 + [1], "30": [1] + [0] * 18}
    lines = [_uitem(k, v) for k, v in flags.items()]
    lines[0] = lines[0].replace("Movie 10", "Amélie")  # latin-1 text
    _write(tmp_path / "u.item", "\n".join(lines) + "\n", encoding="latin-1")
    inter = load_movielens_100k(tmp_path)
    assert inter.name == "ml-100k"
    assert inter.user_ids.tolist() == ["1", "2"]
    assert inter.item_ids.tolist() == ["<pad>", "10", "20", "30"]
    # user 1: t=90 (30), then t=100 ties keep file order (10 before 20)
    assert [inter.item_ids[i] for i in _full_sequences(inter)[0]] == ["30", "10", "20"]
    assert inter.category_names.tolist() == list(ML100K_GENRES)
    assert [c.tolist() for c in inter.item_categories] == [[], [1], [18], [0]]


def test_load_movielens_100k_recbole_layout_matches_grouplens(tmp_path: Path) -> None:
    rb = tmp_path / "rb"
    rb.mkdir()
    rows = [r.split("\t") for r in _UDATA.strip().split("\n") if r]
    _write(
        rb / "ml-100k.inter",
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        + "".join("\t".join(r) + "\n" for r in rows),
    )
    _write(
        rb / "ml-100k.item",
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        '10\t"Quoted" title\t1995\tAction\n20\tB\t1995\tWestern\n30\tC\t1995\tunknown\n',
    )
    gl = tmp_path / "gl"
    gl.mkdir()
    _write(gl / "u.data", _UDATA)
    a = load_movielens_100k(rb)
    b = load_movielens_100k(gl / "u.data")  # a file path works too (no u.item: no genres)
    assert b.item_categories is None
    for f in ("users", "items", "times", "user_ids", "item_ids"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    assert [c.tolist() for c in a.item_categories] == [[], [1], [18], [0]]


def test_load_movielens_1m(tmp_path: Path) -> None:
    _write(tmp_path / "ratings.dat", "1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::1\n")
    _write(
        tmp_path / "movies.dat",
        "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n"
        "661::James and the Giant Peach (1996)::Animation|Children's|Musical\n",
        encoding="latin-1",
    )
    inter = load_movielens_1m(tmp_path)
    assert inter.name == "ml-1m"
    assert inter.item_ids.tolist() == ["<pad>", "661", "1193"]
    assert inter.users.tolist() == [0, 0, 1]
    assert inter.items.tolist() == [2, 1, 2]
    g = list(ML100K_GENRES)
    assert inter.item_categories[1].tolist() == sorted(
        [g.index("Animation"), g.index("Children's"), g.index("Musical")]
    )
    assert inter.item_categories[2].tolist() == [g.index("Drama")]
    assert load_dataset(str(tmp_path)).num_interactions == 3


@pytest.mark.parametrize("sep", ["\t", ","])
def test_load_amazon_with_attributes(tmp_path: Path, sep: str) -> None:
    header = sep.join(["user_id", "item_id", "timestamp"])
    body = ["A2\t7\t200", "A1\t7\t100", "A1\t3\t100", "A1\t12\t50"]
    ext = ".tsv" if sep == "\t" else ".csv"
    f = _write(
        tmp_path / f"interactions{ext}",
        header + "\n" + "\n".join(b.replace("\t", sep) for b in body) + "\n",
    )
    attrs = _write(tmp_path / "attrs.json", json.dumps({"7": [10, 2], "3": [2], "999": [5]}))
    inter = load_amazon(f, attributes=attrs)
    assert inter.user_ids.tolist() == ["A1", "A2"]
    assert inter.item_ids.tolist() == ["<pad>", "3", "7", "12"]
    # A1: 12 @50, then 7 and 3 tie @100 and keep file order
    assert [inter.item_ids[i] for i in _full_sequences(inter)[0]] == ["12", "7", "3"]
    assert inter.category_names.tolist() == ["2", "10"]  # numeric order; unused "5" absent
    assert [c.tolist() for c in inter.item_categories] == [[], [0], [0, 1], []]


def test_load_amazon_directory_extra_columns(tmp_path: Path) -> None:
    _write(tmp_path / "interactions.tsv", "timestamp\trating\titem_id\tuser_id\n5\t1\ti1\tu1\n")
    _write(tmp_path / "item_attributes.json", json.dumps({"i1": ["brand-x"]}))
    inter = load_dataset(str(tmp_path))
    assert inter.item_ids.tolist() == ["<pad>", "i1"]
    assert inter.category_names.tolist() == ["brand-x"]
    assert inter.times.tolist() == [5.0]


def test_load_events_jsonl_json_csv(tmp_path: Path) -> None:
    records = [
        {"user_id": 1, "item_id": "a", "timestamp": 10, "extra": True},
        {"user_id": 2, "item_id": "b", "timestamp": 5},
        {"user_id": 1, "item_id": "c", "timestamp": 10},
    ]
    jl = _write(tmp_path / "events.jsonl", "\n".join(map(json.dumps, records)) + "\n\n")
    ja = _write(tmp_path / "events.json", json.dumps(records))
    csvf = _write(
        tmp_path / "events.csv",
        "user_id,item_id,timestamp\n1,a,10\n2,b,5\n1,c,10\n",
    )
    results = [load_events(jl), load_dataset(str(ja)), load_dataset(str(csvf))]
    for inter in results:
        assert inter.user_ids.tolist() == ["1", "2"]
        assert inter.item_ids.tolist() == ["<pad>", "a", "b", "c"]
        assert inter.items.tolist() == [1, 3, 2]
    assert results[0].name == "events"


def test_load_events_iso_timestamps(tmp_path: Path) -> None:
    f = _write(
        tmp_path / "e.jsonl",
        '{"user_id": "u", "item_id": "x", "timestamp": "1970-01-02T00:00:00Z"}\n'
        '{"user_id": "u", "item_id": "y", "timestamp": "1970-01-01T00:00:01"}\n',
    )
    inter = load_events(f)
    assert inter.times.tolist() == [1.0, 86400.0]
    assert inter.item_ids[inter.items].tolist() == ["y", "x"]


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        load_amazon(tmp_path / "nope.tsv")
    with pytest.raises(FileNotFoundError, match="known data set"):
        load_dataset(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match=r"ml-100k.inter or u.data"):
        load_movielens_100k(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_movielens_1m(tmp_path)

    ragged = _write(tmp_path / "ragged.tsv", "user_id\titem_id\ttimestamp\nu\ti\t1\nu\ti\n")
    with pytest.raises(DataFormatError, match=r"line 3.*expected 3 fields"):
        load_amazon(ragged)
    bad_time = _write(tmp_path / "t.tsv", "user_id\titem_id\ttimestamp\nu\ti\t1\n\nu\ti\tsoon\n")
    with pytest.raises(DataFormatError, match=r"line 4.*timestamp"):
        load_amazon(bad_time)
    no_col = _write(tmp_path / "c.tsv", "user\titem_id\ttimestamp\nu\ti\t1\n")
    with pytest.raises(DataFormatError, match="user_id"):
        load_amazon(no_col)
    no_delim = _write(tmp_path / "d.tsv", "user_id item_id timestamp\n")
    with pytest.raises(DataFormatError, match="delimiter"):
        load_amazon(no_delim)
    bad_json = _write(tmp_path / "e.jsonl", '{"user_id": 1, "item_id": 2, "timestamp": 3}\n{oops\n')
    with pytest.raises(DataFormatError, match=r"line 2.*invalid JSON"):
        load_events(bad_json)
    missing = _write(tmp_path / "m.jsonl", '{"user_id": 1, "item_id": 2}\n')
    with pytest.raises(DataFormatError, match=r"line 1.*\['timestamp'\]"):
        load_events(missing)
    bad_attrs = _write(tmp_path / "a.json", '["not", "a", "dict"]')
    good = _write(tmp_path / "g.tsv", "user_id\titem_id\ttimestamp\nu\ti\t1\n")
    with pytest.raises(DataFormatError, match="JSON object"):
        load_amazon(good, attributes=bad_attrs)
    bad_udata = tmp_path / "ml"
    bad_udata.mkdir()
    _write(bad_udata / "u.data", "1\t2\t3\t4\n1\t2\t3\n")
    with pytest.raises(DataFormatError, match="line 2"):
        load_movielens_100k(bad_udata)
    with pytest.raises(ValueError, match="unrecognised data file"):
        load_dataset(str(_write(tmp_path / "x.parquet", "")))
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    with pytest.raises(ValueError, match="unrecognised data directory"):
        load_dataset(str(empty_dir))


def test_beauty_missing_gives_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEVO_BEAUTY_DIR", str(tmp_path / "absent"))
    with pytest.raises(FileNotFoundError, match="SEVO_BEAUTY_DIR"):
        load_dataset("beauty")


_BEAUTY = datasets_mod.beauty_dir()


@pytest.mark.skipif(
    not (_BEAUTY / "interactions.tsv").is_file() or "SEVO_BEAUTY_DIR" in os.environ,
    reason="Amazon Beauty not fetched (`sevo data fetch beauty`; benchmark data, optional)",
)
def test_beauty_counts_when_present() -> None:
    inter = load_dataset("beauty")
    assert (inter.num_users, inter.num_items, inter.num_interactions) == (22363, 12101, 198502)
    assert inter.name == "amazon-beauty"
    assert inter.num_categories == 637
    assert core_filter(inter, 5).num_interactions == 198502  # already 5-core
    sp = split_leave_one_out(inter)
    assert sp.eval_users("test").shape[0] == 22363


# ----------------------------------------------------------------------- MovieLens-100K (PyPI)


@pytest.fixture(scope="session")
def ml100k_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real `pip download recbole==1.2.1` into a per-session cache (about 2 MB)."""
    return fetch_ml100k(tmp_path_factory.mktemp("sevo-cache") / "ml-100k")


@pytest.fixture(scope="session")
def ml100k(ml100k_dir: Path) -> Interactions:
    return load_movielens_100k(ml100k_dir)


def test_fetch_ml100k_files_and_cache_hit(
    ml100k_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert sorted(p.name for p in ml100k_dir.iterdir()) == ["ml-100k.inter", "ml-100k.item"]

    def no_network(*args, **kwargs):
        raise AssertionError("fetch_ml100k downloaded again although the cache is complete")

    monkeypatch.setattr(datasets_mod.subprocess, "run", no_network)
    assert fetch_ml100k(ml100k_dir) == ml100k_dir


def test_fetch_ml100k_default_dir_from_env(
    ml100k_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "root" / "ml-100k"
    cache.mkdir(parents=True)
    for f in ml100k_dir.iterdir():
        (cache / f.name).write_bytes(f.read_bytes())
    monkeypatch.setenv("SEVO_CACHE_DIR", str(tmp_path / "root"))
    monkeypatch.setattr(datasets_mod.subprocess, "run", None)  # any download attempt would fail
    assert fetch_ml100k() == cache


def test_fetch_ml100k_pip_failure_is_clear(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_pip(cmd, **kwargs):
        assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd
        return subprocess.CompletedProcess(cmd, 1, stdout="", stderr="ERROR: network down")

    monkeypatch.setattr(datasets_mod.subprocess, "run", failing_pip)
    with pytest.raises(RuntimeError, match=r"(?s)exit code 1.*PyPI.*network down"):
        fetch_ml100k(tmp_path / "c")
    assert not any((tmp_path / "c").iterdir())  # nothing half-written left behind


def test_ml100k_counts(ml100k: Interactions) -> None:
    assert (ml100k.num_users, ml100k.num_items, ml100k.num_interactions) == (943, 1682, 100000)
    assert ml100k.category_names.tolist() == list(ML100K_GENRES)
    used = np.unique(np.concatenate(ml100k.item_categories))
    assert used.tolist() == list(range(19))
    assert ml100k.item_ids[1] == "1" and ml100k.user_ids[0] == "1"
    toy_story = ml100k.item_categories[1].tolist()
    assert [ML100K_GENRES[c] for c in toy_story] == ["Animation", "Children's", "Comedy"]
    st = dataset_stats(ml100k)
    assert st["seq_len_min"] == 20 and st["seq_len_max"] == 737


def test_ml100k_grouplens_layout_equivalent(
    ml100k_dir: Path, ml100k: Interactions, tmp_path: Path
) -> None:
    # Re-write the cached RecBole files in the GroupLens layout and load them with that reader.
    inter_lines = (ml100k_dir / "ml-100k.inter").read_text().splitlines()[1:]
    _write(tmp_path / "u.data", "\n".join(inter_lines) + "\n")
    item_lines = (ml100k_dir / "ml-100k.item").read_text().splitlines()[1:]
    out = []
    for line in item_lines:
        iid, title, year, cls = line.split("\t")
        flags = ["1" if g in cls.split() else "0" for g in ML100K_GENRES]
        out.append("|".join([iid, title, year, "", "http://x", *flags]))
    _write(tmp_path / "u.item", "\n".join(out) + "\n", encoding="latin-1")
    gl = load_movielens_100k(tmp_path)
    for f in ("users", "items", "times", "user_ids", "item_ids", "category_names"):
        np.testing.assert_array_equal(getattr(gl, f), getattr(ml100k, f))
    assert all(
        np.array_equal(a, b)
        for a, b in zip(gl.item_categories, ml100k.item_categories, strict=True)
    )


def test_ml100k_split_no_leak(ml100k: Interactions) -> None:
    inter = core_filter(ml100k, k=5)
    assert inter.num_users == 943  # every ML-100K user has >= 20 ratings
    assert np.bincount(inter.items)[1:].min() >= 5
    sp = split_leave_one_out(inter)
    assert sp.eval_users("test").shape[0] == 943
    _assert_no_leak(sp, _full_sequences(inter))
    n1 = sp.num_items + 1
    train_users = np.repeat(np.arange(sp.num_users), np.diff(sp.train_offsets))
    train_keys = train_users * n1 + sp.train_items
    users = np.arange(sp.num_users)
    assert not np.isin(users * n1 + sp.valid_items, train_keys).any()
    assert not np.isin(users * n1 + sp.test_items, train_keys).any()
    assert len(set(train_keys.tolist())) == train_keys.shape[0]  # ML-100K has no repeats
    seqs = sp.padded_sequences(users, maxlen=50, which="test")
    assert seqs.shape == (943, 50) and (seqs[:, -1] == sp.valid_items).all()


def test_delimited_files_are_read_in_chunks_with_the_same_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CSV/TSV reader streams chunks of rows: the log, its id tables and the line numbers of
    errors are the same whether a file is one chunk or many (here chunks of 3 rows)."""
    from engine.data import loaders

    rows = [f"u{k % 4},item-{k % 7}{'x' * (k % 3)},{1_700_000_000 + k}" for k in range(20)]
    good = _write(tmp_path / "g.csv", "user_id,item_id,timestamp\n" + "\n\n".join(rows) + "\n")
    whole = load_events(good)
    monkeypatch.setattr(loaders, "_CHUNK_ROWS", 3)
    chunked = load_events(good)
    for name in ("users", "items", "times", "user_ids", "item_ids"):
        assert np.array_equal(getattr(whole, name), getattr(chunked, name)), name
    # Each id column is as narrow as its longest id, not as the 10-digit timestamps.
    assert chunked.user_ids.dtype == np.dtype("<U2")
    bad = [*rows[:10], "u1,i1,later", *rows[10:]]  # 11th data row, line 12 of the file
    bad_file = _write(tmp_path / "b.csv", "user_id,item_id,timestamp\n" + "\n".join(bad) + "\n")
    with pytest.raises(DataFormatError, match=r"line 12: .*timestamp"):
        load_events(bad_file)
