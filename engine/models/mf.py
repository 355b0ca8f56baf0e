"""MF-BPR: matrix factorisation trained with Bayesian personalised ranking (Rendle et al., 2009).

Positives of a training batch are **every non-zero target** ``seqs[:, 1:]`` of each user (the same
positions the sequential models predict), each paired with one uniform negative.

SEvo smooths either the item table alone on the item–item graph (``bipartite=False``, default) or
the user and item tables stacked on the bipartite user–item graph (``bipartite=True``). Row layout
of the stacked group: rows ``0..U-1`` are users ``0..U-1``; row ``U + i`` is item ``i`` for
``i = 0..num_items`` (row ``U`` is the padding item, which has no edges). So a user–item
interaction ``(u, i)`` is the edge ``(u, U + i)``. Growing the user table shifts every item row,
so the bipartite graph must be rebuilt after ``grow(num_users=...)``.
"""

from __future__ import annotations

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

__all__ = ["MF", "MFConfig"]


@dataclass(frozen=True)
class MFConfig:
    """MF-BPR hyperparameters.

    Attributes:
        dim: embedding size (SEvo paper: 64).
        init_std: std of the normal init of both tables (also for rows added by ``grow``).
        bipartite: smooth ``[users; items]`` stacked on the user–item graph instead of the item
            table on the item–item graph.
    """

    dim: int = 64
    init_std: float = 0.1
    bipartite: bool = False

    def __post_init__(self) -> None:
        if self.dim < 1:
            raise ValueError(f"dim must be >= 1, got {self.dim}")
        if self.init_std < 0:
            raise ValueError(f"init_std must be >= 0, got {self.init_std}")


class MF(Recommender):
    """Matrix factorisation with a BPR loss.

    Args:
        num_items: number of items (ids ``1..num_items``; 0 is padding).
        num_users: number of users (ids ``0..num_users-1``), at least 1.
        config: hyperparameters; ``None`` uses :class:`MFConfig` defaults.
        seed: seeds the parameter initialisation.

    Example:
        >>> model = MF(num_items=100, num_users=10)
        >>> model.score_all({"users": torch.tensor([3]), "seqs": torch.zeros(1, 5).long()}).shape
        torch.Size([1, 101])
    """

    sequential = False  # user_repr reads the user table (see Recommender.sequential)

    def __init__(
        self,
        num_items: int,
        num_users: int,
        config: MFConfig | None = None,
        *,
        seed: int = 0,
    ) -> None:
        super().__init__()
        check_sizes(num_items, num_users, need_users=True)
        self.config = cfg = config if config is not None else MFConfig()
        self.num_items, self.num_users, self.seed = int(num_items), int(num_users), int(seed)
        self.user_emb = nn.Embedding(self.num_users, cfg.dim)
        self.item_emb = nn.Embedding(self.num_items + 1, cfg.dim, padding_idx=0)
        g = torch.Generator().manual_seed(self.seed)
        nn.init.normal_(self.user_emb.weight, 0.0, cfg.init_std, generator=g)
        nn.init.normal_(self.item_emb.weight, 0.0, cfg.init_std, generator=g)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def encode(self, users: Tensor) -> Tensor:
        """User embeddings ``(B, D)`` of ``users (B,)``."""
        return self.user_emb(users)  # (B, D)

    def loss(self, batch: Batch, generator: torch.Generator) -> Tensor:
        """BPR over every non-zero target of ``seqs[:, 1:]``, one uniform negative each."""
        users, pos = user_positives(batch)  # (M,), (M,)
        if pos.numel() == 0:
            return zero_loss(self.user_emb.weight, self.item_emb.weight)
        neg = sample_negatives(pos.shape, self.num_items, generator, pos.device)  # (M,)
        u = self.user_emb(users)  # (M, D)
        diff = (u * (self.item_emb(pos) - self.item_emb(neg))).sum(-1)  # (M,)
        return -F.logsigmoid(diff).mean()

    def user_repr(self, batch: Batch, generator: torch.Generator | None = None) -> Tensor:
        """The user embeddings of ``batch["users"]``, ``(B, D)``; ``seqs`` is not used."""
        return self.encode(batch["users"])  # (B, D)

    def item_output_weight(self) -> Tensor:
        return self.item_emb.weight  # (N+1, D)

    @property
    def item_node_offset(self) -> int:
        """Row of item 0 in the stacked bipartite group (``= num_users``)."""
        return self.num_users

    def smoothing_groups(self) -> list[list[nn.Parameter]]:
        """``[[item_emb.weight]]`` (item graph, ``N+1`` rows), or with ``bipartite=True``
        ``[[user_emb.weight, item_emb.weight]]`` (bipartite graph, ``U + N + 1`` rows)."""
        if self.config.bipartite:
            return [[self.user_emb.weight, self.item_emb.weight]]
        return [[self.item_emb.weight]]

    def grow(
        self,
        num_items: int | None = None,
        num_users: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        self._grow_tables(num_items, num_users, generator)
