"""Rows stored sparse as they arrive (``attribute(adjacency="sparse")``): the same graph as the dense engine, bit
for bit; a stated sparsification (``edge_tolerance``, ``top_k_edges``) whose lost |weight| is recorded; files
and the JSON export of sparse graphs."""

from __future__ import annotations

import numpy as np
import pytest
from tiny import tiny_model, tiny_transcoders

from jcircuits.attribution import attribute
from jcircuits.attribution.engine import _partial_influence
from jcircuits.graph import Graph, prune_graph
from jcircuits.view.export import graph_to_json
from jcircuits.view.render import render

TOKENS = np.array([1, 5, 9, 33, 7, 2, 60, 11, 4, 8, 17, 3, 40, 6, 21])
KW = dict(batch_size=16, update_interval=2, verbose=False)


@pytest.fixture(scope="module")
def case():
    # storage is the same code for every transcoder kind (rows arrive as [features | errors | tokens])
    model = tiny_model("llama", seed=3)
    ts = tiny_transcoders(model.cfg, kind="plt", activation="jumprelu", seed=4)
    dense = attribute(model, ts, TOKENS, adjacency="dense", **KW)
    return model, ts, dense


def test_sparse_exact_rows_give_the_dense_graph_bit_for_bit(case):
    model, ts, dense = case
    g = attribute(model, ts, TOKENS, adjacency="sparse", **KW)
    assert g.is_sparse and not dense.is_sparse and g.settings["adjacency"] == "sparse"
    assert g.adjacency_dropped is None
    np.testing.assert_array_equal(g.selected_features, dense.selected_features)
    # bit for bit, but for -0.0 entries, which are not stored (x + 0.0 turns -0.0 into 0.0 and nothing else)
    assert g.dense_adjacency().tobytes() == (dense.adjacency_matrix + np.float32(0)).tobytes()
    assert g.adjacency_matrix.nnz == np.count_nonzero(dense.adjacency_matrix)


def test_sparse_selection_influence_equals_the_dense_one(case):
    """The selection's influence through CSR rows equals the dense mat-vecs to float32 round-off, and where the
    same features are selected the graphs are equal bit for bit."""
    model, ts, dense = case
    rng = np.random.default_rng(0)
    n_cols, K = 300, 3
    rows = np.where(rng.random((40, n_cols)) < 0.1, rng.random((40, n_cols)), 0).astype(np.float32)
    rows /= np.maximum(rows.sum(1, keepdims=True), 1e-8)
    row_nodes = np.concatenate([n_cols + np.arange(K), rng.permutation(n_cols)[:37]])
    p = np.array([0.5, 0.3, 0.1], np.float32)
    import scipy.sparse

    want = _partial_influence(rows, row_nodes, p, n_cols)
    got = _partial_influence(scipy.sparse.csr_array(rows), row_nodes, p, n_cols)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7 * want.max())

    n = dense.settings["n_active"] // 3
    gd = attribute(model, ts, TOKENS, adjacency="dense", max_feature_nodes=n, **KW)
    gs = attribute(model, ts, TOKENS, adjacency="sparse", max_feature_nodes=n, **KW)
    sel_d, sel_s = set(gd.selected_features.tolist()), set(gs.selected_features.tolist())
    assert len(sel_d & sel_s) >= 0.98 * n  # a near-tie in the ranking may go either way
    if sel_d == sel_s:
        assert np.array_equal(gs.dense_adjacency(), gd.adjacency_matrix)


def test_edge_tolerance_keeps_each_rows_mass_and_records_what_it_dropped(case):
    model, ts, dense = case
    tol = 0.05
    g = attribute(model, ts, TOKENS, edge_tolerance=tol, **KW)  # auto: sparsifying means sparse
    assert g.is_sparse and g.settings["edge_tolerance"] == tol
    assert g.adjacency_matrix.nnz < 0.7 * np.count_nonzero(dense.adjacency_matrix)
    full = np.abs(dense.adjacency_matrix).astype(np.float64).sum(1)
    kept = np.abs(g.dense_adjacency()).astype(np.float64).sum(1)
    # every active feature has a row here, so each row was computed against exactly the graph's sources
    np.testing.assert_allclose(kept + g.adjacency_dropped, full, rtol=1e-5, atol=1e-6 * full.max())
    assert np.all(g.adjacency_dropped <= tol * full * (1 + 1e-5) + 1e-30)
    A = g.dense_adjacency()
    assert np.all((A == 0) | (A == dense.adjacency_matrix))  # kept edges are the exact values


def test_top_k_edges_bounds_every_row_and_round_trips_through_a_file(case, tmp_path):
    model, ts, dense = case
    g = attribute(model, ts, TOKENS, adjacency="sparse", top_k_edges=7, **KW)
    lengths = np.diff(g.adjacency_matrix.indptr)
    assert lengths.max() == 7 and g.adjacency_dropped[lengths == 0].sum() == 0
    g.save(tmp_path / "g.safetensors")
    h = Graph.load(tmp_path / "g.safetensors")
    assert h.is_sparse and h.dense_adjacency().tobytes() == g.dense_adjacency().tobytes()
    assert h.adjacency_dropped.tobytes() == g.adjacency_dropped.tobytes()
    assert h.settings["top_k_edges"] == 7


def _assert_same_document(a, b, path="doc"):
    """``a`` and ``b`` have the same structure and values, floats to float32 round-off (``rtol`` 1e-6, about 8
    units in the last place): node influences of the sparse layout come from sparse mat-vecs, the dense layout's
    from dense products, which sum in another order (measured: 2 units apart at most)."""
    assert type(a) is type(b), path
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _assert_same_document(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same_document(x, y, f"{path}[{i}]")
    elif isinstance(a, float):
        assert np.isclose(a, b, rtol=1e-6, atol=0.0), (path, a, b)
    else:
        assert a == b, path


def test_sparse_graph_exports_and_renders_as_the_dense_graph(case, tmp_path):
    """Pruning and the export give the same document for both layouts (when no mask entry sits within
    round-off of its threshold; the masks are compared apart, in tests/graph/test_sparse.py): the same nodes,
    links and text, numbers to float32 round-off; the same picture."""
    _, _, dense = case
    sparse = dense.to_sparse()
    pd, ps = prune_graph(dense), prune_graph(sparse)
    same = np.array_equal(np.asarray(pd.node_mask), ps.node_mask) and np.array_equal(
        np.asarray(pd.edge_mask) & (dense.adjacency_matrix != 0), ps.edge_mask.toarray()
    )
    assert np.abs(np.asarray(pd.node_mask) != ps.node_mask).sum() <= 1
    if same:
        for caps in ({}, {"max_nodes": 40, "max_links": 200}):
            _assert_same_document(graph_to_json(sparse, "g", **caps), graph_to_json(dense, "g", **caps))
        sparse.save(tmp_path / "g.safetensors")  # render reads the file (format 2), prunes and draws it
        (tmp_path / "d").mkdir()
        dense.save(tmp_path / "d" / "g.safetensors")  # same stem, so the same slug
        render(tmp_path / "g.safetensors", tmp_path / "s.svg")
        render(tmp_path / "d" / "g.safetensors", tmp_path / "d.svg")
        assert (tmp_path / "s.svg").read_text() == (tmp_path / "d.svg").read_text()
    with pytest.raises(ValueError, match="to_dense"):
        graph_to_json(sparse, "g", keep_zero_weight_links=True)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(adjacency="csr"), "adjacency must be"),
        (dict(adjacency="dense", edge_tolerance=0.1), "adjacency='sparse'"),
        (dict(edge_tolerance=1.0), r"edge_tolerance must be in \[0, 1\)"),
        (dict(top_k_edges=0), "top_k_edges must be a positive integer"),
    ],
)
def test_bad_adjacency_arguments_are_refused(kw, match):
    model = tiny_model("llama", seed=3)
    ts = tiny_transcoders(model.cfg, kind="plt", activation="jumprelu", seed=4)
    with pytest.raises(ValueError, match=match):
        attribute(model, ts, TOKENS, **kw)
