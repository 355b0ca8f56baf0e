"""SR-GNN (Wu et al., AAAI 2019): a gated graph neural network over each session's item graph.

Each input sequence is one session. Its graph has one node per distinct item and a directed edge
``u → v`` when ``v`` directly follows ``u`` somewhere in the session. Node states start as the
item embeddings and go through ``steps`` GGNN steps,

    a_in[v]  = Σ_{u→v} lin_in(h_u) / indeg(v)  + b_in        (incoming transitions)
    a_out[u] = Σ_{u→v} lin_out(h_v) / outdeg(u) + b_out       (outgoing transitions)
    h'       = GRUCell([a_in; a_out], h),

the normalised in/out adjacency of the paper (A_s = [A_in, A_out]). The readout attends over the
session's positions, α_i = q^T σ(W1 v_last + W2 v_i + c), s_g = Σ_i α_i v_i (no softmax, as in the
paper), and s_h = W3 [s_g; s_l] with s_l = v_last, the node of the most recent item. Scores are
dot products of s_h with the item table (tied), so ``user_repr`` = s_h and ``item_output_weight``
= the item table; training is cross-entropy over all items (padding excluded).

**Batched graphs.** A batch of sessions is one disjoint union of graphs in PyG's layout (node
items, a ``batch``-style graph index per node, ``edge_index``), built with tensor operations from
the left-padded sequences (:func:`session_graphs`: no Python loop over sequences); PyG's
:class:`~torch_geometric.nn.SimpleConv` does the weighted aggregations and ``scatter`` the readout.
Not the authors' dense per-session ``(n, 2n)`` adjacency: training uses every prefix of every
window as its own session (below), so a batch holds ``B·T`` graphs of 1..T nodes, and a dense
form padded to the largest one would cost ``B·T·T²`` entries where the union costs the total
number of nodes and edges. Nodes are numbered by first occurrence (the authors sort them by item
id); the model is invariant to that order.

**Adaptations to the engine's protocol** (leave-one-out, full ranking, history excluded; a user's
training history is one session):

* Training: the batch is ``{"users", "seqs": (B, T+1)}``, each user's last ``T+1`` training
  items. Every prefix ``x_1..x_k`` (``1 ≤ k ≤ L-1`` for a row of ``L`` items) is one session
  whose target is ``x_{k+1}`` — the authors' data augmentation, and the engine's convention that
  a sequential model predicts at every position. So the loss of a batch of ``B`` users is the
  mean cross-entropy over up to ``B·T`` prefix sessions; the paper's batch size (100) counts
  prefix sessions, the engine's ``batch_size`` counts users.
* Inference: ``user_repr`` encodes the last ``maxlen`` items as one session (the user's whole
  history when it is shorter; the authors never cut a session). A user without items gets a zero
  vector. ``encode`` gives every position the vector of the prefix session ending there (what
  training scores), like the per-position states of the engine's other sequential models.
* Published training settings (hidden size 100, 1 step, Adam, lr 1e-3, L2 1e-5, batch 100,
  lr × 0.1 every 3 epochs) are the config defaults here where they belong to the model (``dim``,
  ``steps``); lr, weight decay and batch size are :class:`~engine.config.OfflineConfig` settings.
  The engine's optimizers are AdamW / SEvo-AdamW (decoupled weight decay, where the authors use
  Adam's coupled L2) and there is no learning-rate schedule.

**Deviations from the authors' code** (``CRIPAC-DIG/SR-GNN``, ``pytorch_code``): the item table
is initialised from N(0, init_std²) with init_std = 1/√300, the standard deviation of the
authors' U(±1/√100) (they initialise every parameter from U(±1/√hidden); the other parameters
here follow that exactly, scaled by ``dim``), so that ``grow`` appends rows from the same normal
as the other models; row 0 is the zero padding row and is never scored. Edges are binary (a
transition that repeats counts once) and normalised by degree, as in the authors' code — the
paper's text speaks of occurrence counts. The model has no dropout, so ``loss`` draws nothing
from its generator.
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
    split_inputs_targets,
    zero_loss,
)

__all__ = [
    "SRGNN",
    "SRGNNConfig",
    "SessionGraphs",
    "at_positions",
    "check_length",
    "session_graphs",
    "srgnn_adjacency",
]


# ----------------------------------------------------------------------------- session graphs
@dataclass(frozen=True)
class SessionGraphs:
    """A batch of session graphs as one disjoint union (PyG's batched-graph layout).

    Graph ``g`` owns nodes ``node_ptr[g] .. node_ptr[g+1]-1``, numbered by first occurrence of
    their item in the session, and positions ``pos_ptr[g] .. pos_ptr[g+1]-1`` (its items in time
    order, repeats included). Shapes: ``G`` graphs, ``V`` nodes, ``S`` positions, ``E``
    transitions.

    Attributes:
        items: ``(V,)`` item id of each node.
        node_graph: ``(V,)`` graph of each node (PyG's ``batch`` vector; nondecreasing).
        node_ptr: ``(G+1,)`` first node of each graph, then ``V`` (PyG's ``ptr``).
        pos_node: ``(S,)`` node of each position.
        pos_graph: ``(S,)`` graph of each position (nondecreasing).
        pos_ptr: ``(G+1,)`` first position of each graph, then ``S``.
        last_node: ``(G,)`` node of each session's most recent item.
        edge_index: ``(2, E)`` one edge ``node(s) → node(s+1)`` per pair of consecutive positions
            of a session, in time order (a multigraph: a repeated transition appears again).
        rows: ``(G,)`` batch row each session comes from.
        targets: ``(G,)`` the item that follows each session (training prefixes), else ``None``.
    """

    items: Tensor
    node_graph: Tensor
    node_ptr: Tensor
    pos_node: Tensor
    pos_graph: Tensor
    pos_ptr: Tensor
    last_node: Tensor
    edge_index: Tensor
    rows: Tensor
    targets: Tensor | None

    @property
    def num_graphs(self) -> int:
        return int(self.rows.numel())

    @property
    def num_nodes(self) -> int:
        return int(self.items.numel())


def right_aligned(seqs: Tensor) -> tuple[Tensor, Tensor]:
    """Rotate left-padded rows ``(B, T)`` so that the real items come first.

    Returns:
        ``(right (B, W), lengths (B,))``: right-padded with ``W = max(1, longest row)``.

    Raises:
        ValueError: if ``seqs`` is not 2-D or a row has padding after an item.
    """
    if seqs.dim() != 2:
        raise ValueError(f"seqs must be (B, T), got {tuple(seqs.shape)}")
    B, T = seqs.shape
    nonpad = seqs != 0  # (B, T)
    if T > 1 and bool((nonpad[:, :-1] & ~nonpad[:, 1:]).any()):
        raise ValueError("session models need left-padded sequences (no 0 after an item)")
    lengths = nonpad.sum(1)  # (B,)
    width = max(1, int(lengths.max())) if B > 0 and T > 0 else 1
    cols = torch.arange(width, device=seqs.device)  # (W,)
    if T == 0:
        return seqs.new_zeros(B, width), lengths
    src = (cols[None, :] + (T - lengths)[:, None]) % T  # (B, W)
    right = seqs.gather(1, src)  # (B, W)
    return right * (cols[None, :] < lengths[:, None]), lengths  # (B, W), (B,)


def session_graphs(seqs: Tensor, *, prefixes: bool, targets: bool = True) -> SessionGraphs:
    """The session graphs of a batch of left-padded sequences, vectorised over the batch.

    Args:
        seqs: ``(B, T)`` left-padded item ids.
        prefixes: ``False``: one session per non-empty row (its whole sequence), no targets.
            ``True``: every prefix ``x_1..x_k`` of a row of ``L`` items is a session (sessions
            ordered by row, then ``k``).
        targets: with ``prefixes``: ``True`` (training) keeps the prefixes followed by an item,
            ``1 ≤ k < L``, with that item ``x_{k+1}`` as target; ``False`` keeps every prefix,
            ``1 ≤ k ≤ L``, without targets (one session per position, for ``encode``).

    Example:
        >>> g = session_graphs(torch.tensor([[0, 4, 6, 4, 5]]), prefixes=False)
        >>> g.items.tolist(), g.pos_node.tolist(), g.edge_index.tolist(), g.last_node.tolist()
        ([4, 6, 5], [0, 1, 0, 2], [[0, 1, 0], [1, 0, 2]], [2])
    """
    right, lengths = right_aligned(seqs)  # (B, W), (B,)
    B, W = right.shape
    dev = right.device
    cols = torch.arange(W, device=dev)  # (W,)
    valid = cols[None, :] < lengths[:, None]  # (B, W)
    # first[b, j]: the first position of row b holding the item at position j
    same = (right[:, :, None] == right[:, None, :]) & valid[:, None, :]  # (B, W, W)
    first = same.to(torch.uint8).argmax(2)  # (B, W); argmax returns the first maximum
    is_new = (first == cols[None, :]) & valid  # (B, W): an item's first occurrence
    count = is_new.cumsum(1)  # (B, W): distinct items among positions 0..j
    local = (count - 1).gather(1, first)  # (B, W): node of position j within its row
    node_item = right.new_zeros(B, W + 1)  # (B, W+1): item of each row-local node
    node_item.scatter_(1, torch.where(valid, local, W), right)  # repeats write the same item

    next_items = None
    if prefixes and targets:
        sel = (cols[None, :] >= 1) & (cols[None, :] < lengths[:, None])  # (B, W): k = 1..L-1
        rows, ks = sel.nonzero(as_tuple=True)  # (G,), (G,); row-major order
        next_items = right[rows, ks]  # (G,)
    elif prefixes:
        rows, ks = valid.nonzero(as_tuple=True)  # (G,), (G,): k - 1 = 0..L-1
        ks = ks + 1
    else:
        rows = (lengths > 0).nonzero(as_tuple=True)[0]  # (G,)
        ks = lengths[rows]  # (G,)
    G = rows.numel()
    zero = torch.zeros(1, dtype=torch.long, device=dev)
    n = count[rows, ks - 1] if G > 0 else ks  # (G,) nodes per session
    node_ptr = torch.cat([zero, n.cumsum(0)])  # (G+1,)
    pos_ptr = torch.cat([zero, ks.cumsum(0)])  # (G+1,)
    V, S = int(node_ptr[-1]), int(pos_ptr[-1])
    graph_ids = torch.arange(G, device=dev)
    node_graph = torch.repeat_interleave(graph_ids, n, output_size=V)  # (V,)
    node_rank = torch.arange(V, device=dev) - node_ptr[node_graph]  # (V,)
    items = node_item[rows[node_graph], node_rank]  # (V,)
    pos_graph = torch.repeat_interleave(graph_ids, ks, output_size=S)  # (S,)
    pos_rank = torch.arange(S, device=dev) - pos_ptr[pos_graph]  # (S,)
    pos_node = node_ptr[pos_graph] + local[rows[pos_graph], pos_rank]  # (S,)
    last_node = pos_node[pos_ptr[1:] - 1]  # (G,)
    follows = pos_graph[1:] == pos_graph[:-1]  # (S-1,): positions s and s+1 in one session
    edge_index = torch.stack([pos_node[:-1][follows], pos_node[1:][follows]])  # (2, E)
    return SessionGraphs(
        items=items,
        node_graph=node_graph,
        node_ptr=node_ptr,
        pos_node=pos_node,
        pos_graph=pos_graph,
        pos_ptr=pos_ptr,
        last_node=last_node,
        edge_index=edge_index,
        rows=rows,
        targets=next_items,
    )


def srgnn_adjacency(graphs: SessionGraphs) -> tuple[Tensor, Tensor, Tensor]:
    """SR-GNN's normalised adjacency as weighted edges (the authors' ``A_in`` and ``A_out``).

    A transition ``u → v`` is an edge of weight 1 however often it occurs (the authors' code);
    ``A_in[v, u] = 1/indeg(v)`` and ``A_out[u, v] = 1/outdeg(u)``.

    Returns:
        ``(edge_index (2, E'), w_in (E',), w_out (E',))``: the distinct transitions ``u → v``
        (sorted), with ``w_in = 1/indeg(v)`` and ``w_out = 1/outdeg(u)``.
    """
    from torch_geometric.utils import coalesce  # PyG takes seconds to import: only when used

    V = graphs.num_nodes
    edge_index = coalesce(graphs.edge_index, num_nodes=V)  # (2, E'): duplicates removed
    src, dst = edge_index
    indeg = torch.bincount(dst, minlength=V).to(torch.float32)  # (V,)
    outdeg = torch.bincount(src, minlength=V).to(torch.float32)  # (V,)
    return edge_index, 1.0 / indeg[dst], 1.0 / outdeg[src]


def at_positions(seqs: Tensor, graphs: SessionGraphs, reps: Tensor) -> Tensor:
    """``(B, T, D)``: each prefix session's vector ``reps (G, D)`` at the position of its last
    item in the left-padded ``seqs (B, T)`` (``graphs`` from ``prefixes=True, targets=False``);
    zero at padding."""
    B, T = seqs.shape
    lengths = (seqs != 0).sum(1)  # (B,)
    k = graphs.pos_ptr[1:] - graphs.pos_ptr[:-1]  # (G,) prefix lengths
    flat = graphs.rows * T + T - lengths[graphs.rows] + k - 1  # (G,)
    out = reps.new_zeros(B * T, reps.shape[1]).index_copy(0, flat, reps)  # (B*T, D)
    return out.view(B, T, reps.shape[1])


def check_length(seqs: Tensor, maxlen: int) -> None:
    """Raise ``ValueError`` when ``seqs (B, T)`` is longer than ``maxlen``."""
    if seqs.shape[1] > maxlen:
        raise ValueError(f"sequence length {seqs.shape[1]} exceeds maxlen {maxlen}")


# --------------------------------------------------------------------------------------- model
@dataclass(frozen=True)
class SRGNNConfig:
    """SR-GNN hyperparameters (the paper's defaults).

    Attributes:
        dim: hidden size = item embedding size (paper: 100).
        steps: GGNN propagation steps (paper: 1).
        maxlen: longest input sequence ``user_repr`` encodes (the most recent items are kept);
            training windows are cut to their last ``maxlen + 1`` items.
        init_std: std of the normal init of the item table (also for rows added by ``grow``);
            1/√300 is the std of the authors' U(±1/√100).
    """

    dim: int = 100
    steps: int = 1
    maxlen: int = 50
    init_std: float = 1.0 / math.sqrt(300.0)

    def __post_init__(self) -> None:
        for name in ("dim", "steps", "maxlen"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.init_std < 0:
            raise ValueError(f"init_std must be >= 0, got {self.init_std}")


class SRGNN(TiedItemTableRecommender):
    """Session-based recommendation with graph neural networks; cross-entropy over all items.

    Args:
        num_items: number of items (ids ``1..num_items``; 0 is padding).
        num_users: number of users (unused by the model; kept for a uniform interface).
        config: hyperparameters; ``None`` uses :class:`SRGNNConfig` defaults.
        seed: seeds the parameter initialisation.

    Example:
        >>> model = SRGNN(num_items=20).eval()
        >>> seqs = torch.tensor([[0, 3, 4], [5, 6, 5]])
        >>> model.user_repr({"users": torch.arange(2), "seqs": seqs}).shape
        torch.Size([2, 100])
    """

    sequential = True  # user_repr encodes the recent items (see Recommender.sequential)

    def __init__(
        self,
        num_items: int,
        num_users: int = 0,
        config: SRGNNConfig | None = None,
        *,
        seed: int = 0,
    ) -> None:
        super().__init__()
        check_sizes(num_items, num_users)
        self.config = cfg = config if config is not None else SRGNNConfig()
        self.num_items, self.num_users, self.seed = int(num_items), int(num_users), int(seed)
        D = cfg.dim
        self.item_emb = nn.Embedding(self.num_items + 1, D, padding_idx=0)
        # GGNN: edge maps with their biases, the authors' b_iah / b_oah, and the GRU cell
        # (w_ih (3D, 2D), w_hh (3D, D), gates in the order r, z, n as in the authors' cell)
        self.lin_in = nn.Linear(D, D)
        self.lin_out = nn.Linear(D, D)
        self.bias_in = nn.Parameter(torch.zeros(D))
        self.bias_out = nn.Parameter(torch.zeros(D))
        self.cell = nn.GRUCell(2 * D, D)
        # readout: α_i = q^T σ(W1 v_last + W2 v_i + c); s_h = W3 [s_g; s_l]
        self.att_last = nn.Linear(D, D)  # W1 (with the bias c)
        self.att_node = nn.Linear(D, D)  # W2 (the authors' linear_two has a bias too)
        self.att_q = nn.Linear(D, 1, bias=False)  # q
        self.combine = nn.Linear(2 * D, D)  # W3
        from torch_geometric.nn import SimpleConv  # PyG takes seconds to import: only when used

        self.propagate = SimpleConv(aggr="sum")  # x'_v = Σ_{u→v} w_uv x_u
        self._reset_parameters(torch.Generator().manual_seed(self.seed))

    def _reset_parameters(self, generator: torch.Generator) -> None:
        cfg = self.config
        bound = 1.0 / math.sqrt(cfg.dim)  # the authors: every parameter from U(±1/√hidden)
        for name, p in self.named_parameters():
            if name != "item_emb.weight":
                nn.init.uniform_(p, -bound, bound, generator=generator)
        nn.init.normal_(self.item_emb.weight, 0.0, cfg.init_std, generator=generator)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    # ------------------------------------------------------------------------------ encoder

    def encode_sessions(self, graphs: SessionGraphs) -> Tensor:
        """``(G, D)`` session representations s_h of a batch of session graphs."""
        edge_index, w_in, w_out = srgnn_adjacency(graphs)
        reverse = edge_index.flip(0)  # v → u: node u gathers from its out-neighbours
        h = self.item_emb(graphs.items)  # (V, D)
        for _ in range(self.config.steps):
            a_in = self.propagate(self.lin_in(h), edge_index, w_in) + self.bias_in  # (V, D)
            a_out = self.propagate(self.lin_out(h), reverse, w_out) + self.bias_out  # (V, D)
            h = self.cell(torch.cat([a_in, a_out], dim=1), h)  # (V, D)
        from torch_geometric.utils import scatter

        v_last = h[graphs.last_node]  # (G, D): s_l
        h_pos = h.index_select(0, graphs.pos_node)  # (S, D): node state at each position
        logits = self.att_last(v_last).index_select(0, graphs.pos_graph) + self.att_node(h_pos)
        alpha = self.att_q(torch.sigmoid(logits))  # (S, 1), not normalised (as in the paper)
        s_g = scatter(
            alpha * h_pos, graphs.pos_graph, dim=0, dim_size=graphs.num_graphs
        )  # (G, D): sum over the session's positions, repeats included
        return self.combine(torch.cat([s_g, v_last], dim=1))  # (G, D)

    def encode(self, seqs: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The session vector of every prefix, at its last position.

        Args:
            seqs: ``(B, T)`` left-padded item ids, ``T <= maxlen``.
            generator: unused (SR-GNN draws nothing); accepted for the common signature.

        Returns:
            ``(B, T, D)``: position ``t`` holds s_h of the session ``x_1..x_t`` (what training
            scores against the next item); padded positions are exactly zero.
        """
        check_length(seqs, self.config.maxlen)
        graphs = session_graphs(seqs, prefixes=True, targets=False)
        if graphs.num_graphs == 0:
            return self.item_emb.weight.new_zeros(*seqs.shape, self.config.dim)
        return at_positions(seqs, graphs, self.encode_sessions(graphs))  # (B, T, D)

    # --------------------------------------------------------------------------- train head

    def loss(self, batch: Batch, generator: torch.Generator) -> Tensor:
        """Mean cross-entropy over all items of every prefix session of the batch's windows.

        ``generator`` is accepted for the interface; SR-GNN draws nothing.
        """
        seqs = batch["seqs"]  # (B, T+1)
        split_inputs_targets(seqs)  # validates the shape
        graphs = session_graphs(seqs[:, -(self.config.maxlen + 1) :], prefixes=True)
        if graphs.num_graphs == 0:  # no row has two items: nothing to predict
            return zero_loss(*self.parameters())
        rep = self.encode_sessions(graphs)  # (G, D)
        scores = rep @ self.item_emb.weight[1:].T  # (G, N): padding is never a class
        return F.cross_entropy(scores, graphs.targets - 1)

    # ----------------------------------------------------------------------- inference head

    def user_repr(self, batch: Batch, generator: torch.Generator | None = None) -> Tensor:
        """s_h of the most recent ``maxlen`` items as one session, ``(B, D)``; 0 for no items."""
        seqs = batch["seqs"][:, -self.config.maxlen :]  # (B, T')
        graphs = session_graphs(seqs, prefixes=False)
        rep = self.item_emb.weight.new_zeros(seqs.shape[0], self.config.dim)  # (B, D)
        if graphs.num_graphs == 0:
            return rep
        return rep.index_copy(0, graphs.rows, self.encode_sessions(graphs))  # (B, D)
