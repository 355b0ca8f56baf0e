"""Build item–item graphs from the three sources the SEvo paper uses.

Every builder returns edge lists ``(src, dst, weight)`` with ``src < dst`` (one entry per
undirected pair, duplicates already summed) via ``*_edges`` functions, and an :class:`ItemGraph`
via the matching ``graph_from_*`` convenience wrapper. Explicit ``num_nodes`` is always passed,
because items with no edges still need rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import scipy.sparse as sp
import torch

from .graph import ItemGraph

__all__ = [
    "category_edges",
    "combine_edges",
    "graph_from_categories",
    "graph_from_embeddings",
    "graph_from_sequences",
    "knn_edges",
    "sequence_edges",
]

Edges = tuple[np.ndarray, np.ndarray, np.ndarray]


def _upper_edges(A: sp.spmatrix) -> Edges:
    """Undirected pairs (i < j) of a symmetric sparse matrix, with their weights."""
    upper = sp.triu(A, k=1).tocoo()
    return upper.row.astype(np.int64), upper.col.astype(np.int64), upper.data.astype(np.float64)


def _ragged(sequences) -> tuple[np.ndarray, np.ndarray]:
    """Accept a list of 1-D arrays or a ``(flat, offsets)`` pair; return ``(flat, offsets)``."""
    if isinstance(sequences, tuple) and len(sequences) == 2:
        flat = np.asarray(sequences[0], dtype=np.int64)
        offsets = np.asarray(sequences[1], dtype=np.int64)
    else:
        seqs = [np.asarray(s, dtype=np.int64).ravel() for s in sequences]
        lengths = np.array([s.size for s in seqs], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        flat = np.concatenate(seqs) if seqs else np.zeros(0, dtype=np.int64)
    if offsets.ndim != 1 or offsets.size < 1 or offsets[0] != 0 or offsets[-1] != flat.size:
        raise ValueError("offsets must start at 0 and end at len(flat)")
    if np.any(np.diff(offsets) < 0):
        raise ValueError("offsets must be non-decreasing")
    return flat, offsets


def sequence_edges(
    sequences,
    num_nodes: int,
    *,
    hops: int = 1,
    maxlen: int | None = None,
    ignore: int | None = 0,
) -> Edges:
    """Co-occurrence edges from chronological user sequences.

    For hop h = 1..H, adds 1/h between ``x_i`` and ``x_{i+h}`` of each user's sequence, after
    truncating each sequence to its last ``maxlen`` items. With H = 1 an edge weight counts how
    often two items were adjacent. Only pass *training* items: validation/test items must never
    contribute.

    Args:
        sequences: list of 1-D item arrays (one per user, oldest first) or ``(flat, offsets)``.
        num_nodes: number of nodes (items must be < num_nodes).
        hops: the window H (>= 1).
        maxlen: keep only the last ``maxlen`` items of each sequence (None keeps all).
        ignore: an item id to skip entirely (the padding id 0 by default; None skips nothing).

    Returns:
        ``(src, dst, weight)`` with src < dst, duplicates summed; self-pairs are dropped.
    """
    if int(hops) != hops or hops < 1:
        raise ValueError(f"hops must be a positive integer, got {hops!r}")
    if maxlen is not None and (int(maxlen) != maxlen or maxlen < 1):
        raise ValueError(f"maxlen must be a positive integer or None, got {maxlen!r}")
    flat, offsets = _ragged(sequences)
    lengths = np.diff(offsets)
    owner = np.repeat(np.arange(lengths.size), lengths)
    pos_from_end = np.repeat(offsets[1:], lengths) - np.arange(flat.size) - 1
    keep = np.ones(flat.size, dtype=bool)
    if maxlen is not None:
        keep &= pos_from_end < maxlen
    if ignore is not None:
        keep &= flat != ignore
    flat, owner = flat[keep], owner[keep]
    if flat.size and (flat.min() < 0 or flat.max() >= num_nodes):
        raise ValueError(
            f"sequence items must lie in [0, {num_nodes}), got [{flat.min()}, {flat.max()}]"
        )
    src_parts, dst_parts, w_parts = [], [], []
    for h in range(1, int(hops) + 1):
        same_user = owner[:-h] == owner[h:] if flat.size > h else np.zeros(0, dtype=bool)
        a, b = flat[:-h][same_user], flat[h:][same_user]
        src_parts.append(a)
        dst_parts.append(b)
        w_parts.append(np.full(a.size, 1.0 / h))
    src = np.concatenate(src_parts)
    dst = np.concatenate(dst_parts)
    w = np.concatenate(w_parts)
    not_loop = src != dst
    src, dst, w = src[not_loop], dst[not_loop], w[not_loop]
    lo, hi = np.minimum(src, dst), np.maximum(src, dst)
    A = sp.coo_matrix((w, (lo, hi)), shape=(num_nodes, num_nodes)).tocsr()
    A.sum_duplicates()
    coo = A.tocoo()
    return coo.row.astype(np.int64), coo.col.astype(np.int64), coo.data.astype(np.float64)


def category_edges(
    item_categories: Mapping[int, Sequence[int]] | Sequence[Sequence[int]],
    num_nodes: int,
    *,
    max_category_size: int | None = None,
) -> Edges:
    """Intra-class edges: items sharing categories, weight = number of shared categories.

    Args:
        item_categories: ``{item: [category, ...]}`` or a list indexed by item.
        num_nodes: number of nodes.
        max_category_size: skip categories with more members than this (a category holding most
            of the catalogue links everything to everything and tells the optimizer little, while
            costing size² edges). None keeps all.
    """
    if isinstance(item_categories, Mapping):
        pairs = [(int(i), list(c)) for i, c in item_categories.items()]
    else:
        pairs = [(i, list(c)) for i, c in enumerate(item_categories)]
    items = np.array([i for i, cats in pairs for _ in cats], dtype=np.int64)
    cats = np.array([c for _, cats in pairs for c in cats], dtype=np.int64)
    if items.size and (items.min() < 0 or items.max() >= num_nodes):
        raise ValueError(f"category items must lie in [0, {num_nodes})")
    if cats.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0)
    _, cat_index = np.unique(cats, return_inverse=True)
    M = sp.csr_matrix(
        (np.ones(items.size), (items, cat_index)), shape=(num_nodes, int(cat_index.max()) + 1)
    )
    M.data[:] = 1.0  # an item listed twice in one category still counts once
    M.sum_duplicates()
    M.data[:] = 1.0
    if max_category_size is not None:
        sizes = np.asarray(M.sum(axis=0)).ravel()
        M = M[:, np.flatnonzero(sizes <= max_category_size)]
    return _upper_edges((M @ M.T).tocsr())


def knn_edges(
    embeddings: np.ndarray | torch.Tensor,
    k: int = 10,
    *,
    tau: float = 1.0,
    skip_rows: Sequence[int] = (0,),
    block_size: int = 4096,
) -> Edges:
    """Knowledge-distillation graph: symmetrised kNN over a teacher's item embeddings.

    ``d_ij = 1 − cos(e_i, e_j)``; ``ŵ_ij = exp(−d_ij / τ)`` for j among i's k nearest neighbours
    (excluding i); ``w_ij = ŵ_ij + ŵ_ji``. Computed in row blocks with dense matrix
    products, so memory is O(block_size · N).

    Args:
        embeddings: (N, D) teacher item embeddings.
        k: neighbours per item.
        tau: temperature (> 0).
        skip_rows: rows that get no edges (the padding row 0 by default).
        block_size: rows per block.
    """
    if int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau!r}")
    E = torch.as_tensor(np.asarray(embeddings) if not torch.is_tensor(embeddings) else embeddings)
    E = E.detach().to(torch.float32)
    if E.dim() != 2:
        raise ValueError(f"embeddings must be (N, D), got shape {tuple(E.shape)}")
    n = E.shape[0]
    k = min(int(k), n - 1)
    if k < 1:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0)
    unit = torch.nn.functional.normalize(E, dim=1)
    skip = torch.zeros(n, dtype=torch.bool)
    skip[list(skip_rows)] = True
    rows, cols, vals = [], [], []
    for start in range(0, n, block_size):
        stop = min(n, start + block_size)
        sims = unit[start:stop] @ unit.T  # (b, N)
        sims[:, skip] = -float("inf")
        sims[torch.arange(stop - start), torch.arange(start, stop)] = -float("inf")
        top, idx = sims.topk(k, dim=1)  # (b, k)
        block_rows = torch.arange(start, stop).unsqueeze(1).expand(-1, k)
        valid = torch.isfinite(top) & ~skip[start:stop].unsqueeze(1)
        rows.append(block_rows[valid])
        cols.append(idx[valid])
        vals.append(torch.exp(-(1.0 - top[valid]) / tau))
    W = sp.coo_matrix(
        (torch.cat(vals).double().numpy(), (torch.cat(rows).numpy(), torch.cat(cols).numpy())),
        shape=(n, n),
    ).tocsr()
    return _upper_edges((W + W.T).tocsr())


def _graph_from_edges(edges: Edges, num_nodes: int, half_life: float | None) -> ItemGraph:
    graph = ItemGraph(num_nodes, half_life)
    src, dst, w = edges
    graph.add_edges(src, dst, w)
    graph.merge()
    return graph


def graph_from_sequences(
    sequences,
    num_nodes: int,
    *,
    hops: int = 1,
    maxlen: int | None = None,
    half_life: float | None = None,
) -> ItemGraph:
    """An :class:`ItemGraph` from user sequences (see :func:`sequence_edges`)."""
    return _graph_from_edges(
        sequence_edges(sequences, num_nodes, hops=hops, maxlen=maxlen), num_nodes, half_life
    )


def graph_from_categories(
    item_categories,
    num_nodes: int,
    *,
    max_category_size: int | None = None,
    half_life: float | None = None,
) -> ItemGraph:
    """An :class:`ItemGraph` of items sharing categories (see :func:`category_edges`)."""
    return _graph_from_edges(
        category_edges(item_categories, num_nodes, max_category_size=max_category_size),
        num_nodes,
        half_life,
    )


def graph_from_embeddings(
    embeddings, k: int = 10, *, tau: float = 1.0, skip_rows: Sequence[int] = (0,)
) -> ItemGraph:
    """An :class:`ItemGraph` kNN graph over teacher embeddings (see :func:`knn_edges`)."""
    n = int(np.asarray(embeddings.shape)[0])
    return _graph_from_edges(knn_edges(embeddings, k, tau=tau, skip_rows=skip_rows), n, None)


def combine_edges(*weighted: tuple[float, Edges]) -> Edges:
    """Weighted sum of several sources' raw adjacencies (a simple multiplex graph).

    Args:
        weighted: ``(coefficient, (src, dst, weight))`` pairs; coefficients must be >= 0.

    Returns:
        One ``(src, dst, weight)`` edge list with src < dst and duplicates summed.
    """
    if not weighted:
        raise ValueError("combine_edges needs at least one (coefficient, edges) pair")
    src, dst, w = [], [], []
    for coef, (s, d, wt) in weighted:
        if not (np.isfinite(coef) and coef >= 0):
            raise ValueError(f"combination coefficients must be finite and >= 0, got {coef!r}")
        s, d = np.asarray(s, dtype=np.int64), np.asarray(d, dtype=np.int64)
        src.append(np.minimum(s, d))
        dst.append(np.maximum(s, d))
        w.append(coef * np.asarray(wt, dtype=np.float64))
    src_all, dst_all = np.concatenate(src), np.concatenate(dst)
    n = int(max(src_all.max(initial=-1), dst_all.max(initial=-1))) + 1
    A = sp.coo_matrix((np.concatenate(w), (src_all, dst_all)), shape=(n, n)).tocsr()
    A.sum_duplicates()
    A.eliminate_zeros()
    coo = A.tocoo()
    return coo.row.astype(np.int64), coo.col.astype(np.int64), coo.data.astype(np.float64)
