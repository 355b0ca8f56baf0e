"""Random draws keyed by what they are for, so that a batch split across processes draws the same.

A ``torch.Generator`` is a stream: the numbers a draw gets depend on how many were drawn
before it, so two processes that each train half of a batch cannot reproduce the draws of one
process training the whole batch. Online training keys every random number instead by

    (step seed, draw site, row key, coordinates within the row)

hashed with SplitMix64 (Steele et al., 2014; vectorised over int64 tensors). The *step seed*
comes from the trainer's generator (one number per optimizer step, so every rank of a
data-parallel group draws the same), the *draw site* counts the draws of one forward pass (the
same code runs on every rank), the *row key* names the training row (the online trainer uses
the global user row, unique within a step), and the coordinates are counted from the right end
of the row (tokens by recency, attention keys from the last), so they do not change with how
much left padding a batch has or how it was trimmed.

A :class:`Keys` object addresses every dimension of a tensor but the last; the last dimension
is the element index inside a 64-bit word group, counted from the right, four 16-bit lanes
per hash (a dropout keep-mask needs 16 bits per element).

Only models whose ``supports_keyed_draws`` is True accept these objects where they take a
generator (:func:`engine.models.base.dropout` and :func:`~engine.models.base.sample_negatives`
dispatch on the type).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["KeyedDraws", "Keys", "combine", "mix64"]

# SplitMix64 constants as signed int64 (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9,
# 0x94D049BB133111EB); int64 products wrap modulo 2^64 as the unsigned ones would.
_GOLDEN = -7046029254386353131
_MUL1 = -4658895280553007687
_MUL2 = -7723592293110705685


def _shr(z: Tensor, k: int) -> Tensor:
    """Logical right shift of int64 (torch's ``>>`` is arithmetic)."""
    return (z >> k) & ((1 << (64 - k)) - 1)


def mix64(z: Tensor) -> Tensor:
    """SplitMix64's finaliser of ``z + golden`` (int64 in, int64 out, elementwise)."""
    z = z + _GOLDEN
    z = (z ^ _shr(z, 30)) * _MUL1
    z = (z ^ _shr(z, 27)) * _MUL2
    return z ^ _shr(z, 31)


def combine(key: Tensor, coord: Tensor | int) -> Tensor:
    """A key for ``coord`` within ``key`` (broadcasting): ``mix64(key ^ mix64(coord))``."""
    coord_t = torch.as_tensor(coord, dtype=torch.int64, device=key.device)
    return mix64(key ^ mix64(coord_t))


def _python_mix(value: int) -> int:
    """:func:`mix64` of one Python int (returned as a signed 64-bit Python int)."""
    return int(mix64(torch.tensor([value], dtype=torch.int64))[0])


class KeyedDraws:
    """The random numbers of one training step, keyed by row.

    Pass it where a model takes a ``generator`` (models with ``supports_keyed_draws``).

    Args:
        seed: the step's seed (any int; reduced to int64).
        row_keys: ``(B,)`` int64 key of each training row, unique within the step.
    """

    def __init__(self, seed: int, row_keys: Tensor) -> None:
        self.seed = _python_mix(int(seed) & ((1 << 63) - 1))
        self.row_keys = row_keys.to(torch.int64)
        self._site = 0
        self.device = row_keys.device

    def next_site(self) -> int:
        """The key of the next draw of this step (sites are numbered in call order)."""
        site = self._site
        self._site += 1
        return _python_mix(self.seed ^ _python_mix(site))

    def rows(self) -> Keys:
        """Keys of the rows (a ``(B, F)`` tensor's elements)."""
        return Keys(self, self.row_keys)

    def tokens(self, seqs: Tensor, index: Tensor) -> Keys:
        """Keys of the packed real tokens of a left-padded ``seqs (B, T)``: token ``m`` at
        flat position ``index[m]`` is keyed by its row and its recency (1 = most recent)."""
        T = seqs.shape[1]
        row, col = index // T, index % T  # (M,), (M,)
        return Keys(self, combine(self.row_keys[row], T - col))

    def attention(self, B: int, H: int, T: int) -> Keys:
        """Keys of ``(B, H, T, ·)`` attention weights: row, head and query recency; the last
        dimension (keys) is counted from the right."""
        recency = torch.arange(T, 0, -1, device=self.device)  # (T,)
        heads = torch.arange(H, device=self.device)  # (H,)
        by_head = combine(self.row_keys[:B, None], heads[None, :])  # (B, H)
        return Keys(self, combine(by_head[:, :, None], recency[None, None, :]))  # (B, H, T)


class Keys:
    """Keys of every index of a tensor's leading dimensions (see the module docstring)."""

    def __init__(self, draws: KeyedDraws, keys: Tensor) -> None:
        self.draws, self.keys = draws, keys

    def __getitem__(self, index: Tensor | slice) -> Keys:
        return Keys(self.draws, self.keys[index])

    def words(self, count: int) -> Tensor:
        """``(*keys.shape, count)`` random int64 words of a new draw site."""
        site = self.draws.next_site()
        word = torch.arange(count, device=self.keys.device)  # (count,)
        return combine(self.keys[..., None] ^ site, word)  # (*lead, count)

    def uint16(self, width: int) -> Tensor:
        """``(*keys.shape, width)`` uniform int16 values; element ``j`` takes lane
        ``(width - 1 - j) % 4`` of word ``(width - 1 - j) // 4`` (counted from the right)."""
        words = self.words((width + 3) // 4)  # (*lead, n_words)
        lanes = words.view(torch.int16)  # (*lead, 4 * n_words): lane k of word w at 4w + k
        return lanes[..., :width].flip(-1)  # element j = lane index width - 1 - j

    def integers(self, low: int, high: int) -> Tensor:
        """``keys.shape`` uniform integers in ``[low, high)`` (bias ``(high-low)/2^63``)."""
        word = self.words(1)[..., 0] & ((1 << 63) - 1)
        return low + torch.remainder(word, high - low)
