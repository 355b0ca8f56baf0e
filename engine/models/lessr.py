"""LESSR (Chen & Wong, KDD 2020): lossless edge-order preserving aggregation and shortcut graph
attention for session-based recommendation, after the authors' code (``twchen/lessr``).

Each input sequence is one session with one node per distinct item and two graphs over them:

* the **EOP multigraph**: one edge ``node(x_s) → node(x_{s+1})`` per pair of consecutive items, in
  time order (a repeated transition is a second edge);
* the **shortcut graph**: ``u → v`` whenever some occurrence of ``u`` is at or before some
  occurrence of ``v`` (self-loops included), each pair once.

Layers alternate, starting with EOPA (``num_layers = 3``: EOPA, SGAT, EOPA), each one's output
concatenated in front of its input (dense connections, so the width grows by ``dim`` per layer):

* **EOPA**: x = BN(feat); the messages are Drop(x) of the in-neighbours in the order of their
  edges; a GRU runs over each node's ordered messages and its last state is ``neigh``; out =
  PReLU(W_self x + W_neigh neigh) (``neigh = 0`` for a node without in-edges).
* **SGAT**: x = Drop(BN(feat)); e_uv = w_e^T σ(W_q x_u + b_q + W_k x_v) over the shortcut edges
  ``u → v``, a_uv = softmax over v's in-edges, out = PReLU(Σ_u a_uv W_v x_u).
* **Readout**: x = Drop(BN(feat)); β_i = softmax over the session's nodes of w^T σ(W_u x_i +
  W_v x_last + b); s_g = PReLU(W_out Σ_i β_i x_i); s_l = feat of the last item's node;
  s = W_sr Drop(BN([s_l; s_g])).

Scores are ``s · e_i`` over the item table, whose rows are rescaled to norm ≤ ``max_norm`` (the
authors' ``nn.Embedding(max_norm=1)``); training is cross-entropy over all items (padding
excluded). ``user_repr`` = s, ``item_output_weight`` = the rescaled item table.

**Vectorised graphs.** A batch is one disjoint union of session graphs in PyG's layout, built by
:func:`engine.models.srgnn.session_graphs` and :func:`shortcut_edges` with tensor operations (no
loop over sequences). EOPA groups the edges by receiver (stable sort keeps time order) and runs
one GRU cell over all receivers at once in the packed-sequence layout: step ``t`` takes the
``t``-th message of every receiver with more than ``t`` in-edges (receivers sorted by in-degree,
so they are a prefix), and a receiver's state is final after its last message. The loop runs
over message steps (at most ``maxlen - 1``), not over sessions; the steps are ``split`` views of
one gathered tensor, so the backward pass concatenates instead of zero-filling a full-size
gradient per step as ``nn.GRU`` on a ``PackedSequence`` does on CPU (3× slower here). PyG's
``GRUAggregation`` would run the GRU over the padding of short neighbourhoods too. SGAT and the
readout use PyG's segment ``softmax`` and ``scatter``.

**Adaptations to the engine's protocol** (leave-one-out, full ranking, history excluded; a user's
training history is one session): as in :mod:`engine.models.srgnn`, every prefix of a training
window is one session with the next item as target (the authors' ``AugmentedDataset``), so the
engine's ``batch_size`` counts users, each giving up to ``T`` prefix sessions, where the paper's
512 counts prefix sessions; ``user_repr`` encodes the last ``maxlen`` items as one session (zero
vector without items). The published settings (embedding 32, 3 layers, feature dropout 0.2,
lr 1e-3, weight decay 1e-4, batch 512) are the config defaults where they belong to the model;
the rest are :class:`~engine.config.OfflineConfig` settings. The authors' AdamW exempts biases,
batch-norm and PReLU parameters from weight decay; the engine's optimizers decay every
parameter.

**Deviations from the authors' code**: dropout masks come from the step's generator
(:func:`engine.models.base.dropout`). ``max_norm``: the item rows are drawn from N(0, init_std²)
(``nn.Embedding``'s N(0, 1) by default) and rescaled to norm ≤ ``max_norm`` at once — at
initialisation and for rows ``grow`` appends — which is what the authors' first lookup does to
them; ``loss`` rescales the rows an optimizer step pushed past ``max_norm`` in place before its
forward pass, as the authors' lookup of every item does in each training step, so the training
dynamics are theirs (``loss`` leaves the parameters untouched when no row exceeds the norm);
``user_repr`` and ``item_output_weight`` rescale functionally (the same values, parameters
untouched), so inference never writes to the model. Row 0 is the zero padding row and never a
class. Batch norm in training mode over a single row (one session, or one node) uses the running
statistics instead of raising. The other parameters are drawn from PyTorch's default
distributions with the model's seeded generator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.models.base import (
    Batch,
    TiedItemTableRecommender,
    check_sizes,
    dropout,
    split_inputs_targets,
    zero_loss,
)
from engine.models.srgnn import SessionGraphs, at_positions, check_length, session_graphs

__all__ = ["LESSR", "LESSRConfig", "renormed", "shortcut_edges"]


def shortcut_edges(graphs: SessionGraphs) -> Tensor:
    """The shortcut graph's edges ``(2, E)``: ``u → v`` iff an occurrence of ``u`` is at or
    before an occurrence of ``v`` in the same session (the authors' pairs ``i ≤ j``, deduped).

    Nodes are numbered by first occurrence, so the sources of ``v`` are exactly the nodes seen
    up to ``v``'s last occurrence: ``node_ptr[g] .. hi[v]`` with ``hi[v]`` the largest node id
    among positions up to it. Edges are grouped by destination.
    """
    V, S, dev = graphs.num_nodes, graphs.pos_node.numel(), graphs.pos_node.device
    if V == 0:
        return graphs.edge_index.new_zeros(2, 0)
    positions = torch.arange(S, device=dev)  # (S,)
    last_pos = torch.zeros(V, dtype=torch.long, device=dev).scatter_reduce(
        0, graphs.pos_node, positions, reduce="amax", include_self=False
    )  # (V,): every node occurs at least once
    # node ids grow along the positions within a session and from one session to the next, so a
    # running maximum over all positions is the highest node seen so far within the session
    seen = torch.cummax(graphs.pos_node, 0).values  # (S,)
    lo = graphs.node_ptr[graphs.node_graph]  # (V,)
    count = seen[last_pos] - lo + 1  # (V,) sources of each node
    starts = torch.cat([count.new_zeros(1), count.cumsum(0)])  # (V+1,)
    E = int(starts[-1])
    dst = torch.repeat_interleave(torch.arange(V, device=dev), count, output_size=E)  # (E,)
    src = lo[dst] + torch.arange(E, device=dev) - starts[dst]  # (E,)
    return torch.stack([src, dst])


def renormed(weight: Tensor, max_norm: float | None) -> Tensor:
    """Rows of ``weight`` scaled to norm ≤ ``max_norm`` as ``nn.Embedding(max_norm=…)`` does
    (scale ``max_norm / (norm + 1e-7)`` where the norm exceeds it); ``None``: unchanged."""
    if max_norm is None:
        return weight
    norm = weight.norm(dim=1, keepdim=True)  # (N+1, 1)
    return weight * torch.where(norm > max_norm, max_norm / (norm + 1e-7), torch.ones_like(norm))


def _batch_norm(bn: nn.BatchNorm1d | None, x: Tensor) -> Tensor:
    """``bn(x)``; a single row in training mode uses the running statistics (BN cannot
    normalise one value per channel)."""
    if bn is None:
        return x
    if bn.training and x.shape[0] < 2:
        return F.batch_norm(
            x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps
        )
    return bn(x)


@dataclass(frozen=True)
class LESSRConfig:
    """LESSR hyperparameters (the authors' defaults).

    Attributes:
        dim: embedding size, also each layer's output width (paper: 32).
        num_layers: EOPA/SGAT layers, alternating from EOPA (paper: 3).
        dropout: feature dropout of every layer, the readout and the session vector (code: 0.2).
        batch_norm: batch norm at the input of every layer, the readout and the session vector.
        max_norm: rows of the item table are rescaled to this norm when used (``None``: never).
        maxlen: longest input sequence ``user_repr`` encodes (the most recent items are kept);
            training windows are cut to their last ``maxlen + 1`` items.
        init_std: std of the normal init of the item table (``nn.Embedding``'s 1; also for rows
            added by ``grow``).
    """

    dim: int = 32
    num_layers: int = 3
    dropout: float = 0.2
    batch_norm: bool = True
    max_norm: float | None = 1.0
    maxlen: int = 50
    init_std: float = 1.0

    def __post_init__(self) -> None:
        for name in ("dim", "num_layers", "maxlen"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.max_norm is not None and not self.max_norm > 0:
            raise ValueError(f"max_norm must be > 0 or None, got {self.max_norm}")
        if self.init_std < 0:
            raise ValueError(f"init_std must be >= 0, got {self.init_std}")


class _Context:
    """What every layer of one forward pass reads: graphs, edges, dropout and its generator."""

    def __init__(
        self,
        graphs: SessionGraphs,
        p: float,
        training: bool,
        generator: torch.Generator | None,
        with_shortcuts: bool,
    ) -> None:
        self.graphs = graphs
        self.p, self.training, self.generator = p, training, generator
        self._pack_transitions(graphs.edge_index)
        self.shortcut = shortcut_edges(graphs) if with_shortcuts else None  # (2, E_s)

    def _pack_transitions(self, edge_index: Tensor) -> None:
        """EOPA's messages in the packed-sequence layout (see the module docstring).

        Sets ``eop_receivers (M,)``: the receiving nodes sorted by in-degree (descending);
        ``eop_steps``: ``n_t``, how many of them have more than ``t`` in-edges; and
        ``eop_packed_src (E,)``: the sender of each packed slot, step-major (the ``t``-th
        message of receivers ``0..n_t-1``, in time order per receiver).
        """
        self.eop_receivers: Tensor | None = None
        self.eop_steps: list[int] = []
        src, dst = edge_index  # (E,), (E,)
        E = dst.numel()
        if E == 0:
            return
        dev = dst.device
        order = torch.sort(dst, stable=True).indices  # (E,): grouped by receiver, time order kept
        src, dst = src[order], dst[order]
        receivers, degree = torch.unique_consecutive(dst, return_counts=True)  # (M,), (M,)
        M = receivers.numel()
        by_degree = torch.sort(degree, descending=True, stable=True).indices  # (M,)
        rank = torch.empty_like(by_degree)
        rank[by_degree] = torch.arange(M, device=dev)  # (M,): sorted position of each receiver
        slot = torch.repeat_interleave(torch.arange(M, device=dev), degree, output_size=E)
        first = torch.cat([degree.new_zeros(1), degree.cumsum(0)[:-1]])  # (M,)
        step = torch.arange(E, device=dev) - first[slot]  # (E,): message index at its receiver
        counts = torch.bincount(degree)  # (max degree + 1,): receivers per in-degree
        steps = counts.flip(0).cumsum(0).flip(0)[1:]  # (max degree,): n_t = #{degree > t}
        step_start = torch.cat([steps.new_zeros(1), steps.cumsum(0)[:-1]])  # (max degree,)
        packed_src = torch.empty_like(src)
        packed_src[step_start[step] + rank[slot]] = src
        self.eop_receivers = receivers[by_degree]
        self.eop_steps = steps.tolist()
        self.eop_packed_src = packed_src

    def drop(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training, self.generator)


class EOPA(nn.Module):
    """Edge-order preserving aggregation over the EOP multigraph (see the module docstring)."""

    def __init__(self, in_dim: int, out_dim: int, batch_norm: bool) -> None:
        super().__init__()
        self.batch_norm = nn.BatchNorm1d(in_dim) if batch_norm else None
        self.gru = nn.GRUCell(in_dim, in_dim)  # the authors' nn.GRU(in_dim, in_dim), one step
        self.fc_self = nn.Linear(in_dim, out_dim, bias=False)
        self.fc_neigh = nn.Linear(in_dim, out_dim, bias=False)
        self.activation = nn.PReLU(out_dim)

    def forward(self, feat: Tensor, ctx: _Context) -> Tensor:
        """``feat (V, in_dim)`` → ``(V, out_dim)``."""
        feat = _batch_norm(self.batch_norm, feat)  # (V, in)
        messages = ctx.drop(feat)  # (V, in): the authors drop the messages, not fc_self's input
        neigh = torch.zeros_like(feat)  # (V, in): 0 without in-edges
        if ctx.eop_receivers is not None:
            steps = ctx.eop_steps  # n_0 ≥ n_1 ≥ …: receivers still reading at step t
            inputs = messages[ctx.eop_packed_src].split(steps)  # (n_t, in) per step
            h = messages.new_zeros(steps[0], messages.shape[1])  # (n_0, in)
            finished = []
            for t, x_t in enumerate(inputs):
                h = self.gru(x_t, h)  # (n_t, in)
                going_on = steps[t + 1] if t + 1 < len(steps) else 0
                h, done = h.split([going_on, h.shape[0] - going_on])
                finished.append(done)  # receivers whose last message was step t
            last = torch.cat(finished[::-1])  # (M, in) in eop_receivers order
            neigh = neigh.index_copy(0, ctx.eop_receivers, last)
        return self.activation(self.fc_self(feat) + self.fc_neigh(neigh))  # (V, out)


class SGAT(nn.Module):
    """Shortcut graph attention (see the module docstring)."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, batch_norm: bool) -> None:
        super().__init__()
        self.batch_norm = nn.BatchNorm1d(in_dim) if batch_norm else None
        self.fc_q = nn.Linear(in_dim, hidden, bias=True)
        self.fc_k = nn.Linear(in_dim, hidden, bias=False)
        self.fc_v = nn.Linear(in_dim, out_dim, bias=False)
        self.fc_e = nn.Linear(hidden, 1, bias=False)
        self.activation = nn.PReLU(out_dim)

    def forward(self, feat: Tensor, ctx: _Context) -> Tensor:
        """``feat (V, in_dim)`` → ``(V, out_dim)``."""
        from torch_geometric.utils import scatter, softmax

        assert ctx.shortcut is not None
        feat = ctx.drop(_batch_norm(self.batch_norm, feat))  # (V, in)
        src, dst = ctx.shortcut  # (E_s,), (E_s,)
        V = feat.shape[0]
        # index_select: its backward (index_add_) is faster than that of t[index] on CPU
        q, k = self.fc_q(feat).index_select(0, src), self.fc_k(feat).index_select(0, dst)
        e = self.fc_e(torch.sigmoid(q + k))  # (E_s, 1)
        a = softmax(e, dst, num_nodes=V)  # (E_s, 1): over each node's incoming shortcuts
        out = scatter(a * self.fc_v(feat).index_select(0, src), dst, dim=0, dim_size=V)  # (V, out)
        return self.activation(out)


class AttnReadout(nn.Module):
    """Attention over a session's nodes, queried by its last item (see the module docstring)."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, batch_norm: bool) -> None:
        super().__init__()
        self.batch_norm = nn.BatchNorm1d(in_dim) if batch_norm else None
        self.fc_u = nn.Linear(in_dim, hidden, bias=False)
        self.fc_v = nn.Linear(in_dim, hidden, bias=True)
        self.fc_e = nn.Linear(hidden, 1, bias=False)
        self.fc_out = nn.Linear(in_dim, out_dim, bias=False) if out_dim != in_dim else None
        self.activation = nn.PReLU(out_dim)

    def forward(self, feat: Tensor, ctx: _Context) -> Tensor:
        """``feat (V, in_dim)`` → ``(G, out_dim)``."""
        from torch_geometric.utils import scatter, softmax

        g = ctx.graphs
        G = g.num_graphs
        feat = ctx.drop(_batch_norm(self.batch_norm, feat))  # (V, in)
        query = self.fc_v(feat[g.last_node])  # (G, hidden)
        e = self.fc_e(torch.sigmoid(self.fc_u(feat) + query[g.node_graph]))  # (V, 1)
        beta = softmax(e, g.node_graph, num_nodes=G)  # (V, 1) over each session's nodes
        out = scatter(feat * beta, g.node_graph, dim=0, dim_size=G)  # (G, in)
        if self.fc_out is not None:
            out = self.fc_out(out)  # (G, out)
        return self.activation(out)


class LESSR(TiedItemTableRecommender):
    """LESSR with EOPA and SGAT layers and an attention readout; cross-entropy over all items.

    Args:
        num_items: number of items (ids ``1..num_items``; 0 is padding).
        num_users: number of users (unused by the model; kept for a uniform interface).
        config: hyperparameters; ``None`` uses :class:`LESSRConfig` defaults.
        seed: seeds the parameter initialisation.

    Example:
        >>> model = LESSR(num_items=20).eval()
        >>> seqs = torch.tensor([[0, 3, 4], [5, 6, 5]])
        >>> model.user_repr({"users": torch.arange(2), "seqs": seqs}).shape
        torch.Size([2, 32])
    """

    sequential = True  # user_repr encodes the recent items (see Recommender.sequential)

    def __init__(
        self,
        num_items: int,
        num_users: int = 0,
        config: LESSRConfig | None = None,
        *,
        seed: int = 0,
    ) -> None:
        super().__init__()
        check_sizes(num_items, num_users)
        self.config = cfg = config if config is not None else LESSRConfig()
        self.num_items, self.num_users, self.seed = int(num_items), int(num_users), int(seed)
        D = cfg.dim
        self.item_emb = nn.Embedding(self.num_items + 1, D, padding_idx=0)
        self.layers = nn.ModuleList()
        width = D
        for i in range(cfg.num_layers):
            if i % 2 == 0:
                self.layers.append(EOPA(width, D, cfg.batch_norm))
            else:
                self.layers.append(SGAT(width, D, D, cfg.batch_norm))
            width += D
        self.readout = AttnReadout(width, D, D, cfg.batch_norm)
        width += D
        self.batch_norm = nn.BatchNorm1d(width) if cfg.batch_norm else None
        self.fc_sr = nn.Linear(width, D, bias=False)
        self._reset_parameters(torch.Generator().manual_seed(self.seed))

    def _reset_parameters(self, generator: torch.Generator) -> None:
        """PyTorch's default initialisations, drawn from the seeded ``generator``."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5), generator=generator)
                if module.bias is not None:
                    bound = 1.0 / math.sqrt(module.in_features)
                    nn.init.uniform_(module.bias, -bound, bound, generator=generator)
            elif isinstance(module, nn.GRUCell):
                bound = 1.0 / math.sqrt(module.hidden_size)
                for p in module.parameters():
                    nn.init.uniform_(p, -bound, bound, generator=generator)
            # BatchNorm (1, 0) and PReLU (0.25) defaults involve no draw
        nn.init.normal_(self.item_emb.weight, 0.0, self.config.init_std, generator=generator)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()
            self._renorm_rows_(0)

    def _renorm_rows_(self, start: int) -> None:
        """Rescale the stored rows ``start..`` to norm ≤ ``max_norm`` in place (what the
        authors' ``nn.Embedding(max_norm=1)`` does to a row each time it is looked up).

        Twice: after one pass a few percent of the rows have a recomputed norm one rounding
        error above ``max_norm``, and the next call would rescale them again (by ~1e-7); after
        two, rescaling is idempotent, so ``loss`` leaves rows that no step moved untouched.
        """
        if self.config.max_norm is not None:
            with torch.no_grad():
                rows = self.item_emb.weight[start:]
                for _ in range(2):
                    rows.copy_(renormed(rows, self.config.max_norm))

    def grow(
        self,
        num_items: int | None = None,
        num_users: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        """Append item rows drawn as at initialisation (N(0, init_std²), rescaled to norm ≤
        ``max_norm``); old rows and parameters are kept."""
        old_rows = self.item_emb.weight.shape[0]
        self._grow_tables(num_items, num_users, generator)
        self._renorm_rows_(old_rows)

    # ------------------------------------------------------------------------------ encoder

    def item_output_weight(self) -> Tensor:
        """The item table with rows rescaled to norm ≤ ``max_norm``, ``(num_items + 1, D)``."""
        return renormed(self.item_emb.weight, self.config.max_norm)

    def encode_sessions(
        self, graphs: SessionGraphs, generator: torch.Generator | None = None
    ) -> Tensor:
        """``(G, D)`` session vectors s of a batch of session graphs."""
        cfg = self.config
        ctx = _Context(graphs, cfg.dropout, self.training, generator, cfg.num_layers > 1)
        feat = self.item_output_weight()[graphs.items]  # (V, D)
        for layer in self.layers:
            feat = torch.cat([layer(feat, ctx), feat], dim=1)  # (V, width + D)
        s_g = self.readout(feat, ctx)  # (G, D)
        s_l = feat[graphs.last_node]  # (G, width)
        s = _batch_norm(self.batch_norm, torch.cat([s_l, s_g], dim=1))  # (G, width + D)
        return self.fc_sr(ctx.drop(s))  # (G, D)

    def encode(self, seqs: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The session vector of every prefix, at its last position.

        Args:
            seqs: ``(B, T)`` left-padded item ids, ``T <= maxlen``.
            generator: dropout source; required in training mode when dropout > 0.

        Returns:
            ``(B, T, D)``: position ``t`` holds s of the session ``x_1..x_t`` (what training
            scores against the next item); padded positions are exactly zero. In training mode
            batch norm normalises over all the prefixes' nodes.
        """
        check_length(seqs, self.config.maxlen)
        graphs = session_graphs(seqs, prefixes=True, targets=False)
        if graphs.num_graphs == 0:
            return self.item_emb.weight.new_zeros(*seqs.shape, self.config.dim)
        return at_positions(seqs, graphs, self.encode_sessions(graphs, generator))

    # --------------------------------------------------------------------------- train head

    def loss(self, batch: Batch, generator: torch.Generator) -> Tensor:
        """Mean cross-entropy over all items of every prefix session of the batch's windows."""
        seqs = batch["seqs"]  # (B, T+1)
        split_inputs_targets(seqs)  # validates the shape
        graphs = session_graphs(seqs[:, -(self.config.maxlen + 1) :], prefixes=True)
        if graphs.num_graphs == 0:  # no row has two items: nothing to predict
            return zero_loss(*self.parameters())
        self._renorm_rows_(0)  # the authors' max_norm lookup of every row, in place
        rep = self.encode_sessions(graphs, generator)  # (G, D)
        scores = rep @ self.item_output_weight()[1:].T  # (G, N): padding is never a class
        return F.cross_entropy(scores, graphs.targets - 1)

    # ----------------------------------------------------------------------- inference head

    def user_repr(self, batch: Batch, generator: torch.Generator | None = None) -> Tensor:
        """s of the most recent ``maxlen`` items as one session, ``(B, D)``; 0 for no items."""
        seqs = batch["seqs"][:, -self.config.maxlen :]  # (B, T')
        graphs = session_graphs(seqs, prefixes=False)
        rep = self.item_emb.weight.new_zeros(seqs.shape[0], self.config.dim)  # (B, D)
        if graphs.num_graphs == 0:
            return rep
        return rep.index_copy(0, graphs.rows, self.encode_sessions(graphs, generator))
