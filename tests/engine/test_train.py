"""Offline training: graph built from training items only, learning works, results are sane."""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pytest

from engine.data import build_interactions, split_leave_one_out
from engine.train import OfflineConfig, build_item_graph, evaluate, train_offline


def cyclic_split(num_users: int = 120, num_items: int = 30, length: int = 12, seed: int = 0):
    """Each user walks the item cycle i → i+1 from a random start: the next item is predictable."""
    rng = np.random.default_rng(seed)
    users, items, times = [], [], []
    for u in range(num_users):
        start = rng.integers(0, num_items)
        for k in range(length):
            users.append(str(u))
            items.append(str((start + k) % num_items + 1))
            times.append(float(k))
    return split_leave_one_out(build_interactions(users, items, np.array(times)))


def test_item_graph_never_sees_validation_or_test_items():
    # Items 90..99 only ever appear as the last two events of a user: they must stay isolated.
    rng = np.random.default_rng(1)
    users, items, times = [], [], []
    for u in range(40):
        seq = [*list(rng.integers(1, 60, 8)), 90 + u % 5, 95 + u % 5]
        for k, it in enumerate(seq):
            users.append(f"u{u}")
            items.append(str(it))
            times.append(float(k))
    split = split_leave_one_out(build_interactions(users, items, np.array(times)))
    held_out = set(split.valid_items.tolist()) | set(split.test_items.tolist())
    train = set(split.train_items.tolist())
    only_held_out = held_out - train
    assert only_held_out, "the construction must produce items seen only in valid/test"
    graph = build_item_graph(split, OfflineConfig(graph="interactions"))
    degree = graph.degree()
    for item in only_held_out:
        assert degree[item] == 0, f"held-out item {item} leaked into the graph"
    assert degree[0] == 0, "padding row has no edges"
    # Every edge joins two items adjacent in some training sequence.
    A = graph.to_scipy().tocoo()
    pairs = set()
    for u in range(split.num_users):
        seq = split.train_sequence(u)
        pairs |= {(a, b) for a, b in itertools.pairwise(seq)} | {
            (b, a) for a, b in itertools.pairwise(seq)
        }
    assert all((i, j) in pairs for i, j in zip(A.row, A.col))


@pytest.mark.parametrize("optimizer", ["adamw", "sevo-adamw"])
def test_sasrec_learns_a_predictable_sequence(optimizer):
    split = cyclic_split()
    config = OfflineConfig(
        model="sasrec",
        optimizer=optimizer,
        epochs=30,
        eval_every=10,
        batch_size=64,
        maxlen=10,
        lr=5e-3,
        weight_decay=0.0,
        model_overrides={"dim": 32, "dropout": 0.1},
    )
    result = train_offline(split, config, progress=False)
    # Random ranking over 30 items would give HR@10 ≈ 0.33; the cycle is fully predictable.
    assert result.test["HR@10"] > 0.8, result.test
    assert result.best_epoch in (10, 20, 30)
    assert len(result.epoch_seconds) == 30 and len(result.curve) == 3
    assert result.test_user_ndcg10.shape == (split.eval_users("test").size,)
    assert (result.graph_nnz > 0) == (optimizer == "sevo-adamw")


def test_untrained_model_is_near_chance_and_evaluation_is_deterministic():
    from engine.models import build_model

    split = cyclic_split(seed=3)
    model = build_model(
        "sasrec", num_items=split.num_items, num_users=split.num_users, seed=0, dim=16
    )
    first, ranks = evaluate(model, split, "test", maxlen=10)
    again, ranks_again = evaluate(model, split, "test", maxlen=10)
    assert first == again and np.array_equal(ranks, ranks_again)
    # History is excluded, so at most 30 - history competitors remain; chance HR@10 is well < 0.8.
    assert first["HR@10"] < 0.8


def test_bad_config_values_raise():
    with pytest.raises(ValueError, match="optimizer must be one of"):
        OfflineConfig(optimizer="sgd")
    with pytest.raises(ValueError, match="graph must be one of"):
        OfflineConfig(graph="knn")
    with pytest.raises(ValueError, match="epochs must be a positive integer"):
        OfflineConfig(epochs=0)
    with pytest.raises(ValueError, match="device must be a torch device"):
        OfflineConfig(device="gpu0")


def test_a_finished_run_is_reused_across_devices_and_added_fields_but_not_changed_ones():
    from dataclasses import asdict

    from engine.experiments import same_experiment

    config = OfflineConfig(epochs=3, device="cpu")
    saved = asdict(replace(config, device="cuda"))
    assert same_experiment(saved, config)  # the device does not define the experiment
    del saved["model_overrides"]  # a run saved before the field existed: default {}
    assert same_experiment(saved, config)
    assert not same_experiment(saved, replace(config, model_overrides={"dropout": 0.4}))
    assert not same_experiment({**saved, "epochs": 4}, config)
    assert not same_experiment(None, config)
    # overrides compare as the model configs they resolve to
    spelled_out = {**saved, "model_overrides": {"block": "query-norm", "attend_padding": True}}
    assert same_experiment(spelled_out, config)  # today's SASRec defaults, written out
    old_block = {**saved, "model_overrides": {"block": "pre-ln", "attend_padding": False}}
    assert not same_experiment(old_block, config)
    assert not same_experiment({**saved, "model_overrides": {"no_such_field": 1}}, config)


def test_the_offline_smoother_reads_a_snapshot_on_the_model_device():
    from engine.models import build_model
    from engine.train import build_optimizer

    split = cyclic_split()
    config = OfflineConfig(epochs=1)
    graph = build_item_graph(split, config)
    model = build_model("sasrec", split.num_items, split.num_users)
    optimizer = build_optimizer(model, config, graph)
    smoother = optimizer.param_groups[0]["smoother"]
    assert smoother.graph.device == model.item_emb.weight.device
    assert smoother.graph.version == graph.snapshot().version
    assert graph.snapshot().to("cpu") is graph.snapshot()


def test_category_graph_requires_categories():
    split = cyclic_split()
    with pytest.raises(ValueError, match="no item categories"):
        build_item_graph(split, OfflineConfig(graph="categories"))
