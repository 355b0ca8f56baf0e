"""SASRec: causal self-attention over the item sequence (Kang & McAuley, 2018).

Follows the SASRec of the SEvo authors' code (itself close to SASRec.pytorch): item embeddings
scaled by ``sqrt(dim)`` plus learned positional embeddings, embedding dropout, padded positions
zeroed (timeline mask), blocks that normalise only the attention query, padded keys attendable as
in an input left-padded to ``maxlen``, a final LayerNorm. ``SASRecConfig(block="pre-ln",
attend_padding=False)`` gives SASRec.pytorch's ``norm_first`` block with padding masked instead.
Training loss: binary cross-entropy with one sampled negative per non-padded target position.
Scores use the item embedding table (tied).

Positions are counted from the right end (see :func:`engine.models._transformer.recency_positions`),
which for inputs padded to ``maxlen`` is a relabelling of SASRec's absolute positions; with the
padding count taken against ``maxlen``, the output does not depend on extra left padding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.models._transformer import (
    BLOCK_STYLES,
    Layout,
    TransformerEncoder,
    recency_positions,
)
from engine.models.base import (
    Batch,
    TiedItemTableRecommender,
    check_sizes,
    dropout,
    sample_negatives,
    split_inputs_targets,
    zero_loss,
)
from engine.models.draws import KeyedDraws

__all__ = ["SASRec", "SASRecConfig"]


@dataclass(frozen=True)
class SASRecConfig:
    """SASRec hyperparameters; defaults are the SEvo paper's settings.

    Attributes:
        dim: embedding / hidden size.
        num_blocks: number of self-attention blocks.
        num_heads: attention heads (``dim`` must be divisible by it).
        maxlen: longest input sequence ``T`` (positional table size).
        dropout: embedding, attention-weight and feed-forward dropout.
        init_std: std of the normal init of the item table (also used for rows added by ``grow``).
        block: ``"query-norm"`` (default: the block of the SEvo authors' SASRec, LayerNorm on
            the attention query only, the feed-forward's residual on its normalised input) or
            ``"pre-ln"`` (SASRec.pytorch's ``norm_first`` block); see
            :mod:`engine.models._transformer`.
        attend_padding: let padded keys take part in attention as if every input were
            left-padded to ``maxlen``, as in SASRec.pytorch and the SEvo code, which do not mask
            them (default True). False masks them, so the output ignores padding entirely.

    The defaults reproduce the paper's Beauty numbers (README, "Offline reproduction"); the
    pre-LN block with masked padding scores lower there (NDCG@10, either optimizer; the README
    compares the two blocks).
    """

    dim: int = 64
    num_blocks: int = 2
    num_heads: int = 1
    maxlen: int = 50
    dropout: float = 0.3
    init_std: float = 0.02
    block: str = "query-norm"
    attend_padding: bool = True

    def __post_init__(self) -> None:
        for name in ("dim", "num_blocks", "num_heads", "maxlen"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.dim % self.num_heads != 0:
            raise ValueError(f"dim ({self.dim}) must be divisible by num_heads ({self.num_heads})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.init_std < 0:
            raise ValueError(f"init_std must be >= 0, got {self.init_std}")
        if self.block not in BLOCK_STYLES:
            raise ValueError(f"block must be one of {BLOCK_STYLES}, got {self.block!r}")


class SASRec(TiedItemTableRecommender):
    """Self-attentive sequential recommender.

    Args:
        num_items: number of items (ids ``1..num_items``; 0 is padding).
        num_users: number of users (unused by the model; kept for a uniform interface).
        config: hyperparameters; ``None`` uses :class:`SASRecConfig` defaults.
        seed: seeds the parameter initialisation.

    Example:
        >>> model = SASRec(num_items=100, num_users=10).eval()
        >>> seqs = torch.tensor([[0, 0, 3, 7, 9]])
        >>> model.score_all({"users": torch.tensor([0]), "seqs": seqs}).shape
        torch.Size([1, 101])
    """

    sequential = True  # user_repr encodes the recent items (see Recommender.sequential)
    supports_keyed_draws = True

    def __init__(
        self,
        num_items: int,
        num_users: int = 0,
        config: SASRecConfig | None = None,
        *,
        seed: int = 0,
    ) -> None:
        super().__init__()
        check_sizes(num_items, num_users)
        self.config = cfg = config if config is not None else SASRecConfig()
        self.num_items, self.num_users, self.seed = int(num_items), int(num_users), int(seed)
        self.item_emb = nn.Embedding(self.num_items + 1, cfg.dim, padding_idx=0)
        self.pos_emb = nn.Embedding(cfg.maxlen + 1, cfg.dim, padding_idx=0)
        self.encoder = TransformerEncoder(
            cfg.dim, cfg.num_blocks, cfg.num_heads, cfg.dim, cfg.dropout, "relu", cfg.block
        )
        self._reset_parameters(torch.Generator().manual_seed(self.seed))

    def _reset_parameters(self, generator: torch.Generator) -> None:
        cfg = self.config
        nn.init.normal_(self.item_emb.weight, 0.0, cfg.init_std, generator=generator)
        pos_std = math.sqrt(2.0 / (cfg.maxlen + 1 + cfg.dim))  # xavier-normal, as SASRec.pytorch
        nn.init.normal_(self.pos_emb.weight, 0.0, pos_std, generator=generator)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()
            self.pos_emb.weight[0].zero_()
        self.encoder.reset_parameters(generator)

    # ------------------------------------------------------------------------------ encoder

    def encode(self, seqs: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Hidden state at every position.

        Args:
            seqs: ``(B, T)`` left-padded item ids, ``T <= maxlen``.
            generator: dropout source; required in training mode when dropout > 0.

        Returns:
            ``(B, T, D)``; padded positions are exactly zero.
        """
        h, layout = self.encode_packed(seqs, generator)  # (M, D)
        return layout.unpack_full(h)  # (B, T, D)

    def encode_packed(
        self, seqs: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Layout]:
        """Hidden states of the real (non-padding) tokens only: ``(M, D)`` and their layout.

        Row ``m`` belongs to flat position ``layout.index[m]`` of ``layout.seqs`` (row-major).
        """
        length = seqs.shape[1]
        if length > self.config.maxlen:
            raise ValueError(f"sequence length {length} exceeds maxlen {self.config.maxlen}")
        pad_to = self.config.maxlen if self.config.attend_padding else None
        layout = Layout.from_seqs(
            seqs, causal=True, dtype=self.item_emb.weight.dtype, pad_to=pad_to
        )
        items = layout.seqs.reshape(-1)[layout.index]  # (M,)
        positions = recency_positions(layout.seqs).reshape(-1)[layout.index]  # (M,)
        x = self.item_emb(items) * math.sqrt(self.config.dim) + self.pos_emb(positions)  # (M, D)
        draws = generator
        if isinstance(generator, KeyedDraws):
            draws = generator.tokens(layout.seqs, layout.index)  # (M,) keys
        x = dropout(x, self.config.dropout, self.training, draws)  # (M, D)
        return self.encoder(x, layout, generator), layout  # (M, D)

    # --------------------------------------------------------------------------- train head

    def loss(self, batch: Batch, generator: torch.Generator) -> Tensor:
        """BCE with one uniform negative per position whose input and target are both items."""
        logits = self._logits(batch, generator)
        if isinstance(logits, Tensor):
            return logits  # no position to train: a zero connected to the graph
        pos_logits, neg_logits = logits
        return F.binary_cross_entropy_with_logits(
            pos_logits, torch.ones_like(pos_logits)
        ) + F.binary_cross_entropy_with_logits(neg_logits, torch.zeros_like(neg_logits))

    def loss_terms(
        self, batch: Batch, generator: torch.Generator | KeyedDraws
    ) -> tuple[Tensor, int]:
        """``(sum over positions of BCE(positive) + BCE(negative), positions)``."""
        logits = self._logits(batch, generator)
        if isinstance(logits, Tensor):
            return logits, 0
        pos_logits, neg_logits = logits
        total = F.binary_cross_entropy_with_logits(
            pos_logits, torch.ones_like(pos_logits), reduction="sum"
        ) + F.binary_cross_entropy_with_logits(
            neg_logits, torch.zeros_like(neg_logits), reduction="sum"
        )
        return total, int(pos_logits.shape[0])

    def _logits(
        self, batch: Batch, generator: torch.Generator | KeyedDraws
    ) -> tuple[Tensor, Tensor] | Tensor:
        """``(positive logits (M',), negative logits (M',))`` of the positions whose input and
        target are both items, or a connected zero when there is none."""
        inputs, targets = split_inputs_targets(batch["seqs"])  # (B, T) each
        h, layout = self.encode_packed(inputs, generator)  # (M, D)
        trim = inputs.shape[1] - layout.seqs.shape[1]
        pos = targets[:, trim:].reshape(-1)[layout.index]  # (M,) target of each real input
        valid = pos != 0  # (M,)
        h, pos = h[valid], pos[valid]  # (M', D), (M',)
        if h.shape[0] == 0:
            return zero_loss(h, self.item_emb.weight)
        draws = generator
        if isinstance(generator, KeyedDraws):
            draws = generator.tokens(layout.seqs, layout.index)[valid]  # (M',) keys
        neg = sample_negatives(pos.shape, self.num_items, draws, pos.device)  # (M',)
        pos_logits = (h * self.item_emb(pos)).sum(-1)  # (M',)
        neg_logits = (h * self.item_emb(neg)).sum(-1)  # (M',)
        return pos_logits, neg_logits

    # ----------------------------------------------------------------------- inference head

    def user_repr(self, batch: Batch, generator: torch.Generator | None = None) -> Tensor:
        """Hidden state at the last position of the most recent ``maxlen`` items, ``(B, D)``."""
        seqs = batch["seqs"][:, -self.config.maxlen :]  # (B, T')
        return self.encode(seqs, generator)[:, -1, :]  # (B, D)
