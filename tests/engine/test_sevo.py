"""ψ against the dense formula and its properties (docs/design.md)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.sevo import Smoother, isolated_scale
from graph_store import ItemGraph

torch.set_default_dtype(torch.float32)


def two_component_graph(seed: int = 0, n: int = 30) -> tuple[ItemGraph, np.ndarray]:
    """Two random connected components plus isolated nodes 0 and n-1."""
    rng = np.random.default_rng(seed)
    g = ItemGraph(n)
    A = np.zeros((n, n))
    for lo, hi in [(1, 15), (15, n - 1)]:
        nodes = np.arange(lo, hi)
        chain_src, chain_dst = nodes[:-1], nodes[1:]  # a path keeps the component connected
        extra_src = rng.integers(lo, hi, 25)
        extra_dst = rng.integers(lo, hi, 25)
        src = np.concatenate([chain_src, extra_src])
        dst = np.concatenate([chain_dst, extra_dst])
        w = rng.uniform(0.5, 2.0, src.size)
        g.add_edges(src, dst, w)
        for i, j, x in zip(src, dst, w):
            if i != j:
                A[i, j] += x
                A[j, i] += x
    return g, A


def dense_psi(A: np.ndarray, X: np.ndarray, beta: float, L: int) -> np.ndarray:
    d = A.sum(1)
    s = np.where(d > 0, 1 / np.sqrt(np.where(d > 0, d, 1)), 0)
    At = s[:, None] * A * s[None, :]
    total = sum(beta**l * np.linalg.matrix_power(At, l) for l in range(L + 1))
    return (1 - beta) / (1 - beta ** (L + 1)) * total @ X


def dense_psi_matrix(A, beta, L):
    return dense_psi(A, np.eye(A.shape[0]), beta, L)


@pytest.mark.parametrize(("beta", "L"), [(0.99, 3), (0.5, 1), (0.9, 6)])
def test_neumann_equals_dense_formula(beta, L):
    g, A = two_component_graph()
    X = torch.randn(A.shape[0], 5, generator=torch.Generator().manual_seed(1))
    got = Smoother(g, beta=beta, L=L)(X)
    np.testing.assert_allclose(
        got.numpy(), dense_psi(A, X.double().numpy(), beta, L), rtol=1e-4, atol=1e-5
    )


def test_psi_is_symmetric_positive_definite_with_response_in_unit_interval():
    g, A = two_component_graph()
    n = A.shape[0]
    psi = Smoother(g, beta=0.99, L=3)
    M = psi(torch.eye(n)).double().numpy()  # ψ applied to the identity = its matrix
    np.testing.assert_allclose(M, M.T, atol=1e-5)
    eig = np.linalg.eigvalsh((M + M.T) / 2)
    assert eig.min() > 0, "ψ must be positive definite"
    assert eig.max() <= 1 + 1e-4, "h(λ) ≤ 1"
    X = torch.randn(n, 4)
    assert float((psi(X) * X).sum()) > 0


def test_smoothing_never_increases_the_dirichlet_energy():
    g, A = two_component_graph(seed=3)
    n = A.shape[0]
    d = A.sum(1)
    s = np.where(d > 0, 1 / np.sqrt(np.where(d > 0, d, 1)), 0)
    laplacian = np.eye(n) - s[:, None] * A * s[None, :]
    psi = Smoother(g)
    for seed in range(5):
        X = torch.randn(n, 3, generator=torch.Generator().manual_seed(seed))
        Y = psi(X).double().numpy()
        Xd = X.double().numpy()
        assert np.trace(Y.T @ laplacian @ Y) <= np.trace(Xd.T @ laplacian @ Xd) + 1e-6


def test_sqrt_degree_vector_of_a_component_is_a_fixed_point():
    g, A = two_component_graph()
    d = A.sum(1)
    for comp in [np.arange(1, 15), np.arange(15, A.shape[0] - 1)]:
        x = np.zeros((A.shape[0], 1))
        x[comp, 0] = np.sqrt(d[comp])
        out = Smoother(g, beta=0.99, L=3)(torch.from_numpy(x).float())
        np.testing.assert_allclose(out.numpy(), x, rtol=1e-4, atol=1e-5)


def test_isolated_rows_are_scaled_by_c():
    g, A = two_component_graph()
    X = torch.randn(A.shape[0] + 3, 2)  # 3 rows the graph has not seen yet: also isolated
    out = Smoother(g, beta=0.99, L=3)(X)
    c = isolated_scale(0.99, 3)
    assert c == pytest.approx(0.2538, abs=1e-4)
    for row in [0, A.shape[0] - 1, A.shape[0], A.shape[0] + 2]:
        torch.testing.assert_close(out[row], X[row] * c)


def test_passthrough_isolated_gives_new_rows_their_full_update():
    g, A = two_component_graph()
    X = torch.randn(A.shape[0] + 2, 2)
    out = Smoother(g, passthrough_isolated=True)(X)
    plain = Smoother(g)(X)
    for row in [0, A.shape[0] - 1, A.shape[0], A.shape[0] + 1]:
        torch.testing.assert_close(out[row], X[row])
    torch.testing.assert_close(out[1:-3], plain[1:-3])


@pytest.mark.parametrize("L", [0, 1, 2, 5])
def test_iterative_variant_really_runs_L_steps(L):
    g, A = two_component_graph()
    n = A.shape[0]
    beta = 0.8
    d = A.sum(1)
    s = np.where(d > 0, 1 / np.sqrt(np.where(d > 0, d, 1)), 0)
    At = s[:, None] * A * s[None, :]
    X = np.random.default_rng(0).normal(size=(n, 3))
    S = X.copy()
    for _ in range(L):
        S = beta * At @ S + (1 - beta) * X
    got = Smoother(g, beta=beta, L=L, variant="iterative")(torch.from_numpy(X).float())
    np.testing.assert_allclose(got.numpy(), S, rtol=1e-4, atol=1e-5)
    if L >= 2:  # a one-step implementation would give a different answer
        one = beta * At @ X + (1 - beta) * X
        assert not np.allclose(got.numpy(), one, atol=1e-3)


def test_identity_when_beta_or_L_is_zero():
    g, _ = two_component_graph()
    X = torch.randn(30, 4)
    assert torch.equal(Smoother(g, beta=0.0)(X), X)
    assert torch.equal(Smoother(g, L=0)(X), X)


def test_smoother_reads_one_consistent_snapshot_per_call():
    g, _ = two_component_graph()
    psi = Smoother(g)
    X = torch.randn(30, 2)
    first = psi(X)
    g.add_edges([0], [1], [100.0])
    assert not torch.allclose(psi(X), first), "a later call sees the new edges"
    assert torch.allclose(Smoother(g.snapshot())(X), psi(X))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"beta": 1.0}, "beta"),
        ({"beta": -0.1}, "beta"),
        ({"L": -1}, "L must be"),
        ({"L": 2.0}, "L must be"),
        ({"variant": "exact"}, "variant"),
    ],
)
def test_bad_arguments(kwargs, message):
    g, _ = two_component_graph()
    with pytest.raises(ValueError, match=message):
        Smoother(g, **kwargs)


def test_table_smaller_than_graph_is_an_error():
    g, _ = two_component_graph()
    with pytest.raises(ValueError, match="only 10 rows"):
        Smoother(g)(torch.randn(10, 2))


class _PropagateOnly:
    """A view with only ``propagate``: forces the generic (unfused) Neumann path."""

    def __init__(self, view) -> None:
        self.view = view
        self.num_nodes = view.num_nodes

    def propagate(self, X):
        return self.view.propagate(X)

    def isolated_mask(self):
        return self.view.isolated_mask()


@pytest.mark.parametrize("passthrough", [False, True])
@pytest.mark.parametrize(("beta", "L"), [(0.99, 3), (0.5, 1), (0.9, 2), (0.8, 5)])
@pytest.mark.parametrize("extra_rows", [0, 3])
def test_fused_neumann_path_equals_the_generic_path(passthrough, beta, L, extra_rows):
    g, _ = two_component_graph(seed=4)
    g.merge()
    g.add_edges([3, 20], [5, 21], [0.7, 1.3])  # a pending part next to the base CSR
    g.grow(33)  # nodes the base CSR predates (isolated)
    snap = g.snapshot()
    assert snap._pending is not None and g._base.shape[0] < snap.num_nodes
    X = torch.randn(33 + extra_rows, 6, generator=torch.Generator().manual_seed(5))
    fused = Smoother(snap, beta=beta, L=L, passthrough_isolated=passthrough)
    generic = Smoother(_PropagateOnly(snap), beta=beta, L=L, passthrough_isolated=passthrough)
    got, expected = fused(X), generic(X)
    assert got.dtype == X.dtype and got.shape == X.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    isolated = [0, 29, 30, 31, 32, *range(33, 33 + extra_rows)]
    factor = 1.0 if passthrough else isolated_scale(beta, L)
    assert torch.equal(got[isolated], X[isolated] * factor), "isolated rows: exact"
    again = fused(X)  # cached coefficients of the same snapshot
    assert torch.equal(again, got)


def test_fused_path_keeps_float64_tables_and_follows_a_new_snapshot():
    g, A = two_component_graph(seed=6)
    psi = Smoother(g)
    X = torch.randn(30, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    got = psi(X)
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), dense_psi(A, X.numpy(), 0.99, 3), rtol=1e-4, atol=1e-5)
    g.add_edges([1], [20], [5.0])  # joins the components: the cached factors must not be reused
    A[1, 20] += 5.0
    A[20, 1] += 5.0
    np.testing.assert_allclose(
        psi(X).numpy(), dense_psi(A, X.numpy(), 0.99, 3), rtol=1e-4, atol=1e-5
    )


@pytest.mark.parametrize("passthrough", [False, True])
@pytest.mark.parametrize(("beta", "L"), [(0.99, 3), (0.5, 1), (0.8, 5)])
@pytest.mark.parametrize("extra_rows", [0, 3])
def test_merged_snapshot_horner_path_equals_the_generic_path(passthrough, beta, L, extra_rows):
    """A snapshot without pending increments hands ψ one normalized CSR (β·Ã); Horner's form
    over it gives the same ψ as the generic path, and exact isolated rows."""
    g, A = two_component_graph(seed=8)
    g.merge()
    g.grow(33)  # nodes the base CSR predates (isolated)
    snap = g.snapshot()
    assert snap._pending is None and snap.normalized_adjacency(beta) is not None
    X = torch.randn(33 + extra_rows, 6, generator=torch.Generator().manual_seed(9))
    horner = Smoother(snap, beta=beta, L=L, passthrough_isolated=passthrough)
    generic = Smoother(_PropagateOnly(snap), beta=beta, L=L, passthrough_isolated=passthrough)
    got = horner(X)
    assert got.dtype == X.dtype and got.shape == X.shape
    torch.testing.assert_close(got, generic(X), rtol=1e-5, atol=1e-6)
    if not passthrough:
        dense = dense_psi(A, X[:30].double().numpy(), beta, L)
        np.testing.assert_allclose(got[:30].numpy(), dense, rtol=1e-4, atol=1e-5)
    isolated = [0, 29, 30, 31, 32, *range(33, 33 + extra_rows)]
    factor = 1.0 if passthrough else isolated_scale(beta, L)
    assert torch.equal(got[isolated], X[isolated] * factor), "isolated rows: exact"
    assert torch.equal(horner(X), got), "the cached matrix of the same snapshot"
