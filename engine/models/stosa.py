"""STOSA: sequential recommendation via stochastic self-attention (Fan et al., WWW 2022).

Every item is a diagonal Gaussian: a mean embedding ``μ_i = item_mean[i]`` and a covariance
(variance) embedding ``Σ_i = ELU(item_cov[i]) + 1 > 0``; positions have their own mean and
covariance tables. Distances are squared 2-Wasserstein distances between diagonal Gaussians::

    W(a, b) = ||μ_a − μ_b||² + ||Σ_a^{1/2} − Σ_b^{1/2}||²

(:func:`wasserstein_distance`; ``√`` after clamping at 1e-24, as the authors' code does).

**Encoder** (the authors' ``DistSAModel`` / ``DistSAEncoder``; the SEvo authors' STOSA,
``MTandHJ/SEvo`` ``STOSA/main.py``, has the same embedding layer, loss and scoring around a
``DistSAEncoder`` of their own whose source was not available to compare). Embedding:
``mean = ELU(Drop(LN(item_mean + pos_mean)))``, ``cov = ELU(Drop(LN(item_cov + pos_cov))) + 1``,
one LayerNorm shared by both streams. Each block (``num_blocks``):

* stochastic self-attention, per head of width ``d_h``: mean query/key/value are linear maps of
  the mean stream, covariance query/key/value are ``ELU(linear) + 1`` of the covariance stream;
  attention logits are ``−W(q_t, k_s) / √d_h`` (causal, padded keys masked), ``P = Drop(softmax)``;
  the mean context is ``P·V_mean`` and the covariance context ``P²·V_cov`` (weights squared: the
  covariance of a weighted sum of independent Gaussians); each context goes through its own
  output linear map and dropout, then ``LN(· + input)`` with one LayerNorm shared by both;
* a feed-forward per stream (``D → 4D``, ELU, ``→ D``, dropout, ``LN(· + input)``); the
  covariance stream's output is ``ELU(·) + 1``.

**Training loss** (the authors' ``bpr_optimization``), at every position whose input and target
are both items, with one uniform negative ``j`` per position and ``u`` the output Gaussian::

    loss = mean[ −log σ(W(u, j) − W(u, pos)) ] + pvn_weight · mean[ max(0, W(u, pos) − W(pos, j)) ]

The second term (the "positive vs negative" regulariser) asks the sequence to be closer to its
positive item than the positive is to the negative.

**Scoring.** ``score(u, i) = −W(u, i)`` with ``u`` the output Gaussian at the last position,
written as a dot product plus an item bias so that the :class:`Recommender` contract (and
``score_all``) holds exactly::

    user_repr        = [2μ_u, 2Σ_u^{1/2}, −(||μ_u||² + ||Σ_u^{1/2}||²)]      (2D + 1 columns)
    item_output_weight_i = [μ_i, Σ_i^{1/2}, 1]
    item_output_bias_i   = −(||μ_i||² + ||Σ_i^{1/2}||²)
    user_repr · item_output_weight_i + item_output_bias_i = −W(u, i)

(the authors' ``wasserstein_distance_matmul`` expands the distance the same way).

**SEvo.** :meth:`STOSA.smoothing_groups` is ``[[item_mean.weight], [item_cov.weight]]``: two
``(num_items + 1, D)`` tables, each smoothed on the item graph, as the SEvo authors' STOSA does
(one ``Smoother`` per table, same graph). The covariance table is smoothed before the ELU, i.e.
in its raw parameterisation, as there.

**Deviations from the authors' code** (``zfan20/STOSA``: ``modules.py``, ``seqmodels.py``,
``trainers.py``):

* Their ``DistSAEncoder`` assigns each block's mean output to a misspelt variable
  (``maen_hidden_states``), so the mean stream that reaches the loss and the scores is the
  embedding layer's output and every block reads that same mean input; only the covariance
  stream goes through the blocks. The paper's model passes both streams through every block,
  which is the default here; ``STOSAConfig(encode_mean=False)`` reproduces the released code.
* Positions are counted from the right end (:func:`recency_positions`), a relabelling of their
  absolute positions for inputs left-padded to ``maxlen``. Padded tokens are not computed at all
  (the packed layout of :mod:`engine.models._transformer`); the authors embed them and mask them
  as keys, which gives the same real-token outputs.
* Negatives are uniform over all items (collisions with the positive kept, see
  :func:`sample_negatives`), as for SASRec here; the authors' data loaders draw them among the
  items the user has not interacted with.
* Padding rows of the item tables are zero and never read (the authors' initialisation writes
  N(0.01, 0.02²) into them; a padded token cannot influence a real one either way).
* ``−log σ(x)`` is computed as ``softplus(−x)`` (their ``−log(σ(x + 1e-24))``, stably).

Defaults follow the SEvo authors' Beauty configuration of STOSA (``STOSA/configs/
AmazonBeauty_550_Chron.yaml``: 1 block, 4 heads, hidden dropout 0.2, attention dropout 0.5,
``pvn_weight`` 0.005, ``maxlen`` 100; AdamW lr 1e-3, weight decay 0.1, betas (0.9, 0.999),
batch 256) and the authors' initialisation (every Linear and Embedding weight N(0.01, 0.02²),
Linear biases 0). The offline trainer sets ``maxlen`` from :class:`~engine.config.OfflineConfig`
unless ``model_overrides`` does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.models._transformer import Layout, recency_positions
from engine.models.base import (
    Batch,
    Recommender,
    append_rows,
    check_sizes,
    dropout,
    sample_negatives,
    split_inputs_targets,
    zero_loss,
)

__all__ = [
    "STOSA",
    "STOSAConfig",
    "positive_cov",
    "wasserstein_distance",
    "wasserstein_distance_matmul",
]

_SQRT_FLOOR = 1e-24  # the authors clamp variances here before the square root
_LN_EPS = 1e-12  # the authors' LayerNorm epsilon


def positive_cov(raw: Tensor) -> Tensor:
    """``ELU(raw) + 1``: the positive (diagonal) covariance a raw embedding stands for."""
    return F.elu(raw) + 1.0


def _std(cov: Tensor) -> Tensor:
    return cov.clamp(min=_SQRT_FLOOR).sqrt()


def wasserstein_distance(mean1: Tensor, cov1: Tensor, mean2: Tensor, cov2: Tensor) -> Tensor:
    """Squared 2-Wasserstein distance between diagonal Gaussians, over the last dimension.

    ``W = Σ_d (μ1 − μ2)² + Σ_d (√Σ1 − √Σ2)²`` with ``Σ`` the variances (``≥ 0``; clamped at
    1e-24 before the square root). Broadcasts like ``mean1 - mean2``; returns that shape
    without the last dimension. Always ``>= 0``, and 0 for identical Gaussians.
    """
    mean_part = (mean1 - mean2).square().sum(-1)
    cov_part = (_std(cov1) - _std(cov2)).square().sum(-1)
    return mean_part + cov_part


def wasserstein_distance_matmul(mean1: Tensor, cov1: Tensor, mean2: Tensor, cov2: Tensor) -> Tensor:
    """Pairwise :func:`wasserstein_distance`: ``(..., n, D) × (..., m, D) → (..., n, m)``.

    Expanded as ``||a||² + ||b||² − 2 a·b`` per part (the authors' ``wasserstein_distance_matmul``):
    two matrix products instead of an ``(n, m, D)`` difference, at the price of float rounding
    (a distance near 0 may come out slightly negative).
    """
    s1, s2 = _std(cov1), _std(cov2)
    sq1 = mean1.square().sum(-1, keepdim=True) + s1.square().sum(-1, keepdim=True)  # (..., n, 1)
    sq2 = mean2.square().sum(-1, keepdim=True) + s2.square().sum(-1, keepdim=True)  # (..., m, 1)
    cross = mean1 @ mean2.transpose(-1, -2) + s1 @ s2.transpose(-1, -2)  # (..., n, m)
    return sq1 + sq2.transpose(-1, -2) - 2.0 * cross


@dataclass(frozen=True)
class STOSAConfig:
    """STOSA hyperparameters; defaults are the SEvo authors' Beauty settings (module docstring).

    Attributes:
        dim: embedding / hidden size of each stream (mean and covariance).
        num_blocks: stochastic self-attention blocks.
        num_heads: attention heads (``dim`` must be divisible by it).
        maxlen: longest input sequence (positional table size).
        dropout: embedding, attention-output and feed-forward dropout ("hidden dropout").
        attn_dropout: dropout of the attention weights.
        pvn_weight: weight of the positive-vs-negative regulariser in the loss.
        init_mean: mean of the normal initialisation of every Linear and Embedding weight (and
            of the rows :meth:`STOSA.grow` appends).
        init_std: its standard deviation.
        encode_mean: pass the mean stream through the blocks (the paper). False reproduces the
            released code, where the blocks' mean outputs are discarded (module docstring).
    """

    dim: int = 64
    num_blocks: int = 1
    num_heads: int = 4
    maxlen: int = 100
    dropout: float = 0.2
    attn_dropout: float = 0.5
    pvn_weight: float = 0.005
    init_mean: float = 0.01
    init_std: float = 0.02
    encode_mean: bool = True

    def __post_init__(self) -> None:
        for name in ("dim", "num_blocks", "num_heads", "maxlen"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.dim % self.num_heads != 0:
            raise ValueError(f"dim ({self.dim}) must be divisible by num_heads ({self.num_heads})")
        for name in ("dropout", "attn_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if not (self.pvn_weight >= 0 and math.isfinite(self.pvn_weight)):
            raise ValueError(f"pvn_weight must be >= 0, got {self.pvn_weight}")
        if not math.isfinite(self.init_mean):
            raise ValueError(f"init_mean must be finite, got {self.init_mean}")
        if self.init_std < 0:
            raise ValueError(f"init_std must be >= 0, got {self.init_std}")


class _StochasticAttention(nn.Module):
    """Wasserstein self-attention over a mean and a covariance stream, on packed tokens."""

    def __init__(self, dim: int, num_heads: int, attn_dropout: float, dropout_p: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.attn_dropout = attn_dropout
        self.dropout_p = dropout_p
        self.mean_q, self.mean_k, self.mean_v = (nn.Linear(dim, dim) for _ in range(3))
        self.cov_q, self.cov_k, self.cov_v = (nn.Linear(dim, dim) for _ in range(3))
        self.mean_out = nn.Linear(dim, dim)
        self.cov_out = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim, eps=_LN_EPS)  # shared by both streams, as in the authors'

    def forward(
        self, mean: Tensor, cov: Tensor, layout: Layout, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor]:
        """Packed ``(M, D)`` mean and covariance streams → the same, after attention."""
        D = mean.shape[-1]
        H = self.num_heads
        B, T = layout.seqs.shape

        def heads(y: Tensor) -> Tensor:
            return layout.unpack(y).view(B, T, H, D // H).transpose(1, 2)  # (B, H, T, Dh)

        mq, mk, mv = heads(self.mean_q(mean)), heads(self.mean_k(mean)), heads(self.mean_v(mean))
        cq = heads(positive_cov(self.cov_q(cov)))  # (B, H, T, Dh); padded slots hold 0
        ck = heads(positive_cov(self.cov_k(cov)))
        cv = heads(positive_cov(self.cov_v(cov)))
        dist = wasserstein_distance_matmul(mq, cq, mk, ck)  # (B, H, T, T)
        scores = dist * (-1.0 / math.sqrt(D // H)) + layout.bias  # padded keys, future: -inf
        weights = dropout(scores.softmax(-1), self.attn_dropout, self.training, generator)
        mean_ctx = weights @ mv  # (B, H, T, Dh)
        cov_ctx = weights.square() @ cv  # (B, H, T, Dh)

        def merge(y: Tensor) -> Tensor:
            return layout.pack(y.transpose(1, 2).reshape(B, T, D))  # (M, D)

        mean_h = dropout(self.mean_out(merge(mean_ctx)), self.dropout_p, self.training, generator)
        cov_h = dropout(self.cov_out(merge(cov_ctx)), self.dropout_p, self.training, generator)
        return self.norm(mean_h + mean), self.norm(cov_h + cov)  # (M, D) each


class _FeedForward(nn.Module):
    """``LN(x + Drop(W2 · ELU(W1 · x)))`` (the authors' ``DistIntermediate``)."""

    def __init__(self, dim: int, dropout_p: float) -> None:
        super().__init__()
        self.dropout_p = dropout_p
        self.inner = nn.Linear(dim, 4 * dim)
        self.outer = nn.Linear(4 * dim, dim)
        self.norm = nn.LayerNorm(dim, eps=_LN_EPS)

    def forward(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        h = self.outer(F.elu(self.inner(x)))
        return self.norm(x + dropout(h, self.dropout_p, self.training, generator))


class _Block(nn.Module):
    """Stochastic self-attention, then a feed-forward per stream (covariance kept positive)."""

    def __init__(self, cfg: STOSAConfig) -> None:
        super().__init__()
        self.attn = _StochasticAttention(cfg.dim, cfg.num_heads, cfg.attn_dropout, cfg.dropout)
        self.mean_ffn = _FeedForward(cfg.dim, cfg.dropout)
        self.cov_ffn = _FeedForward(cfg.dim, cfg.dropout)

    def forward(
        self, mean: Tensor, cov: Tensor, layout: Layout, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor]:
        mean, cov = self.attn(mean, cov, layout, generator)
        return self.mean_ffn(mean, generator), positive_cov(self.cov_ffn(cov, generator))


class STOSA(Recommender):
    """Stochastic self-attention sequential recommender (items and users as Gaussians).

    Args:
        num_items: number of items (ids ``1..num_items``; 0 is padding).
        num_users: number of users (unused by the model; kept for a uniform interface).
        config: hyperparameters; ``None`` uses :class:`STOSAConfig` defaults.
        seed: seeds the parameter initialisation.

    Example:
        >>> model = STOSA(num_items=100).eval()
        >>> model.score_all({"users": torch.tensor([0]), "seqs": torch.tensor([[0, 3, 7]])}).shape
        torch.Size([1, 101])
    """

    sequential = True  # user_repr encodes the recent items (see Recommender.sequential)

    def __init__(
        self,
        num_items: int,
        num_users: int = 0,
        config: STOSAConfig | None = None,
        *,
        seed: int = 0,
    ) -> None:
        super().__init__()
        check_sizes(num_items, num_users)
        self.config = cfg = config if config is not None else STOSAConfig()
        self.num_items, self.num_users, self.seed = int(num_items), int(num_users), int(seed)
        self.item_mean = nn.Embedding(self.num_items + 1, cfg.dim, padding_idx=0)
        self.item_cov = nn.Embedding(self.num_items + 1, cfg.dim, padding_idx=0)
        self.pos_mean = nn.Embedding(cfg.maxlen + 1, cfg.dim, padding_idx=0)
        self.pos_cov = nn.Embedding(cfg.maxlen + 1, cfg.dim, padding_idx=0)
        self.emb_norm = nn.LayerNorm(cfg.dim, eps=_LN_EPS)  # shared by both streams
        self.blocks = nn.ModuleList(_Block(cfg) for _ in range(cfg.num_blocks))
        self._reset_parameters(torch.Generator().manual_seed(self.seed))

    def _reset_parameters(self, generator: torch.Generator) -> None:
        """The authors' scheme: Linear/Embedding weights N(init_mean, init_std²), Linear biases
        0, LayerNorms 1/0; padding rows 0 here (see the module docstring)."""
        cfg = self.config
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, cfg.init_mean, cfg.init_std, generator=generator)
                if isinstance(m, nn.Linear) and m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        with torch.no_grad():
            for table in (self.item_mean, self.item_cov, self.pos_mean, self.pos_cov):
                table.weight[0].zero_()

    # ------------------------------------------------------------------------------ encoder

    def encode(
        self, seqs: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Output Gaussian at every position.

        Args:
            seqs: ``(B, T)`` left-padded item ids, ``T <= maxlen``.
            generator: dropout source; required in training mode when dropout > 0.

        Returns:
            ``(mean, cov)``, each ``(B, T, D)``; ``cov > 0`` at items, both exactly zero at
            padded positions.
        """
        mean, cov, layout = self.encode_packed(seqs, generator)
        return layout.unpack_full(mean), layout.unpack_full(cov)

    def encode_packed(
        self, seqs: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, Layout]:
        """Output mean and covariance ``(M, D)`` of the real (non-padding) tokens, and their
        layout (row ``m`` is flat position ``layout.index[m]`` of ``layout.seqs``)."""
        length = seqs.shape[1]
        if length > self.config.maxlen:
            raise ValueError(f"sequence length {length} exceeds maxlen {self.config.maxlen}")
        cfg = self.config
        layout = Layout.from_seqs(seqs, causal=True, dtype=self.item_mean.weight.dtype)
        items = layout.seqs.reshape(-1)[layout.index]  # (M,)
        positions = recency_positions(layout.seqs).reshape(-1)[layout.index]  # (M,)
        mean = self.emb_norm(self.item_mean(items) + self.pos_mean(positions))  # (M, D)
        mean = F.elu(dropout(mean, cfg.dropout, self.training, generator))
        cov = self.emb_norm(self.item_cov(items) + self.pos_cov(positions))  # (M, D)
        cov = positive_cov(dropout(cov, cfg.dropout, self.training, generator))
        for block in self.blocks:
            block_mean, cov = block(mean, cov, layout, generator)
            if cfg.encode_mean:
                mean = block_mean
        return mean, cov, layout

    def item_gaussians(self, items: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(mean, cov)`` of the given item ids, or of every row (padding included)."""
        if items is None:
            return self.item_mean.weight, positive_cov(self.item_cov.weight)
        return self.item_mean(items), positive_cov(self.item_cov(items))

    # --------------------------------------------------------------------------- train head

    def loss(self, batch: Batch, generator: torch.Generator) -> Tensor:
        """Wasserstein BPR plus ``pvn_weight`` × the positive-vs-negative hinge, at every
        position whose input and target are items, one uniform negative each."""
        inputs, targets = split_inputs_targets(batch["seqs"])  # (B, T) each
        mean, cov, layout = self.encode_packed(inputs, generator)  # (M, D) each
        trim = inputs.shape[1] - layout.seqs.shape[1]
        pos = targets[:, trim:].reshape(-1)[layout.index]  # (M,)
        valid = pos != 0
        mean, cov, pos = mean[valid], cov[valid], pos[valid]  # (M', D), (M', D), (M',)
        if pos.shape[0] == 0:
            return zero_loss(mean, cov, self.item_mean.weight, self.item_cov.weight)
        neg = sample_negatives(pos.shape, self.num_items, generator, pos.device)  # (M',)
        pos_mean, pos_cov = self.item_gaussians(pos)
        neg_mean, neg_cov = self.item_gaussians(neg)
        pos_dist = wasserstein_distance(mean, cov, pos_mean, pos_cov)  # (M',)
        neg_dist = wasserstein_distance(mean, cov, neg_mean, neg_cov)  # (M',)
        pvn_dist = wasserstein_distance(pos_mean, pos_cov, neg_mean, neg_cov)  # (M',)
        rank_loss = F.softplus(pos_dist - neg_dist).mean()  # −log σ(neg_dist − pos_dist)
        pvn_loss = (pos_dist - pvn_dist).clamp(min=0.0).mean()
        return rank_loss + self.config.pvn_weight * pvn_loss

    # ----------------------------------------------------------------------- inference head

    def user_gaussian(
        self, batch: Batch, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """``(mean, cov)``, each ``(B, D)``: the output Gaussian at the last position of the
        most recent ``maxlen`` items."""
        seqs = batch["seqs"][:, -self.config.maxlen :]  # (B, T')
        mean, cov = self.encode(seqs, generator)
        return mean[:, -1, :], cov[:, -1, :]

    def user_repr(self, batch: Batch, generator: torch.Generator | None = None) -> Tensor:
        """``(B, 2D + 1)``: ``[2μ_u, 2√Σ_u, −(||μ_u||² + ||√Σ_u||²)]`` (module docstring), so
        that ``user_repr @ item_output_weight().T + item_output_bias() = −W(u, ·)``."""
        mean, cov = self.user_gaussian(batch, generator)
        std = _std(cov)
        norm = mean.square().sum(-1, keepdim=True) + std.square().sum(-1, keepdim=True)
        return torch.cat([2.0 * mean, 2.0 * std, -norm], dim=-1)  # (B, 2D+1)

    def item_output_weight(self) -> Tensor:
        """``(num_items + 1, 2D + 1)``: ``[μ_i, √Σ_i, 1]`` per item (row 0 = padding)."""
        mean, cov = self.item_gaussians()
        return torch.cat([mean, _std(cov), mean.new_ones(mean.shape[0], 1)], dim=-1)

    def item_output_bias(self) -> Tensor:
        """``(num_items + 1,)``: ``−(||μ_i||² + ||√Σ_i||²)``."""
        mean, cov = self.item_gaussians()
        return -(mean.square().sum(-1) + _std(cov).square().sum(-1))

    def score_all(self, batch: Batch, generator: torch.Generator | None = None) -> Tensor:
        """``(B, num_items + 1)`` scores ``−W(u, i)``: the negative squared 2-Wasserstein
        distance between the last position's output Gaussian and every item's Gaussian (column
        0 is padding; the caller masks it). Equals ``user_repr @ item_output_weight().T +
        item_output_bias()``, computed as :func:`wasserstein_distance_matmul`."""
        mean, cov = self.user_gaussian(batch, generator)  # (B, D) each
        item_mean, item_cov = self.item_gaussians()  # (N+1, D) each
        return -wasserstein_distance_matmul(mean, cov, item_mean, item_cov)  # (B, N+1)

    # -------------------------------------------------------------------------- SEvo, growth

    def smoothing_groups(self) -> list[list[nn.Parameter]]:
        """``[[item_mean.weight], [item_cov.weight]]``: two ``(num_items + 1, D)`` tables, each
        smoothed on the item graph (the covariance table in its raw, pre-ELU form)."""
        return [[self.item_mean.weight], [self.item_cov.weight]]

    def grow(
        self,
        num_items: int | None = None,
        num_users: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        """Append item rows to both item tables, drawn from N(init_mean, init_std²) like the
        originals (the mean table first, then the covariance table)."""
        new_items, new_users = self._check_grow(num_items, num_users)
        g = self._grow_generator(generator, new_items, new_users)
        extra = new_items - self.num_items
        cfg = self.config
        for table in (self.item_mean, self.item_cov):
            append_rows(table.weight, extra, cfg.init_std, g)
            if extra and cfg.init_mean != 0.0:
                with torch.no_grad():
                    table.weight[-extra:].add_(cfg.init_mean)
            table.num_embeddings = new_items + 1
        self.num_items, self.num_users = new_items, new_users
