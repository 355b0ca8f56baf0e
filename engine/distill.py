"""Knowledge-distillation losses: pure functions on logits or embeddings (no modules, no state).

In every function the teacher is a constant: its tensor is detached, so gradients reach the
student only. Batches are the leading dimension; classes (items) are the last one.

=========  ============================================================================
function   loss
=========  ============================================================================
kd_loss    Hinton et al., 2015: τ²·KL(softmax(t/τ) ‖ softmax(s/τ)), mean over the batch
dkd_loss   Zhao et al., CVPR 2022 (DKD): α·TCKD + β·NCKD, each τ²-scaled
rkd_loss   Park et al., CVPR 2019 (RKD): distance-wise + angle-wise Huber on relations
htd_loss   Kang et al., KDD 2021 (HTD): the topology term, given the group assignment
=========  ============================================================================

Logits may hold ``-inf`` (an excluded item): a class the teacher gives probability 0 adds
nothing to a KL term, whatever the student gives it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["dkd_loss", "htd_loss", "kd_loss", "rkd_loss"]


def _kl_rows(log_p: Tensor, log_q: Tensor) -> Tensor:
    """``Σ_c p_c (log p_c − log q_c)`` per row (``p = exp(log_p)``); 0 where ``p_c = 0``."""
    p = log_p.exp()
    present = p > 0
    log_p = torch.where(present, log_p, torch.zeros_like(log_p))
    log_q = torch.where(present, log_q, torch.zeros_like(log_q))
    return (p * (log_p - log_q)).sum(-1)


def _check_logits(student_logits: Tensor, teacher_logits: Tensor, tau: float) -> None:
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student and teacher logits differ in shape: {tuple(student_logits.shape)} vs "
            f"{tuple(teacher_logits.shape)}"
        )
    if student_logits.dim() < 1:
        raise ValueError("logits need at least one (class) dimension")
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau}")


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, tau: float) -> Tensor:
    """Hinton's knowledge distillation on softened distributions.

    ``L = τ² · mean_b KL(p^t_b ‖ p^s_b)``, ``p^t = softmax(t/τ)``, ``p^s = softmax(s/τ)``,
    ``KL(p ‖ q) = Σ_c p_c log(p_c / q_c)``. The ``τ²`` keeps the gradient's scale independent
    of ``τ`` (Hinton et al., 2015). Zero when ``s = t`` (and whenever ``s − t`` is constant per
    row).

    Args:
        student_logits: ``(..., C)`` logits of the student.
        teacher_logits: ``(..., C)`` logits of the teacher (detached).
        tau: temperature ``τ > 0``.

    Returns:
        A scalar: the τ²-scaled KL averaged over all leading positions.
    """
    _check_logits(student_logits, teacher_logits, tau)
    log_ps = F.log_softmax(student_logits / tau, dim=-1)
    log_pt = F.log_softmax(teacher_logits.detach() / tau, dim=-1)
    return tau**2 * _kl_rows(log_pt, log_ps).mean()


def dkd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor,
    alpha: float,
    beta: float,
    tau: float,
) -> Tensor:
    """Decoupled knowledge distillation (Zhao et al., CVPR 2022).

    With ``p = softmax(z/τ)`` for the student (``s``) and teacher (``t``) and target class ``y``:

    * TCKD, the binary target / non-target distribution ``b = [p_y, 1 − p_y]``:
      ``TCKD = KL(b^t ‖ b^s)``;
    * NCKD, the distribution over the non-target classes only, ``p̂_c = softmax_{c ≠ y}(z_c/τ)``
      (the target's logit removed before the softmax): ``NCKD = KL(p̂^t ‖ p̂^s)``;

    ``L = α · τ² · mean_b TCKD + β · τ² · mean_b NCKD`` (the official code's ``dkd_loss``: sums
    over the batch divided by the batch size, both terms τ²-scaled). Classical KD is
    ``TCKD + (1 − p^t_y) · NCKD``; DKD weights the two freely (paper: α = 1, β = 8 on CIFAR-100).
    Zero when ``s = t``.

    Differences from the official code: the target class is removed exactly (the code subtracts
    1000 from its logit before the NCKD softmax), and ``log(1 − p_y)`` is a log-sum-exp over the
    non-target log-probabilities instead of ``log`` of a summed probability, so a near-certain
    target does not give ``log 0``.

    Args:
        student_logits: ``(B, C)`` student logits, ``C >= 2``.
        teacher_logits: ``(B, C)`` teacher logits (detached).
        target: ``(B,)`` target class indices in ``0..C-1``.
        alpha: weight of TCKD.
        beta: weight of NCKD.
        tau: temperature ``τ > 0``.
    """
    _check_logits(student_logits, teacher_logits, tau)
    if student_logits.dim() != 2 or student_logits.shape[1] < 2:
        raise ValueError(f"logits must be (B, C) with C >= 2, got {tuple(student_logits.shape)}")
    B, C = student_logits.shape
    if target.shape != (B,):
        raise ValueError(f"target must be ({B},), got {tuple(target.shape)}")
    target = target.long()
    if bool(((target < 0) | (target >= C)).any()):
        raise ValueError(f"target classes must be in 0..{C - 1}")
    teacher_logits = teacher_logits.detach()
    is_target = F.one_hot(target, C).bool()  # (B, C)

    def binary_log(logits: Tensor) -> Tensor:
        log_p = F.log_softmax(logits / tau, dim=-1)  # (B, C)
        log_target = log_p.gather(1, target[:, None])  # (B, 1): log p_y
        others = log_p.masked_fill(is_target, float("-inf"))
        log_rest = torch.logsumexp(others, dim=1, keepdim=True)  # (B, 1): log(1 − p_y)
        return torch.cat([log_target, log_rest], dim=1)  # (B, 2)

    def non_target_log(logits: Tensor) -> Tensor:
        rest = logits[~is_target].view(B, C - 1)  # target column removed, order kept
        return F.log_softmax(rest / tau, dim=-1)  # (B, C-1)

    tckd = _kl_rows(binary_log(teacher_logits), binary_log(student_logits)).mean()
    nckd = _kl_rows(non_target_log(teacher_logits), non_target_log(student_logits)).mean()
    return tau**2 * (alpha * tckd + beta * nckd)


def _pairwise_distances(x: Tensor, eps: float = 1e-12) -> Tensor:
    """``(N, N)`` Euclidean distances, exactly 0 on the diagonal (the RKD code's ``pdist``)."""
    sq = x.square().sum(-1)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)).clamp(min=eps)
    off = 1.0 - torch.eye(x.shape[0], dtype=x.dtype, device=x.device)
    return d2.sqrt() * off


def _normalised_distances(x: Tensor) -> Tensor:
    d = _pairwise_distances(x)
    positive = d > 0
    if not bool(positive.any()):
        raise ValueError("RKD needs at least two distinct embeddings")
    return d / d[positive].mean()


def _triplet_cosines(x: Tensor, eps: float = 1e-12) -> Tensor:
    """``(N, N, N)``: entry ``[j, i, k] = <e_ij, e_kj>``, ``e_ij = (x_i − x_j)/||x_i − x_j||``
    (``e_ij = 0`` where ``x_i = x_j``): the cosine of the angle at ``x_j`` in triangle (i, j, k).

    A zero difference gives 0 with zero gradient. (The official code's ``F.normalize`` also
    gives 0 there, but its gradient is the difference's scaled by 1/1e-12: two equal embeddings
    in a batch blow the step up.)"""
    diff = x[None, :, :] - x[:, None, :]  # (N, N, D): [j, i] = x_i − x_j
    sq = diff.square().sum(-1, keepdim=True)  # (N, N, 1)
    unit = diff / sq.clamp(min=eps).sqrt()
    unit = torch.where(sq > eps, unit, torch.zeros_like(unit))
    return unit @ unit.transpose(1, 2)  # (N, N, N)


def rkd_loss(student_emb: Tensor, teacher_emb: Tensor, w_dist: float, w_angle: float) -> Tensor:
    """Relational knowledge distillation (Park et al., CVPR 2019), RKD-D and RKD-A.

    Over a batch of N embeddings (student ``s_i``, teacher ``t_i``; widths may differ):

    * distance-wise: ``ψ_D(x_i, x_j) = ||x_i − x_j|| / μ_x``, ``μ_x`` the mean distance over the
      pairs ``i ≠ j`` of the batch; ``L_D = mean_{i,j} ℓ(ψ_D(s_i, s_j), ψ_D(t_i, t_j))``;
    * angle-wise: ``ψ_A(x_i, x_j, x_k) = <e_ij, e_kj>``, ``e_ij = (x_i − x_j)/||x_i − x_j||``,
      the cosine of the angle at ``x_j``; ``L_A = mean_{i,j,k} ℓ(ψ_A(s), ψ_A(t))``;

    with ``ℓ`` the Huber loss at δ = 1 (``0.5·d²`` if ``|d| < 1`` else ``|d| − 0.5``, torch's
    ``smooth_l1_loss``). ``L = w_dist · L_D + w_angle · L_A`` (paper: 25 and 50). As in the
    official code the means run over all ``N²`` pairs and ``N³`` triplets, degenerate ones
    (``i = j``, ``k = j``: both sides 0) included. Memory is O(N³·D) for the angles.

    Args:
        student_emb: ``(N, D_s)`` student embeddings, ``N >= 2``.
        teacher_emb: ``(N, D_t)`` teacher embeddings (detached).
        w_dist: weight of the distance-wise term.
        w_angle: weight of the angle-wise term.
    """
    if student_emb.dim() != 2 or teacher_emb.dim() != 2:
        raise ValueError("student and teacher embeddings must be 2-D (N, D)")
    if student_emb.shape[0] != teacher_emb.shape[0] or student_emb.shape[0] < 2:
        raise ValueError(
            f"need the same number N >= 2 of embeddings, got {student_emb.shape[0]} and "
            f"{teacher_emb.shape[0]}"
        )
    teacher_emb = teacher_emb.detach()
    loss = student_emb.new_zeros(())
    if w_dist:
        loss = loss + w_dist * F.smooth_l1_loss(
            _normalised_distances(student_emb), _normalised_distances(teacher_emb)
        )
    if w_angle:
        loss = loss + w_angle * F.smooth_l1_loss(
            _triplet_cosines(student_emb), _triplet_cosines(teacher_emb)
        )
    return loss


def _cosine_matrix(a: Tensor, b: Tensor) -> Tensor:
    """``(n, m)`` cosine similarities (the HTD code's ``sim``; no epsilon, as there)."""
    return (a @ b.T) / (a.norm(dim=1, keepdim=True) * b.norm(dim=1, keepdim=True).T)


def htd_loss(
    student_emb: Tensor,
    teacher_emb: Tensor,
    groups: Tensor,
    group_level: str = "prototypes",
) -> Tensor:
    """The topology-distillation term of hierarchical topology distillation (Kang et al., KDD
    2021), given each entity's group, as the authors' code computes it (``HTD.get_TD_loss``).

    With ``cos`` the cosine-similarity matrix, ``P^s``, ``P^t`` the per-group mean embeddings
    (prototypes) of the groups present in the batch, computed **without gradient**:

    * entity level: ``Σ (cos(s_i, s_j) − cos(t_i, t_j))²`` over ordered pairs (``i = j``
      included) in the same group whose teacher similarity ``cos(t_i, t_j) > 0``;
    * group level, ``"prototypes"`` (the code's ``choice='first'``):
      ``Σ_{g,h} (cos(P^s_g, P^s_h) − cos(P^t_g, P^t_h))²`` — with prototypes detached, this term
      gives the student no gradient; ``"entities"`` (any other choice there):
      ``Σ_{g,i} (cos(P^s_g, s_i) − cos(P^t_g, t_i))²`` over every group g and entity i;

    ``L`` = entity level + group level (sums, not means). Not included, because they are
    learned modules rather than a function of the embeddings: HTD's adaptive group assignment
    (``groups = argmax_k softmax(V t_i)`` with a trained ``V``, one assignment network for users
    and one for items, items' groups offset by K) and its projection loss
    ``Σ_i ||t_i − Σ_k z_ik f_k(s_i)||²`` with Gumbel-softmax ``z`` (τ = 0.1). The paper (Eq. 9)
    uses every same-group pair; the ``cos(t_i, t_j) > 0`` filter is the code's (it selects the
    same-group entries of a masked matrix).

    Args:
        student_emb: ``(N, D_s)`` student embeddings (e.g. a batch's users and items stacked).
        teacher_emb: ``(N, D_t)`` teacher embeddings (detached).
        groups: ``(N,)`` integer group of each entity.
        group_level: ``"prototypes"`` or ``"entities"``.
    """
    if group_level not in ("prototypes", "entities"):
        raise ValueError(f"group_level must be 'prototypes' or 'entities', got {group_level!r}")
    if student_emb.dim() != 2 or teacher_emb.dim() != 2:
        raise ValueError("student and teacher embeddings must be 2-D (N, D)")
    N = student_emb.shape[0]
    if teacher_emb.shape[0] != N or groups.shape != (N,):
        raise ValueError("student, teacher and groups must describe the same N entities")
    teacher_emb = teacher_emb.detach()
    present, member = torch.unique(groups, return_inverse=True)  # member: (N,) in 0..G-1
    Z = F.one_hot(member, present.numel()).to(student_emb.dtype)  # (N, G)
    same_group = (Z @ Z.T) > 0  # (N, N)
    t_cos = _cosine_matrix(teacher_emb, teacher_emb)
    keep = same_group & (t_cos > 0)
    s_cos = _cosine_matrix(student_emb, student_emb)
    entity = (s_cos[keep] - t_cos[keep]).square().sum()
    with torch.no_grad():
        weights = Z.T / Z.T.sum(1, keepdim=True)  # (G, N): row g averages group g's members
        proto_s = weights @ student_emb  # (G, D_s)
        proto_t = weights.to(teacher_emb.dtype) @ teacher_emb  # (G, D_t)
    if group_level == "prototypes":
        group = (_cosine_matrix(proto_s, proto_s) - _cosine_matrix(proto_t, proto_t)).square()
    else:
        group = (
            _cosine_matrix(proto_s, student_emb) - _cosine_matrix(proto_t, teacher_emb)
        ).square()
    return entity + group.sum()
