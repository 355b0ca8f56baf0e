"""The drifting synthetic stream: determinism, valid ids, drift that makes co-occurrence stale."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from engine.data import drifting_stream, find_dataset, is_dataset_name, load_dataset
from engine.data.synthetic import _drift_tables, parse_synthetic_name

SMALL = {"n_events": 20_000, "n_users": 300, "n_items": 400, "n_clusters": 10}


def _pairs(inter):
    """Each user's consecutive (previous item, item, time) pairs, items as external numbers."""
    same = inter.users[1:] == inter.users[:-1]
    ext = np.array([0] + [int(x[1:]) for x in inter.item_ids[1:]])
    return ext[inter.items[:-1][same]], ext[inter.items[1:][same]], inter.times[1:][same]


def _halves_correlation(inter, n_items: int) -> float:
    """Correlation of the item-transition counts of the stream's first and second half."""
    a, b, t = _pairs(inter)
    mid = np.median(inter.times)

    def counts(mask):
        m = sp.coo_matrix((np.ones(mask.sum()), (a[mask], b[mask])), shape=(n_items, n_items))
        return m.toarray().ravel()

    return float(np.corrcoef(counts(t < mid), counts(t >= mid))[0, 1])


def test_a_seed_gives_the_same_stream_and_another_seed_another():
    one, two = drifting_stream(0.2, seed=5, **SMALL), drifting_stream(0.2, seed=5, **SMALL)
    for name in ("users", "items", "times", "user_ids", "item_ids"):
        np.testing.assert_array_equal(getattr(one, name), getattr(two, name), err_msg=name)
    other = drifting_stream(0.2, seed=6, **SMALL)
    assert not np.array_equal(one.item_ids[one.items], other.item_ids[other.items])
    assert one.name == "synthetic-drift:0.2:5"


def test_shapes_ids_and_times_are_valid():
    inter = drifting_stream(0.1, seed=0, **SMALL)
    assert inter.num_interactions == SMALL["n_events"]
    assert 0.9 * SMALL["n_users"] <= inter.num_users <= SMALL["n_users"]
    assert 0.95 * SMALL["n_items"] <= inter.num_items <= SMALL["n_items"]
    assert inter.items.min() >= 1 and inter.items.max() == inter.num_items
    assert all(i.startswith("i") and 0 <= int(i[1:]) < 400 for i in inter.item_ids[1:])
    assert all(u.startswith("u") and 0 <= int(u[1:]) < 300 for u in inter.user_ids)
    t = np.sort(inter.times)
    assert np.all(np.isfinite(t)) and t[0] >= 1.5e9
    span = t[-1] - t[0]  # about one event per second
    assert 0.7 * SMALL["n_events"] < span < 1.3 * SMALL["n_events"]
    assert np.unique(inter.times).size > 0.99 * inter.num_interactions  # (almost) no ties
    # Sessions stay in a cluster: most of a user's consecutive items share one (i % K).
    a, b, _ = _pairs(inter)
    assert np.mean(a % 10 == b % 10) > 0.7


def test_successor_tables_stay_put_without_drift_and_change_at_the_drift_rate():
    rng = np.random.default_rng(0)
    ranks, succ = _drift_tables(rng, 4, 50, 6, 0.0)
    assert all(np.array_equal(succ[0], succ[p]) for p in range(6))
    assert all(np.array_equal(ranks[0], ranks[p]) for p in range(6))
    K = 4
    assert np.all(succ[0] % K == np.arange(200) % K) and np.all(succ[0] != np.arange(200))
    assert np.array_equal(np.sort(ranks[0], axis=1), np.arange(200).reshape(50, K).T)
    ranks, succ = _drift_tables(np.random.default_rng(0), 4, 50, 6, 0.3)
    changed = np.mean(succ[1:] != succ[:-1])
    assert 0.25 < changed < 0.33  # a re-draw hits the old successor with probability 1/49
    assert np.all(np.sort(ranks, axis=2) == np.sort(ranks[0], axis=1))  # still permutations


def test_drift_makes_early_co_occurrence_stale():
    corr = {r: _halves_correlation(drifting_stream(r, seed=1, **SMALL), 400) for r in (0, 0.1, 0.5)}
    assert corr[0] > 0.8  # stationary: the halves' transition counts agree
    assert corr[0] > corr[0.1] + 0.2
    assert corr[0.1] > corr[0.5]
    assert corr[0.5] < 0.3


def test_bad_parameters_raise():
    with pytest.raises(ValueError, match="drift_rate"):
        drifting_stream(1.5)
    with pytest.raises(ValueError, match="n_items"):
        drifting_stream(0.1, n_items=10, n_clusters=10)
    with pytest.raises(ValueError, match="n_events"):
        drifting_stream(0.1, n_events=0)
    with pytest.raises(ValueError, match="p_follow"):
        drifting_stream(0.1, p_follow=2.0)


def test_the_stream_is_a_data_set_name():
    assert parse_synthetic_name("ml-100k") is None
    assert parse_synthetic_name("Synthetic-Drift:0.25:3:900") == {
        "drift_rate": 0.25,
        "seed": 3,
        "n_events": 900,
    }
    assert is_dataset_name("synthetic-drift:0.1")
    assert find_dataset("synthetic-drift:0.1").fetch is None
    for bad in ("synthetic-drift:x", "synthetic-drift:2", "synthetic-drift:0.1:1:2:3"):
        with pytest.raises(ValueError, match="synthetic-drift"):
            find_dataset(bad)
    loaded = load_dataset("synthetic-drift:0.1:2:3000")
    direct = drifting_stream(0.1, seed=2, n_events=3000)
    np.testing.assert_array_equal(loaded.items, direct.items)
    np.testing.assert_array_equal(loaded.times, direct.times)


def test_log_source_replays_the_generated_stream():
    from streaming.sources.log import LogSource

    source = LogSource("synthetic-drift:0.2:1:1500", batch_size=500)
    batches = list(source)
    assert [len(b.users) for b in batches] == [500, 500, 500]
    times = np.concatenate([b.times for b in batches])
    assert np.all(np.diff(times) >= 0)
