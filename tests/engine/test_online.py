"""OnlineTrainer: growth, graph edges, user state, prequential ranking, exact state round trip."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from engine.online import OnlineConfig, OnlineTrainer
from engine.online.graph_updates import batch_edges
from engine.online.ids import assign_rows, lookup_rows
from engine.online.layout import build_layout
from graph_store import sequence_edges

SMALL = {"dim": 8}
# The training settings these tests were written for (OnlineConfig's defaults until they became
# the command line's 3e-3 with 2 steps).
OLD_TRAINING = {"lr": 1e-3, "steps_per_batch": 1}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _config(**kw) -> OnlineConfig:
    base = {
        "maxlen": 6,
        "model_overrides": dict(SMALL),
        "seed": 0,
        "half_life": None,
        **OLD_TRAINING,
    }
    if kw.get("model") == "sasrec" or "model" not in kw:
        base["model_overrides"]["num_blocks"] = 1
    base.update(kw)
    return OnlineConfig(**base)


def _stream(n_events: int, n_users: int, n_items: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    users = np.array([f"u{u}" for u in rng.integers(0, n_users, n_events)])
    items = np.array([f"i{i}" for i in rng.integers(0, n_items, n_events)])
    times = np.sort(rng.uniform(1e9, 1e9 + 1e6, n_events))
    return users, items, times


def _batches(n: int, size: int):
    return [slice(lo, min(lo + size, n)) for lo in range(0, n, size)]


# ---------------------------------------------------------------------- config
@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"model": "bert4rec"}, "model must be one of"),
        ({"optimizer": "sgd"}, "optimizer must be one of"),
        ({"new_item_policy": "warm"}, "new_item_policy"),
        ({"maxlen": 0}, "maxlen must be a positive integer"),
        ({"hops": 3, "maxlen": 2}, "hops"),
        ({"half_life": 0.0}, "half_life"),
        ({"decay_unit": "days"}, "decay_unit"),
        ({"lr": -1.0}, "lr"),
        ({"betas": (0.9, 1.0)}, "betas"),
        ({"sevo_beta": 1.0}, "sevo_beta"),
        ({"max_users_state": 0}, "max_users_state"),
        ({"exclude_history": "some"}, "exclude_history"),
        ({"model": "mf", "model_overrides": {"bipartite": True}}, "bipartite"),
    ],
)
def test_config_rejects_bad_values(kw, match):
    with pytest.raises(ValueError, match=match):
        OnlineConfig(**kw)


def test_config_dict_round_trip():
    cfg = _config(half_life=3600.0, betas=(0.8, 0.9))
    assert OnlineConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown"):
        OnlineConfig.from_dict({**cfg.to_dict(), "colour": 1})


# ---------------------------------------------------------------------- growth and state
@pytest.mark.parametrize("model", ["sasrec", "gru4rec", "mf"])
def test_learn_many_grows_ids_model_optimizer_and_graph(model):
    trainer = OnlineTrainer(_config(model=model))
    stats = trainer.learn_many(["a", "a", "b"], ["x", "y", "x"], [1.0, 2.0, 3.0])
    assert (stats["events"], stats["new_items"], stats["new_users"]) == (3, 2, 2)
    assert trainer.item_ids() == ["x", "y"] and trainer.user_ids() == ["a", "b"]
    stats = trainer.learn_many(["c", "a"], ["z", "z"], [4.0, 5.0])
    assert (stats["new_items"], stats["new_users"]) == (1, 1)
    assert trainer.item_ids() == ["x", "y", "z"] and trainer.num_users == 3
    table = trainer.model.item_output_weight()
    assert table.shape[0] == 4 == trainer.graph.num_nodes
    state = trainer.optimizer.state[trainer.model.smoothing_groups()[0][0]]
    assert state["exp_avg"].shape == table.shape  # the optimizer followed the table
    assert trainer.events_applied == 5
    assert np.isfinite(stats["loss"]) and stats["trained_users"] >= 1
    ids, matrix = trainer.item_matrix()
    assert ids == ["x", "y", "z"] and matrix.shape == (3, 8) and matrix.dtype == np.float32
    vecs = trainer.user_vectors(["a", "nobody"])
    assert vecs.shape == (2, 8) and np.all(vecs[1] == 0) and np.any(vecs[0] != 0)


def test_graph_edges_equal_the_batch_builder_on_the_same_sequences():
    users, items, times = _stream(600, 25, 40, seed=1)
    trainer = OnlineTrainer(_config(hops=2, maxlen=4))
    for sl in _batches(600, 97):
        trainer.learn_many(users[sl], items[sl], times[sl])
    # Reference: each user's whole chronological sequence, in trainer rows.
    rows = {name: r + 1 for r, name in enumerate(trainer.item_ids())}
    seqs = [
        np.array([rows[i] for i in items[users == u]], dtype=np.int64) for u in np.unique(users)
    ]
    n = trainer.num_items + 1
    src, dst, w = sequence_edges(seqs, n, hops=2, maxlen=None)
    import scipy.sparse as sp

    ref = sp.coo_matrix((w, (src, dst)), shape=(n, n)).toarray()
    ref = ref + ref.T
    np.testing.assert_allclose(trainer.graph.to_scipy().toarray(), ref, rtol=0, atol=1e-12)
    np.testing.assert_allclose(trainer.graph.degree(), ref.sum(1), rtol=1e-12)
    # Each user's window holds its last maxlen + 1 items.
    for u, seq in zip(np.unique(users), seqs):
        (vec,) = trainer._users.stored_windows(np.array([trainer._ids.user_rows[u]]))
        tail = seq[-5:]
        assert vec[5 - tail.size :].tolist() == tail.tolist() and not vec[: 5 - tail.size].any()


def test_batch_edges_join_each_event_to_its_users_previous_items():
    # User 0's stored window (W = 3) ends with items 5, 6; user 1 has none. Batch, in arrival
    # order: user 0 -> 7, user 1 -> 8, user 0 -> 6 (whose 2nd previous item is itself: no edge).
    items = np.array([7, 8, 6])
    lay = build_layout(np.array([0, 1, 0]), items, np.array([[0, 5, 6], [0, 0, 0]]))
    src, dst, w, t = batch_edges(
        lay, items, np.array([1.0, 1.0, 2.0]), np.array([10.0, 11.0, 12.0]), hops=2
    )
    assert src.tolist() == [7, 6, 7] and dst.tolist() == [6, 7, 5]
    assert w.tolist() == [1.0, 2.0, 0.5] and t.tolist() == [10.0, 12.0, 10.0]


def test_event_weights_and_decay_reach_the_graph():
    trainer = OnlineTrainer(_config(half_life=10.0, decay_unit="seconds"))
    trainer.learn_many(["u", "u", "v", "v"], ["a", "b", "a", "b"], [0, 0, 10, 10], [1, 2, 1, 1])
    A = trainer.graph.to_scipy()
    # Edge a-b: weight 2 at t=0 (halved once by t=10) + weight 1 at t=10.
    assert A[1, 2] == pytest.approx(2 * 0.5 + 1.0)


def test_event_clock_halves_an_edge_after_half_life_more_events_whatever_the_times():
    cfg = _config(half_life=4.0, decay_unit="events")
    trainer = OnlineTrainer(cfg)
    # Event 1 (u: a) and 2 (u: b) make edge a-b of weight 1 stamped 2, a year apart in time.
    trainer.learn_many(["u", "u"], ["a", "b"], [0.0, 3.15e7])
    assert trainer.graph.to_scipy()[1, 2] == pytest.approx(1.0)
    # Four more events (6 in all) on other items, one second apart: a-b has halved once.
    trainer.learn_many(["v"] * 4, ["c", "d", "e", "f"], 3.15e7 + np.arange(1.0, 5.0))
    assert trainer.graph.to_scipy()[1, 2] == pytest.approx(0.5)
    # Timestamps do not matter: the same events with other times give the same graph.
    other = OnlineTrainer(cfg)
    other.learn_many(["u", "u"], ["a", "b"], [5.0, 5.0])
    other.learn_many(["v"] * 4, ["c", "d", "e", "f"], [9e9, 9e9, 9e9, 9e9])
    np.testing.assert_array_equal(
        other.graph.to_scipy().toarray(), trainer.graph.to_scipy().toarray()
    )
    # With the seconds clock, four events a year later would have wiped the edge out instead.
    seconds = OnlineTrainer(_config(half_life=4.0, decay_unit="seconds"))
    seconds.learn_many(["u", "u"], ["a", "b"], [0.0, 3.15e7])
    seconds.learn_many(["v"] * 4, ["c", "d", "e", "f"], 6.3e7 + np.arange(1.0, 5.0))
    assert seconds.graph.to_scipy()[1, 2] < 1e-12
    assert other.graph.to_scipy()[1, 2] == pytest.approx(0.5)


def test_event_clock_continues_after_a_state_round_trip_and_old_states_load():
    cfg = _config(half_life=2.0, decay_unit="events")
    trainer = OnlineTrainer(cfg)
    trainer.learn_many(["u", "u", "u"], ["a", "b", "c"], [1.0, 2.0, 3.0])
    buffer = io.BytesIO()
    torch.save(trainer.state_dict(), buffer)
    buffer.seek(0)
    resumed = OnlineTrainer.from_state_dict(torch.load(buffer, weights_only=True))
    assert resumed.config.decay_unit == "events" and resumed.events_applied == 3
    # Events 4 and 5: b-c (stamped 3) has aged two events since, so it halved once.
    for t in (trainer, resumed):
        t.learn_many(["w", "w"], ["x", "y"], [0.0, 0.0])
    for t in (trainer, resumed):
        assert t.graph.to_scipy()[2, 3] == pytest.approx(0.5)
        assert t.graph.t_latest == 5.0
    np.testing.assert_array_equal(
        trainer.graph.to_scipy().toarray(), resumed.graph.to_scipy().toarray()
    )
    # A state written before decay_unit / sevo_smooth existed (no such config keys) loads with
    # what it was trained with (seconds, the paper's update smoothing), not today's defaults.
    state = OnlineTrainer(_config(half_life=10.0, decay_unit="seconds")).state_dict()
    del state["config"]["decay_unit"], state["config"]["sevo_smooth"]
    del state["config"]["prune_below"]
    old = OnlineTrainer.from_state_dict(state).config
    assert (old.decay_unit, old.sevo_smooth, old.prune_below) == ("seconds", "update", None)


def test_edges_decayed_below_the_bound_are_pruned_at_fixed_event_counts(monkeypatch):
    """With decay, an edge that ten half-lives of other events left below ``prune_below`` is
    dropped at the next pruning point (every PRUNE_EVERY_EVENTS learned events), so the graph
    holds the recent past; without the bound it keeps every edge."""
    import engine.online.trainer as trainer_module

    monkeypatch.setattr(trainer_module, "PRUNE_EVERY_EVENTS", 10)
    kept, pruned = (
        OnlineTrainer(_config(half_life=2.0, decay_unit="events", prune_below=p))
        for p in (None, 1e-3)
    )
    for t in (kept, pruned):
        t.learn_many(["u", "u"], ["a", "b"], [0.0, 1.0])  # edge a-b, weight 1, stamped 2
        # 28 more events of another user alternating two other items (edge c-d each time):
        # at the pruning point of event 30, a-b has aged 28 events: 2^-14 < 1e-3. (At event
        # 20 it was 2^-9, above the bound, so it survived that point.)
        t.learn_many(["v"] * 28, ["c", "d"] * 14, np.arange(2.0, 30.0))
        assert t.events_applied == 30
    assert kept.graph.to_scipy()[1, 2] == pytest.approx(2.0**-14)
    A = pruned.graph.to_scipy()
    assert A[1, 2] == 0 and A[2, 1] == 0
    assert A[3, 4] > 0.5  # the recent edge stays
    assert pruned.graph.to_scipy(raw=True).nnz == kept.graph.to_scipy(raw=True).nnz - 2
    assert pruned.graph.degree()[1] == 0  # degrees follow the dropped edges


def test_pruning_with_nothing_below_the_bound_leaves_the_graph_untouched(monkeypatch):
    import engine.online.trainer as trainer_module

    monkeypatch.setattr(trainer_module, "PRUNE_EVERY_EVENTS", 5)
    users, items, times = _stream(60, 4, 6)
    runs = []
    for prune in (None, 1e-9):
        t = OnlineTrainer(_config(half_life=1e6, decay_unit="events", prune_below=prune))
        for sl in _batches(60, 7):
            t.learn_many(users[sl], items[sl], times[sl])
        runs.append(t.graph.state_arrays())
    for key in runs[0]:
        np.testing.assert_array_equal(runs[0][key], runs[1][key], err_msg=key)


def test_bad_input_raises_and_changes_nothing():
    trainer = OnlineTrainer(_config())
    trainer.learn_many(["u"], ["a"], [1.0])
    before = trainer.state_dict()
    with pytest.raises(ValueError, match="equal length"):
        trainer.learn_many(["u", "v"], ["a"], [1.0, 2.0])
    with pytest.raises(ValueError, match="finite"):
        trainer.learn_many(["u"], ["b"], [float("nan")])
    with pytest.raises(ValueError, match="weights"):
        trainer.learn_many(["u"], ["b"], [1.0], [-1.0])
    after = trainer.state_dict()
    assert after["item_ids"] == before["item_ids"] and after["events_applied"] == 1
    assert trainer.learn_many([], [], [])["events"] == 0


def test_least_recently_seen_users_are_evicted_beyond_the_bound():
    trainer = OnlineTrainer(_config(max_users_state=2))
    trainer.learn_many(["a", "b"], ["x", "y"], [1, 2])
    trainer.learn_many(["a"], ["z"], [3])  # b is now the least recently seen
    trainer.learn_many(["c"], ["x"], [4])
    assert trainer.num_users == 3 and trainer.num_users_in_state == 2
    assert trainer._users.slot_of_user[trainer._ids.user_rows["b"]] == -1
    # b comes back with an empty window: no edge to its old item y.
    trainer.learn_many(["b"], ["z"], [5])
    assert trainer.graph.to_scipy()[2, 3] == 0 and trainer.graph.to_scipy()[1, 3] == 1
    with pytest.raises(ValueError, match="max_users_state"):
        trainer.learn_many(["p", "q", "r"], ["new", "x", "x"], [6, 6, 6])
    assert trainer.num_users == 3 and "new" not in trainer.item_ids()  # nothing changed


@pytest.mark.parametrize("exclude_history", ["all", "window"])
def test_seen_items_are_distinct_newest_first_and_capped(exclude_history):
    trainer = OnlineTrainer(_config(maxlen=2, exclude_history=exclude_history))
    trainer.learn_many(["u"] * 6, ["a", "b", "a", "c", "d", "e"], [1, 2, 3, 4, 5, 6])
    trainer.learn_many(["v"], ["a"], [7])
    seen = trainer.seen_items(["u", "v", "nobody"])
    if exclude_history == "all":  # the full history, beyond the window of maxlen + 1 = 3
        assert seen[0] == ["e", "d", "c", "a", "b"]
    else:
        assert seen[0] == ["e", "d", "c"]
    assert seen[1:] == [["a"], []]
    assert trainer.seen_items(["u"], cap=2) == [["e", "d"]]
    assert trainer.seen_items(["u"], cap=0) == [[]]
    with pytest.raises(ValueError, match="cap"):
        trainer.seen_items(["u"], cap=-1)


# ---------------------------------------------------------------------- prequential ranking
def test_rank_before_learning_is_pure_and_counts_new_items_as_misses():
    users, items, times = _stream(300, 10, 30, seed=2)
    trainer = OnlineTrainer(_config())
    trainer.learn_many(users[:200], items[:200], times[:200])
    before = trainer.state_dict()
    ranks = trainer.rank_before_learning(
        np.array(["u1", "u1", "stranger"]), np.array(["i3", "never-seen", "i3"])
    )
    n = trainer.num_items
    assert ranks[1] == n + 1 and 1 <= ranks[0] <= n and 1 <= ranks[2] <= n
    # An item first seen earlier in the same batch is still unknown to the model.
    ranks = trainer.rank_before_learning(np.array(["u1", "u2"]), np.array(["new", "new"]))
    assert ranks.tolist() == [n + 1, n + 1]
    after = trainer.state_dict()
    for key in ("model", "generator", "windows", "history_values"):
        a, b = before[key], after[key]
        if isinstance(a, dict):
            assert all(torch.equal(a[k], b[k]) for k in a)
        else:
            assert torch.equal(a, b)


def test_rank_excludes_the_users_history_but_never_the_target():
    trainer = OnlineTrainer(_config(model="mf", exclude_history="all"))
    trainer.learn_many(["u"] * 4 + ["v"], ["a", "b", "c", "d", "e"], [1, 2, 3, 4, 5])
    with torch.no_grad():  # every user = w; item a scores 100, every other item 0
        w = torch.ones(8)
        trainer.model.user_emb.weight[:] = w
        trainer.model.item_emb.weight[1:] = 0
        trainer.model.item_emb.weight[1] = 100 * w / 8
    # For u, a..d are history: e competes with nothing -> rank 1. For v, a is ahead and the
    # ties b, c, d count against e (pessimistic) -> rank 5.
    ranks = trainer.rank_before_learning(["u", "v"], ["e", "e"])
    assert ranks.tolist() == [1, 5]
    # The target itself is never excluded (a repeat): u re-consuming a ranks first.
    assert trainer.rank_before_learning(["u"], ["a"]).tolist() == [1]
    # Earlier events of the same batch count as history too.
    assert trainer.rank_before_learning(["v", "v"], ["a", "e"]).tolist() == [1, 4]


# ---------------------------------------------------------------------- exact continuation
@pytest.mark.parametrize(
    "kw",
    [
        {"model": "sasrec", "half_life": 5e4},
        {"model": "sasrec", "half_life": 150.0, "decay_unit": "events"},
        {"model": "gru4rec", "optimizer": "adamw", "exclude_history": "window"},
        {"model": "mf", "new_item_policy": "paper", "hops": 2, "max_users_state": 20},
        {"model": "sasrec", "hops": 2, "merge_every": 330, "new_item_policy": "young"},
    ],
)
def test_state_dict_round_trip_continues_bit_for_bit(kw):
    users, items, times = _stream(900, 30, 60, seed=3)
    parts = _batches(900, 25)
    kw = dict(kw)
    merge_every = kw.pop("merge_every", None)
    cfg = _config(**kw)

    def make() -> OnlineTrainer:
        trainer = OnlineTrainer(cfg)
        if merge_every:  # merge the pending buffer often: the float32 base cache gets stale scales
            trainer.graph.min_merge = merge_every
        return trainer

    straight = make()
    losses_a = [straight.learn_many(users[s], items[s], times[s])["loss"] for s in parts]

    first = make()
    losses_b = [first.learn_many(users[s], items[s], times[s])["loss"] for s in parts[:17]]
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    del first
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    if merge_every:  # restore in place into a trainer built with other settings
        resumed = OnlineTrainer(OnlineConfig(model="mf"))
        resumed.load_state_dict(state)
        assert resumed.config == cfg
        assert resumed.optimizer.param_groups[0]["smoother"].trainer is resumed
    else:
        resumed = OnlineTrainer.from_state_dict(state)
    losses_b += [resumed.learn_many(users[s], items[s], times[s])["loss"] for s in parts[17:]]

    np.testing.assert_array_equal(losses_a, losses_b)
    sa, sb = straight.state_dict(), resumed.state_dict()
    for name, pa in sa["model"].items():
        assert torch.equal(pa, sb["model"][name]), name
    for idx, st in sa["optimizer"]["state"].items():
        for key, value in st.items():
            assert torch.equal(value, sb["optimizer"]["state"][idx][key]), (idx, key)
    for key, value in sa["graph"].items():  # meta holds NaN for "no half-life"
        np.testing.assert_array_equal(value.numpy(), sb["graph"][key].numpy(), err_msg=key)
    for key in ("windows", "slot_of_user", "history_values", "generator", "item_counts"):
        assert torch.equal(sa[key], sb[key]), key
    probe_users, probe_items = users[-40:], items[-40:]
    np.testing.assert_array_equal(
        straight.rank_before_learning(probe_users, probe_items),
        resumed.rank_before_learning(probe_users, probe_items),
    )


def test_id_maps_assign_rows_in_order_of_first_appearance():
    table: dict[str, int] = {}
    ids = ["<pad>"]
    rows, new = assign_rows(table, ids, np.array(["b", "a", "b", "c"]))
    assert rows.tolist() == [1, 2, 1, 3] and new == 3 and rows.dtype == np.int64
    rows, new = assign_rows(table, ids, np.array(["c", "d", "a", "d", "e"]))
    assert rows.tolist() == [3, 4, 2, 4, 5] and new == 2
    assert ids == ["<pad>", "b", "a", "c", "d", "e"]
    assert table == {k: i for i, k in enumerate(ids) if i}
    looked = lookup_rows(table, np.array(["e", "zz", "b"]), missing=-1)
    assert looked.tolist() == [5, -1, 1] and looked.dtype == np.int64
    assert lookup_rows(table, np.array([], dtype=str), missing=0).shape == (0,)
