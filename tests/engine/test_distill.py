"""Knowledge-distillation losses in ``engine.distill`` against values worked out by hand.

Expected values are written out with numpy (explicit softmaxes, loops over pairs and triplets),
independently of the vectorised torch code under test; a few are also pinned as literals.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engine.distill import dkd_loss, htd_loss, kd_loss, rkd_loss

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    return float(np.sum(p * np.log(p / q)))


def _t(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


# ------------------------------------------------------------------------------------- KD
def test_kd_matches_hand_computation():
    s = np.array([[1.0, 2.0, 3.0], [0.5, -1.0, 0.0]])
    t = np.array([[3.0, 2.0, 1.0], [0.0, 0.0, 2.0]])
    tau = 2.0
    rows = [_kl(_softmax(t[b] / tau), _softmax(s[b] / tau)) for b in range(2)]
    expected = tau**2 * (rows[0] + rows[1]) / 2
    assert kd_loss(_t(s), _t(t), tau).item() == pytest.approx(expected, rel=1e-12)
    # first row alone, by hand: p_t = softmax([1.5, 1, .5]), p_s = softmax([.5, 1, 1.5])
    assert kd_loss(_t(s[:1]), _t(t[:1]), tau).item() == pytest.approx(1.2806267, rel=1e-6)


def test_kd_is_zero_for_equal_or_shifted_logits_and_positive_otherwise():
    z = torch.randn(5, 7, generator=torch.Generator().manual_seed(0))
    assert kd_loss(z, z, 3.0).item() == pytest.approx(0.0, abs=1e-6)
    assert kd_loss(z + 4.0, z, 3.0).item() == pytest.approx(0.0, abs=1e-5)  # softmax shift
    assert kd_loss(z.flip(1), z, 3.0).item() > 0


def test_kd_gradients_are_finite_and_reach_only_the_student():
    g = torch.Generator().manual_seed(1)
    s = torch.randn(4, 6, generator=g, requires_grad=True)
    t = torch.randn(4, 6, generator=g, requires_grad=True)
    s_masked = s.clone()
    t_masked = t.clone()
    s_masked[:, 0] = float("-inf")  # an excluded item in both: adds nothing
    t_masked[:, 0] = float("-inf")
    loss = kd_loss(s_masked, t_masked, 2.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()
    assert torch.all(s.grad[:, 0] == 0)
    assert t.grad is None
    torch.testing.assert_close(
        loss, kd_loss(s[:, 1:].detach(), t[:, 1:].detach(), 2.0), rtol=1e-6, atol=1e-7
    )


# ------------------------------------------------------------------------------------ DKD
def test_dkd_matches_hand_computation():
    s = np.array([[2.0, 1.0, 0.5, -1.0], [0.0, 1.0, -2.0, 3.0]])
    t = np.array([[1.0, 3.0, 0.0, 0.5], [1.0, -1.0, 0.0, 2.0]])
    target = [1, 3]
    alpha, beta, tau = 1.0, 8.0, 2.0
    tckd, nckd = [], []
    for b, y in enumerate(target):
        ps, pt = _softmax(s[b] / tau), _softmax(t[b] / tau)
        bs = np.array([ps[y], 1 - ps[y]])
        bt = np.array([pt[y], 1 - pt[y]])
        tckd.append(_kl(bt, bs))
        others = [c for c in range(4) if c != y]
        nckd.append(_kl(_softmax(t[b, others] / tau), _softmax(s[b, others] / tau)))
    expected = tau**2 * (alpha * np.mean(tckd) + beta * np.mean(nckd))
    got = dkd_loss(_t(s), _t(t), torch.tensor(target), alpha, beta, tau).item()
    assert got == pytest.approx(expected, rel=1e-10)
    first = dkd_loss(_t(s[:1]), _t(t[:1]), torch.tensor([1]), alpha, beta, tau).item()
    assert first == pytest.approx(4.8197054, rel=1e-6)


def test_dkd_reduces_to_kd_with_the_papers_coupling_weight():
    # KD = TCKD + (1 − p^t_y) · NCKD (Zhao et al., Eq. 7), row by row
    g = torch.Generator().manual_seed(2)
    s = torch.randn(1, 9, generator=g, dtype=torch.float64)
    t = torch.randn(1, 9, generator=g, dtype=torch.float64)
    tau, y = 1.5, 4
    p_ty = torch.softmax(t / tau, dim=1)[0, y].item()
    coupled = dkd_loss(s, t, torch.tensor([y]), 1.0, 1.0 - p_ty, tau)
    torch.testing.assert_close(coupled, kd_loss(s, t, tau))


def test_dkd_is_zero_for_equal_logits_and_has_finite_gradients():
    g = torch.Generator().manual_seed(3)
    z = torch.randn(6, 5, generator=g)
    target = torch.randint(0, 5, (6,), generator=g)
    assert dkd_loss(z, z, target, 1.0, 8.0, 4.0).item() == pytest.approx(0.0, abs=1e-6)
    s = torch.randn(6, 5, generator=g, requires_grad=True)
    # a near-certain target (p_y ≈ 1 in float32) must not give log 0
    t = z.clone()
    t[torch.arange(6), target] = 80.0
    loss = dkd_loss(s, t, target, 1.0, 8.0, 1.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()


def test_dkd_rejects_bad_targets():
    z = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="target classes"):
        dkd_loss(z, z, torch.tensor([0, 3]), 1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="target must be"):
        dkd_loss(z, z, torch.tensor([0]), 1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="tau"):
        kd_loss(z, z, 0.0)


# ------------------------------------------------------------------------------------ RKD
def _huber(d: float) -> float:
    return 0.5 * d * d if abs(d) < 1 else abs(d) - 0.5


def _rkd_by_hand(s: np.ndarray, t: np.ndarray) -> tuple[float, float]:
    n = len(s)

    def psi_d(x):
        d = np.array([[np.linalg.norm(x[i] - x[j]) for j in range(n)] for i in range(n)])
        return d / (d.sum() / (n * n - n))  # mean over the pairs i != j

    def unit(v):
        norm = np.linalg.norm(v)
        return v / norm if norm > 0 else np.zeros_like(v)

    def psi_a(x, i, j, k):
        return float(unit(x[i] - x[j]) @ unit(x[k] - x[j]))

    ds, dt = psi_d(s), psi_d(t)
    dist = np.mean([_huber(ds[i, j] - dt[i, j]) for i in range(n) for j in range(n)])
    angle = np.mean(
        [
            _huber(psi_a(s, i, j, k) - psi_a(t, i, j, k))
            for i in range(n)
            for j in range(n)
            for k in range(n)
        ]
    )
    return float(dist), float(angle)


def test_rkd_matches_hand_computation():
    s = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    t = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 1.0]])
    # distance term by hand: μ_s = (2 + √2)/3, μ_t = (3 + √5)/3; three pairs, each counted twice
    mu_s, mu_t = (2 + math.sqrt(2)) / 3, (3 + math.sqrt(5)) / 3
    diffs = [1 / mu_s - 2 / mu_t, 1 / mu_s - 1 / mu_t, math.sqrt(2) / mu_s - math.sqrt(5) / mu_t]
    dist_by_hand = 2 * sum(0.5 * d * d for d in diffs) / 9
    assert dist_by_hand == pytest.approx(0.0184845, rel=1e-5)
    dist, angle = _rkd_by_hand(s, t)
    assert dist == pytest.approx(dist_by_hand, rel=1e-12)
    assert rkd_loss(_t(s), _t(t), 1.0, 0.0).item() == pytest.approx(dist, rel=1e-10)
    assert rkd_loss(_t(s), _t(t), 0.0, 1.0).item() == pytest.approx(angle, rel=1e-10)
    assert rkd_loss(_t(s), _t(t), 25.0, 50.0).item() == pytest.approx(25 * dist + 50 * angle)


def test_rkd_on_random_embeddings_of_different_widths_matches_the_loops():
    rng = np.random.default_rng(4)
    s, t = rng.normal(size=(5, 3)), 3.0 * rng.normal(size=(5, 4))  # large |d|: linear Huber part
    dist, angle = _rkd_by_hand(s, t)
    assert rkd_loss(_t(s), _t(t), 2.0, 3.0).item() == pytest.approx(2 * dist + 3 * angle, rel=1e-9)


def test_rkd_is_zero_for_a_scaled_rotated_shifted_copy_and_gradients_are_finite():
    g = torch.Generator().manual_seed(5)
    teacher = torch.randn(6, 3, generator=g, dtype=torch.float64)
    rotation = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))[0]
    student = 2.5 * teacher @ rotation + 1.0
    assert rkd_loss(student, teacher, 1.0, 1.0).item() == pytest.approx(0.0, abs=1e-12)
    # two equal student embeddings (a repeated item in a batch): finite, moderate gradients
    s = torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 1.0], [2.0, 0.0]], requires_grad=True)
    loss = rkd_loss(s, torch.randn(4, 3, generator=g), 1.0, 1.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()
    assert s.grad.abs().max() < 10


# ------------------------------------------------------------------------------------ HTD
def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _htd_by_hand(s, t, groups, group_level):
    n = len(s)
    entity = 0.0
    for i in range(n):
        for j in range(n):
            if groups[i] == groups[j] and _cos(t[i], t[j]) > 0:
                entity += (_cos(s[i], s[j]) - _cos(t[i], t[j])) ** 2
    present = sorted(set(groups))
    ps = [np.mean([s[i] for i in range(n) if groups[i] == g], axis=0) for g in present]
    pt = [np.mean([t[i] for i in range(n) if groups[i] == g], axis=0) for g in present]
    if group_level == "prototypes":
        group = sum(
            (_cos(ps[a], ps[b]) - _cos(pt[a], pt[b])) ** 2
            for a in range(len(present))
            for b in range(len(present))
        )
    else:
        group = sum(
            (_cos(ps[a], s[i]) - _cos(pt[a], t[i])) ** 2
            for a in range(len(present))
            for i in range(n)
        )
    return entity + group


@pytest.mark.parametrize("group_level", ["prototypes", "entities"])
def test_htd_matches_hand_computation(group_level):
    s = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [-1.0, 0.5], [0.3, -2.0]])
    t = np.array([[1.0, 0.2, 0.0], [0.5, 1.0, 0.0], [0.0, 1.0, 1.0], [-1.0, 0.0, 1.0], [1, 1, 1]])
    groups = [0, 0, 7, 7, 3]  # group ids need not be contiguous
    expected = _htd_by_hand(s, t, groups, group_level)
    got = htd_loss(_t(s), _t(t), torch.tensor(groups), group_level).item()
    assert got == pytest.approx(expected, rel=1e-10)


def test_htd_is_zero_for_equal_embeddings_and_prototypes_give_no_gradient():
    g = torch.Generator().manual_seed(6)
    e = torch.randn(8, 4, generator=g)
    groups = torch.tensor([0, 0, 1, 1, 1, 2, 2, 0])
    assert htd_loss(e, e, groups).item() == pytest.approx(0.0, abs=1e-10)
    s = torch.randn(8, 4, generator=g, requires_grad=True)
    htd_loss(s, e, groups, "entities").backward()
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    # one entity per group: the entity term is only cos(s_i, s_i) = 1 against 1, and the
    # prototypes (here the entities themselves) are detached: a positive loss, no gradient
    lone = torch.randn(3, 4, generator=g, requires_grad=True)
    loss = htd_loss(lone, torch.randn(3, 4, generator=g), torch.arange(3), "prototypes")
    assert loss.item() > 0
    loss.backward()
    torch.testing.assert_close(lone.grad, torch.zeros_like(lone), atol=1e-6, rtol=0)
