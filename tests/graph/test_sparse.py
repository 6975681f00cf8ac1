"""Sparse (CSR) graphs: the container, its files, row sparsification, and influence / pruning / scores equal to
the dense definitions (jcircuits.graph.sparse)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import load_file
from test_graph import random_graph

from jcircuits.graph import (
    Graph,
    compute_edge_influence,
    compute_graph_scores,
    compute_node_influence,
    prune_graph,
)
from jcircuits.graph.sparse import (
    ColumnRuns,
    SparseAdjacency,
    assemble_rows,
    column_indices,
    compact_columns,
    csr_rows,
    sparsify_rows,
    threshold_score,
)

GRAPHS = [(1, 300, 4, 12, 6, 0.05), (3, 800, 6, 20, 8, 0.02), (2, 0, 2, 3, 2, 0.5)]


def test_csr_round_trips_the_dense_matrix_exactly():
    A = random_graph(0, 40, 3, 5, 4, 0.3).adjacency_matrix
    S = SparseAdjacency.from_dense(A)
    assert S.nnz == np.count_nonzero(A) and S.shape == A.shape
    assert S.toarray().tobytes() == A.tobytes()
    np.testing.assert_array_equal(S.csr().toarray(), A)
    rows, cols = np.nonzero(A)
    np.testing.assert_array_equal(S.row_ids(), rows)
    np.testing.assert_array_equal(S.indices, cols)


@pytest.mark.parametrize(
    "indptr, indices, match",
    [
        ([0, 2, 1], [0, 1], "rise"),
        ([0, 1, 2], [0, 3], "0..1"),
        ([0, 2, 2], [1, 0], "ascending"),
        ([0, 2, 2], [1, 1], "ascending"),
        ([0, 1], [0], r"indptr \[N\+1\]"),
    ],
)
def test_csr_rejects_broken_arrays(indptr, indices, match):
    with pytest.raises(ValueError, match=match):
        SparseAdjacency(np.array(indptr), np.array(indices), np.ones(len(indices), np.float32), 2)


def test_threshold_over_implicit_zeros():
    s = np.array([0.5, 0.2, 0.2, 0.1], np.float32)
    assert threshold_score(s, 4, 0.45) == pytest.approx(0.5)
    assert threshold_score(s, 10, 0.6) == pytest.approx(0.2)
    assert threshold_score(np.zeros(3, np.float32), 10, 0.9) == 0.0  # runs into zeros: keep all
    assert threshold_score(np.zeros(0, np.float32), 10, 0.9) == 0.0


def _borderline(values: np.ndarray, thr: float, rel: float = 1e-5) -> np.ndarray:
    """Entries within round-off of a threshold, where the two summation orders may decide differently."""
    return np.abs(values - thr) <= rel * max(float(np.abs(values).max()), 1e-30)


@pytest.mark.parametrize("case", GRAPHS)
@pytest.mark.parametrize("thresholds", [(0.8, 0.98), (0.5, 0.9)])
def test_sparse_influence_prune_and_scores_equal_dense(case, thresholds):
    g = random_graph(*case)
    s = g.to_sparse()
    w = g.logit_weights()
    infl = np.asarray(compute_node_influence(g.adjacency_matrix, w))
    infl_s = compute_node_influence(s.adjacency_matrix, w)
    assert isinstance(infl_s, np.ndarray)
    np.testing.assert_allclose(infl_s, infl, rtol=1e-6, atol=1e-6 * np.abs(infl).max())
    scores = np.asarray(compute_edge_influence(g.adjacency_matrix, w))
    scores_s = compute_edge_influence(s.adjacency_matrix, w)
    np.testing.assert_allclose(scores_s.toarray(), scores, rtol=1e-6, atol=1e-6 * scores.max())

    pd, ps = prune_graph(g, *thresholds), prune_graph(s, *thresholds)
    node_d, node_s = np.asarray(pd.node_mask), ps.node_mask
    # masks agree except where a value sits within round-off of its threshold
    from jcircuits.graph import find_threshold

    near = _borderline(infl, float(find_threshold(infl, thresholds[0])))
    assert not np.any((node_d != node_s) & ~near)
    if np.array_equal(node_d, node_s):
        edge_d = np.asarray(pd.edge_mask) & (g.adjacency_matrix != 0)
        pruned = np.where(node_d[:, None] & node_d[None, :], g.adjacency_matrix, 0)
        es = np.asarray(compute_edge_influence(pruned, w))
        near_e = _borderline(es, float(find_threshold(es.reshape(-1), thresholds[1])))
        assert not np.any((edge_d != ps.edge_mask.toarray()) & ~near_e)
    np.testing.assert_allclose(ps.cumulative_scores, np.asarray(pd.cumulative_scores), atol=1e-6)
    np.testing.assert_allclose(compute_graph_scores(s), compute_graph_scores(g), rtol=1e-6, atol=1e-7)


def test_threshold_resolving_to_zero_keeps_every_stored_edge_and_every_node():
    """The dense path then keeps all N² entries (zeros included), so no node lacks an edge; sparse keeps every
    stored entry and drops no node either."""
    g = random_graph(1, 300, 4, 12, 6, 0.05)
    g.adjacency_matrix[g.logit_slice] = 0.0  # nothing reaches the logits: every edge score is 0
    s = g.to_sparse()
    pd, ps = prune_graph(g, 0.8, 0.98), prune_graph(s, 0.8, 0.98)
    assert np.asarray(pd.edge_mask).all() and ps.edge_mask.data.all()
    np.testing.assert_array_equal(ps.node_mask, np.asarray(pd.node_mask))


def test_sparse_file_round_trip_is_bitwise_and_dense_files_stay_format_1(tmp_path):
    g = random_graph(3, 70, 2, 4, 3, 0.2)
    g.save(tmp_path / "d.safetensors")
    s = g.to_sparse()
    s.adjacency_dropped = np.linspace(0, 1, g.n_nodes).astype(np.float32)
    s.save(tmp_path / "s.safetensors")
    raw = load_file(str(tmp_path / "d.safetensors"))
    assert "adjacency_matrix" in raw and not {"adjacency_indptr", "adjacency_dropped"} & set(raw)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "d.safetensors"), "numpy") as f:
        assert json.loads(f.metadata()["jcircuits_graph"])["format_version"] == 1
    with safe_open(str(tmp_path / "s.safetensors"), "numpy") as f:
        meta = json.loads(f.metadata()["jcircuits_graph"])
        assert meta["format_version"] == 2 and meta["adjacency"] == "csr"
        assert {"adjacency_indptr", "adjacency_indices", "adjacency_data", "adjacency_dropped"} <= set(
            f.keys()
        )
        assert "adjacency_matrix" not in f.keys()
    h = Graph.load(tmp_path / "s.safetensors")
    assert h.is_sparse
    for name in ("indptr", "indices", "data"):
        a, b = getattr(s.adjacency_matrix, name), getattr(h.adjacency_matrix, name)
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), name
    assert h.adjacency_dropped.tobytes() == s.adjacency_dropped.tobytes()
    assert h.dense_adjacency().tobytes() == g.adjacency_matrix.tobytes()
    assert not Graph.load(tmp_path / "d.safetensors").is_sparse
    assert (tmp_path / "s.safetensors").stat().st_size < (tmp_path / "d.safetensors").stat().st_size


def test_corrupt_sparse_file_is_refused(tmp_path):
    from safetensors import safe_open
    from safetensors.numpy import save_file

    s = random_graph(3, 20, 2, 4, 3, 0.2).to_sparse()
    s.save(tmp_path / "s.safetensors")
    with safe_open(str(tmp_path / "s.safetensors"), "numpy") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    tensors["adjacency_indices"] = tensors["adjacency_indices"][::-1].copy()
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata=meta)
    with pytest.raises(ValueError, match="corrupt sparse adjacency"):
        Graph.load(tmp_path / "bad.safetensors")


def _rows(block):
    return csr_rows(np.asarray(block, np.float32))


def test_edge_tolerance_drops_at_most_its_share_of_each_row():
    rng = np.random.default_rng(0)
    block = (rng.standard_normal((6, 50)) * np.exp(rng.normal(0, 2, (6, 50)))).astype(np.float32)
    block[rng.random(block.shape) < 0.3] = 0
    lengths, idx, data = _rows(block)
    for tol in (0.0, 0.01, 0.2):
        kl, ki, kd, dropped = sparsify_rows(lengths, idx, data, edge_tolerance=tol)
        kept = np.zeros_like(block)
        kept[np.repeat(np.arange(6), kl), ki] = kd
        total = np.abs(block).sum(1)
        np.testing.assert_allclose(np.abs(kept).sum(1) + dropped, total, rtol=1e-6)
        assert np.all(dropped <= tol * total * (1 + 1e-6))
        assert np.all((kept == 0) | (kept == block))  # kept values unchanged
        # everything dropped is no larger than anything kept in its row
        for r in range(6):
            gone = np.abs(block[r][(kept[r] == 0) & (block[r] != 0)])
            if gone.size:
                assert gone.max() <= np.abs(kd[np.repeat(np.arange(6), kl) == r]).min()
    assert sparsify_rows(lengths, idx, data, edge_tolerance=0.0)[3].sum() == 0


def test_top_k_edges_keeps_the_k_strongest_and_breaks_ties_by_column():
    block = [[0.0, 3.0, -1.0, 1.0, 2.0], [1.0, 1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0]]
    kl, ki, kd, dropped = sparsify_rows(*_rows(block), top_k_edges=2)
    np.testing.assert_array_equal(kl, [2, 2, 0])
    np.testing.assert_array_equal(ki, [1, 4, 0, 1])
    np.testing.assert_array_equal(kd, [3.0, 2.0, 1.0, 1.0])
    np.testing.assert_allclose(dropped, [2.0, 1.0, 0.0])


def test_assemble_rows_reorders_rows_and_maps_columns():
    chunks = [_rows([[1, 0, 2, 0], [0, 3, 0, 4]]), _rows([[5, 6, 7, 8]])]
    col_map = np.array([0, -1, 1, 2])  # column 1 is dropped
    A = assemble_rows(chunks, np.array([2, -1, 0]), col_map, 3)
    np.testing.assert_array_equal(A.toarray(), [[5, 7, 8], [0, 0, 0], [1, 2, 0]])


def test_column_runs_give_back_the_indices_and_never_cross_a_row():
    # attribution-like rows: a few spans each, one row ending at column c and the next starting at c + 1, empty rows
    block = np.zeros((6, 40), np.float32)
    block[0, 3:17] = 1.0
    block[0, 20:25] = 2.0
    block[1, 25:40] = 3.0  # row 0 ends at 24, row 1 starts at 25: two runs, not one
    block[3, 0:40] = 4.0
    block[3, 10] = 0.0  # an exact zero inside a span splits it
    block[5, 39] = 5.0
    lengths, idx, data = csr_rows(block, col_offset=7)
    cols = compact_columns(lengths, idx)
    assert isinstance(cols, ColumnRuns)
    np.testing.assert_array_equal(cols.start, [10, 27, 32, 7, 18, 46])
    np.testing.assert_array_equal(cols.length, [14, 5, 15, 10, 29, 1])
    got = column_indices(cols)
    assert got.dtype == np.int32 and got.tobytes() == idx.tobytes()
    assert cols.nbytes < idx.nbytes / 5
    # scattered entries: runs would not be smaller, so the indices are kept as they are
    rng = np.random.default_rng(1)
    scattered = np.where(rng.random((8, 200)) < 0.2, 1.0, 0.0).astype(np.float32)
    lengths, idx, _ = csr_rows(scattered)
    assert compact_columns(lengths, idx) is idx
    assert compact_columns(np.zeros(3, np.int64), np.zeros(0, np.int32)).shape == (0,)
    # assemble_rows takes either form
    lengths, idx, data = csr_rows(block)
    order = np.concatenate([np.arange(6), np.full(34, -1)])
    A = assemble_rows([(lengths, compact_columns(lengths, idx), data)], order, np.arange(40), 40)
    np.testing.assert_array_equal(A.toarray()[:6], block)
