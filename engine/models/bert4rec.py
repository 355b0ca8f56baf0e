"""BERT4Rec: a bidirectional transformer trained with the Cloze task (Sun et al., 2019).

Each non-padding position of the training window is replaced by the mask token with probability
``mask_prob``; the loss is the cross-entropy over all items at the masked positions. Logits use a
separate (untied) output matrix ``out_weight (num_items + 1, D)`` and bias ``out_bias``. To score,
the mask token is appended after the user's sequence (dropping the oldest item if the window is
full) and the hidden state at that position is used.

**The mask token.** Its input id is ``mask_token = num_items + 1``, but its embedding is a separate
parameter ``mask_emb (D,)``, not an extra row of ``item_emb``. So ``item_emb`` has the same
``num_items + 1`` rows as every other model's item table and the same item graph serves both
smoothing groups, ``grow`` only ever appends rows (an extra last row would have to move), and SEvo
never damps the mask token's updates as it would for an isolated graph node. ``mask_emb`` is
trained by the optimizer's plain (unsmoothed) parameter group. ``mask_token`` follows ``grow``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.models._transformer import Layout, TransformerEncoder, recency_positions
from engine.models.base import (
    Batch,
    Recommender,
    append_rows,
    check_sizes,
    dropout,
    zero_loss,
)

__all__ = ["BERT4Rec", "BERT4RecConfig"]


@dataclass(frozen=True)
class BERT4RecConfig:
    """BERT4Rec hyperparameters; defaults are the SEvo paper's settings.

    Attributes:
        dim: embedding / hidden size.
        num_blocks: transformer blocks.
        num_heads: attention heads (``dim`` must be divisible by it).
        maxlen: longest input sequence (positional table size).
        dropout: embedding, attention-weight and feed-forward dropout.
        mask_prob: Cloze masking probability of each non-padding training position.
        ffn_dim: feed-forward inner size; ``None`` means ``4 * dim`` (BERT).
        init_std: std of the normal init of the embeddings and the output matrix (BERT's 0.02).
    """

    dim: int = 64
    num_blocks: int = 2
    num_heads: int = 2
    maxlen: int = 50
    dropout: float = 0.2
    mask_prob: float = 0.2
    ffn_dim: int | None = None
    init_std: float = 0.02

    def __post_init__(self) -> None:
        for name in ("dim", "num_blocks", "num_heads", "maxlen"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.dim % self.num_heads != 0:
            raise ValueError(f"dim ({self.dim}) must be divisible by num_heads ({self.num_heads})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 < self.mask_prob <= 1.0:
            raise ValueError(f"mask_prob must be in (0, 1], got {self.mask_prob}")
        if self.ffn_dim is not None and self.ffn_dim < 1:
            raise ValueError(f"ffn_dim must be >= 1, got {self.ffn_dim}")
        if self.init_std < 0:
            raise ValueError(f"init_std must be >= 0, got {self.init_std}")


class BERT4Rec(Recommender):
    """Bidirectional self-attentive recommender with a Cloze objective.

    Args:
        num_items: number of items (ids ``1..num_items``; 0 is padding, ``num_items + 1`` the
            mask token).
        num_users: number of users (unused by the model; kept for a uniform interface).
        config: hyperparameters; ``None`` uses :class:`BERT4RecConfig` defaults.
        seed: seeds the parameter initialisation.

    Example:
        >>> model = BERT4Rec(num_items=100).eval()
        >>> model.score_all({"users": torch.tensor([0]), "seqs": torch.tensor([[0, 5, 6]])}).shape
        torch.Size([1, 101])
    """

    sequential = True  # user_repr encodes the recent items (see Recommender.sequential)

    def __init__(
        self,
        num_items: int,
        num_users: int = 0,
        config: BERT4RecConfig | None = None,
        *,
        seed: int = 0,
    ) -> None:
        super().__init__()
        check_sizes(num_items, num_users)
        self.config = cfg = config if config is not None else BERT4RecConfig()
        self.num_items, self.num_users, self.seed = int(num_items), int(num_users), int(seed)
        self.item_emb = nn.Embedding(self.num_items + 1, cfg.dim, padding_idx=0)
        self.mask_emb = nn.Parameter(torch.zeros(cfg.dim))
        self.pos_emb = nn.Embedding(cfg.maxlen + 1, cfg.dim, padding_idx=0)
        self.emb_norm = nn.LayerNorm(cfg.dim, eps=1e-8)
        self.encoder = TransformerEncoder(
            cfg.dim, cfg.num_blocks, cfg.num_heads, cfg.ffn_dim or 4 * cfg.dim, cfg.dropout, "gelu"
        )
        self.out_weight = nn.Parameter(torch.zeros(self.num_items + 1, cfg.dim))
        self.out_bias = nn.Parameter(torch.zeros(self.num_items + 1))
        self._reset_parameters(torch.Generator().manual_seed(self.seed))

    def _reset_parameters(self, generator: torch.Generator) -> None:
        std = self.config.init_std
        for p in (self.item_emb.weight, self.mask_emb, self.pos_emb.weight, self.out_weight):
            nn.init.normal_(p, 0.0, std, generator=generator)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()
            self.pos_emb.weight[0].zero_()
            self.out_weight[0].zero_()
            self.out_bias.zero_()
        nn.init.ones_(self.emb_norm.weight)
        nn.init.zeros_(self.emb_norm.bias)
        self.encoder.reset_parameters(generator)

    @property
    def mask_token(self) -> int:
        """Input id of the mask token, ``num_items + 1`` (changes when items are added)."""
        return self.num_items + 1

    # ------------------------------------------------------------------------------ encoder

    def encode(self, seqs: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Hidden state at every position.

        Args:
            seqs: ``(B, T)`` left-padded ids in ``0..num_items + 1`` (``mask_token`` allowed),
                ``T <= maxlen``.
            generator: dropout source; required in training mode when dropout > 0.

        Returns:
            ``(B, T, D)``; padded positions are exactly zero.
        """
        h, layout = self.encode_packed(seqs, generator)  # (M, D)
        return layout.unpack_full(h)  # (B, T, D)

    def encode_packed(
        self, seqs: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Layout]:
        """Hidden states of the non-padding tokens only: ``(M, D)`` and their layout."""
        length = seqs.shape[1]
        if length > self.config.maxlen:
            raise ValueError(f"sequence length {length} exceeds maxlen {self.config.maxlen}")
        layout = Layout.from_seqs(seqs, causal=False, dtype=self.item_emb.weight.dtype)
        ids = layout.seqs.reshape(-1)[layout.index]  # (M,)
        is_mask = (ids == self.mask_token).unsqueeze(-1)  # (M, 1)
        items = self.item_emb(ids.masked_fill(is_mask.squeeze(-1), 0))  # (M, D)
        x = torch.where(is_mask, self.mask_emb, items)  # (M, D)
        x = x + self.pos_emb(recency_positions(layout.seqs).reshape(-1)[layout.index])  # (M, D)
        x = dropout(self.emb_norm(x), self.config.dropout, self.training, generator)  # (M, D)
        return self.encoder(x, layout, generator), layout  # (M, D)

    # --------------------------------------------------------------------------- train head

    def loss(self, batch: Batch, generator: torch.Generator) -> Tensor:
        """Cloze cross-entropy over all items at the masked positions.

        The window is the most recent ``maxlen`` items of ``batch["seqs"]`` (inputs and targets
        are the same sequence); padding is never masked. Rows where no position is drawn simply
        contribute nothing.
        """
        seqs = batch["seqs"][:, -self.config.maxlen :]  # (B, T)
        draws = torch.rand(seqs.shape, generator=generator, device=seqs.device)  # (B, T)
        masked = (draws < self.config.mask_prob) & (seqs != 0)  # (B, T)
        h, layout = self.encode_packed(seqs.masked_fill(masked, self.mask_token), generator)
        trim = seqs.shape[1] - layout.seqs.shape[1]
        at = masked[:, trim:].reshape(-1)[layout.index]  # (M,) which packed tokens are masked
        h = h[at]  # (K, D)
        if h.shape[0] == 0:
            return zero_loss(h, self.out_weight, self.out_bias)
        targets = seqs[:, trim:].reshape(-1)[layout.index][at]  # (K,) in 1..N
        logits = h @ self.out_weight[1:].T + self.out_bias[1:]  # (K, N): padding excluded
        return F.cross_entropy(logits, targets - 1)

    # ----------------------------------------------------------------------- inference head

    def user_repr(self, batch: Batch, generator: torch.Generator | None = None) -> Tensor:
        """Hidden state at a mask token appended to the most recent ``maxlen - 1`` items."""
        seqs = batch["seqs"]  # (B, T)
        mask_col = seqs.new_full((seqs.shape[0], 1), self.mask_token)  # (B, 1)
        inputs = torch.cat([seqs, mask_col], dim=1)[:, -self.config.maxlen :]  # (B, T')
        return self.encode(inputs, generator)[:, -1, :]  # (B, D)

    def item_output_weight(self) -> Tensor:
        return self.out_weight  # (N+1, D), untied

    def item_output_bias(self) -> Tensor:
        return self.out_bias  # (N+1,)

    def smoothing_groups(self) -> list[list[nn.Parameter]]:
        """``[[item_emb.weight], [out_weight]]``: two ``(num_items + 1, D)`` tables, each on the
        item graph (the mask token's ``mask_emb`` is in neither)."""
        return [[self.item_emb.weight], [self.out_weight]]

    def grow(
        self,
        num_items: int | None = None,
        num_users: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        """Append item rows to ``item_emb``, ``out_weight`` and (zeros) ``out_bias``."""
        new_items, new_users = self._check_grow(num_items, num_users)
        g = self._grow_generator(generator, new_items, new_users)
        extra = new_items - self.num_items
        append_rows(self.item_emb.weight, extra, self.config.init_std, g)
        append_rows(self.out_weight, extra, self.config.init_std, g)
        append_rows(self.out_bias, extra, 0.0, g)
        self.item_emb.num_embeddings = new_items + 1
        self.num_items, self.num_users = new_items, new_users
