"""The live item–item graph: raw symmetric weights A, weighted degrees d, forward decay.

Design (docs/design.md, "The graph store"):

* We store the *raw* weights ``A`` and degrees ``d``, never the normalised ``Ã = D^-1/2 A D^-1/2``.
  ``Ã·X`` is computed as ``s ⊙ (A · (s ⊙ X))`` with ``s = d^-1/2`` (0 where ``d = 0``), so an edge
  increment is O(1) and a degree change never rewrites stored values.
* Layout: an immutable base CSR plus a pending buffer of COO increments. ``propagate`` reads both;
  the buffer is merged into a new CSR when it passes ``merge_fraction`` of the base's non-zeros.
* Forward decay: an increment ``w`` at time ``t`` is stored as ``w·exp(λ(t − t0))`` with
  ``λ = ln 2 / half_life``. True weights at the latest time ``t*`` are ``exp(−λ(t* − t0))·A'``.
  Symmetric normalisation is invariant to a global positive scale, so ``Ã`` comes straight from the
  stored ``A'`` and ``d'`` with no per-edge decay work. The landmark ``t0`` is rebased (values
  multiplied down) when the growth factor gets large, which is rare and happens during a merge.
* Accumulators are float64; the sparse products run in float32.
"""

from __future__ import annotations

import io
import math
import os
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from sevo_common.atomic import atomic_write_bytes

__all__ = ["GraphSnapshot", "ItemGraph"]

_FORMAT_VERSION = 1
# Rebase the decay landmark before exp(λ(t − t0)) exceeds e^_MAX_LOG_GROWTH, so that raw
# float32 values and degrees stay far from overflow (float32 max ≈ e^88).
_MAX_LOG_GROWTH = 30.0


def _as_index_array(name: str, values) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of node ids, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if (
            np.issubdtype(arr.dtype, np.floating)
            and np.all(np.isfinite(arr))
            and np.all(arr == np.round(arr))
        ):
            arr = arr.astype(np.int64)
        else:
            raise ValueError(f"{name} must hold integer node ids, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if arr.size and arr.min() < 0:
        raise ValueError(f"{name} holds a negative node id ({int(arr.min())}); ids must be >= 0")
    return arr


# Nodes whose degree is below this fraction of the largest degree count as isolated: their edges
# have decayed to nothing relative to the rest of the graph, and float32 could not represent them.
_RELATIVE_DEGREE_FLOOR = 1e-30


def _degree_scale(deg: np.ndarray) -> float:
    """A global scale c for the float32 product (Ã is invariant to scaling A and d by 1/c)."""
    top = float(deg.max()) if deg.size else 0.0
    return top if top > 0 and math.isfinite(top) else 1.0


def _inv_sqrt_degree(deg: np.ndarray, scale: float) -> np.ndarray:
    """s = (d/c)^-1/2 with s = 0 for isolated nodes (all-zero rows in Ã), float64."""
    s = np.zeros_like(deg)
    relative = deg / scale
    live = relative > _RELATIVE_DEGREE_FLOOR
    s[live] = 1.0 / np.sqrt(relative[live])
    return s


@dataclass(frozen=True)
class GraphSnapshot:
    """An immutable, versioned read-only view of an :class:`ItemGraph`.

    The optimizer reads a snapshot while the consumer keeps writing to the graph; later
    ``add_edges`` calls never change a snapshot. All arrays are private copies or arrays that the
    graph never mutates in place.

    Attributes:
        version: the graph's version when the snapshot was taken (increments on every change).
        num_nodes: number of rows of the adjacency.
    """

    version: int
    num_nodes: int
    _base: torch.Tensor  # (nb, nb) sparse CSR float32 = A_base / c_base, nb <= n
    _base_ratio: float  # c_base / c: rescales the base product into this snapshot's units
    _pending: torch.Tensor | None  # (n, n) sparse CSR float32 = pending increments / c
    _inv_sqrt_deg: torch.Tensor  # (n, 1) float32 = (d / c)^-1/2, 0 for isolated nodes

    def propagate(self, X: torch.Tensor) -> torch.Tensor:
        """Return Ã·X = D^-1/2 A D^-1/2 X.

        Args:
            X: float tensor of shape (num_nodes, k) (or (num_nodes,)).

        Returns:
            A new float32 tensor of X's shape; isolated nodes give zero rows.
        """
        squeeze = X.dim() == 1
        if squeeze:
            X = X.unsqueeze(1)
        if X.dim() != 2 or X.shape[0] != self.num_nodes:
            raise ValueError(
                f"propagate expects X of shape ({self.num_nodes}, k), got {tuple(X.shape)}"
            )
        Y = X.detach().to(torch.float32) * self._inv_sqrt_deg  # (n, k)
        out = self.adjacency_mm(Y).mul_(self._inv_sqrt_deg)
        return out.squeeze(1) if squeeze else out

    @property
    def inv_sqrt_degree(self) -> torch.Tensor:
        """(num_nodes, 1) float32 ``s = (d/c)^-1/2`` (0 for isolated nodes), in the units of
        :meth:`adjacency_mm`: ``Ã·X = s ⊙ adjacency_mm(s ⊙ X)``. Read-only."""
        return self._inv_sqrt_deg

    def adjacency_mm(self, Y: torch.Tensor) -> torch.Tensor:
        """Return ``(A/c)·Y`` as a new float32 tensor, for a float32 ``Y`` of shape (num_nodes, k).

        ``c`` is a global scale chosen at snapshot time (Ã does not depend on it). With
        :attr:`inv_sqrt_degree` it lets a caller fuse its own row scalings around the product
        (see :class:`engine.sevo.Smoother`); :meth:`propagate` is the plain composition.
        """
        nb = self._base.shape[0]  # the base CSR may predate the newest (still isolated) rows
        if self._base._nnz() and nb == self.num_nodes:
            # The common case. beta=0 into an uninitialised output: addmm ignores its input
            # then, which saves the zero-fill that torch.sparse.mm does first.
            out = Y.new_empty(Y.shape)
            torch.addmm(out, self._base, Y, beta=0.0, out=out)
        else:
            out = torch.zeros_like(Y)
            if self._base._nnz():
                out[:nb] = torch.sparse.mm(self._base, Y[:nb])
        if self._base_ratio != 1.0:
            out[:nb].mul_(self._base_ratio)
        if self._pending is not None:
            out.addmm_(self._pending, Y)  # accumulates in place: no (n, k) temporary
        return out

    def normalized_adjacency(self, scale: float = 1.0) -> torch.Tensor | None:
        """``scale·Ã`` (Ã = D^-1/2 A D^-1/2) as one float32 sparse CSR on the snapshot's device,
        or None while the snapshot keeps pending increments apart from its base CSR.

        A new matrix each call, one pass over the non-zeros (values computed in float64, then
        rounded once): for a reader that multiplies by the same snapshot many times (offline
        training smooths with one snapshot at every step), ``Ã·X`` is then a single sparse
        product with no row scalings around it. The index arrays are shared with the base.
        """
        if self._pending is not None:
            return None
        base = self._base
        if base.shape[0] < self.num_nodes:
            base = _pad_csr(base, self.num_nodes)
        crow, col = base.crow_indices(), base.col_indices()
        s = self._inv_sqrt_deg.view(-1).to(torch.float64)
        rows = torch.repeat_interleave(
            torch.arange(self.num_nodes, device=s.device), crow.diff().to(torch.int64)
        )
        values = base.values().to(torch.float64) * (scale * self._base_ratio)
        values = values.mul_(s.index_select(0, rows)).mul_(s.index_select(0, col))
        return _csr_tensor(crow, col, values.to(torch.float32), self.num_nodes)

    @property
    def device(self) -> torch.device:
        """Where the snapshot's tensors live (products take and return tensors there)."""
        return self._inv_sqrt_deg.device

    def to(self, device: str | torch.device) -> GraphSnapshot:
        """The same snapshot with its tensors on ``device`` (itself if already there).

        For a fixed graph on an accelerator (offline training): build the snapshot on the CPU
        once, move it, and smooth on the device at every step without copying the graph again.
        """
        device = torch.device(device)
        if self.device == device:
            return self
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            return replace(
                self,
                _base=self._base.to(device),
                _pending=None if self._pending is None else self._pending.to(device),
                _inv_sqrt_deg=self._inv_sqrt_deg.to(device),
            )

    def isolated_mask(self) -> torch.Tensor:
        """Boolean (num_nodes,) tensor, True for nodes without edges."""
        return self._inv_sqrt_deg.view(-1) == 0

    def validate(self) -> None:
        """Raise ``RuntimeError`` if the snapshot's arrays are inconsistent."""
        n = self.num_nodes
        nb = self._base.shape[0]
        if self._base.shape[1] != nb or nb > n or self._inv_sqrt_deg.shape[0] != n:
            raise RuntimeError("graph snapshot shapes are inconsistent")
        if self._pending is not None and tuple(self._pending.shape) != (n, n):
            raise RuntimeError("graph snapshot's pending increments do not match num_nodes")


class ItemGraph:
    """A growing symmetric item–item graph with O(batch) updates and optional forward decay.

    Args:
        num_nodes: initial number of nodes; ids beyond it grow the graph.
        half_life: seconds after which an edge's effective weight halves; ``None`` disables decay.
        merge_fraction: merge pending increments into the CSR once they exceed this fraction of
            the base's non-zeros (and at least ``min_merge`` entries); :meth:`snapshot` merges
            once they exceed this fraction alone, since each product of a snapshot also runs
            over the pending part.
        min_merge: lower bound on the pending-buffer size that triggers a merge on write.

    Example:
        >>> g = ItemGraph(3)
        >>> g.add_edges([0, 1], [1, 2])
        >>> g.propagate(torch.ones(3, 1)).shape
        torch.Size([3, 1])
    """

    def __init__(
        self,
        num_nodes: int = 0,
        half_life: float | None = None,
        *,
        merge_fraction: float = 0.05,
        min_merge: int = 65_536,
    ) -> None:
        if int(num_nodes) != num_nodes or num_nodes < 0:
            raise ValueError(f"num_nodes must be a non-negative integer, got {num_nodes!r}")
        if half_life is not None and not (math.isfinite(half_life) and half_life > 0):
            raise ValueError(
                f"half_life must be a positive number of seconds or None, got {half_life!r}"
            )
        if not merge_fraction > 0:
            raise ValueError(f"merge_fraction must be > 0, got {merge_fraction!r}")
        self.half_life = None if half_life is None else float(half_life)
        self.decay_rate = 0.0 if half_life is None else math.log(2.0) / float(half_life)
        self.merge_fraction = float(merge_fraction)
        self.min_merge = int(min_merge)
        self._n = int(num_nodes)
        self._base = sp.csr_matrix((self._n, self._n), dtype=np.float64)
        self._pending_rows: list[np.ndarray] = []
        self._pending_cols: list[np.ndarray] = []
        self._pending_vals: list[np.ndarray] = []
        self._pending_nnz = 0
        # The pending increments summed per (row, col), kept incrementally: sorted unique keys
        # row·2^32 + col and their float64 sums, plus the (rows, cols, vals) chunks added since
        # (see _summed_pending). Each snapshot folds in only its new chunks.
        self._sum_keys = np.zeros(0, dtype=np.int64)
        self._sum_vals = np.zeros(0, dtype=np.float64)
        self._unsummed: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._deg = np.zeros(max(self._n, 16), dtype=np.float64)  # capacity doubles
        self.t0: float | None = None  # decay landmark (None until the first timed edge)
        self.t_latest: float | None = None  # latest event time seen
        self.version = 0
        self._snapshot: GraphSnapshot | None = None
        self._base_torch: torch.Tensor | None = None  # float32 copy of A_base / _base_scale
        self._base_scale = 1.0

    # ------------------------------------------------------------------ size and growth
    @property
    def num_nodes(self) -> int:
        return self._n

    def grow(self, num_nodes: int) -> None:
        """Ensure the graph has at least ``num_nodes`` nodes (new nodes are isolated)."""
        if num_nodes <= self._n:
            return
        if num_nodes > self._deg.shape[0]:
            capacity = max(num_nodes, 2 * self._deg.shape[0])
            deg = np.zeros(capacity, dtype=np.float64)
            deg[: self._n] = self._deg[: self._n]
            self._deg = deg
        self._n = int(num_nodes)
        self._touch()

    @property
    def nnz(self) -> int:
        """Stored non-zeros of A (both directions) after merging duplicates."""
        self.merge()
        return int(self._base.nnz)

    def _touch(self) -> None:
        self.version += 1
        self._snapshot = None

    # ------------------------------------------------------------------ writing
    def add_edges(self, src, dst, weight=None, time=None) -> None:
        """Add a batch of undirected weighted edges: A_ij += w and A_ji += w for each (i, j, w).

        Vectorised: O(batch) plus amortised merging. Self-loops (i == j) are dropped, because the
        SEvo graph has none. Node ids at or beyond ``num_nodes`` grow the graph.

        Args:
            src: 1-D integer array of node ids.
            dst: 1-D integer array of node ids, same length as ``src``.
            weight: non-negative finite weights (scalar or array); default 1.
            time: event times in unix seconds (scalar or array). Required for decay to have an
                effect; with ``half_life=None`` it only advances ``t_latest``.

        Raises:
            ValueError: on mismatched lengths, negative ids, negative/NaN/inf weights or
                non-finite times. The graph is unchanged when this is raised.
        """
        src = _as_index_array("src", src)
        dst = _as_index_array("dst", dst)
        if src.shape != dst.shape:
            raise ValueError(
                f"src and dst must have the same length, got {src.size} and {dst.size}"
            )
        m = src.size
        if weight is None:
            w = np.ones(m, dtype=np.float64)
        else:
            w = np.broadcast_to(np.asarray(weight, dtype=np.float64), (m,)).copy()
            if w.ndim != 1 or w.shape[0] != m:
                raise ValueError(f"weight must be a scalar or have length {m}")
            if not np.all(np.isfinite(w)):
                raise ValueError("weight holds NaN or infinite values")
            if m and w.min() < 0:
                raise ValueError(f"weight must be non-negative, got {float(w.min())}")
        times = None
        if time is not None:
            times = np.broadcast_to(np.asarray(time, dtype=np.float64), (m,))
            if not np.all(np.isfinite(times)):
                raise ValueError("time holds NaN or infinite values")
        if m == 0:
            return
        # --- validation done: from here on the graph changes.
        if times is not None:
            batch_latest = float(times.max())
            if self.t0 is None:
                self.t0 = float(times.min()) if self.decay_rate else batch_latest
            self.t_latest = (
                batch_latest if self.t_latest is None else max(self.t_latest, batch_latest)
            )
            if self.decay_rate:
                growth = self.decay_rate * (self.t_latest - self.t0)
                if growth > _MAX_LOG_GROWTH:
                    self._rebase(self.t_latest)
                w = w * np.exp(self.decay_rate * (times - self.t0))
        keep = (src != dst) & (w > 0)
        if not keep.all():
            src, dst, w = src[keep], dst[keep], w[keep]
        if src.size == 0:
            return
        self.grow(int(max(src.max(), dst.max())) + 1)
        n = self._n
        self._deg[:n] += np.bincount(src, weights=w, minlength=n)
        self._deg[:n] += np.bincount(dst, weights=w, minlength=n)
        chunk = (np.concatenate([src, dst]), np.concatenate([dst, src]), np.concatenate([w, w]))
        self._pending_rows.append(chunk[0])
        self._pending_cols.append(chunk[1])
        self._pending_vals.append(chunk[2])
        self._unsummed.append(chunk)
        self._pending_nnz += 2 * src.size
        self._touch()
        if self._pending_nnz >= max(self.min_merge, self.merge_fraction * self._base.nnz):
            self.merge()

    def _pending_coo(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if not self._pending_rows:
            empty_i = np.zeros(0, dtype=np.int64)
            return empty_i, empty_i, np.zeros(0, dtype=np.float64)
        if len(self._pending_rows) > 1:
            self._pending_rows = [np.concatenate(self._pending_rows)]
            self._pending_cols = [np.concatenate(self._pending_cols)]
            self._pending_vals = [np.concatenate(self._pending_vals)]
        return self._pending_rows[0], self._pending_cols[0], self._pending_vals[0]

    def _summed_pending(self) -> tuple[np.ndarray, np.ndarray]:
        """The pending increments with duplicates summed: sorted unique keys ``row·2^32 + col``
        and float64 sums, updated incrementally (only chunks added since the last call are
        sorted in). Each entry's sum runs over its increments strictly in arrival order, so the
        result does not depend on when it was folded (a restored graph sums exactly alike)."""
        if self._unsummed:
            parts = self._unsummed
            rows = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
            cols = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
            vals = np.concatenate([p[2] for p in parts]) if len(parts) > 1 else parts[0][2]
            self._sum_keys, self._sum_vals = _fold_sorted(
                self._sum_keys, self._sum_vals, (rows << 32) | cols, vals
            )
            self._unsummed = []
        return self._sum_keys, self._sum_vals

    def _pending_csr(self) -> sp.csr_matrix:
        """The pending increments as a canonical (duplicates summed, sorted) float64 scipy CSR,
        so adding it to the base is one linear merge."""
        keys, vals = self._summed_pending()
        indptr, cols = _csr_structure(keys, self._n)
        delta = sp.csr_matrix((vals, cols, indptr), shape=(self._n, self._n), dtype=np.float64)
        delta.has_canonical_format = True
        return delta

    def _clear_pending(self) -> None:
        self._pending_rows, self._pending_cols, self._pending_vals = [], [], []
        self._pending_nnz = 0
        self._sum_keys = np.zeros(0, dtype=np.int64)
        self._sum_vals = np.zeros(0, dtype=np.float64)
        self._unsummed = []

    def _base_resized(self) -> sp.csr_matrix:
        """The base as an (n, n) CSR: new nodes are empty trailing rows and columns, so only
        indptr is extended (O(n)); data and indices are shared (the base is never mutated)."""
        base = self._base
        if base.shape[0] != self._n:
            indptr = np.empty(self._n + 1, dtype=base.indptr.dtype)
            indptr[: base.shape[0] + 1] = base.indptr
            indptr[base.shape[0] + 1 :] = base.indptr[-1]
            resized = sp.csr_matrix(
                (base.data, base.indices, indptr), shape=(self._n, self._n), copy=False
            )
            resized.has_sorted_indices = base.has_sorted_indices
            base = resized
        return base

    def merge(self) -> None:
        """Fold the pending increments into a new base CSR (duplicates summed)."""
        if self._pending_nnz == 0:
            if self._base.shape[0] != self._n:
                self._base = self._base_resized()
                self._base_torch = None
            return
        merged = self._base_resized() + self._pending_csr()
        merged.sum_duplicates()  # no-ops on canonical input; kept as a guarantee
        merged.sort_indices()
        self._base = merged
        self._base_torch = None
        self._clear_pending()
        # A is unchanged, so the version and any cached snapshot stay valid.

    def _rebase(self, t_new: float) -> None:
        """Move the decay landmark to ``t_new``: multiply stored A', d' by exp(−λ(t_new − t0))."""
        if not self.decay_rate or self.t0 is None:
            self.t0 = t_new
            return
        factor = math.exp(-self.decay_rate * (t_new - self.t0))
        self.merge()
        base = self._base.copy()
        base.data *= factor
        self._base = base
        self._base_torch = None
        self._deg = self._deg * factor
        self.t0 = float(t_new)
        self._touch()

    def compact(self, min_weight: float = 0.0, top_k: int | None = None) -> dict[str, int]:
        """Merge, rebase, prune, and recompute degrees exactly from A.

        Args:
            min_weight: drop edges whose *true* (decayed, at ``t_latest``) weight is below this.
            top_k: keep only each node's ``top_k`` strongest neighbours. An edge kept by either
                endpoint is kept in both directions, so A stays symmetric and a node can end up
                with more than ``top_k`` neighbours.

        Returns:
            ``{"nnz_before": ..., "nnz_after": ...}``.
        """
        if not (math.isfinite(min_weight) and min_weight >= 0):
            raise ValueError(f"min_weight must be a finite non-negative number, got {min_weight!r}")
        if top_k is not None and (int(top_k) != top_k or top_k < 1):
            raise ValueError(f"top_k must be a positive integer or None, got {top_k!r}")
        self.merge()
        if self.t_latest is not None:
            self._rebase(self.t_latest)
        A = self._base
        nnz_before = int(A.nnz)
        if min_weight > 0:
            A = A.copy()
            A.data[A.data < min_weight] = 0.0
            A.eliminate_zeros()
        if top_k is not None and A.nnz:
            A = _symmetric_top_k(A, int(top_k))
        A.sort_indices()
        self._base = A.tocsr()
        self._base_torch = None
        self._deg[: self._n] = np.asarray(self._base.sum(axis=1)).ravel()
        self._deg[self._n :] = 0.0
        self._touch()
        return {"nnz_before": nnz_before, "nnz_after": int(self._base.nnz)}

    # ------------------------------------------------------------------ reading
    def _decay_factor(self) -> float:
        """exp(−λ(t_latest − t0)): converts stored landmark units to true weights."""
        if not self.decay_rate or self.t0 is None or self.t_latest is None:
            return 1.0
        return math.exp(-self.decay_rate * (self.t_latest - self.t0))

    def degree(self) -> np.ndarray:
        """True weighted degrees (decayed to ``t_latest``), float64 array of length num_nodes."""
        return self._deg[: self._n] * self._decay_factor()

    def raw_degree(self) -> np.ndarray:
        """Stored degrees in landmark units (a copy)."""
        return self._deg[: self._n].copy()

    def to_scipy(self, *, raw: bool = False) -> sp.csr_matrix:
        """The true adjacency A as a new scipy CSR (float64); ``raw=True`` gives landmark units."""
        A = (self._base_resized() + self._pending_csr()).tocsr()
        A.sum_duplicates()
        if not raw:
            A = A * self._decay_factor()
        return A

    def total_weight(self, *, raw: bool = False) -> float:
        """Sum of all entries of A (each undirected edge counted twice)."""
        total = float(self._deg[: self._n].sum())
        return total if raw else total * self._decay_factor()

    def snapshot(self) -> GraphSnapshot:
        """An immutable view for readers; cached until the next change."""
        if self._snapshot is not None:
            return self._snapshot
        if self._pending_nnz > self.merge_fraction * self._base.nnz:
            # Merge at snapshot time once the buffer passes merge_fraction of the
            # base, without the min_merge floor that applies to writes: every product of
            # the snapshot also runs over the pending entries, and they had to be summed
            # into a CSR of their own at each snapshot, which costs more than an O(nnz)
            # merge once the buffer is large. A small buffer stays apart (cheap to sum, cheap
            # to multiply), so a snapshot per micro-batch does not rewrite the whole base.
            self.merge()
        deg = self._deg[: self._n]
        scale = _degree_scale(deg)
        if self._base_torch is None or self._base_scale / scale < 1e-20:
            self._base_scale = scale
            self._base_torch = _torch_csr(self._base, scale)
        if self._base_torch.shape[0] < self._n:
            # Nodes added since the base was built are empty rows and columns of it: padding
            # the CSR (O(n), values shared) keeps every product a direct one into its output.
            self._base_torch = _pad_csr(self._base_torch, self._n)
        keys, vals = self._summed_pending()
        pending = None
        if keys.size:
            # A CSR of its own per snapshot: torch's index_add over COO entries is ~100x
            # slower than a CSR product on CPU, and the smoother multiplies L times. The
            # duplicates are summed incrementally (_summed_pending), so a snapshot only sorts
            # in the increments added since the previous one.
            pending = _torch_csr_from_keys(keys, vals, self._n, scale)
        self._snapshot = GraphSnapshot(
            version=self.version,
            num_nodes=self._n,
            _base=self._base_torch,
            _base_ratio=float(np.float32(self._base_scale / scale)),
            _pending=pending,
            _inv_sqrt_deg=torch.from_numpy(
                _inv_sqrt_degree(deg, scale).astype(np.float32)
            ).unsqueeze(1),
        )
        return self._snapshot

    def propagate(self, X: torch.Tensor) -> torch.Tensor:
        """Ã·X over the current state (see :meth:`GraphSnapshot.propagate`)."""
        return self.snapshot().propagate(X)

    # ------------------------------------------------------------------ persistence
    def state_arrays(self) -> dict[str, np.ndarray]:
        """Everything needed to rebuild the graph exactly, as plain numpy arrays."""
        rows, cols, vals = self._pending_coo()
        base = self._base_resized()
        meta = np.array(
            [
                _FORMAT_VERSION,
                self._n,
                np.nan if self.half_life is None else self.half_life,
                np.nan if self.t0 is None else self.t0,
                np.nan if self.t_latest is None else self.t_latest,
                self.version,
                self.merge_fraction,
                self.min_merge,
            ],
            dtype=np.float64,
        )
        return {
            "meta": meta,
            "indptr": base.indptr.astype(np.int64),
            "indices": base.indices.astype(np.int64),
            "data": base.data,
            "pending_rows": rows,
            "pending_cols": cols,
            "pending_vals": vals,
            "degree": self._deg[: self._n].copy(),
            # The float32 copy of the base is A/c for the c chosen when it was built; keeping c
            # lets a restored graph round exactly like the original (bit-exact continuation).
            "base_scale": np.array(
                [self._base_scale if self._base_torch is not None else np.nan], dtype=np.float64
            ),
        }

    @classmethod
    def from_state_arrays(cls, arrays: dict[str, np.ndarray]) -> ItemGraph:
        """Inverse of :meth:`state_arrays`."""
        meta = np.asarray(arrays["meta"], dtype=np.float64)
        if int(meta[0]) != _FORMAT_VERSION:
            raise ValueError(f"unsupported graph format version {int(meta[0])}")
        n = int(meta[1])
        half_life = None if np.isnan(meta[2]) else float(meta[2])
        g = cls(n, half_life, merge_fraction=float(meta[6]), min_merge=int(meta[7]))
        g._base = sp.csr_matrix(
            (arrays["data"], arrays["indices"], arrays["indptr"]), shape=(n, n), dtype=np.float64
        )
        rows = np.asarray(arrays["pending_rows"], dtype=np.int64)
        if rows.size:
            g._pending_rows = [rows]
            g._pending_cols = [np.asarray(arrays["pending_cols"], dtype=np.int64)]
            g._pending_vals = [np.asarray(arrays["pending_vals"], dtype=np.float64)]
            g._pending_nnz = int(rows.size)
            g._unsummed = [(g._pending_rows[0], g._pending_cols[0], g._pending_vals[0])]
        g._deg[:n] = arrays["degree"]
        g.t0 = None if np.isnan(meta[3]) else float(meta[3])
        g.t_latest = None if np.isnan(meta[4]) else float(meta[4])
        g.version = int(meta[5])
        base_scale = float(np.asarray(arrays.get("base_scale", [np.nan]))[0])
        if not np.isnan(base_scale):
            g._base_scale = base_scale
            g._base_torch = _torch_csr(g._base, base_scale)
        return g

    def save(self, path: str | os.PathLike) -> None:
        """Write the graph to ``path`` atomically (temp file, fsync, rename)."""
        buffer = io.BytesIO()
        np.savez(buffer, **self.state_arrays())
        atomic_write_bytes(Path(path), buffer.getvalue())

    @classmethod
    def load(cls, path: str | os.PathLike) -> ItemGraph:
        """Read a graph written by :meth:`save`."""
        with np.load(Path(path), allow_pickle=False) as data:
            return cls.from_state_arrays({k: data[k] for k in data.files})

    def __repr__(self) -> str:
        return (
            f"ItemGraph(num_nodes={self._n}, nnz≈{self._base.nnz + self._pending_nnz}, "
            f"half_life={self.half_life}, version={self.version})"
        )


def _torch_csr(A: sp.csr_matrix, scale: float) -> torch.Tensor:
    """A float32 torch CSR copy of ``A / scale`` (duplicates summed, indices sorted)."""
    A = A.tocsr()
    A.sum_duplicates()
    A.sort_indices()
    return _scaled_torch_csr(A.indptr, A.indices, A.data, A.shape[0], scale)


def _scaled_torch_csr(
    indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, n: int, scale: float
) -> torch.Tensor:
    """The float32 (n, n) torch CSR of canonical CSR arrays with values ``data / scale``."""
    # int32 indices where they fit: torch's MKL product converts int64 ones at every call.
    index = np.int32 if max(n, data.size) < np.iinfo(np.int32).max else np.int64
    return _csr_tensor(
        torch.from_numpy(indptr.astype(index)),
        torch.from_numpy(indices.astype(index)),
        torch.from_numpy((data / scale).astype(np.float32)),
        n,
    )


def _csr_tensor(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, n: int):
    """An (n, n) torch sparse CSR of canonical arrays (not re-checked; beta warning muted)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(crow, col, values, size=(n, n), check_invariants=False)


def _fold_sorted(
    keys: np.ndarray, vals: np.ndarray, new_keys: np.ndarray, new_vals: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique ``keys`` (with sums ``vals``) plus new entries (unsorted, repeats allowed)
    → sorted unique keys and sums. Each key's sum adds its values in order, the old sum first
    (``np.add.at`` is sequential), so folding in one go or chunk by chunk gives equal bits."""
    all_keys = np.concatenate([keys, new_keys]) if keys.size else new_keys
    all_vals = np.concatenate([vals, new_vals]) if keys.size else new_vals
    order = np.argsort(all_keys, kind="stable")  # a sorted run + a short tail for timsort
    all_keys, all_vals = all_keys[order], all_vals[order]
    first = np.ones(all_keys.size, dtype=bool)
    np.not_equal(all_keys[1:], all_keys[:-1], out=first[1:])
    if first.all():
        return all_keys, all_vals
    segment = np.cumsum(first) - 1
    sums = np.zeros(int(segment[-1]) + 1, dtype=np.float64)
    np.add.at(sums, segment, all_vals)
    return all_keys[first], sums


def _csr_structure(keys: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``(indptr, indices)`` (int64) of an (n, n) CSR whose sorted unique keys are
    ``row·2^32 + col``."""
    rows = keys >> 32
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n), out=indptr[1:])
    return indptr, keys & 0xFFFFFFFF


def _torch_csr_from_keys(keys: np.ndarray, vals: np.ndarray, n: int, scale: float) -> torch.Tensor:
    """The float32 torch CSR of ``A / scale`` for A given as sorted unique keys and sums (the
    same values and index types as :func:`_torch_csr` of the equal scipy matrix)."""
    indptr, cols = _csr_structure(keys, n)
    return _scaled_torch_csr(indptr, cols, vals, n, scale)


def _pad_csr(A: torch.Tensor, n: int) -> torch.Tensor:
    """The (n, n) CSR holding ``A`` (square, at most n rows) in its top-left corner."""
    crow = A.crow_indices()
    crow = torch.cat([crow, crow[-1:].expand(n - A.shape[0])])
    return _csr_tensor(crow, A.col_indices(), A.values(), n)


def _symmetric_top_k(A: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """Keep each row's k largest entries; an entry kept by either endpoint survives both ways."""
    A = A.tocsr()
    A.sort_indices()
    counts = np.diff(A.indptr)
    rows = np.repeat(np.arange(A.shape[0]), counts)
    # Sort by row, then by descending value (stable so equal weights keep column order).
    order = np.lexsort((-A.data, rows))
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size) - np.repeat(A.indptr[:-1], counts)
    keep = rank < k
    kept = sp.csr_matrix((A.data * keep, A.indices.copy(), A.indptr.copy()), shape=A.shape)
    kept.eliminate_zeros()
    kept = kept.maximum(kept.T).tocsr()
    return kept
