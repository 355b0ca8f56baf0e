"""Full-ranking metrics (HR@K, NDCG@K) and a paired significance test.

Protocol of the SEvo paper: every item ``1 .. N`` is ranked, the items already in the user's
history are excluded (the target itself never is), and a target's rank gives
``HR@K = 1[rank <= K]`` and ``NDCG@K = 1 / log2(rank + 1)`` if ``rank <= K`` else 0.

Example:
    >>> import torch
    >>> scores = torch.tensor([[0.0, 0.9, 0.5, 0.7, 0.1]])  # (B=1, N+1=5); column 0 is padding
    >>> exclude = (torch.tensor([0]), torch.tensor([1]))  # user 0 already has item 1
    >>> target_ranks(scores, torch.tensor([3]), exclude).tolist()
    [1]
    >>> summarize(torch.tensor([1, 3, 20]), ks=(1, 5))["HR@5"]
    0.6666666666666666
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["hit_rate", "ndcg", "paired_test", "summarize", "target_ranks"]

logger = logging.getLogger(__name__)

Exclusion = tuple[torch.Tensor | np.ndarray, torch.Tensor | np.ndarray] | torch.Tensor | None


def target_ranks(
    scores: torch.Tensor, targets: torch.Tensor, exclude: Exclusion = None
) -> torch.Tensor:
    """1-based rank of each target among all items ``1 .. N``, history excluded.

    Column 0 (padding) never competes. An item listed in ``exclude`` for a row does not compete
    either, except the row's target, which is never excluded (a user may repeat an item).

    Ties are broken **pessimistically**:
    ``rank = 1 + #{other competing items j : score_j >= score_target}``.
    A model that gives every item the same score therefore gets the worst rank, not rank 1. NaN
    scores are pessimistic too: a NaN target ranks last, and a NaN competitor counts as ahead.

    Args:
        scores: ``(B, N + 1)`` floating scores; column ``i`` is item ``i``. Not modified.
        targets: ``(B,)`` integer targets in ``1 .. N``.
        exclude: The items of each row's history, in one of two forms:

            * a pair ``(rows, items)`` of equal-length 1-D integer tensors/arrays: item
              ``items[k]`` is excluded for row ``rows[k]`` (the ragged/COO form;
              :meth:`engine.data.SequenceSplit.exclusion_pairs` produces it; duplicates are fine);
            * a boolean ``(B, N + 1)`` mask, ``True`` = excluded.

            ``None`` excludes nothing but the padding column.

    Returns:
        ``(B,)`` int64 ranks in ``1 .. N`` (on the device of ``scores``).

    Raises:
        ValueError: On bad shapes, dtypes or out-of-range indices.

    Example:
        >>> s = torch.tensor([[0.0, 0.5, 0.5, 0.9]])
        >>> target_ranks(s, torch.tensor([1])).tolist()  # item 2 ties, item 3 is ahead
        [3]
    """
    if not isinstance(scores, torch.Tensor) or scores.ndim != 2:
        raise ValueError("scores must be a 2-D tensor (B, N + 1)")
    if not torch.is_floating_point(scores):
        raise ValueError(f"scores must be floating point, got {scores.dtype}")
    B, n_cols = scores.shape
    if n_cols < 2:
        raise ValueError("scores needs at least 2 columns (padding + one item)")
    targets = torch.as_tensor(targets, device=scores.device)
    if targets.ndim != 1 or targets.shape[0] != B:
        raise ValueError(f"targets must have shape ({B},), got {tuple(targets.shape)}")
    if targets.dtype.is_floating_point or targets.dtype == torch.bool or targets.is_complex():
        raise ValueError(f"targets must be integers, got {targets.dtype}")
    targets = targets.long()
    if B and (int(targets.min()) < 1 or int(targets.max()) > n_cols - 1):
        raise ValueError(f"targets must lie in [1, {n_cols - 1}] (0 is padding)")
    rows_b = torch.arange(B, device=scores.device)
    target_scores = scores[rows_b, targets].unsqueeze(1)  # (B, 1)
    # ahead[b, j]: item j would be ranked at or above the target (pessimistic for ties and NaN).
    ahead = (scores >= target_scores) | torch.isnan(scores) | torch.isnan(target_scores)  # (B, N+1)
    ahead[:, 0] = False
    if exclude is not None:
        if isinstance(exclude, torch.Tensor):
            if exclude.dtype != torch.bool or exclude.shape != scores.shape:
                raise ValueError(
                    f"a mask exclusion must be a bool tensor of shape {tuple(scores.shape)}, "
                    f"got {exclude.dtype} {tuple(exclude.shape)}"
                )
            ahead &= ~exclude.to(scores.device)
        elif isinstance(exclude, (tuple, list)) and len(exclude) == 2:
            rows, items = (torch.as_tensor(x, device=scores.device) for x in exclude)
            if rows.ndim != 1 or items.ndim != 1 or rows.shape != items.shape:
                raise ValueError("exclusion (rows, items) must be 1-D and of equal length")
            if rows.numel():
                for name, x, hi in (("rows", rows, B), ("items", items, n_cols)):
                    if x.dtype.is_floating_point or x.dtype == torch.bool:
                        raise ValueError(f"exclusion {name} must be integers, got {x.dtype}")
                    if int(x.min()) < 0 or int(x.max()) >= hi:
                        raise ValueError(f"exclusion {name} must lie in [0, {hi})")
                ahead[rows.long(), items.long()] = False
        else:
            raise ValueError("exclude must be None, a bool mask or a (rows, items) pair")
    ahead[rows_b, targets] = False  # the target is not "another" item, and never excluded
    return ahead.sum(dim=1) + 1


def _as_ranks(ranks: torch.Tensor | np.ndarray | Sequence[int]) -> np.ndarray:
    r = ranks.detach().cpu().numpy() if isinstance(ranks, torch.Tensor) else np.asarray(ranks)
    if r.ndim != 1:
        raise ValueError(f"ranks must be 1-D, got shape {r.shape}")
    if r.size and (not np.issubdtype(r.dtype, np.integer) or r.min() < 1):
        raise ValueError("ranks must be integers >= 1")
    return r.astype(np.int64, copy=False)


def _check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return int(k)


def hit_rate(ranks: torch.Tensor | np.ndarray | Sequence[int], k: int) -> np.ndarray:
    """Per-user hit indicator ``1[rank <= k]``.

    Args:
        ranks: ``(U,)`` 1-based ranks, e.g. from :func:`target_ranks`.
        k: Cut-off (>= 1).

    Returns:
        float64 array ``(U,)`` of 0/1 (average it for HR@k; keep it for :func:`paired_test`).
    """
    k = _check_k(k)
    return (_as_ranks(ranks) <= k).astype(np.float64)


def ndcg(ranks: torch.Tensor | np.ndarray | Sequence[int], k: int) -> np.ndarray:
    """Per-user NDCG with one relevant item: ``1 / log2(rank + 1)`` if ``rank <= k`` else 0.

    Args:
        ranks: ``(U,)`` 1-based ranks.
        k: Cut-off (>= 1).

    Returns:
        float64 array ``(U,)`` in ``[0, 1]``.
    """
    k = _check_k(k)
    r = _as_ranks(ranks)
    return np.where(r <= k, 1.0 / np.log2(r.astype(np.float64) + 1.0), 0.0)


def summarize(
    ranks: torch.Tensor | np.ndarray | Sequence[int], ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Mean HR@k and NDCG@k over users.

    Args:
        ranks: ``(U,)`` 1-based ranks (U >= 1).
        ks: Cut-offs.

    Returns:
        ``{"HR@1": ..., "HR@5": ..., "HR@10": ..., "NDCG@1": ..., "NDCG@5": ..., "NDCG@10": ...}``
        for the default ``ks`` (all ``HR@k`` first, then all ``NDCG@k``; ``NDCG@1 == HR@1``).

    Raises:
        ValueError: If ``ranks`` is empty or ``ks`` holds a bad cut-off.
    """
    r = _as_ranks(ranks)
    if r.size == 0:
        raise ValueError("ranks is empty: no user to evaluate")
    ks = [_check_k(k) for k in ks]
    if not ks:
        raise ValueError("ks is empty")
    out = {f"HR@{k}": float(hit_rate(r, k).mean()) for k in ks}
    out.update({f"NDCG@{k}": float(ndcg(r, k).mean()) for k in ks})
    return out


def paired_test(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """Paired comparison of two systems on the same users (or seeds): is ``a`` better than ``b``?

    Runs a paired t-test (:func:`scipy.stats.ttest_rel`, two-sided) and a Wilcoxon signed-rank
    test (:func:`scipy.stats.wilcoxon`, two-sided, zero differences dropped). Tests that cannot be
    computed give ``nan`` with an explanation in ``note``: fewer than 2 pairs (both), all
    differences zero (both), constant non-zero difference (t-test: p = 0, as scipy computes it).

    Args:
        a: ``(n,)`` per-user (or per-seed) metric of the system under test, e.g. NDCG@10 values.
        b: ``(n,)`` the same metric of the baseline, paired with ``a``.

    Returns:
        A dict with ``n``, ``mean_a``, ``mean_b``, ``diff`` (``mean_a - mean_b``), ``rel_gain``
        (``diff / |mean_b|``, ``nan`` if ``mean_b == 0``), ``t_stat``, ``t_pvalue``,
        ``wilcoxon_stat``, ``wilcoxon_pvalue`` and ``note`` (empty when both tests ran).

    Raises:
        ValueError: If shapes differ, inputs are not 1-D, or values are not finite.

    Example:
        >>> res = paired_test(np.array([0.2, 0.3, 0.4, 0.5]), np.array([0.1, 0.25, 0.3, 0.3]))
        >>> round(res["rel_gain"], 3), res["t_pvalue"] < 0.05
        (0.474, True)
    """
    from scipy import stats  # scipy is heavy; import on first use

    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"a and b must be 1-D of equal length, got {a.shape} and {b.shape}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("a and b must be finite")
    n = int(a.shape[0])
    nan = float("nan")
    mean_a = float(a.mean()) if n else nan
    mean_b = float(b.mean()) if n else nan
    diff = mean_a - mean_b
    out: dict[str, Any] = {
        "n": n,
        "mean_a": mean_a,
        "mean_b": mean_b,
        "diff": diff,
        "rel_gain": diff / abs(mean_b) if n and mean_b != 0 else nan,
        "t_stat": nan,
        "t_pvalue": nan,
        "wilcoxon_stat": nan,
        "wilcoxon_pvalue": nan,
        "note": "",
    }
    if n < 2:
        out["note"] = f"n={n} < 2 pairs: no test possible"
        return out
    d = a - b
    if np.all(d == 0):
        out["note"] = "all differences are zero: no test possible"
        return out
    notes = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if np.all(d == d[0]):
            # Zero variance: the t statistic is infinite; report it so rather than nan.
            out["t_stat"] = math.copysign(math.inf, float(d[0]))
            out["t_pvalue"] = 0.0
            notes.append("constant non-zero difference: t-test degenerate (t=inf, p=0)")
        else:
            t = stats.ttest_rel(a, b)
            out["t_stat"], out["t_pvalue"] = float(t.statistic), float(t.pvalue)
        try:
            w = stats.wilcoxon(a, b, zero_method="wilcox", alternative="two-sided")
            out["wilcoxon_stat"], out["wilcoxon_pvalue"] = float(w.statistic), float(w.pvalue)
        except ValueError as exc:
            notes.append(f"wilcoxon not computed: {exc}")
    out["note"] = "; ".join(notes)
    return out
