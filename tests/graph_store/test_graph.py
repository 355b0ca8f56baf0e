"""ItemGraph against dense reference computations on small random graphs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from graph_store import ItemGraph


def dense_normalised(A: np.ndarray) -> np.ndarray:
    d = A.sum(axis=1)
    s = np.where(d > 0, 1.0 / np.sqrt(np.where(d > 0, d, 1.0)), 0.0)
    return s[:, None] * A * s[None, :]


def random_edges(rng: np.random.Generator, n: int, m: int):
    src = rng.integers(0, n, m)
    dst = rng.integers(0, n, m)
    w = rng.uniform(0.1, 3.0, m)
    return src, dst, w


def dense_from_edges(n, src, dst, w):
    A = np.zeros((n, n))
    for i, j, x in zip(src, dst, w):
        if i != j:
            A[i, j] += x
            A[j, i] += x
    return A


@pytest.mark.parametrize("merge_fraction", [1e-9, 0.05, 1e9])
def test_propagate_matches_dense_reference(merge_fraction):
    rng = np.random.default_rng(0)
    n = 40
    g = ItemGraph(n, merge_fraction=merge_fraction, min_merge=1 if merge_fraction < 1 else 10**9)
    A = np.zeros((n, n))
    for _ in range(5):  # several batches: exercises base CSR + pending buffer together
        src, dst, w = random_edges(rng, n - 3, 30)  # the last 3 nodes stay isolated
        g.add_edges(src, dst, w)
        A += dense_from_edges(n, src, dst, w)
    X = torch.from_numpy(rng.normal(size=(n, 7)).astype(np.float32))
    expected = dense_normalised(A) @ X.numpy()
    got = g.propagate(X)
    assert got.dtype == torch.float32 and got.shape == X.shape
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-5)
    assert torch.all(got[-3:] == 0), "isolated nodes must give zero rows (no self-loops)"
    np.testing.assert_allclose(g.to_scipy().toarray(), A, rtol=1e-12)
    np.testing.assert_allclose(g.degree(), A.sum(axis=1), rtol=1e-12)


def test_self_loops_are_dropped_and_graph_grows():
    g = ItemGraph(2)
    g.add_edges([0, 1, 4], [0, 1, 2], [5.0, 5.0, 2.0])
    assert g.num_nodes == 5
    A = g.to_scipy().toarray()
    assert np.all(np.diag(A) == 0)
    assert A[4, 2] == A[2, 4] == 2.0
    assert g.propagate(torch.ones(5, 1))[0, 0] == 0


def test_decayed_graph_equals_explicitly_decayed_dense_weights():
    rng = np.random.default_rng(1)
    n, half_life = 25, 3600.0
    g = ItemGraph(n, half_life=half_life)
    src, dst, w = random_edges(rng, n, 200)
    times = 1.7e9 + rng.uniform(0, 5 * 86400, 200)  # 5 days: weights span ~2^-120 .. 1
    for part in np.array_split(np.arange(200), 4):
        g.add_edges(src[part], dst[part], w[part], time=times[part])
    t_star = times.max()
    decayed = w * np.power(0.5, (t_star - times) / half_life)
    A = dense_from_edges(n, src, dst, decayed)
    np.testing.assert_allclose(g.to_scipy().toarray(), A, rtol=1e-9, atol=1e-300)
    np.testing.assert_allclose(g.degree(), A.sum(axis=1), rtol=1e-9)
    X = torch.from_numpy(rng.normal(size=(n, 4)).astype(np.float32))
    np.testing.assert_allclose(
        g.propagate(X).numpy(), dense_normalised(A) @ X.numpy(), rtol=1e-4, atol=1e-5
    )


def test_half_life_halves_an_edge():
    g = ItemGraph(3, half_life=10.0)
    g.add_edges([0], [1], [8.0], time=100.0)
    g.add_edges([1], [2], [1.0], time=130.0)  # three half-lives later
    A = g.to_scipy().toarray()
    assert A[0, 1] == pytest.approx(1.0)
    assert A[1, 2] == pytest.approx(1.0)


def test_no_decay_ignores_time():
    g = ItemGraph(3)
    g.add_edges([0], [1], [2.0], time=0.0)
    g.add_edges([1], [2], [2.0], time=1e9)
    assert g.to_scipy()[0, 1] == 2.0 and g.t_latest == 1e9


def test_landmark_rebase_keeps_values_finite_over_long_horizons():
    g = ItemGraph(4, half_life=60.0)
    for day in range(30):  # 30 days at a 1-minute half-life: e^(λt) would overflow float64
        g.add_edges([0, 2], [1, 3], [1.0, 1.0], time=day * 86400.0)
    assert np.all(np.isfinite(g.raw_degree()))
    assert g.to_scipy()[0, 1] == pytest.approx(1.0)  # only the last increment survives
    out = g.propagate(torch.ones(4, 1))
    assert torch.all(torch.isfinite(out))


def test_compaction_prunes_keeps_symmetry_and_exact_degrees():
    rng = np.random.default_rng(2)
    n = 60
    g = ItemGraph(n, half_life=100.0)
    src, dst, w = random_edges(rng, n, 600)
    g.add_edges(src, dst, w, time=rng.uniform(0, 1000, 600))
    before = g.to_scipy().toarray()
    X = torch.randn(n, 3)
    stats = g.compact(min_weight=0.05, top_k=4)
    A = g.to_scipy().toarray()
    np.testing.assert_allclose(A, A.T)
    np.testing.assert_allclose(g.degree(), A.sum(axis=1), rtol=1e-12)
    assert np.all((A == 0) | (A >= 0.05))
    assert np.all((A == 0) | np.isclose(A, before))  # kept edges keep their weight
    for i in range(n):  # every node keeps its strongest surviving neighbour
        row = np.where(before[i] >= 0.05, before[i], 0)
        if row.max() > 0:
            assert A[i, row.argmax()] > 0
    assert stats["nnz_after"] < stats["nnz_before"]
    np.testing.assert_allclose(
        g.propagate(X).numpy(), dense_normalised(A) @ X.numpy(), rtol=1e-4, atol=1e-5
    )


def test_snapshot_is_isolated_from_later_writes():
    g = ItemGraph(5)
    g.add_edges([0, 1], [1, 2])
    snap = g.snapshot()
    X = torch.randn(5, 2)
    before = snap.propagate(X).clone()
    g.add_edges([2, 3, 0], [3, 4, 4], [5.0, 1.0, 2.0])
    g.grow(8)
    g.compact(top_k=1)
    assert snap.num_nodes == 5
    assert torch.equal(snap.propagate(X), before)
    assert g.snapshot().version > snap.version
    snap.validate()
    assert g.snapshot() is g.snapshot(), "snapshots are cached until the next change"


def test_save_load_round_trip_is_exact(tmp_path):
    rng = np.random.default_rng(3)
    g = ItemGraph(30, half_life=500.0, min_merge=50)
    for step in range(6):
        src, dst, w = random_edges(rng, 30, 40)
        g.add_edges(src, dst, w, time=1000.0 + 100 * step)
    g.add_edges([3, 4], [5, 6], [1.0, 2.0], time=1650.0)  # stays in the pending buffer
    assert g._pending_nnz > 0, "round trip must cover pending increments"
    path = tmp_path / "graph.npz"
    g.save(path)
    h = ItemGraph.load(path)
    assert (h.num_nodes, h.half_life, h.t0, h.t_latest, h.version) == (
        g.num_nodes,
        g.half_life,
        g.t0,
        g.t_latest,
        g.version,
    )
    assert (h.to_scipy(raw=True) != g.to_scipy(raw=True)).nnz == 0
    np.testing.assert_array_equal(h.raw_degree(), g.raw_degree())
    X = torch.randn(30, 4)
    assert torch.equal(h.propagate(X), g.propagate(X))
    # Both continue identically.
    g.add_edges([1], [2], 1.0, time=2000.0)
    h.add_edges([1], [2], 1.0, time=2000.0)
    assert (h.to_scipy() != g.to_scipy()).nnz == 0
    assert not list(tmp_path.glob("*.tmp")), "atomic write leaves no temp files"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"src": [0, 1], "dst": [1]}, "same length"),
        ({"src": [-1], "dst": [1]}, "negative node id"),
        ({"src": [0], "dst": [1], "weight": [-1.0]}, "non-negative"),
        ({"src": [0], "dst": [1], "weight": [float("nan")]}, "NaN"),
        ({"src": [0], "dst": [1], "time": [float("inf")]}, "time"),
        ({"src": [0.5], "dst": [1]}, "integer"),
        ({"src": [[0]], "dst": [[1]]}, "1-D"),
    ],
)
def test_bad_arguments_raise_and_leave_graph_unchanged(kwargs, message):
    g = ItemGraph(3, half_life=10.0)
    g.add_edges([0], [1], time=5.0)
    state = (g.version, g.num_nodes, g.to_scipy().toarray().copy(), g.t_latest)
    with pytest.raises(ValueError, match=message):
        g.add_edges(**kwargs)
    assert state[0] == g.version and state[1] == g.num_nodes and state[3] == g.t_latest
    np.testing.assert_array_equal(state[2], g.to_scipy().toarray())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_nodes": -1}, "num_nodes"),
        ({"half_life": 0.0}, "half_life"),
        ({"half_life": math.nan}, "half_life"),
    ],
)
def test_bad_constructor_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ItemGraph(**kwargs)


def test_propagate_rejects_wrong_shape():
    g = ItemGraph(4)
    with pytest.raises(ValueError, match=r"\(4, k\)"):
        g.propagate(torch.ones(3, 2))


edge_batches = st.lists(
    st.tuples(
        st.lists(
            st.tuples(st.integers(0, 14), st.integers(0, 14), st.floats(0.0, 10.0)),
            min_size=0,
            max_size=20,
        ),
        st.floats(0.0, 1e5),
    ),
    min_size=1,
    max_size=6,
)


@settings(max_examples=60, deadline=None)
@given(
    batches=edge_batches,
    half_life=st.one_of(st.none(), st.floats(1.0, 1e5)),
    min_weight=st.floats(0.0, 1.0),
    top_k=st.one_of(st.none(), st.integers(1, 5)),
)
def test_graph_invariants_hold_for_any_batches(batches, half_life, min_weight, top_k):
    g = ItemGraph(0, half_life=half_life, min_merge=7)
    for edges, t in batches:
        if edges:
            src, dst, w = map(np.array, zip(*edges))
            g.add_edges(src.astype(np.int64), dst.astype(np.int64), w, time=t)
        A = g.to_scipy().toarray()
        np.testing.assert_allclose(A, A.T)  # symmetric
        assert np.all(np.diag(A) == 0)  # no self-loops
        assert np.all(A >= 0)
        np.testing.assert_allclose(g.degree(), A.sum(axis=1), rtol=1e-9, atol=1e-12)  # d == A·1
    g.compact(min_weight=min_weight, top_k=top_k)
    A = g.to_scipy().toarray()
    np.testing.assert_allclose(A, A.T)
    np.testing.assert_allclose(g.degree(), A.sum(axis=1), rtol=1e-9, atol=1e-12)
    if g.num_nodes:
        # Spectrum of Ã within [-1, 1]: ‖Ã x‖ ≤ ‖x‖ for a random x.
        x = torch.randn(g.num_nodes, 1, dtype=torch.float32)
        assert g.propagate(x).norm() <= x.norm() * (1 + 1e-4)


def test_snapshot_merges_the_pending_buffer_once_it_passes_merge_fraction():
    rng = np.random.default_rng(7)
    n = 40
    # min_merge keeps add_edges from merging: only snapshots do.
    g = ItemGraph(n, merge_fraction=0.25, min_merge=10**9)
    A = np.zeros((n, n))
    src, dst, w = random_edges(rng, n, 200)
    g.add_edges(src, dst, w)
    A += dense_from_edges(n, src, dst, w)
    X = torch.from_numpy(rng.normal(size=(n, 5)).astype(np.float32))
    snap = g.snapshot()  # pending > 25% of an empty base: merged
    assert g._pending_nnz == 0 and snap._pending is None
    np.testing.assert_allclose(
        snap.propagate(X).numpy(), dense_normalised(A) @ X.numpy(), rtol=1e-5, atol=1e-5
    )
    src, dst, w = random_edges(rng, n, 10)
    g.add_edges(src, dst, w)
    A += dense_from_edges(n, src, dst, w)
    snap = g.snapshot()  # a small buffer stays apart: no O(nnz) rewrite for it
    assert g._pending_nnz > 0 and snap._pending is not None
    np.testing.assert_allclose(
        snap.propagate(X).numpy(), dense_normalised(A) @ X.numpy(), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(g.to_scipy().toarray(), A, rtol=1e-12)


def test_adjacency_mm_and_inv_sqrt_degree_compose_to_propagate():
    rng = np.random.default_rng(8)
    g = ItemGraph(20, half_life=100.0, min_merge=10**9, merge_fraction=10.0)
    g.add_edges(*random_edges(rng, 18, 60), time=1000.0)
    g.merge()
    g.add_edges(*random_edges(rng, 18, 5), time=1300.0)  # pending, in later decay units
    g.grow(25)
    snap = g.snapshot()
    assert snap._pending is not None and g._base.shape[0] < snap.num_nodes
    assert tuple(snap._base.shape) == (25, 25), "the base CSR is padded to the grown size"
    X = torch.from_numpy(rng.normal(size=(25, 4)).astype(np.float32))
    s = snap.inv_sqrt_degree
    assert s.shape == (25, 1) and s.dtype == torch.float32
    assert torch.equal(s.view(-1) == 0, snap.isolated_mask())
    composed = s * snap.adjacency_mm(s * X)
    torch.testing.assert_close(composed, snap.propagate(X))
    np.testing.assert_allclose(
        composed.numpy(),
        dense_normalised(g.to_scipy().toarray()) @ X.numpy(),
        rtol=1e-5,
        atol=1e-5,
    )


def test_normalized_adjacency_of_a_merged_snapshot():
    rng = np.random.default_rng(9)
    g = ItemGraph(20, half_life=100.0)
    g.add_edges(*random_edges(rng, 18, 60), time=1000.0)
    g.merge()
    g.grow(25)  # isolated nodes the base CSR predates
    snap = g.snapshot()
    M = snap.normalized_adjacency(0.7)
    assert M.layout == torch.sparse_csr and M.dtype == torch.float32 and M.shape == (25, 25)
    np.testing.assert_allclose(
        M.to_dense().numpy(), 0.7 * dense_normalised(g.to_scipy().toarray()), rtol=1e-6, atol=1e-7
    )
    X = torch.from_numpy(rng.normal(size=(25, 3)).astype(np.float32))
    torch.testing.assert_close(M @ X, 0.7 * snap.propagate(X))
    g.add_edges([1], [2], time=1100.0)  # a pending part: the store does not merge it for readers
    assert g.snapshot()._pending is not None and g.snapshot().normalized_adjacency() is None


# ---------------------------------------------------------------------- incremental pending sums
def _pending_csr(g: ItemGraph) -> torch.Tensor | None:
    return g.snapshot()._pending


def _scipy_pending(g: ItemGraph, scale: float) -> torch.Tensor:
    """The pending CSR built from scratch out of the raw increments (the pre-incremental way)."""
    import scipy.sparse as sp

    from graph_store.graph import _torch_csr

    rows, cols, vals = g._pending_coo()
    return _torch_csr(sp.csr_matrix((vals, (rows, cols)), shape=(g.num_nodes, g.num_nodes)), scale)


def _same_csr(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (
        a.shape == b.shape
        and torch.equal(a.crow_indices(), b.crow_indices())
        and torch.equal(a.col_indices(), b.col_indices())
        and torch.equal(a.values(), b.values())
    )


def test_fold_sorted_sums_each_key_in_arrival_order_whatever_the_chunking():
    from graph_store.graph import _fold_sorted

    # 1e16 + 1 rounds back to 1e16 in float64, so only a strictly sequential sum gives 1e16 here
    # (any other grouping adds 1 + 1 = 2 first and gives 1e16 + 2).
    keys = np.array([7, 3, 7, 7, 3], dtype=np.int64)
    vals = np.array([1e16, 0.5, 1.0, 1.0, 0.25])
    k, v = _fold_sorted(np.zeros(0, np.int64), np.zeros(0), keys, vals)
    assert k.tolist() == [3, 7] and v.tolist() == [0.75, 1e16]
    k1, v1 = _fold_sorted(np.zeros(0, np.int64), np.zeros(0), keys[:2], vals[:2])
    k2, v2 = _fold_sorted(k1, v1, keys[2:], vals[2:])
    assert k2.tolist() == k.tolist() and v2.tolist() == v.tolist()


@pytest.mark.parametrize("half_life", [None, 3600.0])
def test_incremental_pending_csr_equals_a_from_scratch_build_and_any_snapshot_cadence(half_life):
    rng = np.random.default_rng(3)
    kw = {"merge_fraction": 1e9, "min_merge": 10**9}  # never merge: pending grows throughout
    every = ItemGraph(4, half_life, **kw)  # a snapshot after every batch
    once = ItemGraph(4, half_life, **kw)  # a snapshot only at the end
    for g in (every, once):  # a non-empty base, or the first snapshot merges everything
        g.add_edges([0, 1], [1, 2], 1.0, 0.0)
        g.merge()
    for step in range(12):
        n = 6 + 3 * step  # the graph grows between batches
        src, dst, w = random_edges(rng, n, 40)  # many repeated pairs
        t = 1000.0 * step + rng.uniform(0, 100, src.size)
        for g in (every, once):
            g.add_edges(src, dst, w / 3.0, t)  # non-dyadic weights: rounding would show
        snap = every.snapshot()
        scale = float(every.raw_degree().max())
        assert _same_csr(snap._pending, _scipy_pending(every, scale))
    # (Only the pending part: the float32 base copy keeps the scale of the snapshot that built
    # it, so whole products depend on the snapshot cadence, as they always have.)
    assert _same_csr(_pending_csr(once), _pending_csr(every))
    X = torch.from_numpy(rng.normal(size=(every.num_nodes, 5)).astype(np.float32))
    # A graph restored from its state arrays sums the same increments to the same bits ...
    restored = ItemGraph.from_state_arrays(every.state_arrays())
    assert _same_csr(_pending_csr(restored), _pending_csr(every))
    # ... and keeps doing so after more increments.
    src, dst, w = random_edges(rng, every.num_nodes, 30)
    for g in (every, restored):
        g.add_edges(src, dst, w / 7.0, 20_000.0)
    assert _same_csr(_pending_csr(restored), _pending_csr(every))
    assert torch.equal(restored.propagate(X), every.propagate(X))


def test_merge_folds_the_summed_pending_into_the_base_exactly():
    rng = np.random.default_rng(4)
    g = ItemGraph(5, merge_fraction=1e9, min_merge=10**9)
    g.add_edges([0, 1], [1, 2], [1.0, 2.0])
    g.merge()
    edges = [(np.array([0, 1]), np.array([1, 2]), np.array([1.0, 2.0]))]
    for step in range(6):
        src, dst, w = random_edges(rng, 8 + 4 * step, 30)
        g.add_edges(src, dst, w / 3.0)
        g.snapshot()  # sums part of the pending buffer before the merge
        edges.append((src, dst, w / 3.0))
    reference = g.to_scipy(raw=True)
    g.merge()
    assert g._pending_nnz == 0 and g._sum_keys.size == 0 and not g._unsummed
    merged = g.to_scipy(raw=True)
    assert merged.has_canonical_format and merged.shape == reference.shape
    np.testing.assert_allclose(merged.toarray(), reference.toarray(), rtol=1e-15, atol=0)
    dense = dense_from_edges(g.num_nodes, *map(np.concatenate, zip(*edges)))
    np.testing.assert_allclose(merged.toarray(), dense, rtol=1e-12)


def test_base_resized_shares_the_base_arrays_and_adds_empty_nodes():
    g = ItemGraph(4)
    g.add_edges([0, 1, 2], [1, 2, 3], [1.0, 2.0, 3.0])
    g.merge()
    base = g._base
    g.grow(9)
    resized = g._base_resized()
    assert resized.shape == (9, 9) and resized.has_sorted_indices
    assert np.shares_memory(resized.data, base.data)
    expected = np.zeros((9, 9))
    expected[:4, :4] = base.toarray()
    np.testing.assert_array_equal(resized.toarray(), expected)
    assert base.shape == (4, 4)  # the stored base itself is untouched
