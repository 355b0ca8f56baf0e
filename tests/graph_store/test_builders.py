"""Graph builders against hand-computed graphs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from graph_store import (
    category_edges,
    combine_edges,
    graph_from_categories,
    graph_from_embeddings,
    graph_from_sequences,
    knn_edges,
    sequence_edges,
)


def dense(edges, n):
    src, dst, w = edges
    A = np.zeros((n, n))
    np.add.at(A, (src, dst), w)
    return A + A.T


def test_sequence_edges_hop_window_and_weights():
    seqs = [np.array([1, 2, 3]), np.array([2, 3]), np.array([4])]
    A = dense(sequence_edges(seqs, 5, hops=2), 5)
    expected = np.zeros((5, 5))
    for i, j, w in [(1, 2, 1.0), (2, 3, 1.0), (1, 3, 0.5), (2, 3, 1.0)]:
        expected[i, j] += w
        expected[j, i] += w
    np.testing.assert_allclose(A, expected)


def test_sequence_edges_never_cross_users_and_respect_maxlen():
    flat = np.array([1, 2, 3, 4, 5, 6])
    offsets = np.array([0, 3, 6])  # users [1,2,3] and [4,5,6]
    A = dense(sequence_edges((flat, offsets), 7, maxlen=2), 7)
    assert A[3, 4] == 0, "the last item of one user is not linked to the next user's first"
    assert A[1, 2] == 0, "item 1 is outside user 0's last 2 items"
    assert A[2, 3] == 1 and A[5, 6] == 1 and A[4, 5] == 0


def test_sequence_edges_drop_self_pairs_and_padding():
    A = dense(sequence_edges([np.array([0, 0, 3, 3, 4])], 5), 5)
    assert np.all(np.diag(A) == 0) and A[0].sum() == 0
    assert A[3, 4] == 1


def test_category_edges_count_shared_categories_and_skip_giants():
    cats = {1: [10, 20], 2: [10, 20], 3: [20], 4: [30], 5: [99], 6: [99], 7: [99]}
    A = dense(category_edges(cats, 8), 8)
    assert A[1, 2] == 2 and A[1, 3] == 1 and A[2, 3] == 1
    assert A[4].sum() == 0 and A[5, 6] == 1
    B = dense(category_edges(cats, 8, max_category_size=2), 8)
    assert B[5, 6] == 0 and B[1, 3] == 0, "categories 20 and 99 have 3 members"
    assert B[1, 2] == 1


def test_knn_edges_symmetrised_exp_weights():
    E = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [-1.0, 0.0]])
    src, dst, w = knn_edges(E, k=1, tau=0.5)
    A = dense((src, dst, w), 5)
    cos12 = float(torch.nn.functional.cosine_similarity(E[1], E[2], dim=0))
    # 1 and 2 are each other's nearest neighbour: w = ŵ12 + ŵ21 = 2·exp(−(1−cos)/τ).
    assert A[1, 2] == pytest.approx(2 * np.exp(-(1 - cos12) / 0.5), rel=1e-5)
    assert A[0].sum() == 0, "the padding row gets no edges"
    np.testing.assert_allclose(A, A.T)
    g = graph_from_embeddings(E, k=1, tau=0.5)
    assert g.num_nodes == 5 and g.degree()[0] == 0


def test_combine_edges_is_a_weighted_sum():
    a = (np.array([1]), np.array([2]), np.array([2.0]))
    b = (np.array([2, 3]), np.array([1, 1]), np.array([1.0, 4.0]))
    A = dense(combine_edges((1.0, a), (0.5, b)), 4)
    assert A[1, 2] == 2.5 and A[1, 3] == 2.0
    with pytest.raises(ValueError, match="coefficients"):
        combine_edges((-1.0, a))


def test_graph_wrappers_build_merged_graphs():
    g = graph_from_sequences([np.array([1, 2, 1])], 4)
    assert g.to_scipy()[1, 2] == 2 and g.num_nodes == 4
    h = graph_from_categories([[], [5], [5]], 3)
    assert h.to_scipy()[1, 2] == 1


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: sequence_edges([np.array([1, 9])], 5), r"lie in \[0, 5\)"),
        (lambda: sequence_edges([np.array([1])], 5, hops=0), "hops"),
        (lambda: knn_edges(np.ones((3, 2)), k=0), "k must be"),
        (lambda: knn_edges(np.ones((3, 2)), tau=0.0), "tau"),
        (lambda: category_edges({7: [1]}, 5), "category items"),
    ],
)
def test_builder_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()
