"""LightGCN (He et al., 2020): the "graph inside the model" baseline, built on PyG's ``LGConv``.

Nodes of the bipartite graph: users ``0..U-1``, then item ``i`` at node ``U + i`` for
``i = 0..num_items`` (node ``U`` is the padding item and has no edges) — the same layout as MF's
stacked bipartite smoothing group. Propagation is ``L`` rounds of ``D^-1/2 A D^-1/2`` (no
self-loops) and the final embedding is the mean of the ``L + 1`` layer outputs. Training: BPR over
every non-zero target of ``seqs[:, 1:]`` with one uniform negative each, scored with propagated
embeddings. SEvo smooths nothing by default: the model already propagates over the graph.

The graph is set with :meth:`LightGCN.set_graph` (or the ``edges`` constructor argument) and is not
part of the ``state_dict``: call ``set_graph`` again after loading a checkpoint.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.models.base import (
    Batch,
    Recommender,
    check_sizes,
    sample_negatives,
    user_positives,
    zero_loss,
)

__all__ = ["LightGCN", "LightGCNConfig"]


@dataclass(frozen=True)
class LightGCNConfig:
    """LightGCN hyperparameters.

    Attributes:
        dim: embedding size.
        num_layers: propagation rounds ``L``.
        init_std: std of the normal init of both tables (LightGCN's 0.1; also used by ``grow``).
    """

    dim: int = 64
    num_layers: int = 3
    init_std: float = 0.1

    def __post_init__(self) -> None:
        if self.dim < 1:
            raise ValueError(f"dim must be >= 1, got {self.dim}")
        if self.num_layers < 0:
            raise ValueError(f"num_layers must be >= 0, got {self.num_layers}")
        if self.init_std < 0:
            raise ValueError(f"init_std must be >= 0, got {self.init_std}")


class LightGCN(Recommender):
    """Light graph convolution over the user–item graph.

    Args:
        num_items: number of items (ids ``1..num_items``; 0 is padding).
        num_users: number of users (ids ``0..num_users-1``), at least 1.
        config: hyperparameters; ``None`` uses :class:`LightGCNConfig` defaults.
        seed: seeds the parameter initialisation.
        edges: optional ``(users, items)`` training interactions, passed to :meth:`set_graph`.

    Example:
        >>> model = LightGCN(num_items=5, num_users=2, edges=([0, 0, 1], [1, 2, 2]))
        >>> model.score_all({"users": torch.tensor([0, 1]), "seqs": torch.zeros(2, 3).long()}).shape
        torch.Size([2, 6])
    """

    sequential = False  # user_repr reads the user table (see Recommender.sequential)

    def __init__(
        self,
        num_items: int,
        num_users: int,
        config: LightGCNConfig | None = None,
        *,
        seed: int = 0,
        edges: tuple[object, object] | None = None,
    ) -> None:
        super().__init__()
        check_sizes(num_items, num_users, need_users=True)
        self.config = cfg = config if config is not None else LightGCNConfig()
        self.num_items, self.num_users, self.seed = int(num_items), int(num_users), int(seed)
        self.user_emb = nn.Embedding(self.num_users, cfg.dim)
        self.item_emb = nn.Embedding(self.num_items + 1, cfg.dim, padding_idx=0)
        from torch_geometric.nn import LGConv  # PyG takes ~2 s to import: only when used

        self.conv = LGConv(normalize=False)  # normalisation is precomputed in set_graph
        g = torch.Generator().manual_seed(self.seed)
        nn.init.normal_(self.user_emb.weight, 0.0, cfg.init_std, generator=g)
        nn.init.normal_(self.item_emb.weight, 0.0, cfg.init_std, generator=g)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()
        empty = torch.zeros(0, dtype=torch.long)
        self.register_buffer("graph_users", empty, persistent=False)
        self.register_buffer("graph_items", empty.clone(), persistent=False)
        self.register_buffer("edge_index", torch.zeros(2, 0, dtype=torch.long), persistent=False)
        self.register_buffer("edge_weight", torch.zeros(0), persistent=False)
        self.register_buffer("crow", torch.zeros(1, dtype=torch.long), persistent=False)
        self._has_graph = False
        if edges is not None:
            self.set_graph(*edges)

    # -------------------------------------------------------------------------------- graph

    def set_graph(self, users: object, items: object) -> None:
        """Set the training interactions ``(users[k], items[k])``; duplicates count once.

        Args:
            users: ``(E,)`` user ids in ``0..num_users-1`` (array-like).
            items: ``(E,)`` item ids in ``1..num_items`` (array-like).

        Raises:
            ValueError: on mismatched lengths or out-of-range ids.
        """
        device = self.user_emb.weight.device
        u = torch.as_tensor(users, dtype=torch.long).reshape(-1).to(device)  # (E,)
        i = torch.as_tensor(items, dtype=torch.long).reshape(-1).to(device)  # (E,)
        if u.shape != i.shape:
            raise ValueError(f"users and items differ in length: {u.numel()} vs {i.numel()}")
        if u.numel() and (int(u.min()) < 0 or int(u.max()) >= self.num_users):
            raise ValueError(f"user ids must be in [0, {self.num_users - 1}]")
        if i.numel() and (int(i.min()) < 1 or int(i.max()) > self.num_items):
            raise ValueError(f"item ids must be in [1, {self.num_items}]")
        self.graph_users, self.graph_items = u, i
        self._has_graph = True
        self._build_edges()

    def _build_edges(self) -> None:
        from torch_geometric.nn.conv.gcn_conv import gcn_norm
        from torch_geometric.utils import coalesce

        U = self.num_users
        n = U + self.num_items + 1
        rows = torch.cat([self.graph_users, self.graph_items + U])  # (2E,)
        cols = torch.cat([self.graph_items + U, self.graph_users])  # (2E,)
        edge_index = coalesce(torch.stack([rows, cols]), num_nodes=n)  # (2, E'), sorted, deduped
        edge_index, edge_weight = gcn_norm(edge_index, None, num_nodes=n, add_self_loops=False)
        self.edge_index, self.edge_weight = edge_index, edge_weight
        counts = torch.bincount(edge_index[0], minlength=n)  # (n,)
        self.crow = torch.cat([counts.new_zeros(1), counts.cumsum(0)])  # (n+1,) CSR row pointers

    def _adjacency(self) -> Tensor:
        """``D^-1/2 A D^-1/2`` as a sparse CSR ``(n, n)`` view of the edge buffers (no copy).

        LGConv on a sparse matrix runs one sparse-dense product per layer, ~7x faster on CPU than
        message passing over ``edge_index``; Â is symmetric, so it is its own transpose. The CSR
        tensor is not kept as a buffer because sparse CSR tensors cannot be deep-copied.
        """
        n = self.crow.numel() - 1
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            return torch.sparse_csr_tensor(
                self.crow, self.edge_index[1], self.edge_weight, (n, n), check_invariants=False
            )

    # ------------------------------------------------------------------------------ encoder

    def propagate(self) -> tuple[Tensor, Tensor]:
        """Propagated embeddings: users ``(U, D)`` and items ``(num_items + 1, D)``."""
        if not self._has_graph:
            raise RuntimeError("LightGCN has no graph: call set_graph(users, items) first")
        adj = self._adjacency()  # (U+N+1, U+N+1) sparse
        x = torch.cat([self.user_emb.weight, self.item_emb.weight])  # (U+N+1, D)
        h, total = x, x
        for _ in range(self.config.num_layers):
            h = self.conv(h, adj)  # (U+N+1, D)
            total = total + h
        out = total / (self.config.num_layers + 1)  # (U+N+1, D)
        return out[: self.num_users], out[self.num_users :]  # (U, D), (N+1, D)

    # --------------------------------------------------------------------------- train head

    def loss(self, batch: Batch, generator: torch.Generator) -> Tensor:
        """BPR over every non-zero target of ``seqs[:, 1:]`` with propagated embeddings."""
        users, pos = user_positives(batch)  # (M,), (M,)
        if pos.numel() == 0:
            return zero_loss(self.user_emb.weight, self.item_emb.weight)
        neg = sample_negatives(pos.shape, self.num_items, generator, pos.device)  # (M,)
        user_out, item_out = self.propagate()  # (U, D), (N+1, D)
        u = user_out[users]  # (M, D)
        diff = (u * (item_out[pos] - item_out[neg])).sum(-1)  # (M,)
        return -F.logsigmoid(diff).mean()

    # ----------------------------------------------------------------------- inference head

    def user_repr(self, batch: Batch, generator: torch.Generator | None = None) -> Tensor:
        """Propagated embeddings of ``batch["users"]``, ``(B, D)``; ``seqs`` is not used."""
        return self.propagate()[0][batch["users"]]  # (B, D)

    def score_all(self, batch: Batch, generator: torch.Generator | None = None) -> Tensor:
        """``(B, num_items + 1)`` scores from one propagation (column 0 is padding)."""
        user_out, item_out = self.propagate()  # (U, D), (N+1, D)
        return user_out[batch["users"]] @ item_out.T  # (B, N+1)

    def item_output_weight(self) -> Tensor:
        """Propagated item embeddings ``(num_items + 1, D)``: what serving publishes."""
        return self.propagate()[1]  # (N+1, D)

    def smoothing_groups(self) -> list[list[nn.Parameter]]:
        """``[]``: LightGCN already propagates over the graph."""
        return []

    def grow(
        self,
        num_items: int | None = None,
        num_users: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        """Grow the tables; new users/items have no edges until the next :meth:`set_graph`."""
        self._grow_tables(num_items, num_users, generator)
        self._build_edges()  # item node ids shift by the number of new users
