"""SEvo optimizers: AdamW / Adam / SGD whose update of the item table is smoothed over a graph.

Smoothing is a per-param-group option, so one optimizer steps the smoothed tables and every
other parameter together::

    opt = SEvoAdamW(
        [{"params": [model.item_emb.weight], "smoother": Smoother(graph)},
         {"params": other_params}],
        lr=1e-3, weight_decay=0.1,
    )

ψ is applied to the optimizer's *final* update direction of the smoothed group only — never to the
raw gradient; moment buffers stay unsmoothed and weight decay is not smoothed (docs/design.md).
Groups without a smoother are plain AdamW / Adam / SGD. Several params in one smoothed group are
stacked row-wise (e.g. users on top of items for a bipartite graph) before ψ and split afterwards.

Online use: a smoothed table may *grow* between steps (new items get new rows). The optimizer
extends its state for the new rows with fresh values (zero moments, a per-row step count of zero),
so new rows get the bias correction of a brand-new parameter.

Checkpoints: ``state_dict()`` holds only tensors and plain numbers (the smoother is dropped), so
it round-trips through ``torch.save`` / ``torch.load(..., weights_only=True)``;
``load_state_dict`` keeps each group's current smoother attached.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.adam import adam as _torch_adam_fn
from torch.optim.adamw import adamw as _torch_adamw_fn

__all__ = [
    "SMOOTH_TARGETS",
    "SEvoAdam",
    "SEvoAdamW",
    "SEvoSGD",
    "sevo_adam",
    "sevo_adamw",
    "sevo_adamw_lazy",
    "sevo_sgd",
]

SmootherFn = Callable[[Tensor], Tensor]


# ---------------------------------------------------------------------- shared helpers
def _check_hparams(lr: float, eps: float | None, weight_decay: float, betas=None) -> None:
    if not lr >= 0.0:
        raise ValueError(f"Invalid learning rate: {lr}")
    if eps is not None and not eps >= 0.0:
        raise ValueError(f"Invalid epsilon value: {eps}")
    if not weight_decay >= 0.0:
        raise ValueError(f"Invalid weight_decay value: {weight_decay}")
    if betas is not None:
        if not 0.0 <= betas[0] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 0: {betas[0]}")
        if not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 1: {betas[1]}")


def _grow_rows(buf: Tensor, rows: int) -> Tensor:
    """Return ``buf`` extended with zero rows up to ``rows`` (state for a grown table)."""
    if buf.dim() == 0 or buf.shape[0] == rows:
        return buf
    if buf.shape[0] > rows:
        raise RuntimeError(
            f"a parameter shrank from {buf.shape[0]} to {rows} rows; optimizer state cannot follow"
        )
    pad = buf.new_zeros((rows - buf.shape[0], *buf.shape[1:]))
    return torch.cat([buf, pad], dim=0)


def _apply_smoothed(
    params: list[Tensor], directions: list[Tensor], smoother: SmootherFn | None, lr: float
) -> None:
    """P ← P − lr·ψ(Δ), stacking the group's params row-wise for one ψ call."""
    if not params:
        return
    if smoother is None:
        for p, d in zip(params, directions):
            p.add_(d, alpha=-lr)
        return
    stacked = directions[0] if len(directions) == 1 else torch.cat(directions, dim=0)
    smoothed = smoother(stacked)
    if smoothed.shape != stacked.shape:
        raise RuntimeError(
            f"smoother returned shape {tuple(smoothed.shape)} for input {tuple(stacked.shape)}"
        )
    offset = 0
    for p in params:
        rows = p.shape[0]
        p.add_(smoothed[offset : offset + rows].to(p.dtype), alpha=-lr)
        offset += rows


class _SmoothedOptimizer(Optimizer):
    """Common plumbing: the ``smoother`` group option and weights-only state dicts."""

    def __init__(self, params, defaults: dict[str, Any]) -> None:
        defaults = {**defaults, "smoother": None}
        super().__init__(params, defaults)
        for group in self.param_groups:
            self._validate_group(group)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        self._validate_group(self.param_groups[-1])

    @staticmethod
    def _validate_group(group: dict[str, Any]) -> None:
        smoother = group.get("smoother")
        if smoother is None:
            return
        if not callable(smoother):
            raise ValueError("a param group's 'smoother' must be callable (X -> ψ(X)) or None")
        cols = {tuple(p.shape[1:]) for p in group["params"]}
        if any(p.dim() != 2 for p in group["params"]) or len(cols) > 1:
            raise ValueError(
                "a smoothed param group must hold 2-D tables with the same number of columns, "
                f"got shapes {[tuple(p.shape) for p in group['params']]}"
            )
        if any(p.is_sparse for p in group["params"]):
            raise ValueError("sparse parameters are not supported")

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        for group in state["param_groups"]:
            group.pop("smoother", None)  # never serialise code: checkpoints load weights-only
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        smoothers = [group.get("smoother") for group in self.param_groups]
        super().load_state_dict(state_dict)
        for group, smoother in zip(self.param_groups, smoothers):
            group["smoother"] = smoother

    def _row_state(self, p: Tensor, per_row: bool) -> dict[str, Tensor]:
        """Lazily create / grow the state of ``p``.

        For smoothed tables (``per_row``) ``step`` is counted per leading-dimension row (shape
        (N, 1, ...)), so rows added when a table grows start at step 0 with zero moments, exactly
        like a brand-new parameter. Plain params keep torch's scalar step (so torch's own kernels
        run them); if one grows, its new rows get zero moments and share the step count.
        """
        state = self.state[p]
        if not state:
            step_shape = (p.shape[0], *([1] * (p.dim() - 1))) if per_row and p.dim() else ()
            state["step"] = torch.zeros(step_shape, dtype=torch.float32, device=p.device)
            self._init_buffers(p, state)
        elif p.dim() and state["exp_avg"].shape[0] != p.shape[0]:  # buffers grow together
            for key, value in state.items():
                if value.dim() and value.shape[0] != p.shape[0]:
                    state[key] = _grow_rows(value, p.shape[0])
        return state

    def _adam_family_step(self, decoupled: bool, smoothed_fn) -> None:
        """One step of every group: ``smoothed_fn`` for smoothed groups, torch's Adam otherwise."""
        for group in self.param_groups:
            params, grads = _grads_for(group)
            if not params:
                continue
            smoothed = group["smoother"] is not None
            states = [self._row_state(p, per_row=smoothed) for p in params]
            beta1, beta2 = group["betas"]
            buffers = (
                [s["exp_avg"] for s in states],
                [s["exp_avg_sq"] for s in states],
            )
            steps = [s["step"] for s in states]
            hyper = {
                "lr": group["lr"],
                "beta1": beta1,
                "beta2": beta2,
                "eps": group["eps"],
                "weight_decay": group["weight_decay"],
            }
            if smoothed:
                smoothed_fn(params, grads, *buffers, steps, smoother=group["smoother"], **hyper)
            else:
                # Plain groups run torch's own fused (Adam/AdamW) kernel where it applies: one
                # kernel per param instead of ~10 ops each (a SASRec step has ~35 small plain
                # params, so the op-by-op loop cost more than their arithmetic). Same update as
                # torch.optim.AdamW up to float rounding (a few ulp).
                _torch_adam(
                    params,
                    grads,
                    *buffers,
                    [],
                    steps,
                    amsgrad=False,
                    maximize=False,
                    decoupled_weight_decay=decoupled,
                    **_kernel_choice(params, steps),
                    **hyper,
                )

    def _init_buffers(self, p: Tensor, state: dict[str, Tensor]) -> None:
        raise NotImplementedError


# torch >= 2.6 runs AdamW as Adam with ``decoupled_weight_decay``; older releases have only the
# separate functional ``adamw``. Both compute the same update.
_ADAM_DECOUPLES = "decoupled_weight_decay" in inspect.signature(_torch_adam_fn).parameters


def _torch_adam(*args: Any, decoupled_weight_decay: bool, **kwargs: Any) -> None:
    """torch's functional Adam (``decoupled_weight_decay=False``) or AdamW (True), on any
    supported torch release."""
    if _ADAM_DECOUPLES:
        _torch_adam_fn(*args, decoupled_weight_decay=decoupled_weight_decay, **kwargs)
    elif decoupled_weight_decay:
        _torch_adamw_fn(*args, **kwargs)
    else:
        _torch_adam_fn(*args, **kwargs)


def _fused_devices() -> tuple[str, ...]:
    try:
        from torch.optim.optimizer import _get_fused_kernels_supported_devices

        return tuple(_get_fused_kernels_supported_devices())
    except ImportError:  # older torch: no fused CPU kernel
        return ()


_FUSED_DEVICES = _fused_devices()
_FUSED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _kernel_choice(params: list[Tensor], steps: list[Tensor]) -> dict[str, bool]:
    """``fused=True`` for torch's Adam when the params suit its fused kernel (one floating
    dtype on one supported device, float32 step counts on that device; grads and moments
    follow the params), else torch's default choice."""
    kinds = {(p.device, p.dtype) for p in params}
    if len(kinds) == 1:
        device, dtype = kinds.pop()
        if (
            device.type in _FUSED_DEVICES
            and dtype in _FUSED_DTYPES
            and all(t.device == device and t.dtype == torch.float32 for t in steps)
        ):
            return {"fused": True}
    return {}


def _grads_for(group: dict[str, Any]) -> tuple[list[Tensor], list[Tensor]]:
    """Params that take part in this step and their gradients.

    In a smoothed group a table without a gradient still takes part (all its rows count as
    unsampled) once it has state, as SEvo-AdamW keeps every row evolving; in plain groups a
    param without a gradient is skipped, as in torch.optim.
    """
    params, grads = [], []
    smoothed = group["smoother"] is not None
    for p in group["params"]:
        if p.grad is None:
            if not smoothed:
                continue
            grad = torch.zeros_like(p)
        else:
            if p.grad.is_sparse:
                raise RuntimeError("SEvo optimizers do not support sparse gradients")
            grad = p.grad
        params.append(p)
        grads.append(grad)
    return params, grads


def _adam_direction(m: Tensor, v: Tensor, t: Tensor, beta1: float, beta2: float, eps: float):
    """Δ = m̂ / (√v̂ + ε) with the bias corrections at step t (a scalar or per-row tensor)."""
    inv_bias1 = 1 / (1 - beta1**t)
    inv_bias2_sqrt = (1 - beta2**t).rsqrt()
    denom = v.sqrt().mul_(inv_bias2_sqrt).add_(eps)
    return m.mul(inv_bias1).div_(denom)


def _shared_step(t: Tensor) -> float | None:
    """The step count every row of a (per-row or scalar) step tensor holds, else None."""
    if t.numel() == 1:
        return float(t.reshape(()))
    lo, hi = torch.aminmax(t)
    lo = float(lo)
    return lo if lo == float(hi) else None


def _fused_direction_applies(
    p: Tensor, g: Tensor, m: Tensor, v: Tensor, beta1: float, beta2: float, correct: bool
) -> bool:
    """Whether torch's fused Adam kernel can compute this table's Δ (:func:`_fused_direction`):
    a device and floating dtype it supports, shared by the table, its gradient and moments;
    dense contiguous memory; non-zero betas for the unsampled-row correction (it divides by β).
    """
    if p.device.type not in _FUSED_DEVICES or p.dtype not in _FUSED_DTYPES:
        return False
    if correct and not (beta1 > 0 and beta2 > 0):
        return False
    return p.is_contiguous() and all(
        x.device == p.device
        and x.dtype == p.dtype
        and x.layout == torch.strided
        and x.shape == p.shape
        and x.is_contiguous()
        for x in (g, m, v)
    )


def _fused_direction(
    g: Tensor,
    m: Tensor,
    v: Tensor,
    t: float,
    unsampled: Tensor | None,
    out: Tensor,
    *,
    beta1: float,
    beta2: float,
    eps: float,
) -> Tensor:
    """Update m, v and write Δ into ``out`` with torch's fused Adam kernel, every row at step t.

    The kernel computes ``m ← β1·m + (1−β1)·g`` (likewise v with g²). An unsampled row (g = 0)
    must get ``m ← β1·m + (1−β1)·m/(1−β1^{t'})``, t' = max(1, t−1), so its m is first
    multiplied by ``k1 = 1 + (1−β1)/(β1·(1−β1^{t'}))`` (v by k2 with β2): the general path's
    per-row rescaling, split around the kernel (one broadcast pass over m and one over v, and
    none when every row is sampled). The kernel's "param" is ``out``, zeroed, with lr = −1 and
    no weight decay: it leaves ``out = 0 + m̂/(√v̂ + ε) = Δ``.
    """
    if unsampled is not None:
        prev = max(1.0, t - 1.0)
        for buf, beta in ((m, beta1), (v, beta2)):
            k_minus_1 = (1.0 - beta) / (beta * (1.0 - beta**prev))
            buf.mul_(unsampled.to(buf.dtype).mul_(k_minus_1).add_(1.0))  # (N, 1) factors
    out.zero_()
    step = torch.tensor(t - 1.0, dtype=torch.float32, device=out.device)  # the kernel adds 1
    _torch_adam(
        [out],
        [g],
        [m],
        [v],
        [],
        [step],
        fused=True,
        amsgrad=False,
        maximize=False,
        decoupled_weight_decay=True,
        lr=-1.0,  # param ← param − lr·m̂/(√v̂ + ε)
        beta1=beta1,
        beta2=beta2,
        eps=eps,
        weight_decay=0.0,
    )
    return out


# ---------------------------------------------------------------------- SEvo-AdamW
#: Where SEvo-AdamW applies ψ (see :class:`SEvoAdamW`'s ``smooth``).
SMOOTH_TARGETS = ("update", "gradient")


def sevo_adamw_lazy(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    steps: list[Tensor],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    smoother: SmootherFn | None,
) -> None:
    """Functional step of SEvo-AdamW with ``smooth="gradient"`` (see :class:`SEvoAdamW`).

    ψ smooths the gradient ``G`` of the group (its params stacked row-wise); only the rows
    where ``ψ(G)`` is non-zero — the sampled rows and their neighbours up to L hops — take an
    AdamW step (moments, per-row step count, decoupled weight decay and the update). Every
    other row keeps its value and its state exactly, as in a lazy (sparse) Adam.
    """
    if not params:
        return
    stacked = grads[0] if len(grads) == 1 else torch.cat(grads, dim=0)
    smoothed = smoother(stacked) if smoother is not None else stacked
    if smoothed.shape != stacked.shape:
        raise RuntimeError(
            f"smoother returned shape {tuple(smoothed.shape)} for input {tuple(stacked.shape)}"
        )
    offset = 0
    for p, m, v, t in zip(params, exp_avgs, exp_avg_sqs, steps):
        g = smoothed[offset : offset + p.shape[0]].to(p.dtype)
        offset += p.shape[0]
        reached = g.abs().amax(dim=1) > 0
        count = int(reached.sum())
        if count == 0:
            continue
        hyper = (lr, beta1, beta2, eps, weight_decay)
        if count >= p.shape[0] * _DENSE_LAZY_SHARE:
            _lazy_step_masked(p, g, m, v, t, reached.unsqueeze(1).to(p.dtype), *hyper)
        else:
            _lazy_step_gathered(p, g, m, v, t, reached.nonzero().squeeze(1), *hyper)


#: Share of a table's rows above which a lazy step runs over the whole table with per-row
#: factors instead of gathering the reached rows: a gather and a scatter per buffer cost more
#: than full passes once most rows take a step (online, ψ's L hops reach most of a small
#: catalogue).
_DENSE_LAZY_SHARE = 0.5


def _lazy_step_masked(p, g, m, v, t, r, lr, beta1, beta2, eps, weight_decay) -> None:
    """A lazy AdamW step over the whole table: ``r`` (N, 1) is 1 on rows that take the step,
    0 on rows that keep value and state (their ``g`` is 0, so ``m·1 + 0`` leaves them)."""
    t.add_(r.view(t.shape))
    m.mul_(r.mul(beta1 - 1).add_(1)).add_(g, alpha=1 - beta1)
    v.mul_(r.mul(beta2 - 1).add_(1)).addcmul_(g, g, value=1 - beta2)
    tr = t.view(-1, 1).clamp(min=1)  # rows never stepped have m = 0: any factor will do
    if weight_decay:
        p.mul_(r.mul(-lr * weight_decay).add_(1))
    denom = v.sqrt().mul_((1 - beta2**tr).rsqrt()).add_(eps)
    p.addcmul_(m.div(denom), r.div_(1 - beta1**tr), value=-lr)


def _lazy_step_gathered(p, g, m, v, t, rows, lr, beta1, beta2, eps, weight_decay) -> None:
    """A lazy AdamW step of the listed rows only, gathered into small tensors and scattered
    back."""
    g = g.index_select(0, rows)
    t_rows = t.index_select(0, rows).add_(1)
    m_rows = m.index_select(0, rows).mul_(beta1).add_(g, alpha=1 - beta1)
    v_rows = v.index_select(0, rows).mul_(beta2).addcmul_(g, g, value=1 - beta2)
    p_rows = p.index_select(0, rows)
    if weight_decay:
        p_rows.mul_(1.0 - lr * weight_decay)
    p_rows.add_(_adam_direction(m_rows, v_rows, t_rows, beta1, beta2, eps), alpha=-lr)
    t.index_copy_(0, rows, t_rows)
    m.index_copy_(0, rows, m_rows)
    v.index_copy_(0, rows, v_rows)
    p.index_copy_(0, rows, p_rows)


def sevo_adamw(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    steps: list[Tensor],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    smoother: SmootherFn | None,
    fused: bool | None = None,
    workspace: dict[Tensor, Tensor] | None = None,
    carry_unsampled: bool = True,
) -> None:
    """Functional SEvo-AdamW step (see :class:`SEvoAdamW`); mutates params and state in place.

    Two routes to the same moments and Δ, chosen per table:

    * fused: when all rows of the table are at one step count (always offline; a table that
      grew mid-training has rows at different counts) and torch has a fused Adam kernel for
      its device and dtype, one kernel call updates m and v and writes Δ into a reusable
      buffer (:func:`_fused_direction`): fewer passes over the table than the general route,
      and no full-size temporaries.
    * general: op by op, with the per-row step tensors.

    ``fused=None`` takes the fused route wherever it applies on CPU tables. Choosing it reads
    the step counts (and whether any row is unsampled) on the host, which is free on CPU but
    a synchronisation per step on an accelerator, so there ``None`` keeps the general route
    and ``fused=True`` opts in. ``fused=False`` always takes the general route; ``fused=True``
    raises where the fused route does not apply. Both routes compute the same math and agree
    to float rounding. ``workspace`` (param → buffer) keeps the fused route's Δ buffers
    between steps; :class:`SEvoAdamW` passes one that is not part of its state.
    """
    directions = []
    # The unsampled-row correction of smoothed tables (see SEvoAdamW's carry_unsampled).
    correct = smoother is not None and carry_unsampled
    decay = 1.0 - lr * weight_decay
    for p, g, m, v, t in zip(params, grads, exp_avgs, exp_avg_sqs, steps):
        t.add_(1)
        if decay != 1.0:  # multiplying by 1 would be a no-op pass over the table
            p.mul_(decay)
        # Unsampled rows (an all-zero gradient row) feed their bias-corrected moments.
        unsampled = (g.abs().amax(dim=1, keepdim=True) == 0) if correct else None  # (N, 1)
        shared_t = None
        wanted = fused if fused is not None else p.device.type == "cpu"
        if wanted and _fused_direction_applies(p, g, m, v, beta1, beta2, correct):
            shared_t = _shared_step(t)
        if shared_t is not None:
            out = workspace.get(p) if workspace is not None else None
            if out is None or out.shape != p.shape or out.dtype != p.dtype:
                out = torch.empty_like(p, memory_format=torch.contiguous_format)
                if workspace is not None:
                    workspace[p] = out
            if unsampled is not None and not bool(unsampled.any()):
                unsampled = None  # every row sampled: no rescaling passes
            directions.append(
                _fused_direction(
                    g, m, v, shared_t, unsampled, out, beta1=beta1, beta2=beta2, eps=eps
                )
            )
            continue
        if fused:
            raise RuntimeError(
                "sevo_adamw(fused=True) needs tables whose rows share one step count, on a "
                "device and dtype with torch's fused Adam kernel, and non-zero betas"
            )
        if unsampled is not None:
            # Unsampled rows have g = 0, so feeding them their bias-corrected moments,
            # m ← β1·m + (1−β1)·m/(1−β1^{t−1}), is a per-row rescaling of m (likewise v). That
            # turns the correction into (N, 1) factors instead of full-size torch.where passes.
            unsampled = unsampled.to(m.dtype)
            prev = t.sub(1).clamp_(min=1)
            m_scale = beta1 + unsampled * ((1 - beta1) / (1 - beta1**prev))
            v_scale = beta2 + unsampled * ((1 - beta2) / (1 - beta2**prev))
            m.mul_(m_scale).add_(g, alpha=1 - beta1)
            v.mul_(v_scale).addcmul_(g, g, value=1 - beta2)
        else:
            m.mul_(beta1).add_(g, alpha=1 - beta1)
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        directions.append(_adam_direction(m, v, t, beta1, beta2, eps))
    _apply_smoothed(params, directions, smoother, lr)


class SEvoAdamW(_SmoothedOptimizer):
    r"""AdamW whose item-table update is smoothed by ψ — the optimizer the SEvo paper uses.

    Per step t, for every param: decoupled weight decay ``P ← P(1 − lr·wd)`` on every row.
    For a smoothed table, rows whose gradient is entirely zero this step ("unsampled") feed their
    previous bias-corrected moments instead of the zero gradient::

        g̃_i = m_i / (1 − β1^{t−1}),   q̃_i = v_i / (1 − β2^{t−1})      (t−1 → max(1, t−1))

    sampled rows use g and g²; then ``m ← β1·m + (1−β1)·g̃``, ``v ← β2·v + (1−β2)·q̃``,
    ``Δ = m̂ / (√v̂ + ε)`` with the usual bias corrections at t, and ``P ← P − lr·ψ(Δ)``.
    So an unsampled row keeps m̂ and v̂ and its Δ repeats. Groups without a smoother get plain
    AdamW (equal to ``torch.optim.AdamW``). With β = 0 (or L = 0) and no all-zero rows the
    smoothed group also equals ``torch.optim.AdamW`` step for step.

    Args:
        params: params or param groups; a group may carry ``"smoother": Smoother(...)``.
        lr: learning rate.
        betas: (β1, β2) for the moments.
        eps: added to the denominator.
        weight_decay: decoupled weight decay coefficient.
        carry_unsampled: the correction above (default True, the paper's). False treats an
            unsampled row of a smoothed table like AdamW does (its moments decay with the zero
            gradient), so a row nobody samples stops moving instead of repeating its last Δ.
            Online, where a micro-batch gives gradients to only a small share of the rows, that
            is the difference between a rare item drifting on and standing still (README,
            "Online: prequential replay").
        smooth: where ψ acts in a smoothed group. ``"update"`` (default, the paper's): on the
            final AdamW direction Δ, as above. ``"gradient"``: on the gradient, ``G̃ = ψ(G)``;
            then only the rows where ``G̃`` is non-zero (the rows with a gradient and their
            neighbours up to L hops) take an AdamW step with ``G̃`` — moments, per-row step
            count, weight decay and update — and every other row keeps its value and state
            (lazy moments, :func:`sevo_adamw_lazy`). ``carry_unsampled`` does not apply to it.
            Online, where a micro-batch samples a small share of the rows, this keeps the
            structure-aware update without moving rows the batch says nothing about.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        *,
        carry_unsampled: bool = True,
        smooth: str = "update",
    ) -> None:
        _check_hparams(lr, eps, weight_decay, betas)
        if smooth not in SMOOTH_TARGETS:
            raise ValueError(f"smooth must be one of {SMOOTH_TARGETS}, got {smooth!r}")
        super().__init__(
            params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay}
        )
        # Attributes, not group defaults: checkpoints keep their state_dict layout.
        self.carry_unsampled = bool(carry_unsampled)
        self.smooth = smooth

    def _init_buffers(self, p: Tensor, state: dict[str, Tensor]) -> None:
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        # Direction buffers of the fused path, kept between steps; not optimizer state, so
        # state_dict() is unchanged (and the attribute is rebuilt after unpickling).
        workspace = self.__dict__.setdefault("_workspace", {})
        carry = self.__dict__.get("carry_unsampled", True)
        if self.__dict__.get("smooth", "update") == "gradient":
            smoothed_fn = sevo_adamw_lazy
        else:
            smoothed_fn = functools.partial(sevo_adamw, workspace=workspace, carry_unsampled=carry)
        self._adam_family_step(decoupled=True, smoothed_fn=smoothed_fn)
        return loss


# ---------------------------------------------------------------------- SEvo-Adam
def sevo_adam(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    steps: list[Tensor],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    smoother: SmootherFn | None,
) -> None:
    """Functional SEvo-Adam step (coupled L2, no zero-row correction)."""
    directions = []
    for p, g, m, v, t in zip(params, grads, exp_avgs, exp_avg_sqs, steps):
        t.add_(1)
        if weight_decay:
            g = g.add(p, alpha=weight_decay)
        m.mul_(beta1).add_(g, alpha=1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        directions.append(_adam_direction(m, v, t, beta1, beta2, eps))
    _apply_smoothed(params, directions, smoother, lr)


class SEvoAdam(_SmoothedOptimizer):
    r"""Adam with coupled L2 whose item-table update is smoothed by ψ.

    ``g ← g + wd·P``; ``m, v`` as in Adam; ``P ← P − lr·ψ(m̂ / (√v̂ + ε))``. No zero-row
    correction. Without a smoother (or with β = 0) it equals ``torch.optim.Adam``.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        _check_hparams(lr, eps, weight_decay, betas)
        super().__init__(
            params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay}
        )

    _init_buffers = SEvoAdamW._init_buffers

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._adam_family_step(decoupled=False, smoothed_fn=sevo_adam)
        return loss


# ---------------------------------------------------------------------- SEvo-SGD
def sevo_sgd(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffers: list[Tensor | None],
    *,
    lr: float,
    momentum: float,
    dampening: float,
    nesterov: bool,
    weight_decay: float,
    smoother: SmootherFn | None,
) -> list[Tensor | None]:
    """Functional SEvo-SGD step; returns the (possibly new) momentum buffers."""
    directions, new_buffers = [], []
    for p, g, buf in zip(params, grads, momentum_buffers):
        d = g.add(p, alpha=weight_decay) if weight_decay else g
        if momentum:
            if buf is None:
                buf = d.detach().clone()
            else:
                buf.mul_(momentum).add_(d, alpha=1 - dampening)
            d = d.add(buf, alpha=momentum) if nesterov else buf
        directions.append(d)
        new_buffers.append(buf)
    _apply_smoothed(params, directions, smoother, lr)
    return new_buffers


class SEvoSGD(_SmoothedOptimizer):
    r"""SGD (momentum, dampening, Nesterov as in ``torch.optim.SGD``) with ψ-smoothed updates.

    ``d = g + wd·P``; the momentum buffer stores the *unsmoothed* value; ``P ← P − lr·ψ(d)``.
    Rows added by table growth start with a zero momentum buffer.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
    ) -> None:
        _check_hparams(lr, None, weight_decay)
        if momentum < 0.0:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        super().__init__(
            params,
            {
                "lr": lr,
                "momentum": momentum,
                "dampening": dampening,
                "weight_decay": weight_decay,
                "nesterov": nesterov,
            },
        )

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads = _grads_for(group)
            buffers = []
            for p in params:
                buf = self.state[p].get("momentum_buffer")
                if buf is not None and buf.shape[0] != p.shape[0]:
                    buf = _grow_rows(buf, p.shape[0])
                buffers.append(buf)
            new_buffers = sevo_sgd(
                params,
                grads,
                buffers,
                lr=group["lr"],
                momentum=group["momentum"],
                dampening=group["dampening"],
                nesterov=group["nesterov"],
                weight_decay=group["weight_decay"],
                smoother=group["smoother"],
            )
            for p, buf in zip(params, new_buffers):
                if buf is not None:
                    self.state[p]["momentum_buffer"] = buf
        return loss
