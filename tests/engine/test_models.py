"""Invariants of the recommender backbones in ``engine.models``."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from engine.models import MODELS, Recommender, build_model, model_class
from engine.models.base import dropout, sample_negatives

NAMES = list(MODELS)  # every registered backbone runs the generic tests below
SEQUENTIAL = [name for name in NAMES if model_class(name).sequential]
N_ITEMS, N_USERS, MAXLEN = 30, 40, 10


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make(name: str, **overrides) -> Recommender:
    if name in SEQUENTIAL:
        overrides.setdefault("maxlen", MAXLEN)
    model = build_model(name, N_ITEMS, N_USERS, seed=0, **overrides)
    if hasattr(model, "set_graph"):  # LightGCN carries the training graph inside the model
        users, items = _interactions()
        model.set_graph(users, items)
    return model


def _encoded(model: Recommender, seqs: torch.Tensor, generator=None) -> tuple[torch.Tensor, ...]:
    """``model.encode`` as a tuple of ``(B, T, D)`` streams (STOSA encodes a mean and a
    covariance, the others one hidden state)."""
    out = model.encode(seqs) if generator is None else model.encode(seqs, generator)
    return tuple(out) if isinstance(out, tuple) else (out,)


def _chains(length: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """User u consumes items s_u, s_u + 1, …, s_u + length - 1: the next item is always +1."""
    starts = torch.arange(N_USERS) % (N_ITEMS - length) + 1  # (U,) in 1..22
    return starts, starts[:, None] + torch.arange(length)[None, :]  # (U,), (U, L)


def _interactions() -> tuple[torch.Tensor, torch.Tensor]:
    _, items = _chains()
    users = torch.arange(N_USERS).repeat_interleave(items.shape[1])  # (U*L,)
    return users, items.reshape(-1)


def _left_pad(rows: torch.Tensor, width: int) -> torch.Tensor:
    out = torch.zeros(rows.shape[0], width, dtype=torch.long)
    out[:, width - rows.shape[1] :] = rows
    return out


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _batch(width: int = MAXLEN, batch: int = 4) -> dict[str, torch.Tensor]:
    seqs = torch.randint(1, N_ITEMS + 1, (batch, width), generator=_gen(1))
    seqs[0, :3] = 0  # left padding of different lengths
    seqs[1, : width - 1] = 0  # a single item
    return {"users": torch.arange(batch), "seqs": seqs}


# ------------------------------------------------------------------------- registry, config
def test_registry_builds_every_model_with_paper_defaults():
    for name in NAMES:
        model = build_model(name, N_ITEMS, N_USERS)
        assert isinstance(model, Recommender)
        assert (model.num_items, model.num_users) == (N_ITEMS, N_USERS)
        assert model.config.dim == 64
    sas = build_model("SASRec", N_ITEMS, N_USERS).config
    assert (sas.num_blocks, sas.num_heads, sas.maxlen, sas.dropout) == (2, 1, 50, 0.3)
    bert = build_model("bert4rec", N_ITEMS, N_USERS).config
    assert (bert.num_blocks, bert.num_heads, bert.dropout, bert.mask_prob) == (2, 2, 0.2, 0.2)
    assert build_model("lightgcn", N_ITEMS, N_USERS).config.num_layers == 3


def test_registry_rejects_unknown_names_and_fields():
    with pytest.raises(ValueError, match=r"unknown model 'nope'.*sasrec, gru4rec, mf, bert4rec"):
        build_model("nope", N_ITEMS, N_USERS)
    with pytest.raises(ValueError, match=r"unknown SASRecConfig field\(s\) \['hidden'\]"):
        build_model("sasrec", N_ITEMS, N_USERS, hidden=3)
    with pytest.raises(ValueError, match="divisible"):
        build_model("sasrec", N_ITEMS, N_USERS, dim=10, num_heads=3)
    with pytest.raises(ValueError, match="dropout"):
        build_model("bert4rec", N_ITEMS, N_USERS, dropout=1.0)
    with pytest.raises(ValueError, match="num_users"):
        build_model("mf", N_ITEMS, 0)
    with pytest.raises(ValueError, match="num_items"):
        build_model("sasrec", 0, N_USERS)


@pytest.mark.parametrize("name", NAMES)
def test_every_backbone_declares_what_its_user_representation_reads(name):
    cls = model_class(name)
    assert cls is MODELS[name][0] and isinstance(cls.sequential, bool)
    model = make(name).eval()
    batch = _batch()
    other_users = {**batch, "users": batch["users"].flip(0)}
    other_seqs = {**batch, "seqs": batch["seqs"].flip(0)}
    with torch.no_grad():
        # Sequential: the sequence defines the representation (and maxlen bounds it); otherwise
        # the user row does and the sequence is ignored.
        assert "maxlen" in dataclasses.asdict(model.config) or not cls.sequential
        same_when_users_change = torch.equal(model.user_repr(batch), model.user_repr(other_users))
        same_when_seqs_change = torch.equal(model.user_repr(batch), model.user_repr(other_seqs))
    assert same_when_users_change == cls.sequential
    assert same_when_seqs_change == (not cls.sequential)


def test_configs_are_frozen():
    model = build_model("gru4rec", N_ITEMS, N_USERS)
    with pytest.raises(dataclasses.FrozenInstanceError):
        model.config.dim = 8


# ----------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("name", NAMES)
def test_shapes_and_score_all_is_a_dot_product(name):
    model = make(name).eval()
    batch = _batch()
    with torch.no_grad():
        rep = model.user_repr(batch)
        scores = model.score_all(batch)
        weight = model.item_output_weight()
        bias = model.item_output_bias()
    # widths come from the model: STOSA scores with 2·dim + 1 columns (a Wasserstein distance
    # written as a dot product plus a bias), the others with dim
    width = weight.shape[1]
    assert width >= model.config.dim
    assert rep.shape == (4, width)
    assert weight.shape == (N_ITEMS + 1, width)
    assert scores.shape == (4, N_ITEMS + 1)
    assert bias is None or bias.shape == (N_ITEMS + 1,)
    expected = rep @ weight.T + (0 if bias is None else bias)
    torch.testing.assert_close(scores, expected)
    if name in SEQUENTIAL:
        with torch.no_grad():
            streams = _encoded(model, batch["seqs"])
        assert all(h.shape == (4, MAXLEN, model.config.dim) for h in streams)


@pytest.mark.parametrize("name", SEQUENTIAL)
def test_encoder_output_is_zero_at_padding_and_rejects_long_inputs(name):
    model = make(name).eval()
    seqs = _batch()["seqs"]
    with torch.no_grad():
        streams = _encoded(model, seqs)
    for h in streams:
        assert torch.all(h[seqs == 0] == 0)
        assert torch.all(h[seqs != 0].abs().sum(-1) > 0)
    if name != "gru4rec":
        with pytest.raises(ValueError, match="exceeds maxlen"):
            model.encode(torch.ones(1, MAXLEN + 1, dtype=torch.long))


# ---------------------------------------------------------------------------------- padding
@pytest.mark.parametrize("name", SEQUENTIAL)
def test_extra_left_padding_changes_nothing(name):
    model = make(name).eval()
    batch = _batch(width=6)
    padded = {"users": batch["users"], "seqs": _left_pad(batch["seqs"], MAXLEN)}
    with torch.no_grad():
        torch.testing.assert_close(model.user_repr(padded), model.user_repr(batch))
        torch.testing.assert_close(
            tuple(h[:, -6:] for h in _encoded(model, padded["seqs"])),
            _encoded(model, batch["seqs"]),
        )
    # user_repr keeps the most recent maxlen items of a longer history
    longer = {"users": batch["users"], "seqs": _left_pad(batch["seqs"], MAXLEN + 7)}
    with torch.no_grad():
        torch.testing.assert_close(model.user_repr(longer), model.user_repr(batch))


def test_gru4rec_rejects_sequences_that_are_not_left_padded():
    model = make("gru4rec").eval()
    with pytest.raises(ValueError, match="left-padded"):
        model.encode(torch.tensor([[0, 3, 0, 4]]))


def test_sasrec_is_causal_and_bert4rec_is_not():
    seqs = torch.randint(1, N_ITEMS + 1, (3, MAXLEN), generator=_gen(2))
    seqs[0, :4] = 0
    changed = seqs.clone()
    changed[:, 6] = changed[:, 6] % N_ITEMS + 1
    for name, causal in [("sasrec", True), ("gru4rec", True), ("bert4rec", False)]:
        model = make(name).eval()
        with torch.no_grad():
            a, b = model.encode(seqs), model.encode(changed)
        assert torch.equal(a[:, :6], b[:, :6]) is causal, name
        assert not torch.allclose(a[:, 6:], b[:, 6:])


@pytest.mark.parametrize("name", ["sasrec", "bert4rec"])
def test_training_attention_path_matches_eval_path_without_dropout(name):
    model = make(name, dropout=0.0)
    seqs = _batch()["seqs"]
    with torch.no_grad():
        train_out = model.train().encode(seqs, _gen())
        eval_out = model.eval().encode(seqs)
    torch.testing.assert_close(train_out, eval_out)


def test_bert4rec_scores_at_an_appended_mask_token():
    model = make("bert4rec").eval()
    seqs = _batch(width=MAXLEN)["seqs"]
    appended = torch.cat([seqs[:, 1:], torch.full((4, 1), model.mask_token)], dim=1)
    with torch.no_grad():
        rep = model.user_repr({"users": torch.arange(4), "seqs": seqs})
        torch.testing.assert_close(rep, model.encode(appended)[:, -1])


# --------------------------------------------------------------------------------- training
@pytest.mark.parametrize("name", NAMES)
def test_training_learns_a_deterministic_next_item(name):
    """50 Adam steps on chains i → i+1; then the unseen next item of each chain ranks on top."""
    model = make(name).train()
    starts, items = _chains()
    batch = {"users": torch.arange(N_USERS), "seqs": _left_pad(items, MAXLEN + 1)}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    generator = _gen()
    losses = []
    for _ in range(50):
        loss = model.loss(batch, generator)
        assert loss.dim() == 0 and torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) < 0.7 * sum(losses[:5])
    model.eval()
    with torch.no_grad():
        scores = model.score_all({"users": torch.arange(N_USERS), "seqs": _left_pad(items, MAXLEN)})
    scores[:, 0] = float("-inf")
    scores.scatter_(1, items, float("-inf"))  # history excluded, as in evaluation
    target = starts + items.shape[1]  # (U,)
    rank = (scores > scores.gather(1, target[:, None])).sum(1) + 1
    assert (rank <= 3).float().mean() >= 0.8, rank


@pytest.mark.parametrize("name", NAMES)
def test_same_generator_seed_gives_the_same_loss(name):
    model = make(name).train()
    batch = {"users": torch.arange(N_USERS), "seqs": _left_pad(_chains()[1], MAXLEN + 1)}
    first = model.loss(batch, _gen(7))
    torch.manual_seed(0)
    again = model.loss(batch, _gen(7))
    other = model.loss(batch, _gen(8))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    # the initialisation is seeded too
    rebuilt = make(name)
    for p, q in zip(model.parameters(), rebuilt.parameters(), strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize("name", NAMES)
def test_a_batch_without_targets_gives_a_zero_loss_that_backpropagates(name):
    model = make(name).train()
    seqs = torch.zeros(2, MAXLEN + 1, dtype=torch.long)
    seqs[:, -1] = 3  # a single item: nothing to predict from
    loss = model.loss({"users": torch.arange(2), "seqs": seqs}, _gen())
    if name in ("mf", "lightgcn"):  # the lone item is a target of the user
        assert loss.item() > 0
    else:
        assert loss.item() == 0.0
    loss.backward()


def test_training_mode_forward_needs_a_generator_for_dropout():
    model = make("sasrec").train()
    with pytest.raises(ValueError, match=r"needs a torch\.Generator"):
        model.encode(_batch()["seqs"])


def test_dropout_helper():
    x = torch.ones(200, 500)
    out = dropout(x, 0.3, True, _gen())
    assert torch.equal(out, dropout(x, 0.3, True, _gen()))
    assert abs((out != 0).float().mean().item() - 0.7) < 0.01
    assert abs(out.mean().item() - 1.0) < 0.02
    assert torch.equal(dropout(x, 0.3, False, None), x)
    assert torch.equal(dropout(x, 1e-7, True, _gen()), x)


def test_negatives_are_never_padding():
    neg = sample_negatives((10_000,), 5, _gen(), torch.device("cpu"))
    assert int(neg.min()) == 1 and int(neg.max()) == 5


# ------------------------------------------------------------------------------------- grow
@pytest.mark.parametrize("name", NAMES)
def test_grow_keeps_parameters_and_old_rows(name):
    model = make(name)
    params = dict(model.named_parameters())
    before = {k: p.detach().clone() for k, p in params.items()}
    model.grow(num_items=N_ITEMS + 5, num_users=N_USERS + 3, generator=_gen(3))
    assert (model.num_items, model.num_users) == (N_ITEMS + 5, N_USERS + 3)
    after = dict(model.named_parameters())
    assert after.keys() == params.keys()
    for key, p in after.items():
        assert p is params[key], key
        old = before[key]
        assert torch.equal(p.data[: old.shape[0]], old), key
        if p.shape != old.shape:
            grown = p.shape[0] - old.shape[0]
            assert grown in (5, 3), key
            assert p.shape[1:] == old.shape[1:]
            if "bias" not in key:
                assert p.data[old.shape[0] :].abs().sum() > 0, key
    assert model.item_output_weight().shape[0] == N_ITEMS + 6
    model.eval()
    batch = _batch()
    batch["seqs"][2, -1] = N_ITEMS + 5  # a new item can be input
    batch["users"][3] = N_USERS + 2  # and a new user scored
    with torch.no_grad():
        assert model.score_all(batch).shape == (4, N_ITEMS + 6)
    with pytest.raises(ValueError, match="cannot shrink"):
        model.grow(num_items=N_ITEMS)


def test_grow_without_generator_is_deterministic_and_noop_grow_changes_nothing():
    a, b = make("mf"), make("mf")
    a.grow(num_items=N_ITEMS + 2)
    b.grow(num_items=N_ITEMS + 2)
    assert torch.equal(a.item_emb.weight, b.item_emb.weight)
    weight = a.item_emb.weight.detach().clone()
    a.grow()
    assert torch.equal(a.item_emb.weight, weight)


def test_grow_moves_the_bert4rec_mask_token_and_keeps_lightgcn_propagation():
    bert = make("bert4rec")
    bert.grow(num_items=N_ITEMS + 4)
    assert bert.mask_token == N_ITEMS + 5
    gcn = make("lightgcn")
    with torch.no_grad():
        users_before, items_before = gcn.propagate()
        gcn.grow(num_items=N_ITEMS + 4, num_users=N_USERS + 2)
        users_after, items_after = gcn.propagate()
    # new nodes have no edges, so the old nodes' degrees and propagated embeddings are unchanged
    torch.testing.assert_close(users_after[:N_USERS], users_before)
    torch.testing.assert_close(items_after[: N_ITEMS + 1], items_before)


# -------------------------------------------------------------------------- smoothing groups
def test_smoothing_groups_are_model_parameters_with_documented_shapes():
    def ids(model):
        return {id(p) for p in model.parameters()}

    for name in ("sasrec", "gru4rec", "mf"):
        model = make(name)
        (group,) = model.smoothing_groups()
        assert [p is model.item_emb.weight for p in group] == [True]
        assert group[0].shape == (N_ITEMS + 1, 64)
    bert = make("bert4rec")
    groups = bert.smoothing_groups()
    assert [[p.shape for p in g] for g in groups] == [[(N_ITEMS + 1, 64)], [(N_ITEMS + 1, 64)]]
    assert groups[0][0] is bert.item_emb.weight and groups[1][0] is bert.out_weight
    assert all(p is not bert.mask_emb for g in groups for p in g)
    mf = make("mf", bipartite=True)
    (stacked,) = mf.smoothing_groups()
    assert stacked[0] is mf.user_emb.weight and stacked[1] is mf.item_emb.weight
    assert torch.cat(stacked).shape == (mf.item_node_offset + N_ITEMS + 1, 64)
    assert make("lightgcn").smoothing_groups() == []
    for name in NAMES:
        model = make(name)
        assert all(id(p) in ids(model) for g in model.smoothing_groups() for p in g)


def test_padding_rows_get_no_gradient():
    for name in NAMES:
        model = make(name).train()
        batch = {"users": torch.arange(N_USERS), "seqs": _left_pad(_chains()[1], MAXLEN + 1)}
        model.loss(batch, _gen()).backward()
        for group in model.smoothing_groups():
            assert torch.all(group[-1].grad[0] == 0), name


# --------------------------------------------------------------------------------- lightgcn
def test_lightgcn_graph_checks():
    model = build_model("lightgcn", N_ITEMS, N_USERS)
    with pytest.raises(RuntimeError, match="set_graph"):
        model.propagate()
    with pytest.raises(ValueError, match="item ids"):
        model.set_graph([0], [0])
    with pytest.raises(ValueError, match="user ids"):
        model.set_graph([N_USERS], [1])
    with pytest.raises(ValueError, match="differ in length"):
        model.set_graph([0, 1], [1])
    model.set_graph([0, 0, 0], [1, 1, 2])  # duplicates count once
    assert model.edge_index.shape == (2, 4)


# ------------------------------------------------------------ SASRec block variants (SEvo code)
def _unpacked_sasrec(model, seqs: torch.Tensor) -> torch.Tensor:
    """SASRec computed position by position over the padded ``(B, T)`` grid, as the SEvo authors'
    code does (only a causal mask, padded rows zeroed after every block); eval mode."""
    cfg = model.config
    pad = (seqs == 0)[..., None]  # (B, T, 1)
    T = seqs.shape[1]
    positions = torch.arange(T, 0, -1).expand_as(seqs)  # absolute slots, counted from the right
    x = model.item_emb(seqs) * cfg.dim**0.5 + model.pos_emb(positions)
    x = x.masked_fill(pad, 0.0)
    future = torch.ones(T, T, dtype=torch.bool).triu(1)
    H, Dh = cfg.num_heads, cfg.dim // cfg.num_heads
    for blk in model.encoder.blocks:
        a = blk.attn
        q_in = blk.attn_norm(x)
        kv_in = x if blk.style == "query-norm" else q_in

        def heads(y):
            return y.view(*y.shape[:2], H, Dh).transpose(1, 2)  # (B, H, T, Dh)

        q, k, v = heads(a.q(q_in)), heads(a.k(kv_in)), heads(a.v(kv_in))
        w = (q @ k.transpose(-2, -1) / Dh**0.5).masked_fill(future, float("-inf")).softmax(-1)
        x = x + a.out((w @ v).transpose(1, 2).reshape(x.shape))
        if blk.style == "query-norm":
            y = blk.ffn_norm(x)
            x = y + blk.ffn_out(torch.relu(blk.ffn_in(y)))
        else:
            x = x + blk.ffn_out(torch.relu(blk.ffn_in(blk.ffn_norm(x))))
        x = x.masked_fill(pad, 0.0)
    return model.encoder.last_norm(x).masked_fill(pad, 0.0)


@pytest.mark.parametrize("block", ["pre-ln", "query-norm"])
def test_sasrec_attending_padding_equals_the_unpacked_reference_computation(block):
    model = make("sasrec", block=block, attend_padding=True, num_heads=2).eval()
    with torch.no_grad():  # non-zero biases, so padded keys carry a real key and value
        for blk in model.encoder.blocks:
            for lin in (blk.attn.k, blk.attn.v, blk.attn.q):
                lin.bias.normal_(0.0, 0.5, generator=_gen(3))
    seqs = _batch(width=MAXLEN)["seqs"]
    seqs[2, :] = torch.arange(1, MAXLEN + 1)  # a full row: no padding key at all
    with torch.no_grad():
        packed = model.encode(seqs)
        reference = _unpacked_sasrec(model, seqs)
        # the padding count is taken against maxlen, so rows 0 and 1 (3 and 9 padded slots) give
        # the same output without their leading padding columns
        narrower = model.encode(seqs[:2, 3:])
    torch.testing.assert_close(packed, reference, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(narrower, packed[:2, 3:], atol=1e-5, rtol=1e-4)


def test_attending_padding_changes_short_sequences_and_trains_on_both_paths():
    masked = make("sasrec", block="query-norm", num_heads=2, attend_padding=False).eval()
    attending = make("sasrec", block="query-norm", num_heads=2, attend_padding=True).eval()
    seqs = _batch()["seqs"]
    with torch.no_grad():
        a, b = masked.encode(seqs), attending.encode(seqs)
    assert not torch.allclose(a[1, -1], b[1, -1])  # one item, nine padded keys
    no_dropout = make("sasrec", block="query-norm", attend_padding=True, dropout=0.0)
    with torch.no_grad():
        train_out = no_dropout.train().encode(seqs, _gen())
        eval_out = no_dropout.eval().encode(seqs)
    torch.testing.assert_close(train_out, eval_out)
    loss = attending.train().loss({"users": torch.arange(4), "seqs": seqs}, _gen())
    loss.backward()
    assert attending.encoder.blocks[0].attn.k.bias.grad.abs().sum() > 0


def test_sasrec_rejects_an_unknown_block():
    with pytest.raises(ValueError, match="block must be one of"):
        make("sasrec", block="post-ln")
