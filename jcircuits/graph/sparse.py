"""A sparse (CSR) adjacency for attribution graphs, and influence, pruning and scores computed on it.

A graph's matrix is mostly structural zeros: error, token and logit columns of error/token rows, every source
above a feature's layer or after its position, and (with ``max_feature_nodes``) the rows of every unselected
node. `SparseAdjacency` stores only the non-zero entries — row ``t`` (a target) holds its sources
``indices[indptr[t]:indptr[t+1]]`` (strictly ascending) with weights ``data[...]`` — so a graph over N nodes
costs ``12·nnz + 8·N`` bytes instead of ``4·N²``, and nothing here ever builds an ``[N, N]`` array.

The algorithms are circuit-tracer's, as ``jcircuits.graph.prune`` implements them on dense matrices:

- ``|A|`` row-normalised (clamp 1e-10): row sums are taken in float64 and rounded to float32, then each entry is
  divided in float32 (the dense path sums in float32 on the device);
- influence ``w·Â + w·Â² + …`` summed until a term is exactly zero: one float32 sparse mat-vec (``Âᵀ x``,
  scipy's CSC kernel on the transposed view, no copy) per term;
- the cumulative-fraction thresholds sort the *stored* scores and accumulate in float64; the ``N² − nnz``
  implicit zeros change no cumulative sum, and when a threshold resolves to a score of 0 they count as kept
  (as in the dense path, where every zero entry then passes ``scores >= 0``).

The results equal the dense ones to float32 round-off of the summation order (tested at 1e-6 relative on the
influence); masks can differ only where a score sits within that round-off of its threshold. Legend as in
``jcircuits.graph.container``: ``A[target, source]`` over [features | errors | tokens | logits].
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np
import scipy.sparse

from jcircuits.graph.cumulative import cumulative_fraction, find_threshold

__all__ = [
    "SparseAdjacency",
    "SparsePruneResult",
    "sparse_normalize",
    "sparse_influence",
    "sparse_edge_influence",
    "sparse_prune",
    "sparse_graph_scores",
    "threshold_score",
    "csr_rows",
    "ColumnRuns",
    "column_indices",
    "compact_columns",
    "sparsify_rows",
    "assemble_rows",
]


@dataclasses.dataclass(frozen=True, eq=False)
class SparseAdjacency:
    """An ``[N, N]`` matrix in CSR form: ``indptr`` int64 ``[N + 1]``, ``indices`` int32 ``[nnz]`` (strictly
    ascending within each row), ``data`` ``[nnz]`` (float32 weights; bool for an edge mask). Entries not stored
    are zero. Checked on construction."""

    indptr: np.ndarray
    indices: np.ndarray
    data: np.ndarray
    n: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "indptr", np.asarray(self.indptr, np.int64))
        object.__setattr__(self, "indices", np.asarray(self.indices, np.int32))
        object.__setattr__(self, "data", np.asarray(self.data))
        object.__setattr__(self, "n", int(self.n))
        _check_csr(self.indptr, self.indices, self.data, self.n)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n, self.n)

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    @property
    def nnz(self) -> int:
        return int(self.data.shape[0])

    @property
    def nbytes(self) -> int:
        return self.indptr.nbytes + self.indices.nbytes + self.data.nbytes

    def row_ids(self) -> np.ndarray:
        """``[nnz]`` int: the row (target) of each stored entry."""
        return np.repeat(np.arange(self.n, dtype=np.int32), np.diff(self.indptr))

    def with_data(self, data: np.ndarray) -> SparseAdjacency:
        """The same pattern with other values ``[nnz]`` (zeros stay stored)."""
        return SparseAdjacency(self.indptr, self.indices, data, self.n)

    def csr(self) -> scipy.sparse.csr_array:
        """A scipy view of the same arrays (no copy of ``indices`` or ``data``)."""
        index = np.int32 if self.nnz < 2**31 else np.int64
        return scipy.sparse.csr_array(
            (self.data, self.indices.astype(index, copy=False), self.indptr.astype(index)), shape=self.shape
        )

    def toarray(self) -> np.ndarray:
        """The dense ``[N, N]`` matrix (for small graphs and tests)."""
        out = np.zeros(self.shape, self.data.dtype)
        out[self.row_ids(), self.indices] = self.data
        return out

    @classmethod
    def from_dense(cls, A) -> SparseAdjacency:
        """The exact non-zeros of a square matrix ``[N, N]`` (values unchanged, so ``toarray`` gives it back;
        a ``-0.0`` entry comes back as ``0.0``)."""
        A = np.asarray(A)
        if A.ndim != 2 or A.shape[0] != A.shape[1]:
            raise ValueError(f"SparseAdjacency.from_dense: need a square matrix, got shape {A.shape}")
        rows, cols = np.nonzero(A)
        indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=A.shape[0]))])
        return cls(indptr, cols, A[rows, cols], A.shape[0])


def _check_csr(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, n: int) -> None:
    if n < 0 or n >= 2**31:
        raise ValueError(f"SparseAdjacency: N = {n} out of range (0 <= N < 2**31)")
    if indptr.shape != (n + 1,) or indices.ndim != 1 or data.shape != indices.shape:
        raise ValueError(
            f"SparseAdjacency: need indptr [N+1] = [{n + 1}], indices [nnz] and data [nnz]; got "
            f"{indptr.shape}, {indices.shape}, {data.shape}"
        )
    if indptr[0] != 0 or indptr[-1] != indices.shape[0] or np.any(np.diff(indptr) < 0):
        raise ValueError("SparseAdjacency: indptr must rise from 0 to nnz")
    if indices.size and (indices.min() < 0 or indices.max() >= n):
        raise ValueError(f"SparseAdjacency: column indices must lie in 0..{n - 1}")
    step = np.diff(indices.astype(np.int64))
    starts = np.zeros(indices.shape[0], bool)
    starts[indptr[:-1][np.diff(indptr) > 0]] = True
    if np.any((step <= 0) & ~starts[1:]):
        raise ValueError("SparseAdjacency: column indices must be strictly ascending within each row")


# ----------------------------------------------------------------------------------------------------
# influence, pruning and scores (definitions as in jcircuits.graph.prune)


def _row_sums(A: SparseAdjacency, values: np.ndarray) -> np.ndarray:
    """``[N]`` float32: per-row sums of ``values [nnz]``, accumulated in float64."""
    return np.bincount(A.row_ids(), weights=values, minlength=A.n).astype(np.float32)


def sparse_normalize(A: SparseAdjacency) -> SparseAdjacency:
    """``|A|`` with each row divided by its sum (clamped below at 1e-10); same pattern, float32."""
    a = np.abs(A.data.astype(np.float32))
    sums = np.maximum(_row_sums(A, a), np.float32(1e-10))
    return A.with_data(a / np.repeat(sums, np.diff(A.indptr)))


def sparse_influence(A_hat: SparseAdjacency, w: np.ndarray, max_iter: int = 1000) -> np.ndarray:
    """``[N]`` float32: ``w·Â + w·Â² + …`` until a term is exactly zero (RuntimeError after ``max_iter`` more
    terms: a cycle). ``A_hat`` is a normalised matrix, ``w [N]`` the logit weights."""
    At = A_hat.csr().T  # CSC view: At @ x = x @ A_hat
    current = At @ np.asarray(w, np.float32)
    total = current.copy()
    for _ in range(max_iter):
        if not current.any():
            return total
        current = At @ current
        total += current
    if current.any():
        raise RuntimeError(
            f"influence power series did not vanish after {max_iter} iterations: the adjacency matrix has a "
            "cycle (attribution graphs are acyclic, so its normalised matrix should be nilpotent)"
        )
    return total


def sparse_edge_influence(pruned: SparseAdjacency, w: np.ndarray) -> SparseAdjacency:
    """Edge scores ``Â[t, s] · (influence[t] + w[t])`` on the normalised ``pruned`` matrix (same pattern)."""
    A_hat = sparse_normalize(pruned)
    influence = sparse_influence(A_hat, w)
    out = (influence + np.asarray(w, np.float32))[A_hat.row_ids()]
    return A_hat.with_data(A_hat.data * out)


def threshold_score(stored: np.ndarray, n_total: int, threshold: float) -> float:
    """`jcircuits.graph.prune.find_threshold` over ``n_total`` non-negative scores of which only ``stored``
    are given (the rest are zero): the score at which the descending cumulative sum (float64) first reaches
    ``threshold`` of the total; 0 when that index runs into the implicit zeros."""
    s = np.sort(np.asarray(stored, np.float32))[::-1]
    cum = np.cumsum(s, dtype=np.float64)
    if not s.size or cum[-1] == 0:  # every score is 0
        return 0.0
    idx = int(np.searchsorted(cum / cum[-1], np.float64(np.float32(threshold)), side="left"))
    if idx < s.size:
        return float(s[idx])
    return 0.0 if n_total > s.size else float(s[-1])


class SparsePruneResult(NamedTuple):
    node_mask: np.ndarray  # [N] bool
    edge_mask: SparseAdjacency  # bool data over the graph's stored entries
    cumulative_scores: np.ndarray  # [N] float32


def _logit_weights(logit_probabilities: np.ndarray, n: int) -> np.ndarray:
    w = np.zeros(n, np.float32)
    k = len(logit_probabilities)
    w[n - k :] = np.asarray(logit_probabilities, np.float32)
    return w


def _drop_dangling(node, edge, rows, cols, n_fe: int, n_features: int):
    """Features/errors need a kept outgoing edge, features a kept incoming one."""
    has_out = np.zeros(node.shape[0], bool)
    has_out[cols[edge & (cols < n_fe)]] = True
    has_in = np.zeros(node.shape[0], bool)
    has_in[rows[edge & (rows < n_features)]] = True
    node = node.copy()
    node[:n_fe] &= has_out[:n_fe]
    node[:n_features] &= has_in[:n_features]
    return node


def sparse_prune(
    A: SparseAdjacency,
    logit_probabilities: np.ndarray,
    *,
    n_features: int,
    n_tokens: int,
    n_logits: int,
    node_threshold: float,
    edge_threshold: float,
) -> SparsePruneResult:
    """`jcircuits.graph.prune.prune_graph` on a sparse adjacency; the edge mask covers its stored entries.

    When the edge threshold resolves to a score of 0 the dense path keeps all N² entries, zero ones included,
    so no node is then dropped for lack of edges; this keeps every stored entry and likewise drops no node
    (the implicit zeros are non-edges a sparse mask cannot hold)."""
    n = A.n
    w = _logit_weights(logit_probabilities, n)
    n_fe = n - n_logits - n_tokens
    rows, cols = A.row_ids(), A.indices
    influence = sparse_influence(sparse_normalize(A), w)
    node_mask = influence >= np.asarray(find_threshold(influence, node_threshold))
    node_mask[n_fe:] = True

    pruned = A.with_data(np.where(node_mask[rows] & node_mask[cols], A.data, np.float32(0)))
    scores = sparse_edge_influence(pruned, w).data
    thr = threshold_score(scores, n * n, edge_threshold)
    edge = scores >= np.float32(thr)
    if thr > 0:
        node, old = _drop_dangling(node_mask, edge, rows, cols, n_fe, n_features), node_mask
        while np.any(node != old):
            edge = edge & node[rows] & node[cols]
            node, old = _drop_dangling(node, edge, rows, cols, n_fe, n_features), node
        node_mask = node

    order = np.argsort(-influence, kind="stable")
    cumulative = np.zeros_like(influence)
    cumulative[order] = np.asarray(cumulative_fraction(influence[order]))
    return SparsePruneResult(node_mask, A.with_data(edge), cumulative)


def sparse_graph_scores(
    A: SparseAdjacency, logit_probabilities: np.ndarray, *, n_features: int, n_layers: int, n_tokens: int
) -> tuple[float, float]:
    """(replacement, completeness) as `jcircuits.graph.prune.compute_graph_scores` defines them."""
    n = A.n
    w = _logit_weights(logit_probabilities, n)
    err0, tok0 = n_features, n_features + n_tokens * n_layers
    A_hat = sparse_normalize(A)
    influence = sparse_influence(A_hat, w)
    token = np.float32(influence[tok0 : tok0 + n_tokens].sum())
    error = np.float32(influence[err0:tok0].sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        replacement = token / (token + error)
    from_errors = (A.indices >= err0) & (A.indices < tok0)
    non_error = np.float32(1) - _row_sums(A_hat, np.where(from_errors, A_hat.data, np.float32(0)))
    out = influence + w
    completeness = (non_error * out).sum(dtype=np.float64) / out.sum(dtype=np.float64)
    return float(replacement), float(completeness)


# ----------------------------------------------------------------------------------------------------
# rows as they arrive


def csr_rows(block: np.ndarray, col_offset: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The exact non-zeros of a dense row block ``[m, c]``: ``(lengths [m], indices [nnz] int32, data [nnz])``,
    columns ascending within each row and shifted by ``col_offset``."""
    rows, cols = np.nonzero(block)
    lengths = np.bincount(rows, minlength=block.shape[0]).astype(np.int64)
    return lengths, (cols + col_offset).astype(np.int32), block[rows, cols]


class ColumnRuns(NamedTuple):
    """A CSR block's column indices as runs of consecutive columns: run ``r`` covers columns
    ``start[r] … start[r] + length[r] − 1``, in entry order, and no run crosses a row (each row's first entry starts
    one). An attribution row's non-zeros are a few long spans (per source layer, the active features up to the
    target's position), so this costs 8 bytes a run instead of 4 an entry."""

    start: np.ndarray  # int32 [r]
    length: np.ndarray  # int32 [r]

    @property
    def nbytes(self) -> int:
        return self.start.nbytes + self.length.nbytes

    def indices(self) -> np.ndarray:
        """The column indices, int32 ``[Σ length]`` (as the CSR block had them)."""
        first = np.cumsum(self.length, dtype=np.int64) - self.length  # each run's first entry
        step = np.repeat(self.start.astype(np.int64) - first, self.length)
        return (step + np.arange(step.shape[0], dtype=np.int64)).astype(np.int32)


def compact_columns(lengths: np.ndarray, indices: np.ndarray) -> np.ndarray | ColumnRuns:
    """``indices`` of a CSR block (``lengths [m]`` entries a row) as `ColumnRuns` where that is smaller, else
    ``indices`` itself; either way ``column_indices`` gives the same int32 array back."""
    n = indices.shape[0]
    if n == 0:
        return indices
    brk = np.ones(n, bool)
    brk[1:] = indices[1:] != indices[:-1] + 1
    row_first = np.cumsum(lengths)[:-1]
    brk[row_first[row_first < n]] = True  # a run never crosses a row
    first = np.flatnonzero(brk)
    if 2 * first.shape[0] >= n:
        return indices
    length = np.diff(np.append(first, n)).astype(np.int32)
    return ColumnRuns(indices[first].astype(np.int32), length)


def column_indices(cols: np.ndarray | ColumnRuns) -> np.ndarray:
    """The int32 column indices of ``compact_columns``' result."""
    return cols.indices() if isinstance(cols, ColumnRuns) else cols


def sparsify_rows(
    lengths: np.ndarray,
    indices: np.ndarray,
    data: np.ndarray,
    *,
    edge_tolerance: float | None = None,
    top_k_edges: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Drop the weakest entries of each row of a CSR block (``lengths [m]``, ``indices``, ``data [nnz]``);
    returns the kept block and ``dropped [m]`` float32, the |weight| each row lost.

    ``edge_tolerance = τ``: drop a row's smallest-|w| entries for as long as their |w| sum to at most ``τ`` times
    the row's total |w| (so every row keeps at least ``1 − τ`` of its absolute mass). ``top_k_edges = k``: keep
    the ``k`` largest |w| of each row. With both, an entry must pass both. Equal |w| are ranked by column
    (lower first kept), so the result does not depend on anything but the row. Kept entries keep their order."""
    m = lengths.shape[0]
    row = np.repeat(np.arange(m), lengths)
    a = np.abs(data.astype(np.float32))
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    keep = np.ones(data.shape[0], bool)
    if edge_tolerance is not None:
        order = np.lexsort(
            (-indices.astype(np.int64), a, row)
        )  # per row: ascending |w|, higher columns first
        cum = np.cumsum(a[order], dtype=np.float64)
        before = np.concatenate([[0.0], cum])[starts][row[order]]  # mass of earlier rows
        total = np.bincount(row, weights=a, minlength=m)
        dropped_mass = cum - before
        keep[order[dropped_mass <= float(edge_tolerance) * total[row[order]]]] = False
    if top_k_edges is not None:
        order = np.lexsort(
            (indices.astype(np.int64), -a, row)
        )  # per row: descending |w|, lower columns first
        rank = np.arange(data.shape[0]) - starts[row[order]]
        keep[order[rank >= int(top_k_edges)]] = False
    dropped = np.bincount(row[~keep], weights=a[~keep], minlength=m).astype(np.float32)
    new_lengths = np.bincount(row[keep], minlength=m).astype(np.int64)
    return new_lengths, indices[keep], data[keep], dropped


def assemble_rows(
    chunks: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    order: np.ndarray,
    col_map: np.ndarray,
    n: int,
) -> SparseAdjacency:
    """An ``[n, n]`` `SparseAdjacency` from row chunks ``(lengths, indices, data)`` (rows numbered in chunk
    order; ``indices`` may be `ColumnRuns`): row ``i`` of the result is stored row ``order[i]`` (``-1``: an empty
    row), each column ``c`` moves to ``col_map[c]`` (``-1``: dropped; ``col_map`` must be increasing on kept
    columns, so rows stay sorted)."""
    n_rows = int(sum(len(c[0]) for c in chunks))
    offsets = np.cumsum([0] + [len(c[0]) for c in chunks])
    rows, indices, data = [np.zeros(0, np.int64)], [np.zeros(0, np.int32)], [np.zeros(0, np.float32)]
    for (lengths, idx, val), off in zip(chunks, offsets[:-1], strict=True):
        cols = col_map[column_indices(idx)]
        k = cols >= 0
        rows.append(off + np.repeat(np.arange(len(lengths)), lengths)[k])
        indices.append(cols[k].astype(np.int32))
        data.append(val[k].astype(np.float32))
    rows, indices, data = (np.concatenate(x) for x in (rows, indices, data))
    kept_len = np.bincount(rows, minlength=n_rows)
    old_ptr = np.concatenate([[0], np.cumsum(kept_len)]).astype(np.int64)
    order = np.asarray(order, np.int64)
    new_len = np.where(order >= 0, kept_len[np.maximum(order, 0)] if n_rows else 0, 0)
    new_ptr = np.concatenate([[0], np.cumsum(new_len)]).astype(np.int64)
    start = old_ptr[np.maximum(order, 0)] if n_rows else np.zeros(len(order), np.int64)
    src = np.repeat(start - new_ptr[:-1], new_len) + np.arange(new_ptr[-1])
    return SparseAdjacency(new_ptr, indices[src], data[src], n)
