"""The interface every recommender backbone implements, plus small shared helpers.

Conventions (shared with the rest of the engine):

* Items are indexed ``1..num_items``; index 0 is padding. Row 0 of every item table is the padding
  row: it is never a target, never sampled as a negative, and its score column is masked by the
  caller. Users are ``0..num_users-1``.
* Sequences are ``LongTensor (B, T)``, **left**-padded with 0 (most recent item at the right end).
* A training batch is ``{"users": (B,), "seqs": (B, T+1)}``: the user's last ``T+1`` training items.
  Sequential models read ``inputs = seqs[:, :-1]`` and ``targets = seqs[:, 1:]``; positions whose
  target is 0 are ignored.
* An inference batch is ``{"users": (B,), "seqs": (B, T)}``: the input sequence, no target.
* Every stochastic part (dropout, negative sampling, Cloze masking, initialisation) draws from an
  explicit :class:`torch.Generator` or seed; nothing reads the global RNG. A training-mode forward
  pass therefore needs a generator; it must live on the same device as the model.

The encoder (``encode``) is kept apart from the training head (``loss``) and the inference head
(``user_repr`` / ``score_all``), as in SASRec.pytorch's ``log2feats`` / ``forward`` / ``predict``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch
from torch import Tensor, nn

from engine.models.draws import KeyedDraws, Keys

__all__ = [
    "Batch",
    "Recommender",
    "append_rows",
    "check_sizes",
    "dropout",
    "sample_negatives",
    "split_inputs_targets",
    "user_positives",
    "zero_loss",
]

Batch = dict[str, Tensor]


class Recommender(nn.Module, ABC):
    """Base class of the recommender backbones.

    Subclasses implement :meth:`loss`, :meth:`user_repr`, :meth:`item_output_weight`,
    :meth:`smoothing_groups` and :meth:`grow`. Scores are always a dot product between a user
    representation and the published item output matrix (plus an optional per-item bias), so a
    serving layer only needs :meth:`item_output_weight` / :meth:`item_output_bias` and a way to
    compute ``user_repr``.

    Attributes:
        num_items: number of real items (the item tables have ``num_items + 1`` rows, row 0 = pad).
        num_users: number of users (only MF and LightGCN have a user table).
        sequential: what :meth:`user_repr` reads, declared by every backbone so callers ask the
            model instead of checking its name. True: it encodes the input sequence
            ``batch["seqs"]``, and the model's config has a ``maxlen`` (the longest input it
            encodes); a user without items has no representation of its own. False: it reads
            the user's row of a user table (``batch["users"]``) and ignores ``seqs``.
    """

    num_items: int
    num_users: int
    sequential: ClassVar[bool]
    #: Whether :meth:`loss_terms` accepts a :class:`~engine.models.draws.KeyedDraws` in place of
    #: the generator (needed by data-parallel online training, see :mod:`engine.models.draws`).
    supports_keyed_draws: ClassVar[bool] = False

    @abstractmethod
    def loss(self, batch: Batch, generator: torch.Generator) -> Tensor:
        """Scalar training loss of one batch ``{"users": (B,), "seqs": (B, T+1)}``.

        Args:
            batch: training batch (see the module docstring).
            generator: source of all randomness in this step (negatives, dropout, masking).
                Must live on the model's device.
        """

    def loss_terms(
        self, batch: Batch, generator: torch.Generator | KeyedDraws
    ) -> tuple[Tensor, int]:
        """``(summed loss, number of terms)`` of a batch, so that several processes' parts of
        one batch can be divided by the whole batch's count: ``loss == sum / count``.

        Models with ``supports_keyed_draws`` implement it; others raise.
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement loss_terms")

    @abstractmethod
    def user_repr(self, batch: Batch, generator: torch.Generator | None = None) -> Tensor:
        """``(B, D)`` representation scored against :meth:`item_output_weight`.

        Args:
            batch: ``{"users": (B,), "seqs": (B, T)}``, the input sequence without target.
            generator: only needed in training mode (dropout); ``None`` in eval mode.
        """

    @abstractmethod
    def item_output_weight(self) -> Tensor:
        """``(num_items + 1, D)`` matrix that scores are taken against (row 0 = padding)."""

    def item_output_bias(self) -> Tensor | None:
        """``(num_items + 1,)`` per-item score bias, or ``None`` (every model but BERT4Rec)."""
        return None

    def score_all(self, batch: Batch, generator: torch.Generator | None = None) -> Tensor:
        """``(B, num_items + 1)`` scores of every item; column 0 is padding (the caller masks it).

        ``score_all = user_repr @ item_output_weight().T (+ item_output_bias())``.
        """
        rep = self.user_repr(batch, generator)  # (B, D)
        scores = rep @ self.item_output_weight().T  # (B, N+1)
        bias = self.item_output_bias()
        if bias is not None:
            scores = scores + bias  # (B, N+1)
        return scores

    @abstractmethod
    def smoothing_groups(self) -> list[list[nn.Parameter]]:
        """Parameters SEvo smooths; each inner list is stacked row-wise, smoothed on one graph."""

    @abstractmethod
    def grow(
        self,
        num_items: int | None = None,
        num_users: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        """Enlarge the item/user tables in place, keeping the same ``nn.Parameter`` objects.

        Old rows keep their values and positions; new rows are appended at the end and drawn
        from the same distribution as the originals. Any stale ``.grad`` of a grown parameter is
        dropped (its shape no longer matches). Optimizer state is not touched here: the SEvo
        optimizers in ``engine.optim`` grow theirs lazily, ``torch.optim`` ones do not.

        Args:
            num_items: new number of items (``>=`` the current one); ``None`` keeps it.
            num_users: new number of users (``>=`` the current one); ``None`` keeps it.
            generator: draws the new rows. ``None`` uses a generator seeded from the model's
                seed and the new sizes, so growth is deterministic either way.
        """

    # ----------------------------------------------------------------- helpers for subclasses

    def _grow_tables(
        self,
        num_items: int | None,
        num_users: int | None,
        generator: torch.Generator | None,
    ) -> None:
        """Append rows to ``item_emb`` (and ``user_emb`` if the model has one), drawn from
        ``N(0, config.init_std²)``, and update the sizes: the shared part of :meth:`grow`."""
        new_items, new_users = self._check_grow(num_items, num_users)
        g = self._grow_generator(generator, new_items, new_users)
        std = self.config.init_std
        user_emb = getattr(self, "user_emb", None)
        if user_emb is not None:
            append_rows(user_emb.weight, new_users - self.num_users, std, g)
            user_emb.num_embeddings = new_users
        append_rows(self.item_emb.weight, new_items - self.num_items, std, g)
        self.item_emb.num_embeddings = new_items + 1
        self.num_items, self.num_users = new_items, new_users

    def _check_grow(self, num_items: int | None, num_users: int | None) -> tuple[int, int]:
        """Validate ``grow`` arguments; returns the target ``(num_items, num_users)``."""
        new_items = self.num_items if num_items is None else int(num_items)
        new_users = self.num_users if num_users is None else int(num_users)
        if new_items < self.num_items:
            raise ValueError(f"cannot shrink num_items from {self.num_items} to {new_items}")
        if new_users < self.num_users:
            raise ValueError(f"cannot shrink num_users from {self.num_users} to {new_users}")
        return new_items, new_users

    def _grow_generator(
        self, generator: torch.Generator | None, new_items: int, new_users: int
    ) -> torch.Generator:
        if generator is not None:
            return generator
        seed = getattr(self, "seed", 0)
        g = torch.Generator()
        g.manual_seed(((seed * 1_000_003 + new_items) * 1_000_003 + new_users) % (1 << 63))
        return g


class TiedItemTableRecommender(Recommender):
    """A model whose only table is ``item_emb`` (``(num_items + 1, D)``), tied to the output.

    Subclasses set ``self.item_emb`` and ``self.config.init_std``; SEvo smooths that one table on
    the item graph, and :meth:`grow` appends item rows.
    """

    item_emb: nn.Embedding

    def item_output_weight(self) -> Tensor:
        return self.item_emb.weight  # (N+1, D), tied

    def smoothing_groups(self) -> list[list[nn.Parameter]]:
        """``[[item_emb.weight]]``: one ``(num_items + 1, D)`` table on the item graph."""
        return [[self.item_emb.weight]]

    def grow(
        self,
        num_items: int | None = None,
        num_users: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        self._grow_tables(num_items, num_users, generator)


def check_sizes(num_items: int, num_users: int, *, need_users: bool = False) -> None:
    """Raise ``ValueError`` unless ``num_items >= 1`` and ``num_users >= 0`` (or ``>= 1``)."""
    if int(num_items) < 1:
        raise ValueError(f"num_items must be >= 1, got {num_items}")
    if int(num_users) < (1 if need_users else 0):
        raise ValueError(f"num_users must be >= {1 if need_users else 0}, got {num_users}")


def dropout(
    x: Tensor, p: float, training: bool, generator: torch.Generator | Keys | None
) -> Tensor:
    """Inverted dropout drawing its mask from ``generator`` (``F.dropout`` cannot take one).

    Identity when not training or ``p == 0``. In training with ``p > 0`` a generator is required:
    a ``torch.Generator``, or :class:`~engine.models.draws.Keys` of ``x``'s leading dimensions
    (keyed draws, see :mod:`engine.models.draws`).
    """
    if not training or p == 0.0:
        return x
    if generator is None:
        raise ValueError(
            "a training-mode forward pass needs a torch.Generator for dropout; "
            "pass generator=... or call model.eval()"
        )
    # A keep-mask from 16 random bits per element: ``Tensor.bernoulli_`` with a generator is
    # ~10x slower on CPU (it dominated a SASRec training step). The keep probability is rounded
    # to a multiple of 2^-16 and the rescaling uses the rounded value, so E[out] = x exactly.
    threshold = max(round((1.0 - p) * 65536), 1)  # kept iff (u16 + 32768) < threshold
    if threshold >= 65536:
        return x
    if isinstance(generator, Keys):
        u16 = generator.uint16(x.shape[-1])  # (*x.shape), keyed by position
    else:
        n = x.numel()
        words = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device)
        words.random_(-(2**63), None, generator=generator)  # full 64-bit range
        u16 = words.view(torch.int16)[:n].view(x.shape)  # uniform over int16, same shape as x
    mask = (u16 < threshold - 32768).to(x.dtype).mul_(65536.0 / threshold)  # 0 or 1/keep
    return x * mask  # a float-mask product is ~4x faster than torch.where on CPU


def sample_negatives(
    shape: tuple[int, ...] | torch.Size,
    num_items: int,
    generator: torch.Generator | Keys,
    device: torch.device,
) -> Tensor:
    """Uniform negatives over ``1..num_items`` (never the padding index 0).

    ``generator`` is a ``torch.Generator`` or the :class:`~engine.models.draws.Keys` of the
    ``shape`` positions (keyed draws).

    Collisions with the positive item are possible (probability ``1/num_items`` each) and are
    kept, as in SASRec.pytorch and most BPR implementations: they only add a little noise.
    """
    if isinstance(generator, Keys):
        if tuple(generator.keys.shape) != tuple(shape):
            raise ValueError(f"keys of shape {tuple(generator.keys.shape)} for {tuple(shape)}")
        return generator.integers(1, num_items + 1)
    return torch.randint(1, num_items + 1, tuple(shape), generator=generator, device=device)


def append_rows(param: nn.Parameter, new_rows: int, std: float, generator: torch.Generator) -> None:
    """Append ``new_rows`` rows drawn from ``N(0, std²)`` (zeros if ``std == 0``) to ``param``.

    The ``nn.Parameter`` object is kept (``param.data`` is replaced), so optimizers and other
    references still point at it. A stale ``.grad`` is dropped.
    """
    if new_rows < 0:
        raise ValueError(f"new_rows must be >= 0, got {new_rows}")
    if new_rows == 0:
        return
    extra = torch.zeros((new_rows, *param.shape[1:]), dtype=param.dtype, device=generator.device)
    if std > 0:
        nn.init.normal_(extra, 0.0, std, generator=generator)
    param.data = torch.cat([param.data, extra.to(param.device)], dim=0)
    param.grad = None


def split_inputs_targets(seqs: Tensor) -> tuple[Tensor, Tensor]:
    """Split a training ``seqs (B, T+1)`` into ``inputs = seqs[:, :-1]``, ``targets = seqs[:, 1:]``.

    A sequential model trains at positions where both the input and the target are items: the
    oldest item of a window is an input only (its target position holds padding as input).
    """
    if seqs.dim() != 2 or seqs.shape[1] < 2:
        raise ValueError(f"training seqs must be (B, T+1) with T >= 1, got {tuple(seqs.shape)}")
    return seqs[:, :-1], seqs[:, 1:]  # (B, T), (B, T)


def user_positives(batch: Batch) -> tuple[Tensor, Tensor]:
    """``(users, items)`` pairs of every non-zero target ``seqs[:, 1:]`` (for MF / LightGCN)."""
    users, seqs = batch["users"], batch["seqs"]
    _, targets = split_inputs_targets(seqs)  # (B, T)
    valid = targets != 0  # (B, T)
    rows = users[:, None].expand_as(targets)  # (B, T)
    return rows[valid], targets[valid]  # (M,), (M,)


def zero_loss(*tensors: Tensor) -> Tensor:
    """A scalar 0 that is still connected to the graph (for batches without any target)."""
    return sum((t.sum() * 0.0 for t in tensors), start=torch.zeros((), device=tensors[0].device))
