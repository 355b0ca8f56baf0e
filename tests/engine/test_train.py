"""Offline training: graph built from training items only, learning works, results are sane."""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pytest
import torch

from engine.data import build_interactions, split_leave_one_out
from engine.train import (
    CHECKPOINT_FILE,
    OfflineConfig,
    build_item_graph,
    evaluate,
    read_checkpoint,
    train_offline,
    trainable_users,
)
from graph_store import ItemGraph


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


# ------------------------------------------------------------------------ resume, hooks
def _small(**changes) -> OfflineConfig:
    base = OfflineConfig(
        model="sasrec",
        optimizer="sevo-adamw",
        epochs=6,
        eval_every=2,
        batch_size=32,
        maxlen=10,
        lr=5e-3,
        model_overrides={"dim": 16},
        checkpoint_every_epochs=2,
    )
    return replace(base, **changes)


def _assert_same_run(a, b) -> None:
    """Bit for bit: weights, metrics, per-user NDCG, curve, best epoch."""
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key
    assert a.valid == b.valid and a.test == b.test
    assert np.array_equal(a.test_user_ndcg10, b.test_user_ndcg10)
    assert a.curve == b.curve and a.best_epoch == b.best_epoch
    assert len(a.epoch_seconds) == len(b.epoch_seconds)


@pytest.mark.parametrize(
    ("model", "optimizer"),
    [("sasrec", "sevo-adamw"), ("bert4rec", "adamw"), ("stosa", "sevo-adamw")],
)
def test_a_run_stopped_after_epoch_k_and_resumed_to_n_equals_an_uninterrupted_run(
    tmp_path, model, optimizer
):
    split = cyclic_split()
    config = _small(model=model, optimizer=optimizer)
    whole = train_offline(split, config, progress=False, keep_model=True)
    ckpt = tmp_path / "ckpt"
    first = train_offline(split, replace(config, epochs=4, checkpoint_dir=ckpt), progress=False)
    assert [p["epoch"] for p in first.curve] == [2, 4]
    assert read_checkpoint(ckpt / CHECKPOINT_FILE)["meta"]["epoch"] == 4
    seen = []
    resumed = train_offline(
        split,
        replace(config, checkpoint_dir=ckpt),
        progress=False,
        keep_model=True,
        on_eval=seen.append,
    )
    _assert_same_run(whole, resumed)
    # epochs 1-4 were not trained again; the restored curve was replayed to the listener
    assert len(resumed.epoch_seconds) == 6 and seen == resumed.curve
    assert read_checkpoint(ckpt / CHECKPOINT_FILE)["meta"]["epoch"] == 6


def test_a_run_killed_by_an_exception_resumes_from_its_last_checkpoint(tmp_path):
    split = cyclic_split()
    config = _small(epochs=8, checkpoint_every_epochs=3, checkpoint_dir=str(tmp_path))
    whole = train_offline(
        split, replace(config, checkpoint_dir=None), progress=False, keep_model=True
    )

    def crash_at_six(point):
        if point["epoch"] == 6:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_offline(split, config, progress=False, on_eval=crash_at_six)
    # written at epoch 6, before the listener ran: an early checkpoint and the curve up to it
    meta = read_checkpoint(tmp_path / CHECKPOINT_FILE)["meta"]
    assert meta["epoch"] == 6 and [p["epoch"] for p in meta["curve"]] == [2, 4, 6]
    resumed = train_offline(split, config, progress=False, keep_model=True)
    _assert_same_run(whole, resumed)


def test_a_checkpoint_of_other_settings_or_data_is_ignored(tmp_path, caplog):
    split = cyclic_split()
    config = _small(epochs=4, checkpoint_dir=str(tmp_path))
    train_offline(split, replace(config, lr=1e-3), progress=False)
    fresh = train_offline(split, replace(config, checkpoint_dir=None), progress=False)
    with caplog.at_level("WARNING"):
        again = train_offline(split, config, progress=False)
    assert "other settings" in caplog.text
    assert again.test == fresh.test and len(again.epoch_seconds) == 4
    caplog.clear()
    with caplog.at_level("WARNING"):  # same settings, other data
        train_offline(cyclic_split(seed=5), config, progress=False)
    assert "other settings, data or graph" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):  # a checkpoint beyond the run's last epoch
        train_offline(cyclic_split(seed=5), replace(config, epochs=2), progress=False)
    assert "beyond epochs=2" in caplog.text


def test_an_early_stopped_run_resumes_as_stopped(tmp_path):
    split = cyclic_split()
    config = _small(epochs=12, eval_every=1, patience=1, lr=5e-2, checkpoint_dir=str(tmp_path))
    first = train_offline(split, config, progress=False)
    assert len(first.epoch_seconds) < 12, "the settings must stop early"
    meta = read_checkpoint(tmp_path / CHECKPOINT_FILE)["meta"]
    assert meta["stopped"] and meta["epoch"] == len(first.epoch_seconds)
    again = train_offline(split, config, progress=False)
    assert again.test == first.test and again.curve == first.curve


def test_extra_loss_is_added_to_every_step_and_item_graph_replaces_the_configured_one():
    split = cyclic_split()
    config = _small(optimizer="adamw", epochs=2, eval_every=1)
    calls = []

    def penalty(model, batch, generator):
        calls.append((batch["seqs"].shape, isinstance(generator, torch.Generator)))
        return 10.0 * model.item_output_weight().square().sum()

    plain = train_offline(split, config, progress=False, keep_model=True)
    pulled = train_offline(split, config, progress=False, keep_model=True, extra_loss=penalty)
    steps_per_epoch = -(-trainable_users(split).size // config.batch_size)
    assert len(calls) == 2 * steps_per_epoch
    assert all(shape[1] == config.maxlen + 1 and gen for shape, gen in calls)
    assert pulled.curve[0]["loss"] > plain.curve[0]["loss"]  # the mean loss includes the term
    assert pulled.model.item_output_weight().norm() < 0.5 * plain.model.item_output_weight().norm()
    zero = train_offline(
        split,
        config,
        progress=False,
        keep_model=True,
        extra_loss=lambda m, b, g: 0.0 * b["seqs"].sum(),
    )
    assert zero.test == plain.test

    # SEvo over a given graph: here a graph with one edge instead of the interaction graph
    graph = ItemGraph(split.num_items + 1)
    graph.add_edges(np.array([1]), np.array([2]))
    graph.merge()
    run = train_offline(
        split, replace(config, optimizer="sevo-adamw"), progress=False, item_graph=graph
    )
    assert run.graph_nnz == graph.nnz == 2
    with pytest.raises(ValueError, match="needs optimizer='sevo-adamw'"):
        train_offline(split, config, progress=False, item_graph=graph)


def test_run_grid_continues_an_unfinished_run_from_its_checkpoint(tmp_path, caplog):
    from engine.experiments import load_split, run_grid, run_name

    # the cyclic data set as a file the grid loads by path
    rng = np.random.default_rng(0)
    rows = ["user_id,item_id,timestamp"]
    for u in range(60):
        start = int(rng.integers(0, 30))
        rows += [f"u{u},{(start + k) % 30 + 1},{k}" for k in range(12)]
    data = tmp_path / "cycle.csv"
    data.write_text("\n".join(rows) + "\n")
    config = _small(epochs=6)
    (whole,) = run_grid(str(data), [config], tmp_path / "whole", progress=False)
    dataset, split = load_split(str(data))
    name = run_name(dataset, config)
    out = tmp_path / "interrupted"
    # the grid was stopped after epoch 4: what it left is that run's checkpoint
    train_offline(
        split, replace(config, epochs=4, checkpoint_dir=out / "checkpoints" / name), progress=False
    )
    with caplog.at_level("INFO"):
        (resumed,) = run_grid(str(data), [config], out, progress=False)
    assert "resumed after epoch 4" in caplog.text
    assert resumed["test"] == whole["test"] and resumed["curve"] == whole["curve"]
    assert resumed["test_user_ndcg10"] == whole["test_user_ndcg10"]
    assert len(resumed["epoch_seconds"]) == 6
    assert not (out / "checkpoints" / name).exists()  # removed once the run finished
    assert not (out / "runs" / f"{name}.partial.json").exists()
