"""SR-GNN and LESSR (``engine.models.srgnn``, ``engine.models.lessr``): session graphs, the
layers against per-session reference computations, the Recommender contract, a tiny training run."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from engine.models.base import Recommender
from engine.models.lessr import LESSR, LESSRConfig, shortcut_edges
from engine.models.srgnn import SRGNN, SRGNNConfig, session_graphs, srgnn_adjacency
from tests.engine.test_models import MAXLEN, N_ITEMS, N_USERS, _chains, _gen, _left_pad

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CLASSES = {"srgnn": (SRGNN, SRGNNConfig), "lessr": (LESSR, LESSRConfig)}
NAMES = list(CLASSES)


def make(name: str, **overrides) -> Recommender:
    cls, config_cls = CLASSES[name]
    overrides.setdefault("maxlen", MAXLEN)
    return cls(N_ITEMS, N_USERS, config_cls(**overrides), seed=0)


def _batch(width: int = MAXLEN, batch: int = 4) -> dict[str, torch.Tensor]:
    seqs = torch.randint(1, N_ITEMS + 1, (batch, width), generator=_gen(1))
    seqs[0, :3] = 0  # left padding of different lengths
    seqs[1, : width - 1] = 0  # a single item
    seqs[2, 4:7] = seqs[2, 3]  # a repeated item
    return {"users": torch.arange(batch), "seqs": seqs}


def _dense(edge_index: torch.Tensor, weight: torch.Tensor, lo: int, n: int) -> torch.Tensor:
    """``(n, n)`` matrix M[src, dst] = weight of one graph's edges (nodes lo..lo+n-1)."""
    keep = (edge_index[0] >= lo) & (edge_index[0] < lo + n)
    out = torch.zeros(n, n)
    out[edge_index[0, keep] - lo, edge_index[1, keep] - lo] = weight[keep]
    return out


def _authors_adjacency(session: list[int]) -> tuple[list[int], np.ndarray]:
    """The SR-GNN authors' ``get_slice`` for one session, nodes in first-occurrence order:
    ``(nodes, A)`` with ``A = [A_in | A_out]`` of shape ``(n, 2n)``."""
    nodes = list(dict.fromkeys(session))
    n = len(nodes)
    u_a = np.zeros((n, n))
    for a, b in itertools.pairwise(session):
        u_a[nodes.index(a), nodes.index(b)] = 1
    sum_in = u_a.sum(0)
    sum_in[sum_in == 0] = 1
    sum_out = u_a.sum(1)
    sum_out[sum_out == 0] = 1
    return nodes, np.concatenate([u_a / sum_in, u_a.T / sum_out]).T


# ---------------------------------------------------------------------------- session graphs
def test_session_graph_of_the_papers_example_by_hand():
    """v1 → v2 → v3 → v2 → v4 (the paper's figure), items 11, 12, 13, 12, 14."""
    graphs = session_graphs(torch.tensor([[0, 0, 11, 12, 13, 12, 14]]), prefixes=False)
    assert graphs.items.tolist() == [11, 12, 13, 14]  # nodes v1..v4 in first-occurrence order
    assert graphs.pos_node.tolist() == [0, 1, 2, 1, 3]
    assert graphs.last_node.tolist() == [3]
    assert graphs.edge_index.tolist() == [[0, 1, 2, 1], [1, 2, 1, 3]]  # time order
    edge_index, w_in, w_out = srgnn_adjacency(graphs)
    # A_out[u, v] = 1/outdeg(u): v2 has two successors (v3, v4)
    expected_out = torch.tensor(
        [[0, 1, 0, 0], [0, 0, 0.5, 0.5], [0, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.float32
    )
    # A_in[v, u] = 1/indeg(v): v2 has two predecessors (v1, v3); stored here as M[u, v]
    expected_in = torch.tensor(
        [[0, 0.5, 0, 0], [0, 0, 1, 1], [0, 0.5, 0, 0], [0, 0, 0, 0]], dtype=torch.float32
    )
    torch.testing.assert_close(_dense(edge_index, w_out, 0, 4), expected_out)
    torch.testing.assert_close(_dense(edge_index, w_in, 0, 4), expected_in)


def test_a_repeated_transition_counts_once_in_srgnn_and_twice_in_the_eop_multigraph():
    """5 → 7 → 9 → 7 → 9 → 3: the transition 7 → 9 occurs twice."""
    graphs = session_graphs(torch.tensor([[5, 7, 9, 7, 9, 3]]), prefixes=False)
    assert graphs.items.tolist() == [5, 7, 9, 3]
    # EOP multigraph (LESSR): one edge per consecutive pair, in time order, duplicates kept
    assert graphs.edge_index.tolist() == [[0, 1, 2, 1, 2], [1, 2, 1, 2, 3]]
    edge_index, w_in, w_out = srgnn_adjacency(graphs)
    assert edge_index.shape[1] == 4  # 5→7, 7→9, 9→7, 9→3
    # indeg: 7 ← {5, 9} (1/2 each); 9 ← {7} (1, not 2/2 from the repeat); 3 ← {9}
    expected_in = torch.tensor(
        [[0, 0.5, 0, 0], [0, 0, 1, 0], [0, 0.5, 0, 1], [0, 0, 0, 0]], dtype=torch.float32
    )
    # outdeg: 5 → {7}; 7 → {9}; 9 → {7, 3} (1/2 each)
    expected_out = torch.tensor(
        [[0, 1, 0, 0], [0, 0, 1, 0], [0, 0.5, 0, 0.5], [0, 0, 0, 0]], dtype=torch.float32
    )
    torch.testing.assert_close(_dense(edge_index, w_in, 0, 4), expected_in)
    torch.testing.assert_close(_dense(edge_index, w_out, 0, 4), expected_out)
    # shortcut graph: u → v iff an occurrence of u is at or before one of v
    # (positions hold nodes 0 1 2 1 2 3: first = 0 1 2 5, last = 0 3 4 5)
    shortcut = {tuple(e) for e in shortcut_edges(graphs).T.tolist()}
    assert shortcut == {
        (0, 0), (0, 1), (0, 2), (0, 3),
        (1, 1), (1, 2), (1, 3),
        (2, 1), (2, 2), (2, 3),
        (3, 3),
    }  # fmt: skip


def test_training_prefixes_are_sessions_with_the_next_item_as_target():
    seqs = torch.tensor([[0, 0, 5, 7, 5], [0, 0, 0, 0, 8], [0, 0, 0, 0, 0], [1, 2, 3, 4, 6]])
    graphs = session_graphs(seqs, prefixes=True)
    assert graphs.rows.tolist() == [0, 0, 3, 3, 3, 3]
    assert graphs.targets.tolist() == [7, 5, 2, 3, 4, 6]
    assert torch.diff(graphs.node_ptr).tolist() == [1, 2, 1, 2, 3, 4]  # [5], [5 7], [1], ...
    assert torch.diff(graphs.pos_ptr).tolist() == [1, 2, 1, 2, 3, 4]
    assert graphs.items[graphs.last_node].tolist() == [5, 7, 1, 2, 3, 4]
    # the prefix [5, 7] of row 0: nodes 5, 7 and the edge 5 → 7 only
    lo = int(graphs.node_ptr[1])
    assert graphs.items[lo : lo + 2].tolist() == [5, 7]
    inside = (graphs.edge_index[0] >= lo) & (graphs.edge_index[0] < lo + 2)
    assert (graphs.edge_index[:, inside] - lo).tolist() == [[0], [1]]
    with pytest.raises(ValueError, match="left-padded"):
        session_graphs(torch.tensor([[3, 0, 4]]), prefixes=False)


def test_vectorised_graphs_match_per_session_references():
    """Random sequences with many repeats: SR-GNN's A_in/A_out as the authors build them, and
    LESSR's shortcut edges as the authors' pairs i ≤ j, for every training prefix."""
    seqs = torch.randint(1, 6, (6, 9), generator=_gen(4))
    seqs[0, :5] = 0
    seqs[3, :8] = 0
    graphs = session_graphs(seqs, prefixes=True)
    edge_index, w_in, w_out = srgnn_adjacency(graphs)
    shortcut = shortcut_edges(graphs)
    for g in range(graphs.num_graphs):
        lo, hi = int(graphs.node_ptr[g]), int(graphs.node_ptr[g + 1])
        row, k = int(graphs.rows[g]), int(graphs.pos_ptr[g + 1] - graphs.pos_ptr[g])
        items = [int(i) for i in seqs[row] if i != 0]
        session = items[:k]
        assert int(graphs.targets[g]) == items[k]
        nodes, a = _authors_adjacency(session)
        n = len(nodes)
        assert graphs.items[lo:hi].tolist() == nodes
        # A[:, :n][v, u] = A_in; A[:, n:][u, v] = A_out (the authors' layout)
        in_dense = _dense(edge_index, w_in, lo, n).T  # [v, u]
        out_dense = _dense(edge_index, w_out, lo, n)  # [u, v]
        torch.testing.assert_close(in_dense, torch.tensor(a[:, :n], dtype=torch.float32))
        torch.testing.assert_close(out_dense, torch.tensor(a[:, n:], dtype=torch.float32))
        pos = [nodes.index(i) for i in session]
        pairs = {(pos[i], pos[j]) for i in range(k) for j in range(i, k)}
        mine = shortcut[:, (shortcut[1] >= lo) & (shortcut[1] < hi)] - lo
        assert sorted(map(tuple, mine.T.tolist())) == sorted(pairs)


# ------------------------------------------------------------------- layers against references
def test_srgnn_ggnn_step_and_readout_equal_the_authors_dense_formulas():
    model = make("srgnn").eval()
    session = [11, 12, 13, 12, 14, 11]
    graphs = session_graphs(torch.tensor([[0, *session]]), prefixes=False)
    nodes, a = _authors_adjacency(session)
    A = torch.tensor(a, dtype=torch.float32)[None]  # (1, n, 2n)
    n = len(nodes)
    with torch.no_grad():
        hidden = model.item_emb(torch.tensor([nodes]))  # (1, n, D)
        # GNNCell of the authors' pytorch_code/model.py
        input_in = A[:, :, :n] @ model.lin_in(hidden) + model.bias_in
        input_out = A[:, :, n:] @ model.lin_out(hidden) + model.bias_out
        gi = torch.nn.functional.linear(
            torch.cat([input_in, input_out], 2), model.cell.weight_ih, model.cell.bias_ih
        )
        gh = torch.nn.functional.linear(hidden, model.cell.weight_hh, model.cell.bias_hh)
        i_r, i_i, i_n = gi.chunk(3, 2)
        h_r, h_i, h_n = gh.chunk(3, 2)
        reset, update = torch.sigmoid(i_r + h_r), torch.sigmoid(i_i + h_i)
        new = torch.tanh(i_n + reset * h_n)
        hidden = new + update * (hidden - new)  # (1, n, D)
        # compute_scores: attention over positions (repeats included), no softmax
        seq_hidden = hidden[0, [nodes.index(i) for i in session]][None]  # (1, L, D)
        ht = seq_hidden[:, -1]
        alpha = model.att_q(torch.sigmoid(model.att_last(ht)[:, None] + model.att_node(seq_hidden)))
        expected = model.combine(torch.cat([(alpha * seq_hidden).sum(1), ht], 1))
        torch.testing.assert_close(model.encode_sessions(graphs), expected)


def test_eopa_runs_a_gru_over_each_nodes_incoming_messages_in_time_order():
    model = make("lessr").eval()
    eopa = model.layers[0]
    # 5 → 7 → 9 → 7 → 3 → 7: node 7 receives from 5, 9, 3 in that order
    graphs = session_graphs(torch.tensor([[5, 7, 9, 7, 3, 7]]), prefixes=False)
    from engine.models.lessr import _Context

    ctx = _Context(graphs, 0.0, False, None, True)
    with torch.no_grad():
        feat = torch.randn(4, 32, generator=_gen(2))
        out = eopa(feat, ctx)
        x = eopa.batch_norm(feat)
        gru = torch.nn.GRU(32, 32, batch_first=True)  # the authors' reducer, same weights
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(gru, f"{name}_l0").copy_(getattr(eopa.gru, name))
        predecessors = {0: [], 1: [0, 2, 3], 2: [1], 3: [1]}  # node 7 = 1, 9 = 2, 3 = 3
        for v, preds in predecessors.items():
            if preds:
                _, h = gru(x[preds][None])
                neigh = h[0, 0]
            else:
                neigh = torch.zeros(32)
            expected = eopa.activation((eopa.fc_self(x[v]) + eopa.fc_neigh(neigh))[None])[0]
            torch.testing.assert_close(out[v], expected)
        # the order matters: 3 before 9 changes node 7 only
        swapped = session_graphs(torch.tensor([[5, 7, 3, 7, 9, 7]]), prefixes=False)
        perm = torch.tensor([0, 1, 3, 2])  # node ids of 5, 7, 3, 9 in the swapped graph
        out2 = eopa(feat[perm], _Context(swapped, 0.0, False, None, True))[perm.argsort()]
    assert not torch.allclose(out2[1], out[1])


def test_packed_eopa_equals_a_gru_per_node_on_a_batch_of_prefixes_with_repeats():
    model = make("lessr").eval()
    eopa = model.layers[0]
    seqs = torch.randint(1, 4, (5, 10), generator=_gen(6))  # 3 items: in-degrees up to 8
    seqs[1, :6] = 0
    graphs = session_graphs(seqs, prefixes=True)
    from engine.models.lessr import _Context

    ctx = _Context(graphs, 0.0, False, None, True)
    assert len(ctx.eop_steps) >= 5  # some node receives five or more messages
    gru = torch.nn.GRU(32, 32, batch_first=True)
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(gru, f"{name}_l0").copy_(getattr(eopa.gru, name))
        feat = torch.randn(graphs.num_nodes, 32, generator=_gen(7))
        out = eopa(feat, ctx)
        x = eopa.batch_norm(feat)
        src, dst = graphs.edge_index
        for v in range(graphs.num_nodes):
            preds = src[dst == v]  # in time order
            neigh = gru(x[preds][None])[1][0, 0] if preds.numel() else torch.zeros(32)
            expected = eopa.activation((eopa.fc_self(x[v]) + eopa.fc_neigh(neigh))[None])[0]
            torch.testing.assert_close(out[v], expected)


def test_sgat_is_a_softmax_over_each_nodes_shortcut_sources():
    model = make("lessr").eval()
    sgat = model.layers[1]
    graphs = session_graphs(torch.tensor([[5, 7, 9, 7, 9, 3]]), prefixes=False)
    from engine.models.lessr import _Context

    ctx = _Context(graphs, 0.0, False, None, True)
    with torch.no_grad():
        feat = torch.randn(4, 64, generator=_gen(3))
        out = sgat(feat, ctx)
        x = sgat.batch_norm(feat)
        sources = {0: [0], 1: [0, 1, 2], 2: [0, 1, 2], 3: [0, 1, 2, 3]}
        for v, us in sources.items():
            e = sgat.fc_e(torch.sigmoid(sgat.fc_q(x[us]) + sgat.fc_k(x[v])))  # (|us|, 1)
            a = torch.softmax(e, 0)
            expected = sgat.activation((a * sgat.fc_v(x[us])).sum(0, keepdim=True))[0]
            torch.testing.assert_close(out[v], expected)


# ---------------------------------------------------------------------- Recommender contract
@pytest.mark.parametrize("name", NAMES)
def test_shapes_and_score_all_is_a_dot_product(name):
    model = make(name).eval()
    dim = model.config.dim
    assert model.sequential is True
    batch = _batch()
    batch["seqs"][3] = 0  # no items: a zero vector
    with torch.no_grad():
        rep = model.user_repr(batch)
        scores = model.score_all(batch)
        weight = model.item_output_weight()
    assert rep.shape == (4, dim)
    assert weight.shape == (N_ITEMS + 1, dim)
    assert scores.shape == (4, N_ITEMS + 1)
    torch.testing.assert_close(scores, rep @ weight.T)
    assert torch.all(rep[3] == 0) and torch.all(rep[:3].abs().sum(1) > 0)
    assert model.item_output_bias() is None


@pytest.mark.parametrize("name", NAMES)
def test_user_repr_reads_the_recent_sequence_and_ignores_padding_and_users(name):
    model = make(name).eval()
    batch = _batch(width=6)
    with torch.no_grad():
        rep = model.user_repr(batch)
        other_users = model.user_repr({**batch, "users": batch["users"].flip(0)})
        padded = model.user_repr({**batch, "seqs": _left_pad(batch["seqs"], MAXLEN)})
        other_seqs = model.user_repr({**batch, "seqs": batch["seqs"].flip(0)})
        longer = torch.cat(
            [torch.randint(1, N_ITEMS + 1, (4, 7), generator=_gen(5)), _batch()["seqs"]], 1
        )
        long_rep = model.user_repr({**batch, "seqs": longer})
        short_rep = model.user_repr({**batch, "seqs": _batch()["seqs"]})
    assert torch.equal(rep, other_users)
    torch.testing.assert_close(padded, rep)
    assert not torch.allclose(other_seqs, rep)
    torch.testing.assert_close(long_rep, short_rep)  # only the last maxlen items count


@pytest.mark.parametrize("name", NAMES)
def test_encode_gives_every_prefix_session_at_its_last_position(name):
    model = make(name).eval()
    seqs = _batch()["seqs"]
    seqs[3, :6] = 0
    changed = seqs.clone()
    changed[:, 7] = torch.where(seqs[:, 7] > 0, seqs[:, 7] % N_ITEMS + 1, 0)
    with torch.no_grad():
        h = model.encode(seqs)
        h_changed = model.encode(changed)
        rep = model.user_repr({"users": torch.arange(4), "seqs": seqs})
        prefix = model.user_repr({"users": torch.arange(4), "seqs": seqs[:, :8]})
    assert h.shape == (4, MAXLEN, model.config.dim)
    assert torch.all(h[seqs == 0] == 0) and torch.all(h[seqs != 0].abs().sum(-1) > 0)
    torch.testing.assert_close(h[:, -1], rep)
    torch.testing.assert_close(h[:, 7], prefix)  # position t = the session x_1..x_t
    assert torch.equal(h[:, :7], h_changed[:, :7])  # prefixes before the change are untouched
    assert not torch.allclose(h[[0, 2, 3], 7:], h_changed[[0, 2, 3], 7:])
    assert torch.equal(h[1], h_changed[1])  # row 1 has no item at position 7
    with pytest.raises(ValueError, match="exceeds maxlen"):
        model.encode(torch.ones(1, MAXLEN + 1, dtype=torch.long))
    graphs = session_graphs(torch.tensor([[0, 5, 7, 5]]), prefixes=True, targets=False)
    assert graphs.targets is None and torch.diff(graphs.pos_ptr).tolist() == [1, 2, 3]


@pytest.mark.parametrize("name", NAMES)
def test_smoothing_groups_are_the_item_table(name):
    model = make(name)
    (group,) = model.smoothing_groups()
    assert len(group) == 1 and group[0] is model.item_emb.weight
    assert group[0].shape == (N_ITEMS + 1, model.config.dim)
    assert any(p is group[0] for p in model.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_grow_appends_rows_and_keeps_old_ones(name):
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
        if key == "item_emb.weight":
            assert p.shape == (N_ITEMS + 6, model.config.dim)
            assert p.data[old.shape[0] :].abs().sum(1).min() > 0
        else:
            assert p.shape == old.shape, key
    assert model.item_output_weight().shape == (N_ITEMS + 6, model.config.dim)
    batch = _batch()
    batch["seqs"][2, -1] = N_ITEMS + 5  # a new item can be input
    with torch.no_grad():
        assert model.eval().score_all(batch).shape == (4, N_ITEMS + 6)
    again = make(name)
    again.grow(num_items=N_ITEMS + 5, num_users=N_USERS + 3, generator=_gen(3))
    assert torch.equal(again.item_emb.weight, model.item_emb.weight)  # seeded growth
    with pytest.raises(ValueError, match="cannot shrink"):
        model.grow(num_items=N_ITEMS)


# -------------------------------------------------------------------------------- training
@pytest.mark.parametrize("name", NAMES)
def test_gradient_reaches_the_item_table_and_not_the_padding_row(name):
    model = make(name).train()
    batch = {"users": torch.arange(N_USERS), "seqs": _left_pad(_chains()[1], MAXLEN + 1)}
    model.loss(batch, _gen()).backward()
    grad = model.item_emb.weight.grad
    assert grad is not None and torch.isfinite(grad).all()
    assert torch.all(grad[0] == 0)
    used = torch.unique(_chains()[1])
    assert torch.all(grad[used].abs().sum(1) > 0)
    for key, p in model.named_parameters():
        if "activation" not in key:  # PReLU slopes see no gradient where inputs are positive
            assert p.grad is not None and torch.isfinite(p.grad).all(), key


@pytest.mark.parametrize("name", NAMES)
def test_training_learns_a_deterministic_next_item(name):
    """50 Adam steps on chains i → i+1; then the unseen next item of each chain ranks on top."""
    torch.manual_seed(123)  # nothing may read the global RNG: this must not matter
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
    assert sum(losses[-5:]) < 0.5 * sum(losses[:5])
    model.eval()
    with torch.no_grad():
        scores = model.score_all({"users": torch.arange(N_USERS), "seqs": _left_pad(items, MAXLEN)})
    scores[:, 0] = float("-inf")
    scores.scatter_(1, items, float("-inf"))  # history excluded, as in evaluation
    target = starts + items.shape[1]  # (U,)
    rank = (scores > scores.gather(1, target[:, None])).sum(1) + 1
    assert (rank <= 3).float().mean() >= 0.8, rank


@pytest.mark.parametrize("name", NAMES)
def test_losses_are_seeded_and_a_batch_without_targets_gives_zero(name):
    model = make(name).train()
    batch = {"users": torch.arange(N_USERS), "seqs": _left_pad(_chains()[1], MAXLEN + 1)}
    first = model.loss(batch, _gen(7))
    again = model.loss(batch, _gen(7))
    other = model.loss(batch, _gen(8))
    assert torch.equal(first, again)
    # LESSR's feature dropout draws from the generator; SR-GNN has nothing to draw
    assert torch.equal(first, other) == (name == "srgnn")
    rebuilt = make(name)
    for p, q in zip(model.parameters(), rebuilt.parameters(), strict=True):  # loss wrote none
        assert torch.equal(p, q)
    seqs = torch.zeros(2, MAXLEN + 1, dtype=torch.long)
    seqs[:, -1] = 3  # a single item: nothing to predict from
    loss = model.loss({"users": torch.arange(2), "seqs": seqs}, _gen())
    assert loss.item() == 0.0
    loss.backward()


def test_lessr_dropout_needs_a_generator_and_batch_norm_accepts_one_session():
    model = make("lessr").train()
    with pytest.raises(ValueError, match=r"needs a torch\.Generator"):
        model.user_repr(_batch())
    one = {"users": torch.arange(1), "seqs": torch.tensor([[0, 0, 0, 4, 5]])}  # one prefix
    assert torch.isfinite(model.loss(one, _gen()))


def test_lessr_item_rows_have_norm_at_most_one_when_used():
    model = make("lessr")
    ones = torch.ones(N_ITEMS)
    # N(0, 1) rows rescaled to unit norm, as the authors' first lookup does
    torch.testing.assert_close(model.item_emb.weight[1:].norm(dim=1), ones, atol=1e-5, rtol=0)
    with torch.no_grad():
        model.item_emb.weight[1:] *= 3  # as if an optimizer step pushed every row out
    torch.testing.assert_close(model.item_output_weight()[1:].norm(dim=1), ones, atol=1e-5, rtol=0)
    raw = model.item_emb.weight.detach().clone()
    with torch.no_grad():
        model.eval().user_repr(_batch())
        model.item_output_weight()
    assert torch.equal(model.item_emb.weight, raw)  # inference never writes to the model
    model.train().loss({"users": torch.arange(4), "seqs": _batch()["seqs"]}, _gen())
    assert model.item_emb.weight[1:].norm(dim=1).max() <= 1.0  # the authors' in-place renorm
    model.grow(num_items=N_ITEMS + 3)
    new_rows = model.item_emb.weight[N_ITEMS + 1 :].norm(dim=1)
    torch.testing.assert_close(new_rows, torch.ones(3), atol=1e-5, rtol=0)
    no_norm = make("lessr", max_norm=None)
    assert no_norm.item_emb.weight[1:].norm(dim=1).min() > 2  # N(0, 1) rows in 32 dimensions
    assert torch.equal(no_norm.item_output_weight(), no_norm.item_emb.weight)
