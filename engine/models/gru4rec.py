"""GRU4Rec: a GRU over the item sequence (Hidasi et al., 2016), trained with BPR.

Item embedding → dropout → GRU → (optional) Linear back to the embedding size; scores are dot
products with the item embedding table (tied), as in RecBole's and the SEvo code's GRU4Rec.

Left padding would feed padding through the GRU before the real items, and a GRU's biases make
its state move even on zero inputs. So the encoder first rotates every row to be *right*-padded
(real items first), runs the GRU on the shortest width that holds every row, and maps the outputs
back: the output at a real position depends only on the items before it, never on padding.
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
    sample_negatives,
    split_inputs_targets,
    zero_loss,
)

__all__ = ["GRU4Rec", "GRU4RecConfig"]


@dataclass(frozen=True)
class GRU4RecConfig:
    """GRU4Rec hyperparameters (SEvo paper: dim 64, one layer).

    Attributes:
        dim: item embedding size.
        hidden: GRU hidden size.
        num_layers: GRU layers.
        dropout: dropout on the item embeddings fed to the GRU (RecBole's default 0.3).
        project: add a ``Linear(hidden, dim)`` after the GRU; required when ``hidden != dim``.
        maxlen: longest input sequence used by ``user_repr`` (the most recent items are kept).
        init_std: std of the normal init of the item table (also for rows added by ``grow``).
    """

    dim: int = 64
    hidden: int = 64
    num_layers: int = 1
    dropout: float = 0.3
    project: bool = True
    maxlen: int = 50
    init_std: float = 0.02

    def __post_init__(self) -> None:
        for name in ("dim", "hidden", "num_layers", "maxlen"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not self.project and self.hidden != self.dim:
            raise ValueError(f"hidden ({self.hidden}) != dim ({self.dim}) needs project=True")
        if self.init_std < 0:
            raise ValueError(f"init_std must be >= 0, got {self.init_std}")


def _right_aligned(seqs: Tensor) -> tuple[Tensor, Tensor]:
    """Rotate left-padded rows so that the real items come first.

    Raises:
        ValueError: if a row has padding after an item (not left-padded).

    Returns:
        ``(right, lengths)``: ``right (B, W)`` right-padded with ``W = max(1, max length)``, and
        ``lengths (B,)`` the number of real items per row.
    """
    B, T = seqs.shape
    nonpad = seqs != 0  # (B, T)
    if bool((nonpad[:, :-1] & ~nonpad[:, 1:]).any()):
        raise ValueError("GRU4Rec needs left-padded sequences (no 0 after an item)")
    lengths = nonpad.sum(1)  # (B,)
    width = max(1, int(lengths.max())) if B > 0 else 1
    cols = torch.arange(width, device=seqs.device)  # (W,)
    src = (cols[None, :] + (T - lengths)[:, None]) % T  # (B, W)
    right = seqs.gather(1, src)  # (B, W)
    return right * (cols[None, :] < lengths[:, None]), lengths  # (B, W), (B,)


class GRU4Rec(TiedItemTableRecommender):
    """Session/sequence-based recommender with a GRU encoder and BPR loss.

    Args:
        num_items: number of items (ids ``1..num_items``; 0 is padding).
        num_users: number of users (unused by the model; kept for a uniform interface).
        config: hyperparameters; ``None`` uses :class:`GRU4RecConfig` defaults.
        seed: seeds the parameter initialisation.

    Example:
        >>> model = GRU4Rec(num_items=100).eval()
        >>> model.encode(torch.tensor([[0, 4, 5]])).shape
        torch.Size([1, 3, 64])
    """

    sequential = True  # user_repr encodes the recent items (see Recommender.sequential)

    def __init__(
        self,
        num_items: int,
        num_users: int = 0,
        config: GRU4RecConfig | None = None,
        *,
        seed: int = 0,
    ) -> None:
        super().__init__()
        check_sizes(num_items, num_users)
        self.config = cfg = config if config is not None else GRU4RecConfig()
        self.num_items, self.num_users, self.seed = int(num_items), int(num_users), int(seed)
        self.item_emb = nn.Embedding(self.num_items + 1, cfg.dim, padding_idx=0)
        self.gru = nn.GRU(cfg.dim, cfg.hidden, num_layers=cfg.num_layers, batch_first=True)
        self.proj = nn.Linear(cfg.hidden, cfg.dim) if cfg.project else None
        self._reset_parameters(torch.Generator().manual_seed(self.seed))

    def _reset_parameters(self, generator: torch.Generator) -> None:
        cfg = self.config
        nn.init.normal_(self.item_emb.weight, 0.0, cfg.init_std, generator=generator)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()
        bound = 1.0 / math.sqrt(cfg.hidden)  # nn.GRU's own default distribution, seeded
        for p in self.gru.parameters():
            nn.init.uniform_(p, -bound, bound, generator=generator)
        if self.proj is not None:
            nn.init.xavier_normal_(self.proj.weight, generator=generator)
            nn.init.zeros_(self.proj.bias)

    # ------------------------------------------------------------------------------ encoder

    def _encode_right(self, right: Tensor, generator: torch.Generator | None) -> Tensor:
        """``right (B, W)`` right-padded ids → ``(B, W, D)`` (garbage at padded positions)."""
        x = dropout(self.item_emb(right), self.config.dropout, self.training, generator)
        out, _ = self.gru(x)  # (B, W, H)
        return self.proj(out) if self.proj is not None else out  # (B, W, D)

    def encode(self, seqs: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Hidden state at every position.

        Args:
            seqs: ``(B, T)`` left-padded item ids.
            generator: dropout source; required in training mode when dropout > 0.

        Returns:
            ``(B, T, D)``; padded positions are exactly zero.
        """
        T = seqs.shape[1]
        right, lengths = _right_aligned(seqs)  # (B, W), (B,)
        h = self._encode_right(right, generator)  # (B, W, D)
        cols = torch.arange(T, device=seqs.device)  # (T,)
        src = (cols[None, :] - (T - lengths)[:, None]).clamp(min=0, max=h.shape[1] - 1)  # (B, T)
        left = h.gather(1, src.unsqueeze(-1).expand(-1, -1, h.shape[-1]))  # (B, T, D)
        return left * (seqs != 0).unsqueeze(-1).to(left.dtype)  # (B, T, D)

    # --------------------------------------------------------------------------- train head

    def loss(self, batch: Batch, generator: torch.Generator) -> Tensor:
        """BPR, ``-log σ(s_pos - s_neg)``, one uniform negative per position with an item input."""
        seqs = batch["seqs"]  # (B, T+1)
        split_inputs_targets(seqs)  # validates the shape
        right, _ = _right_aligned(seqs)  # (B, W+1): real items first
        if right.shape[1] < 2:  # no row has two items: nothing to predict
            return zero_loss(self.item_emb.weight)
        inputs, targets = right[:, :-1], right[:, 1:]  # (B, W), (B, W)
        valid = (inputs != 0) & (targets != 0)  # (B, W)
        h = self._encode_right(inputs, generator)[valid]  # (M, D)
        if h.shape[0] == 0:
            return zero_loss(h, self.item_emb.weight)
        pos = targets[valid]  # (M,)
        neg = sample_negatives(pos.shape, self.num_items, generator, pos.device)  # (M,)
        diff = (h * (self.item_emb(pos) - self.item_emb(neg))).sum(-1)  # (M,)
        return -F.logsigmoid(diff).mean()

    # ----------------------------------------------------------------------- inference head

    def user_repr(self, batch: Batch, generator: torch.Generator | None = None) -> Tensor:
        """Hidden state after the most recent ``maxlen`` items, ``(B, D)``."""
        seqs = batch["seqs"][:, -self.config.maxlen :]  # (B, T')
        right, lengths = _right_aligned(seqs)  # (B, W), (B,)
        h = self._encode_right(right, generator)  # (B, W, D)
        last = (lengths - 1).clamp(min=0)  # (B,)
        rep = h[torch.arange(h.shape[0], device=h.device), last]  # (B, D)
        return rep * (lengths > 0).unsqueeze(-1).to(rep.dtype)  # (B, D); 0 for empty history
