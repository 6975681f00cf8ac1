"""Graph container, files, and pruning / scores (parity with circuit-tracer 0.5.0 via tests/reference/prune_ref.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from jcircuits.graph import (
    Graph,
    compute_edge_influence,
    compute_graph_scores,
    compute_influence,
    compute_node_influence,
    find_threshold,
    normalize_matrix,
    prune_graph,
)

ROOT = Path(__file__).resolve().parents[2]
PRUNE_REF = ROOT / "tests" / "reference" / "prune_ref.py"


def _ref_python() -> Path | None:
    """The circuit-tracer venv's python: $JCIRCUITS_REF_VENV, <repo>/.venv-ref, then /work/venv-ref-probe."""
    candidates = [Path(os.environ["JCIRCUITS_REF_VENV"])] if "JCIRCUITS_REF_VENV" in os.environ else []
    candidates += [ROOT / ".venv-ref", Path("/work/venv-ref-probe")]
    for venv in candidates:
        if (venv / "bin" / "python").exists():
            return venv / "bin" / "python"
    return None


def _need_ref() -> Path:
    python = _ref_python()
    if python is None:
        msg = "circuit-tracer reference env missing: run `bash tests/reference/setup_ref_env.sh`"
        if os.environ.get("JCIRCUITS_REQUIRE_REF") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    return python


def random_graph(seed, n_features, n_layers, n_tokens, n_logits, density, dead=0.1) -> Graph:
    """A random attribution-shaped DAG: features read earlier features, errors and tokens; logits read all
    non-logit nodes; error and token rows are zero. Heavy-tailed magnitudes of both signs so thresholds bite;
    a fraction ``dead`` of features gets no inputs and another no outputs (to exercise dangling removal)."""
    rng = np.random.default_rng(seed)
    S, L, T, K = n_features, n_layers, n_tokens, n_logits
    n = S + L * T + T + K
    weights = rng.standard_normal((n, n)) * np.exp(rng.normal(0.0, 1.5, (n, n)))
    allowed = np.zeros((n, n), bool)
    allowed[:S, :S] = np.tril(np.ones((S, S), bool), -1)
    allowed[:S, S : n - K] = True
    allowed[n - K :, : n - K] = True
    A = np.where(allowed & (rng.random((n, n)) < density), weights, 0.0).astype(np.float32)
    if S:
        A[np.flatnonzero(rng.random(S) < dead)] = 0.0  # features without inputs
        A[:, np.flatnonzero(rng.random(S) < dead)] = 0.0  # features without outputs
    probs = rng.dirichlet(np.ones(K)).astype(np.float32) * 0.9
    return Graph(
        input_string="a b c",
        input_tokens=rng.integers(0, 100, T).astype(np.int64),
        active_features=np.stack(
            [rng.integers(0, L, S + 3), rng.integers(0, T, S + 3), rng.integers(0, 50, S + 3)], 1
        ).astype(np.int64),
        activation_values=rng.random(S + 3).astype(np.float32),
        selected_features=np.arange(S, dtype=np.int64),
        adjacency_matrix=A,
        logit_token_ids=np.arange(K, dtype=np.int64) + 7,
        logit_probabilities=probs,
        logit_labels=[f"tok{i}" for i in range(K)],
        n_layers=L,
        vocab_size=100,
        scan="test-scan",
        model_name="test/model",
        settings={"max_feature_nodes": 8192, "timings": {"total_s": 1.5}},
    )


# ----------------------------------------------------------------------------------------------------
# Container and files


def test_graph_index_helpers():
    g = random_graph(0, 5, 2, 3, 2, 0.5)
    assert (g.n_pos, g.n_selected, g.n_logits, g.n_nodes) == (3, 5, 2, 5 + 6 + 3 + 2)
    assert g.feature_slice == slice(0, 5) and g.error_slice == slice(5, 11)
    assert g.token_slice == slice(11, 14) and g.logit_slice == slice(14, 16)
    assert g.error_index(1, 2) == 5 + 1 * 3 + 2 and g.token_index(0) == 11
    with pytest.raises(IndexError):
        g.error_index(2, 0)
    with pytest.raises(IndexError):
        g.token_index(3)


def test_graph_construction_rejects_wrong_n():
    g = random_graph(0, 5, 2, 3, 2, 0.5)
    with pytest.raises(ValueError, match="wrong N"):
        Graph(**{**g.__dict__, "adjacency_matrix": np.zeros((3, 3), np.float32)})
    with pytest.raises(ValueError, match="ascending"):
        Graph(**{**g.__dict__, "selected_features": g.selected_features[::-1].copy()})


def test_save_load_round_trip_is_bitwise(tmp_path):
    g = random_graph(3, 7, 2, 4, 3, 0.4)
    g.settings["nan"] = float("nan")
    path = tmp_path / "g.safetensors"
    g.save(path)
    h = Graph.load(path)
    for name in (
        "adjacency_matrix",
        "active_features",
        "activation_values",
        "selected_features",
        "input_tokens",
        "logit_token_ids",
        "logit_probabilities",
    ):
        a, b = np.asarray(getattr(g, name)), np.asarray(getattr(h, name))
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes(), name
    for name in ("input_string", "logit_labels", "n_layers", "vocab_size", "scan", "model_name"):
        assert getattr(g, name) == getattr(h, name), name
    assert json.dumps(g.settings) == json.dumps(h.settings)


def test_logit_positions_default_to_the_last_and_survive_a_round_trip(tmp_path):
    g = random_graph(3, 7, 2, 4, 3, 0.4)
    assert g.logit_positions.tolist() == [3, 3, 3]
    g.logit_positions = np.array([1, 1, 3])
    g.save(tmp_path / "g.safetensors")
    h = Graph.load(tmp_path / "g.safetensors")
    assert h.logit_positions.dtype == np.int64 and h.logit_positions.tolist() == [1, 1, 3]
    with pytest.raises(ValueError, match="reads every logit at the last position"):
        h.to_circuit_tracer(tmp_path / "g.pt")
    for bad, words in (([0, 4, 1], "lie in the prompt's 4 positions"), ([1, 2], "must be ints matching")):
        with pytest.raises(ValueError, match=words):
            Graph(**{**g.__dict__, "logit_positions": np.array(bad)})


def test_save_uses_exact_tensor_names_and_no_pickle(tmp_path):
    from safetensors.numpy import load_file

    path = tmp_path / "g.safetensors"
    random_graph(1, 4, 2, 3, 1, 0.5).save(path)
    assert set(load_file(path)) == {
        "adjacency_matrix",
        "active_features",
        "activation_values",
        "selected_features",
        "input_tokens",
        "logit_token_ids",
        "logit_probabilities",
    }


def test_load_errors(tmp_path):
    from safetensors.numpy import load_file, save_file

    with pytest.raises(FileNotFoundError, match="no such file"):
        Graph.load(tmp_path / "missing.safetensors")
    bad = tmp_path / "corrupt.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        Graph.load(bad)
    other = tmp_path / "other.safetensors"
    save_file({"x": np.zeros(3, np.float32)}, other)
    with pytest.raises(ValueError, match="not a jcircuits graph file"):
        Graph.load(other)

    good = tmp_path / "g.safetensors"
    random_graph(2, 4, 2, 3, 1, 0.5).save(good)
    from safetensors import safe_open

    with safe_open(good, framework="numpy") as f:
        meta = f.metadata()
    tensors = load_file(good)
    del tensors["selected_features"]
    save_file(tensors, tmp_path / "m.safetensors", metadata=meta)
    with pytest.raises(ValueError, match=r"lacks tensor\(s\) \['selected_features'\]"):
        Graph.load(tmp_path / "m.safetensors")
    tensors = load_file(good)
    tensors["adjacency_matrix"] = tensors["adjacency_matrix"][:-1, :-1].copy()
    save_file(tensors, tmp_path / "n.safetensors", metadata=meta)
    with pytest.raises(ValueError, match="wrong N"):
        Graph.load(tmp_path / "n.safetensors")


def test_save_rejects_non_json_settings(tmp_path):
    g = random_graph(2, 4, 2, 3, 1, 0.5)
    g.settings["bad"] = object()
    with pytest.raises(TypeError, match="JSON-serialisable"):
        g.save(tmp_path / "g.safetensors")


# ----------------------------------------------------------------------------------------------------
# Influence, pruning, scores


def _four_node_graph(a=2.0, b=-3.0, c=1.0, d=0.5, p=0.7) -> Graph:
    # nodes: feature f (0), error e (1), token t (2), logit g (3); f <- t (a); g <- f (b), e (c), t (d)
    A = np.zeros((4, 4), np.float32)
    A[0, 2] = a
    A[3, 0], A[3, 1], A[3, 2] = b, c, d
    return Graph(
        input_string="x",
        input_tokens=np.array([5]),
        active_features=np.array([[0, 0, 3]]),
        activation_values=np.array([1.0], np.float32),
        selected_features=np.array([0]),
        adjacency_matrix=A,
        logit_token_ids=np.array([9]),
        logit_probabilities=np.array([p], np.float32),
        logit_labels=["y"],
        n_layers=1,
        vocab_size=10,
    )


def test_influence_four_node_closed_form():
    b, c, d, p = -3.0, 1.0, 0.5, 0.7
    g = _four_node_graph(b=b, c=c, d=d, p=p)
    tot = abs(b) + abs(c) + abs(d)
    nb, nc, nd = abs(b) / tot, abs(c) / tot, abs(d) / tot
    infl = np.asarray(compute_node_influence(g.adjacency_matrix, g.logit_weights()))
    # w·Â = p·(nb, nc, nd) on (f, e, t); w·Â² = p·nb on t (f reads only t); w·Â³ = 0
    np.testing.assert_allclose(infl, [p * nb, p * nc, p * (nd + nb), 0.0], rtol=1e-6)
    replacement, completeness = compute_graph_scores(g)
    np.testing.assert_allclose(replacement, (nd + nb) / (nd + nb + nc), rtol=1e-6)
    out = np.array([p * nb, p * nc, p * (nd + nb), p])
    non_error = np.array([1.0, 1.0, 1.0, 1.0 - nc])
    np.testing.assert_allclose(completeness, (non_error * out).sum() / out.sum(), rtol=1e-6)
    edges = np.asarray(compute_edge_influence(g.adjacency_matrix, g.logit_weights()))
    np.testing.assert_allclose(edges[3, :3], [nb * p, nc * p, nd * p], rtol=1e-6)
    np.testing.assert_allclose(edges[0, 2], 1.0 * p * nb, rtol=1e-6)


def test_normalize_matrix_rows_sum_to_one_or_zero():
    A = jnp.array([[0.0, -2.0, 2.0], [0.0, 0.0, 0.0], [1.0, 3.0, 0.0]])
    np.testing.assert_allclose(np.asarray(normalize_matrix(A)), [[0, 0.5, 0.5], [0, 0, 0], [0.25, 0.75, 0]])


def test_influence_raises_on_cycle():
    A = jnp.array([[0.0, 1.0], [1.0, 0.0]])
    with pytest.raises(RuntimeError, match="did not vanish"):
        compute_influence(A, jnp.array([0.0, 1.0]), max_iter=50)


def test_thresholds_validated():
    g = _four_node_graph()
    for kw in ({"node_threshold": 1.5}, {"node_threshold": -0.1}, {"edge_threshold": 1.01}):
        with pytest.raises(ValueError, match="between 0.0 and 1.0"):
            prune_graph(g, **kw)


def test_find_threshold_keeps_prefix_and_ties():
    s = jnp.array([0.1, 0.5, 0.2, 0.2, 0.0])
    assert float(find_threshold(s, 0.5)) == pytest.approx(0.5)
    assert float(find_threshold(s, 0.6)) == pytest.approx(0.2)  # then >= keeps both tied 0.2s
    assert float(find_threshold(s, 1.0)) == pytest.approx(0.1)


def test_prune_keeps_tokens_and_logits():
    g = random_graph(5, 40, 3, 5, 3, 0.15)
    res = prune_graph(g, node_threshold=0.2, edge_threshold=0.5)
    mask = np.asarray(res.node_mask)
    assert mask[g.token_slice].all() and mask[g.logit_slice].all()
    assert not mask[: g.token_slice.start].all()  # thresholds this low do drop something
    edges = np.asarray(res.edge_mask)
    assert not edges[~mask].any() and not edges[:, ~mask].any()


# ----------------------------------------------------------------------------------------------------
# Parity with circuit-tracer 0.5.0

PARITY_CASES = [
    # seed, features, layers, tokens, logits, density, node_thr, edge_thr
    (0, 5, 2, 3, 1, 0.6, 0.8, 0.98),
    (2, 300, 4, 8, 5, 0.05, 0.8, 0.98),
    (3, 300, 4, 8, 5, 0.05, 0.5, 0.9),
    (4, 120, 2, 4, 2, 0.1, 0.95, 0.995),
    (5, 0, 2, 3, 2, 0.7, 0.8, 0.98),
    (6, 500, 6, 10, 10, 0.02, 0.6, 0.95),
]


def _pt_graph() -> Graph:
    g = random_graph(7, 6, 2, 3, 2, 0.5)
    g.logit_token_ids = np.array([7, g.vocab_size + 1])  # a virtual id for a custom target
    g.settings["architecture"] = "LlamaForCausalLM"
    return g


@pytest.fixture(scope="module")
def ref_results(tmp_path_factory):
    """One run of prune_ref.py over the parity graphs (and, when torch is here, a to_circuit_tracer file)."""
    python = _need_ref()
    d = tmp_path_factory.mktemp("prune_ref")
    graphs = [random_graph(*case[:6]) for case in PARITY_CASES]
    arrays = {"n_graphs": np.array(len(graphs))}
    for i, (g, case) in enumerate(zip(graphs, PARITY_CASES, strict=True)):
        arrays[f"adj_{i}"] = g.adjacency_matrix
        arrays[f"probs_{i}"] = g.logit_probabilities
        arrays[f"sizes_{i}"] = np.array([g.n_selected, g.n_layers, g.n_pos, g.n_logits])
        arrays[f"thresholds_{i}"] = np.array(case[6:], np.float64)
    np.savez(d / "in.npz", **arrays)
    cmd = [str(python), str(PRUNE_REF), str(d / "in.npz"), str(d / "out.npz")]
    try:
        import torch  # noqa: F401

        _pt_graph().to_circuit_tracer(d / "g.pt", cfg={"d_model": 32})
        cmd += ["--pt", str(d / "g.pt")]
    except ImportError:
        pass
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return graphs, dict(np.load(d / "out.npz"))


@pytest.mark.ref
@pytest.mark.parametrize("layout", ["dense", "sparse"])
@pytest.mark.parametrize("i", range(len(PARITY_CASES)))
def test_prune_and_scores_match_circuit_tracer(ref_results, i, layout):
    """Dense and sparse (`SparseAdjacency`, the exact non-zeros) graphs give circuit-tracer's influence, edge
    scores, masks and scores; a sparse edge mask covers the stored (non-zero) entries."""
    graphs, ref = ref_results
    g, (_, *_, node_thr, edge_thr) = graphs[i], PARITY_CASES[i]
    nonzero = g.adjacency_matrix != 0
    if layout == "sparse":
        g = g.to_sparse()
    dense = (lambda a: a.toarray()) if layout == "sparse" else np.asarray
    w = g.logit_weights()
    np.testing.assert_allclose(
        np.asarray(compute_node_influence(g.adjacency_matrix, w)),
        ref[f"node_influence_{i}"],
        rtol=1e-5,
        atol=1e-7,
    )
    np.testing.assert_allclose(
        dense(compute_edge_influence(g.adjacency_matrix, w)),
        ref[f"edge_scores_{i}"],
        rtol=1e-5,
        atol=1e-7,
    )
    res = prune_graph(g, node_threshold=node_thr, edge_threshold=edge_thr)
    node_mask, edge_mask = np.asarray(res.node_mask), dense(res.edge_mask)
    np.testing.assert_array_equal(node_mask, ref[f"node_mask_{i}"])
    np.testing.assert_array_equal(edge_mask, ref[f"edge_mask_{i}"] & (nonzero if layout == "sparse" else True))
    np.testing.assert_allclose(np.asarray(res.cumulative_scores), ref[f"cumulative_{i}"], atol=1e-5)
    np.testing.assert_allclose(compute_graph_scores(g), ref[f"scores_{i}"], atol=1e-5)
    # the thresholds bite: something is pruned on the larger graphs
    if g.n_selected >= 60:
        assert 0 < node_mask.sum() < len(node_mask) and 0 < edge_mask.sum() < nonzero.sum()


@pytest.mark.ref
def test_to_circuit_tracer_loads_with_its_from_pt(ref_results):
    pytest.importorskip("torch")
    _, ref = ref_results
    g = _pt_graph()
    info = json.loads(str(ref["pt_info"]))
    assert info["input_string"] == g.input_string and info["scan"] == g.scan
    assert info["vocab_size"] == g.vocab_size and info["n_pos"] == g.n_pos
    assert info["targets"] == [["tok0", 7, "LogitTarget"], ["tok1", g.vocab_size + 1, "LogitTarget"]]
    cfg = info["cfg"]
    assert cfg["cls"] == "UnifiedConfig" and cfg["n_layers"] == g.n_layers and cfg["d_vocab"] == g.vocab_size
    assert cfg["d_model"] == 32 and cfg["model_name"] == cfg["tokenizer_name"] == g.model_name
    assert cfg["original_architecture"] == "LlamaForCausalLM"
    for name in (
        "adjacency_matrix",
        "active_features",
        "activation_values",
        "selected_features",
        "input_tokens",
        "logit_probabilities",
        "logit_token_ids",
    ):
        np.testing.assert_array_equal(ref[f"pt_{name}"], np.asarray(getattr(g, name)), err_msg=name)
    np.testing.assert_allclose(info["scores"], compute_graph_scores(g), atol=1e-5)


def test_to_circuit_tracer_without_torch_says_pip_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    with pytest.raises(ImportError, match="pip install torch"):
        random_graph(1, 3, 1, 2, 1, 0.5).to_circuit_tracer(tmp_path / "g.pt")
