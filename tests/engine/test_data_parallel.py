"""Data-parallel online training: N gloo ranks stepping parts of each batch equal one process
stepping the union batch (real processes, torch.distributed over loopback)."""

from __future__ import annotations

import os
from datetime import timedelta

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from devtools.services import free_port
from engine.config import OnlineConfig
from engine.online import OnlineTrainer
from engine.online.collective import ProcessGroup, SingleProcess, pack_arrays, unpack_arrays
from engine.online.users import UserState

WORLD = 2


def _stream(seed: int = 0, steps: int = 24, per_rank: int = 40):
    """Per step, per rank: a batch of events whose users belong to that rank only (user u is
    owned by rank u % WORLD, as a topic keyed by user id would place it)."""
    rng = np.random.default_rng(seed)
    out = []
    t = 1_000_000.0
    for _ in range(steps):
        step = []
        for r in range(WORLD):
            n = per_rank if r == 0 else per_rank // 2  # unequal batches
            users = rng.integers(0, 30, n) * WORLD + r
            items = rng.zipf(1.5, n) % 80
            times = t + np.arange(n, dtype=np.float64)
            t += n
            step.append(([f"u{u}" for u in users], [f"i{i}" for i in items], times))
        out.append(step)
    return out


def _config(**kw) -> OnlineConfig:
    return OnlineConfig(model="sasrec", seed=3, half_life=5_000.0, maxlen=8, **kw)


def _state_of(trainer: OnlineTrainer) -> dict:
    return {
        "model": {k: v.clone() for k, v in trainer.model.state_dict().items()},
        "exp_avg": trainer.optimizer.state_dict()["state"],
        "graph": trainer.graph.to_scipy().toarray(),
        "items": trainer.item_ids(),
        "events": trainer.events_applied,
    }


def _rank_main(rank: int, port: int, out_dir: str, empty_rank: int | None, cfg_kw: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=timedelta(seconds=60))
    try:
        trainer = OnlineTrainer(_config(**cfg_kw), ProcessGroup())
        for step in _stream():
            users, items, times = step[rank]
            if rank == empty_rank:
                users, items, times = [], [], np.zeros(0)
            trainer.learn_many(users, items, times)
        state = trainer.group_state_dict()
        if rank == 0:
            torch.save({"live": _state_of(trainer), "group": state}, f"{out_dir}/rank0.pt")
        # Leave together: a rank tearing gloo down while its peer still runs aborted once
        # ("terminate called without an active exception").
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _run_group(tmp_path, empty_rank=None, **cfg_kw) -> dict:
    mp.start_processes(
        _rank_main,
        args=(free_port(), str(tmp_path), empty_rank, cfg_kw),
        nprocs=WORLD,
        join=True,
        start_method="spawn",
    )
    return torch.load(tmp_path / "rank0.pt", weights_only=False)


def _reference(empty_rank=None, **cfg_kw) -> OnlineTrainer:
    trainer = OnlineTrainer(_config(**cfg_kw))
    for step in _stream():
        parts = [p for r, p in enumerate(step) if r != empty_rank]
        users = [x for p in parts for x in p[0]]
        items = [x for p in parts for x in p[1]]
        times = np.concatenate([p[2] for p in parts])
        trainer.learn_many(users, items, times)
    return trainer


# The attention key bias adds the same logit to every key of a query, which the softmax
# removes: its true gradient is 0, and what it gets is rounding noise that Adam scales up to
# ~lr per step. Its value changes no output, so it is the one parameter not compared.
_NO_EFFECT = "attn.k.bias"


def _assert_equal(group: dict, ref: OnlineTrainer) -> None:
    live, want = group["live"], _state_of(ref)
    assert live["items"] == want["items"]
    assert live["events"] == want["events"]
    names = list(want["model"])
    for k, v in want["model"].items():
        if k.endswith(_NO_EFFECT):
            continue
        torch.testing.assert_close(live["model"][k], v, atol=1e-5, rtol=1e-5, msg=k)
    params = [n for n, _ in ref.model.named_parameters()]
    assert len(params) == len(want["exp_avg"]) and names  # one optimizer state per parameter
    for pid, st in want["exp_avg"].items():
        if params[pid].endswith(_NO_EFFECT):
            continue
        for name in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(live["exp_avg"][pid][name], st[name], atol=1e-5, rtol=1e-4)
    np.testing.assert_allclose(live["graph"], want["graph"], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("cfg_kw", [{}, {"decay_unit": "events", "hops": 2}])
def test_two_ranks_equal_one_process_on_the_union_batches(tmp_path, cfg_kw):
    group = _run_group(tmp_path, **cfg_kw)
    ref = _reference(**cfg_kw)
    _assert_equal(group, ref)
    # the gathered user state is the reference's: every user's window, wherever it lived
    state = group["group"]
    ref_state = ref.state_dict()
    users = OnlineTrainer.from_state_dict(state).user_ids()
    assert users == ref.user_ids()
    merged = OnlineTrainer.from_state_dict(state)
    np.testing.assert_array_equal(
        merged._users.stored_windows(np.arange(len(users))),
        ref._users.stored_windows(np.arange(len(users))),
    )
    assert int(state["events_applied"]) == int(ref_state["events_applied"])


def test_a_rank_without_events_joins_every_step(tmp_path):
    group = _run_group(tmp_path, empty_rank=1)
    _assert_equal(group, _reference(empty_rank=1))


def test_a_model_without_keyed_draws_is_refused_in_a_group():
    class FakeGroup(SingleProcess):
        world_size = 2

    with pytest.raises(ValueError, match="keyed random draws"):
        OnlineTrainer(OnlineConfig(model="gru4rec"), FakeGroup())


def test_pack_arrays_round_trip():
    arrays = {
        "a": np.arange(6, dtype=np.int64).reshape(2, 3),
        "b": np.array([1.5, -2.0], dtype=np.float32),
        "empty": np.zeros((0, 4), dtype=np.int64),
        "tick": 7,
    }
    out = unpack_arrays(pack_arrays(arrays))
    assert out["tick"] == 7
    for k in ("a", "b", "empty"):
        np.testing.assert_array_equal(out[k], arrays[k])
        assert out[k].dtype == arrays[k].dtype


def test_merged_user_state_takes_each_users_newest_copy_and_caps():
    base = UserState(3, 10, keep_histories=True)
    base.reserve_users(4)
    # two ranks restored from one state (users 0..3 at tick 0), then each saw its own users
    lay_users = np.array([0, 1, 2, 3])
    slots = base.slots_for(lay_users)
    base.windows[slots] = np.arange(12).reshape(4, 3)
    for s in slots:
        base.histories[s] = np.array([s + 100])
    a, b = (
        UserState.from_state_arrays(base.state_arrays(4), 3, 10, True),
        UserState.from_state_arrays(base.state_arrays(4), 3, 10, True),
    )
    for st in (a, b):
        st.advance()
    a.slots_for(np.array([0]))
    a.windows[a.slot_of_user[0]] = [7, 7, 7]
    a.histories[a.slot_of_user[0]] = np.array([100, 7])
    b.slots_for(np.array([3]))
    b.windows[b.slot_of_user[3]] = [9, 9, 9]
    merged = UserState.merged([a.state_arrays(4), b.state_arrays(4)], 3, 10, True, 4)
    w = merged.stored_windows(np.arange(4))
    np.testing.assert_array_equal(w[0], [7, 7, 7])
    np.testing.assert_array_equal(w[3], [9, 9, 9])
    np.testing.assert_array_equal(w[1], [3, 4, 5])
    np.testing.assert_array_equal(merged.histories_of(np.array([0]))[0], [100, 7])
    capped = UserState.merged([a.state_arrays(4), b.state_arrays(4)], 3, 2, True, 4)
    assert sorted(np.flatnonzero(capped.slot_of_user[:4] >= 0).tolist()) == [0, 3]
