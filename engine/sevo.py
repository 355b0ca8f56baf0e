"""The SEvo transform ψ: smooth an update direction over the item graph (docs/design.md).

    ψ(X) = (1−β)/(1−β^{L+1}) · Σ_{l=0..L} β^l Ã^l X          (variant="neumann", the paper's)

computed with L sparse products (P ← β·Ã·P; S ← S + P), starting from S = P = X, then scaled.
The "iterative" variant repeats S ← β·Ã·S + (1−β)·X for L steps from S = X.

ψ is symmetric positive definite with spectral response h(λ) ∈ (0, 1] on [−1, 1] and h(1) = 1:
it damps the non-smooth part of an update and leaves D^{1/2}·1 of each component alone. Rows of
isolated nodes are scaled by c = (1−β)/(1−β^{L+1}) ≈ 0.2538 at β = 0.99, L = 3.
"""

from __future__ import annotations

from typing import Protocol

import torch

__all__ = ["Propagator", "Smoother", "isolated_scale"]


class Propagator(Protocol):
    """Anything with ``propagate(X) -> Ã·X`` and ``num_nodes`` (an ItemGraph or a snapshot)."""

    num_nodes: int

    def propagate(self, X: torch.Tensor) -> torch.Tensor: ...


def isolated_scale(beta: float, L: int) -> float:
    """The factor c = (1−β)/(1−β^{L+1}) that ψ applies to the rows of isolated nodes."""
    return (1.0 - beta) / (1.0 - beta ** (L + 1))


class Smoother:
    """Callable X ↦ ψ(X), reading the graph through ``propagate``.

    Each call reads one consistent view: if ``graph`` has ``snapshot()``, it is taken once per
    call, so a concurrent writer cannot change Ã between the L products.

    Rows of X beyond ``graph.num_nodes`` (e.g. items the graph has not seen yet) are treated as
    isolated nodes.

    A view that also exposes ``inv_sqrt_degree`` and ``adjacency_mm`` (a
    :class:`~graph_store.GraphSnapshot`) gets the Neumann series with the row scalings of Ã
    fused into its updates (fewer passes over the table per product; equal up to float32
    rounding). If the view also offers ``normalized_adjacency`` (a snapshot without pending
    increments, e.g. offline training's fixed graph), ψ runs as L sparse ``addmm`` calls over
    β·Ã in Horner's form instead. Other views, and the iterative variant, go through
    ``propagate``.

    Args:
        graph: an :class:`~graph_store.ItemGraph`, a snapshot, or anything with ``propagate``.
        beta: smoothing strength β ∈ [0, 1). β = 0 makes ψ the identity.
        L: number of propagation steps (integer ≥ 0). L = 0 makes ψ the identity.
        variant: ``"neumann"`` (rescaled truncated Neumann series, the paper's) or
            ``"iterative"``.
        passthrough_isolated: if True, rows of nodes with no edges receive their raw update
            instead of c times it. With the paper's ψ a brand-new item with no edges learns at
            about a quarter of the rate; this option lets it learn at the full rate until it has
            neighbours. The transform is then no longer exactly the paper's ψ on those rows.

    Example:
        >>> from graph_store import ItemGraph
        >>> g = ItemGraph(3); g.add_edges([0], [1])
        >>> psi = Smoother(g, beta=0.99, L=3)
        >>> psi(torch.ones(3, 2)).shape
        torch.Size([3, 2])
    """

    def __init__(
        self,
        graph: Propagator,
        beta: float = 0.99,
        L: int = 3,
        variant: str = "neumann",
        *,
        passthrough_isolated: bool = False,
    ) -> None:
        if not (isinstance(beta, (int, float)) and 0.0 <= float(beta) < 1.0):
            raise ValueError(f"beta must be in [0, 1), got {beta!r}")
        if isinstance(L, bool) or not isinstance(L, int) or L < 0:
            raise ValueError(f"L must be an integer >= 0, got {L!r}")
        if variant not in ("neumann", "iterative"):
            raise ValueError(f"variant must be 'neumann' or 'iterative', got {variant!r}")
        if not hasattr(graph, "propagate"):
            raise ValueError("graph must provide propagate(X)")
        self.graph = graph
        self.beta = float(beta)
        self.L = L
        self.variant = variant
        self.passthrough_isolated = bool(passthrough_isolated)
        self._coefficients = None  # (snapshot, factors) of the fused Neumann path

    @property
    def isolated_scale(self) -> float:
        """c = (1−β)/(1−β^{L+1}), the factor isolated rows get under the Neumann variant."""
        return isolated_scale(self.beta, self.L)

    def __call__(self, X: torch.Tensor) -> torch.Tensor:
        """Return ψ(X) as a new tensor of X's shape and dtype."""
        if X.dim() != 2:
            raise ValueError(f"Smoother expects a 2-D (num_rows, dim) tensor, got {tuple(X.shape)}")
        if self.beta == 0.0 or self.L == 0:
            return X.clone()
        view = self.graph.snapshot() if hasattr(self.graph, "snapshot") else self.graph
        n = int(view.num_nodes)
        rows = X.shape[0]
        if n > rows:
            raise ValueError(f"the graph has {n} nodes but the smoothed table has only {rows} rows")
        beta, L = self.beta, self.L
        X32 = X.detach().to(torch.float32)
        head = X32[:n]  # rows the graph knows; the rest are isolated
        if self.variant == "neumann" and hasattr(view, "adjacency_mm") and n:
            S = self._neumann_fused(view, head)
            if rows == n:
                return S if X.dtype == torch.float32 else S.to(X.dtype)
            out = torch.empty_like(X32)
            out[:n] = S
            out[n:] = X32[n:] if self.passthrough_isolated else X32[n:] * self.isolated_scale
            return out.to(X.dtype)

        def prop(Y: torch.Tensor) -> torch.Tensor:
            return view.propagate(Y)

        if self.variant == "neumann":
            P = head
            S = head.clone()
            for _ in range(L):
                P = prop(P).mul_(beta)
                S.add_(P)
            S.mul_(self.isolated_scale)
            isolated_factor = self.isolated_scale
        else:
            S = head.clone()
            for _ in range(L):
                S = prop(S).mul_(beta).add_(head, alpha=1.0 - beta)
            # Isolated rows: S ← (1−β)·X each step from S = X, so after L steps (1−β)·X.
            isolated_factor = 1.0 - beta
        out = torch.empty_like(X32)
        out[:n] = S
        if rows > n:
            out[n:] = X32[n:] if self.passthrough_isolated else X32[n:] * isolated_factor
        if self.passthrough_isolated and n:
            isolated = _isolated_rows(view, n)
            if isolated.any():
                out[:n][isolated] = head[isolated]
        return out.to(X.dtype)

    def _neumann_fused(self, view, head: torch.Tensor) -> torch.Tensor:
        """ψ(head) for a snapshot exposing ``inv_sqrt_degree`` and ``adjacency_mm``.

        The same series as the generic path, with the row scalings of Ã = D^-1/2 A D^-1/2
        fused into the updates: with ``R_l = A·Q_{l-1}``, ``Q_0 = s ⊙ X``, the l-th term is
        ``P_l = β·s ⊙ R_l`` (accumulated with one ``addcmul``) and the next product's input
        is ``Q_l = s ⊙ P_l = β·s² ⊙ R_l``. Two (n, k) passes per product instead of five; the
        result equals the generic path up to float32 rounding. The final per-row factor is
        c, or 1 on isolated rows with ``passthrough_isolated`` (their terms are all zero, so
        they hold exactly X).
        """
        s, beta_s, beta_s2, row_scale, M = self._fused_coefficients(view)
        if M is not None:
            return self._neumann_horner(M, head, row_scale)
        R = view.adjacency_mm(head * s)
        S = torch.addcmul(head, R, beta_s)
        for _ in range(self.L - 1):
            R = view.adjacency_mm(R.mul_(beta_s2))
            S.addcmul_(R, beta_s)
        return S.mul_(row_scale)

    def _neumann_horner(self, M: torch.Tensor, head: torch.Tensor, row_scale) -> torch.Tensor:
        """ψ(head) with ``M = β·Ã`` as one CSR: Horner's form of the same series,

            Y ← X + M·Y  (L times, from Y = X),   ψ(X) = c·Y = c·Σ_l β^l Ã^l X,

        each step a single ``addmm`` (the sparse kernel adds X itself): no row scalings and no
        separate accumulator, so less work per step than the fused form. Equal to it up to
        float32 rounding; isolated rows (empty in M) come out exactly c·X, or X with
        ``passthrough_isolated``.
        """
        c = self.isolated_scale
        Y = head
        for step in range(self.L):
            if step < self.L - 1 or row_scale is not None:
                Y = torch.addmm(head, M, Y)
            else:  # fold the final c into the last product
                Y = torch.addmm(head, M, Y, beta=c, alpha=c)
        return Y if row_scale is None else Y.mul_(row_scale)

    def _fused_coefficients(self, view):
        """Per-snapshot cache: (n, 1) factors s, β·s, β·s², the final row scale, and ``β·Ã``
        as one CSR where the view offers it (then the row scale is None unless
        ``passthrough_isolated``, as c is folded into the last product)."""
        cached = self._coefficients
        if cached is not None and cached[0] is view:
            return cached[1]
        s = view.inv_sqrt_degree.to(torch.float32)
        c = self.isolated_scale
        if self.passthrough_isolated:
            row_scale = torch.where(s == 0, torch.ones_like(s), torch.full_like(s, c))
        else:
            row_scale = torch.full_like(s, c)
        M = None
        if hasattr(view, "normalized_adjacency"):
            # One O(nnz) build per snapshot. A snapshot with pending increments answers None
            # (online, where snapshots change every micro-batch): the fused form below then.
            M = view.normalized_adjacency(self.beta)
            if M is not None and not self.passthrough_isolated:
                row_scale = None
        coefficients = (s, s * self.beta, s * s * self.beta, row_scale, M)
        self._coefficients = (view, coefficients)
        return coefficients

    def __repr__(self) -> str:
        return (
            f"Smoother(beta={self.beta}, L={self.L}, variant={self.variant!r}, "
            f"passthrough_isolated={self.passthrough_isolated})"
        )


def _isolated_rows(view: Propagator, n: int) -> torch.Tensor:
    """Boolean mask of the graph's nodes without edges."""
    if hasattr(view, "isolated_mask"):
        return view.isolated_mask()
    ones = torch.ones(n, 1)
    return view.propagate(ones).view(-1) == 0
