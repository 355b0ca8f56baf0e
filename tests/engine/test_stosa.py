"""STOSA (``engine.models.stosa``): Gaussians, Wasserstein distances, scoring, growth, SEvo
groups, training. The chain data and small helpers come from ``test_models``."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine.config import MODEL_NAMES
from engine.models import MODELS, STOSA, STOSAConfig, build_model, model_class
from engine.models.base import sample_negatives
from engine.models.stosa import wasserstein_distance, wasserstein_distance_matmul
from engine.optim import SEvoAdamW
from engine.train import OfflineConfig, build_item_graph, build_optimizer, train_offline
from tests.engine.test_models import MAXLEN, N_ITEMS, N_USERS, _batch, _chains, _gen, _left_pad
from tests.engine.test_train import cyclic_split

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DIM = 64


def make(**overrides) -> STOSA:
    overrides.setdefault("maxlen", MAXLEN)
    return build_model("stosa", N_ITEMS, N_USERS, seed=0, **overrides)


def _top1_hit_rate(model: STOSA, starts: torch.Tensor, items: torch.Tensor) -> float:
    """Share of chains whose unseen next item ranks first (history excluded, as in evaluation)."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        scores = model.score_all(
            {"users": torch.arange(len(items)), "seqs": _left_pad(items, MAXLEN)}
        )
    model.train(was_training)
    scores[:, 0] = float("-inf")
    scores.scatter_(1, items, float("-inf"))
    target = starts + items.shape[1]
    rank = (scores > scores.gather(1, target[:, None])).sum(1) + 1
    return (rank == 1).float().mean().item()


# ----------------------------------------------------------------------- registry, config
def test_registry_builds_stosa_with_the_sevo_beauty_defaults():
    model = build_model("STOSA", N_ITEMS, N_USERS)
    assert isinstance(model, STOSA) and model_class("stosa") is STOSA and STOSA.sequential
    cfg = model.config
    assert (cfg.dim, cfg.num_blocks, cfg.num_heads, cfg.maxlen) == (64, 1, 4, 100)
    assert (cfg.dropout, cfg.attn_dropout, cfg.pvn_weight) == (0.2, 0.5, 0.005)
    assert cfg.encode_mean
    # one registry: MODELS, in the order of the command line's torch-free MODEL_NAMES
    assert MODELS["stosa"] == (STOSA, STOSAConfig)
    assert tuple(MODELS) == MODEL_NAMES and "stosa" in MODEL_NAMES
    with pytest.raises(ValueError, match=r"unknown STOSAConfig field\(s\) \['hidden'\]"):
        build_model("stosa", N_ITEMS, N_USERS, hidden=3)
    with pytest.raises(ValueError, match="divisible"):
        build_model("stosa", N_ITEMS, N_USERS, dim=10)
    with pytest.raises(ValueError, match="attn_dropout"):
        build_model("stosa", N_ITEMS, N_USERS, attn_dropout=1.0)
    with pytest.raises(ValueError, match="pvn_weight"):
        build_model("stosa", N_ITEMS, N_USERS, pvn_weight=-1.0)


# ---------------------------------------------------------------------------- distances
def test_wasserstein_distance_by_hand():
    # μ1 = (1, 2), Σ1 = (4, 9); μ2 = (0, 0), Σ2 = (1, 1):
    # ||μ1 − μ2||² = 1 + 4 = 5, ||√Σ1 − √Σ2||² = (2 − 1)² + (3 − 1)² = 5 → 10
    m1, c1 = torch.tensor([1.0, 2.0]), torch.tensor([4.0, 9.0])
    m2, c2 = torch.tensor([0.0, 0.0]), torch.tensor([1.0, 1.0])
    assert wasserstein_distance(m1, c1, m2, c2).item() == pytest.approx(10.0)
    assert wasserstein_distance(m2, c2, m1, c1).item() == pytest.approx(10.0)  # symmetric
    assert wasserstein_distance(m1, c1, m1, c1).item() == 0.0  # identical Gaussians
    # same means, variances 0.25 vs 2.25 in one dimension: (0.5 − 1.5)² = 1
    same = torch.tensor([3.0, -1.0])
    d = wasserstein_distance(same, torch.tensor([0.25, 1.0]), same, torch.tensor([2.25, 1.0]))
    assert d.item() == pytest.approx(1.0)


def test_wasserstein_distances_are_non_negative_and_the_matmul_form_agrees():
    g = torch.Generator().manual_seed(0)
    mean1, mean2 = torch.randn(5, 8, generator=g), torch.randn(7, 8, generator=g)
    cov1 = F.elu(torch.randn(5, 8, generator=g)) + 1
    cov2 = F.elu(torch.randn(7, 8, generator=g)) + 1
    direct = wasserstein_distance(mean1[:, None], cov1[:, None], mean2[None], cov2[None])
    assert direct.shape == (5, 7) and torch.all(direct >= 0)
    torch.testing.assert_close(wasserstein_distance_matmul(mean1, cov1, mean2, cov2), direct)
    self_dist = wasserstein_distance_matmul(mean1, cov1, mean1, cov1).diagonal()
    torch.testing.assert_close(self_dist, torch.zeros(5), atol=1e-5, rtol=0)
    # one entry again in numpy, term by term
    m1, c1, m2, c2 = (x.numpy().astype(np.float64) for x in (mean1[2], cov1[2], mean2[3], cov2[3]))
    expected = np.sum((m1 - m2) ** 2) + np.sum((np.sqrt(c1) - np.sqrt(c2)) ** 2)
    assert direct[2, 3].item() == pytest.approx(expected, rel=1e-5)


# ------------------------------------------------------------------------------- shapes
def test_shapes_and_scores_are_negative_wasserstein_distances():
    model = make().eval()
    batch = _batch()
    with torch.no_grad():
        mean, cov = model.encode(batch["seqs"])
        user_mean, user_cov = model.user_gaussian(batch)
        rep, weight, bias = (
            model.user_repr(batch),
            model.item_output_weight(),
            model.item_output_bias(),
        )
        scores = model.score_all(batch)
        item_mean, item_cov = model.item_gaussians()
    assert mean.shape == cov.shape == (4, MAXLEN, DIM)
    pad = batch["seqs"] == 0
    assert torch.all(mean[pad] == 0) and torch.all(cov[pad] == 0)
    assert torch.all(cov[~pad] > 0)
    assert torch.equal(user_mean, mean[:, -1]) and torch.equal(user_cov, cov[:, -1])
    assert rep.shape == (4, 2 * DIM + 1) and weight.shape == (N_ITEMS + 1, 2 * DIM + 1)
    assert bias.shape == (N_ITEMS + 1,) and scores.shape == (4, N_ITEMS + 1)
    assert torch.all(item_cov > 0)
    direct = -wasserstein_distance(
        user_mean[:, None], user_cov[:, None], item_mean[None], item_cov[None]
    )
    torch.testing.assert_close(scores, direct, atol=2e-4, rtol=1e-5)
    # the Recommender contract: a dot product plus an item bias gives the same scores
    torch.testing.assert_close(rep @ weight.T + bias, scores, atol=2e-4, rtol=1e-5)
    with pytest.raises(ValueError, match="exceeds maxlen"):
        model.encode(torch.ones(1, MAXLEN + 1, dtype=torch.long))


def test_extra_left_padding_changes_nothing_and_the_encoder_is_causal():
    model = make().eval()
    batch = _batch(width=6)
    padded = {"users": batch["users"], "seqs": _left_pad(batch["seqs"], MAXLEN)}
    longer = {"users": batch["users"], "seqs": _left_pad(batch["seqs"], MAXLEN + 7)}
    with torch.no_grad():
        torch.testing.assert_close(model.score_all(padded), model.score_all(batch))
        torch.testing.assert_close(model.score_all(longer), model.score_all(batch))
        seqs = torch.randint(1, N_ITEMS + 1, (3, MAXLEN), generator=_gen(2))
        changed = seqs.clone()
        changed[:, 6] = changed[:, 6] % N_ITEMS + 1
        (m1, c1), (m2, c2) = model.encode(seqs), model.encode(changed)
    assert torch.equal(m1[:, :6], m2[:, :6]) and torch.equal(c1[:, :6], c2[:, :6])
    assert not torch.allclose(m1[:, 6:], m2[:, 6:]) and not torch.allclose(c1[:, 6:], c2[:, 6:])


def test_encode_mean_false_keeps_the_embedding_layer_mean_as_the_released_code_does():
    model = make(encode_mean=False).eval()
    seqs = torch.randint(1, N_ITEMS + 1, (3, MAXLEN), generator=_gen(3))
    changed = seqs.clone()
    changed[:, 2] = changed[:, 2] % N_ITEMS + 1  # an earlier item
    with torch.no_grad():
        (m1, c1), (m2, c2) = model.encode(seqs), model.encode(changed)
        positions = torch.arange(MAXLEN, 0, -1)
        embedded = F.elu(model.emb_norm(model.item_mean(seqs) + model.pos_mean(positions)))
    torch.testing.assert_close(m1, embedded)
    assert torch.equal(m1[:, 3:], m2[:, 3:])  # the mean at a position reads only its own item
    assert not torch.allclose(c1[:, 3:], c2[:, 3:])  # the covariance stream attends


# ------------------------------------------------------------------------------------ loss
def test_loss_is_the_wasserstein_bpr_plus_the_pvn_hinge():
    model = make(pvn_weight=0.3).eval()  # eval: no dropout, so the generator only draws negatives
    seqs = _left_pad(_chains()[1][:5], MAXLEN + 1)
    seqs[0, -3] = 0  # an input that is padding is not a training position either
    loss = model.loss({"users": torch.arange(5), "seqs": seqs}, _gen(9))
    inputs, targets = seqs[:, :-1], seqs[:, 1:]
    with torch.no_grad():
        mean, cov = model.encode(inputs)
    valid = (inputs != 0) & (targets != 0)
    u_mean, u_cov, pos = mean[valid].double(), cov[valid].double(), targets[valid]
    neg = sample_negatives(pos.shape, N_ITEMS, _gen(9), pos.device)
    item_mean, item_cov = (x.detach().double() for x in model.item_gaussians())

    def w2(m1, c1, m2, c2):
        return ((m1 - m2) ** 2).sum(-1) + ((c1.sqrt() - c2.sqrt()) ** 2).sum(-1)

    d_pos = w2(u_mean, u_cov, item_mean[pos], item_cov[pos])
    d_neg = w2(u_mean, u_cov, item_mean[neg], item_cov[neg])
    d_pvn = w2(item_mean[pos], item_cov[pos], item_mean[neg], item_cov[neg])
    bpr = -torch.log(torch.sigmoid(d_neg - d_pos)).mean()
    expected = bpr + 0.3 * (d_pos - d_pvn).clamp(min=0).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_same_generator_gives_the_same_loss_and_training_mode_needs_one():
    model = make().train()
    batch = {"users": torch.arange(N_USERS), "seqs": _left_pad(_chains()[1], MAXLEN + 1)}
    first = model.loss(batch, _gen(7))
    torch.manual_seed(0)
    assert torch.equal(first, model.loss(batch, _gen(7)))
    assert not torch.equal(first, model.loss(batch, _gen(8)))
    for p, q in zip(model.parameters(), make().parameters(), strict=True):
        assert torch.equal(p, q)  # the initialisation is seeded
    with pytest.raises(ValueError, match=r"needs a torch\.Generator"):
        model.encode(batch["seqs"][:, 1:])
    seqs = torch.zeros(2, MAXLEN + 1, dtype=torch.long)
    seqs[:, -1] = 3  # a single item: nothing to predict from
    zero = model.loss({"users": torch.arange(2), "seqs": seqs}, _gen())
    assert zero.item() == 0.0
    zero.backward()


# ---------------------------------------------------------------------- SEvo and growth
def test_smoothing_groups_are_both_item_tables_and_padding_rows_get_no_gradient():
    model = make().train()
    groups = model.smoothing_groups()
    assert [[p.shape for p in g] for g in groups] == [[(N_ITEMS + 1, DIM)], [(N_ITEMS + 1, DIM)]]
    assert groups[0][0] is model.item_mean.weight and groups[1][0] is model.item_cov.weight
    ids = {id(p) for p in model.parameters()}
    assert all(id(p) in ids for g in groups for p in g)
    batch = {"users": torch.arange(N_USERS), "seqs": _left_pad(_chains()[1], MAXLEN + 1)}
    model.loss(batch, _gen()).backward()
    for (table,) in groups:
        assert torch.all(table.grad[0] == 0) and table.grad[1:].abs().sum() > 0


def test_the_offline_optimizer_smooths_both_tables_on_the_item_graph():
    split = cyclic_split(num_users=20, num_items=N_ITEMS)
    config = OfflineConfig(model="stosa", maxlen=MAXLEN)
    model = build_model("stosa", split.num_items, split.num_users, maxlen=MAXLEN)
    optimizer = build_optimizer(model, config, build_item_graph(split, config))
    assert isinstance(optimizer, SEvoAdamW)
    smoothed = [g for g in optimizer.param_groups if g["smoother"] is not None]
    assert [g["params"] for g in smoothed] == [[model.item_mean.weight], [model.item_cov.weight]]
    plain = [p for g in optimizer.param_groups if g["smoother"] is None for p in g["params"]]
    assert len(plain) + 2 == len(list(model.parameters()))


def test_grow_appends_rows_to_both_tables_and_keeps_old_ones():
    model = make()
    params = dict(model.named_parameters())
    before = {k: p.detach().clone() for k, p in params.items()}
    model.grow(num_items=N_ITEMS + 500, num_users=N_USERS + 3, generator=_gen(3))
    assert (model.num_items, model.num_users) == (N_ITEMS + 500, N_USERS + 3)
    after = dict(model.named_parameters())
    assert after.keys() == params.keys()
    for key, p in after.items():
        assert p is params[key], key
        old = before[key]
        assert torch.equal(p.data[: old.shape[0]], old), key
        grown = key in ("item_mean.weight", "item_cov.weight")
        assert p.shape == ((N_ITEMS + 501, DIM) if grown else old.shape), key
        if grown:  # drawn like the originals: N(init_mean, init_std²)
            new = p.data[old.shape[0] :]
            assert new.mean().item() == pytest.approx(0.01, abs=2e-3)
            assert new.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.item_mean.num_embeddings == model.item_cov.num_embeddings == N_ITEMS + 501
    assert model.item_output_weight().shape == (N_ITEMS + 501, 2 * DIM + 1)
    model.eval()
    batch = _batch()
    batch["seqs"][2, -1] = N_ITEMS + 500  # a new item can be input
    with torch.no_grad():
        assert model.score_all(batch).shape == (4, N_ITEMS + 501)
    with pytest.raises(ValueError, match="cannot shrink"):
        model.grow(num_items=N_ITEMS)
    a, b = make(), make()  # without a generator, growth is seeded by the sizes
    a.grow(num_items=N_ITEMS + 2)
    b.grow(num_items=N_ITEMS + 2)
    assert torch.equal(a.item_cov.weight, b.item_cov.weight)


# -------------------------------------------------------------------------------- training
def test_training_learns_a_deterministic_next_item():
    """200 Adam steps on chains i → i+1 (default dropout): the unseen next item ranks first."""
    model = make().train()
    starts, items = _chains()
    batch = {"users": torch.arange(N_USERS), "seqs": _left_pad(items, MAXLEN + 1)}
    assert _top1_hit_rate(model, starts, items) <= 0.3  # untrained: near chance (1/22)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    generator = _gen()
    losses = []
    for _ in range(200):
        loss = model.loss(batch, generator)
        assert torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) < 0.2 * sum(losses[:10])
    assert _top1_hit_rate(model, starts, items) >= 0.9


def test_offline_training_with_sevo_adamw_learns_a_cycle():
    split = cyclic_split()
    config = OfflineConfig(
        model="stosa",
        epochs=10,
        eval_every=5,
        batch_size=64,
        maxlen=MAXLEN,
        lr=5e-3,
        weight_decay=0.0,
        model_overrides={"dim": 32, "dropout": 0.1, "attn_dropout": 0.1},
    )
    result = train_offline(split, config, progress=False)
    assert result.graph_nnz > 0
    assert result.test["HR@10"] > 0.8, result.test  # chance is 1/3 over 30 items
    assert math.isfinite(result.curve[-1]["loss"])
