"""Tests for engine.metrics: hand-computed ranks, ties, exclusions, cut-offs, paired tests."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from engine.metrics import hit_rate, ndcg, paired_test, summarize, target_ranks


def _reference_ranks(
    scores: np.ndarray, targets: np.ndarray, excluded: list[set[int]]
) -> list[int]:
    """Brute-force definition: 1 + #(other non-excluded items 1..N with score >= target score)."""
    out = []
    for b in range(scores.shape[0]):
        t = int(targets[b])
        others = [j for j in range(1, scores.shape[1]) if j != t and j not in excluded[b]]
        out.append(1 + sum(scores[b, j] >= scores[b, t] for j in others))
    return out


# ----------------------------------------------------------------------------------- target_ranks


def test_rank_simple_hand_computed() -> None:
    scores = torch.tensor([[0.0, 0.9, 0.5, 0.7, 0.1]])  # items 1..4
    assert target_ranks(scores, torch.tensor([1])).tolist() == [1]
    assert target_ranks(scores, torch.tensor([3])).tolist() == [2]  # behind item 1
    assert target_ranks(scores, torch.tensor([2])).tolist() == [3]
    assert target_ranks(scores, torch.tensor([4])).tolist() == [4]


def test_padding_column_never_competes() -> None:
    scores = torch.tensor([[100.0, 0.1, 0.2, 0.3]])
    assert target_ranks(scores, torch.tensor([3])).tolist() == [1]


def test_ties_are_pessimistic() -> None:
    scores = torch.tensor([[0.0, 0.5, 0.5, 0.5, 0.1]])
    # target 2 ties with items 1 and 3: both count as ahead
    assert target_ranks(scores, torch.tensor([2])).tolist() == [3]
    # a constant-score model gets the worst possible rank, never rank 1
    const = torch.zeros(3, 11)
    assert target_ranks(const, torch.tensor([1, 5, 10])).tolist() == [10, 10, 10]


def test_excluded_history_does_not_compete() -> None:
    scores = torch.tensor([[0.0, 0.9, 0.5, 0.7, 0.1], [0.0, 0.9, 0.5, 0.7, 0.1]])
    targets = torch.tensor([3, 4])
    rows = torch.tensor([0, 1, 1])
    items = torch.tensor([1, 1, 2])
    # row 0: item 1 excluded -> target 3 first; row 1: items 1, 2 excluded -> item 3 still ahead
    assert target_ranks(scores, targets, (rows, items)).tolist() == [1, 2]


def test_target_inside_history_is_not_excluded() -> None:
    scores = torch.tensor([[0.0, 0.9, 0.5, 0.7, 0.1]])
    # history holds the target (3) itself and item 1
    pairs = (torch.tensor([0, 0]), torch.tensor([3, 1]))
    assert target_ranks(scores, torch.tensor([3]), pairs).tolist() == [1]
    # and the excluded target does not count against itself with the mask form either
    mask = torch.zeros(1, 5, dtype=torch.bool)
    mask[0, 3] = True
    assert target_ranks(scores, torch.tensor([3]), mask).tolist() == [2]


def test_duplicate_exclusions_and_numpy_pairs() -> None:
    scores = torch.tensor([[0.0, 0.9, 0.8, 0.7]])
    pairs = (np.array([0, 0, 0]), np.array([1, 1, 2]))
    assert target_ranks(scores, torch.tensor([3]), pairs).tolist() == [1]


def test_mask_and_pairs_agree_with_reference() -> None:
    gen = torch.Generator().manual_seed(0)
    B, N = 16, 30
    # coarse scores so that ties are common
    scores = torch.randint(0, 5, (B, N + 1), generator=gen).float()
    targets = torch.randint(1, N + 1, (B,), generator=gen)
    mask = torch.rand(B, N + 1, generator=gen) < 0.3
    rows, items = torch.nonzero(mask, as_tuple=True)
    excluded = [set(items[rows == b].tolist()) for b in range(B)]
    expected = _reference_ranks(scores.numpy(), targets.numpy(), excluded)
    assert target_ranks(scores, targets, mask).tolist() == expected
    assert target_ranks(scores, targets, (rows, items)).tolist() == expected
    assert target_ranks(scores, targets, (rows, items)).dtype == torch.int64


def test_scores_not_modified() -> None:
    scores = torch.tensor([[5.0, 0.9, 0.5, 0.7, 0.1]])
    before = scores.clone()
    target_ranks(scores, torch.tensor([2]), (torch.tensor([0]), torch.tensor([1])))
    assert torch.equal(scores, before)


def test_nan_scores_are_pessimistic() -> None:
    scores = torch.tensor([[0.0, 0.9, float("nan"), 0.7, 0.1]])
    assert target_ranks(scores, torch.tensor([2])).tolist() == [4]  # NaN target ranks last
    assert target_ranks(scores, torch.tensor([1])).tolist() == [2]  # NaN competitor counts ahead
    pairs = (torch.tensor([0]), torch.tensor([4]))
    assert target_ranks(scores, torch.tensor([2]), pairs).tolist() == [3]


def test_empty_batch() -> None:
    out = target_ranks(torch.zeros(0, 5), torch.zeros(0, dtype=torch.long))
    assert out.shape == (0,)


@pytest.mark.parametrize(
    ("scores", "targets", "exclude", "match"),
    [
        (torch.zeros(5), torch.tensor([1]), None, "2-D"),
        (torch.zeros(1, 5, dtype=torch.long), torch.tensor([1]), None, "floating"),
        (torch.zeros(2, 5), torch.tensor([1]), None, "shape"),
        (torch.zeros(1, 5), torch.tensor([0]), None, "padding"),
        (torch.zeros(1, 5), torch.tensor([5]), None, r"\[1, 4\]"),
        (torch.zeros(1, 5), torch.tensor([1.0]), None, "integers"),
        (torch.zeros(1, 5), torch.tensor([1]), torch.zeros(1, 4, dtype=torch.bool), "mask"),
        (torch.zeros(1, 5), torch.tensor([1]), torch.zeros(1, 5), "mask"),
        (torch.zeros(1, 5), torch.tensor([1]), (torch.tensor([0]), torch.tensor([5])), "items"),
        (torch.zeros(1, 5), torch.tensor([1]), (torch.tensor([1]), torch.tensor([2])), "rows"),
        (torch.zeros(1, 5), torch.tensor([1]), (torch.tensor([0, 0]), torch.tensor([2])), "equal"),
        (torch.zeros(1, 5), torch.tensor([1]), "history", "exclude"),
    ],
)
def test_target_ranks_bad_arguments(scores, targets, exclude, match) -> None:
    with pytest.raises(ValueError, match=match):
        target_ranks(scores, targets, exclude)


# -------------------------------------------------------------------------------- HR / NDCG


def test_hit_rate_k_boundaries() -> None:
    ranks = torch.tensor([1, 5, 6, 10, 11])
    np.testing.assert_array_equal(hit_rate(ranks, 1), [1, 0, 0, 0, 0])
    np.testing.assert_array_equal(hit_rate(ranks, 5), [1, 1, 0, 0, 0])
    np.testing.assert_array_equal(hit_rate(ranks, 10), [1, 1, 1, 1, 0])


def test_ndcg_hand_computed() -> None:
    ranks = np.array([1, 2, 5, 6])
    np.testing.assert_allclose(ndcg(ranks, 5), [1.0, 1 / math.log2(3), 1 / math.log2(6), 0.0])
    np.testing.assert_allclose(ndcg(ranks, 1), [1.0, 0.0, 0.0, 0.0])
    np.testing.assert_allclose(ndcg(ranks, 6)[3], 1 / math.log2(7))


def test_summarize_keys_and_values() -> None:
    ranks = torch.tensor([1, 3, 7, 20])
    out = summarize(ranks)
    assert list(out) == ["HR@1", "HR@5", "HR@10", "NDCG@1", "NDCG@5", "NDCG@10"]
    assert out["HR@1"] == pytest.approx(0.25)
    assert out["HR@5"] == pytest.approx(0.5)
    assert out["HR@10"] == pytest.approx(0.75)
    assert out["NDCG@1"] == out["HR@1"]
    assert out["NDCG@5"] == pytest.approx((1 + 1 / math.log2(4)) / 4)
    assert out["NDCG@10"] == pytest.approx((1 + 1 / math.log2(4) + 1 / math.log2(8)) / 4)
    assert all(isinstance(v, float) for v in out.values())


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: summarize(np.array([], dtype=np.int64)), "empty"),
        (lambda: summarize(np.array([1, 2]), ks=()), "empty"),
        (lambda: hit_rate(np.array([0, 1]), 1), ">= 1"),
        (lambda: hit_rate(np.array([1.5]), 1), "integers"),
        (lambda: ndcg(np.array([1]), 0), "positive"),
        (lambda: ndcg(np.array([[1]]), 1), "1-D"),
        (lambda: hit_rate(np.array([1]), True), "positive"),
    ],
)
def test_metric_bad_arguments(call, match) -> None:
    with pytest.raises(ValueError, match=match):
        call()


def test_end_to_end_ranks_to_summary() -> None:
    # 2 users, 5 items; user 0 already saw item 2 (top score), user 1 saw nothing.
    scores = torch.tensor([[0.0, 0.1, 0.9, 0.8, 0.2, 0.3], [0.0, 0.5, 0.4, 0.3, 0.2, 0.1]])
    ranks = target_ranks(scores, torch.tensor([3, 5]), (torch.tensor([0]), torch.tensor([2])))
    assert ranks.tolist() == [1, 5]
    out = summarize(ranks, ks=(1, 5))
    assert out["HR@1"] == 0.5
    assert out["NDCG@5"] == pytest.approx((1 + 1 / math.log2(6)) / 2)


# ---------------------------------------------------------------------------------- paired_test


def test_paired_test_matches_scipy() -> None:
    rng = np.random.default_rng(0)
    b = rng.random(50)
    a = b + 0.05 + 0.1 * rng.standard_normal(50)
    res = paired_test(a, b)
    t = stats.ttest_rel(a, b)
    w = stats.wilcoxon(a, b)
    assert res["n"] == 50
    assert res["mean_a"] == pytest.approx(a.mean())
    assert res["diff"] == pytest.approx(a.mean() - b.mean())
    assert res["rel_gain"] == pytest.approx((a.mean() - b.mean()) / b.mean())
    assert res["t_stat"] == pytest.approx(t.statistic)
    assert res["t_pvalue"] == pytest.approx(t.pvalue)
    assert res["wilcoxon_stat"] == pytest.approx(w.statistic)
    assert res["wilcoxon_pvalue"] == pytest.approx(w.pvalue)
    assert res["note"] == ""


@pytest.mark.parametrize("n", [0, 1])
def test_paired_test_too_few_pairs(n: int) -> None:
    res = paired_test(np.ones(n), np.zeros(n))
    assert math.isnan(res["t_pvalue"]) and math.isnan(res["wilcoxon_pvalue"])
    assert "n=" in res["note"]
    assert res["n"] == n


def test_paired_test_identical_and_constant_difference() -> None:
    same = paired_test(np.array([0.1, 0.2, 0.3]), np.array([0.1, 0.2, 0.3]))
    assert math.isnan(same["t_pvalue"]) and "zero" in same["note"]
    assert same["rel_gain"] == 0.0
    const = paired_test(np.array([1.0, 1.0, 1.0]), np.array([0.0, 0.0, 0.0]))
    assert const["t_stat"] == math.inf and const["t_pvalue"] == 0.0
    assert "constant" in const["note"]
    assert 0 < const["wilcoxon_pvalue"] <= 1
    assert math.isnan(const["rel_gain"])  # baseline mean is 0


def test_paired_test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="equal length"):
        paired_test(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="finite"):
        paired_test(np.array([1.0, np.nan]), np.zeros(2))
