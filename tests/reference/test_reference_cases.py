"""Sanity checks of the circuit-tracer reference cases (tests/reference/README.md), readable without torch.

They pin the conventions that the parity tests rely on, so a change in the generator or in circuit-tracer
shows up here first.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import yaml
from safetensors.numpy import load_file

pytestmark = pytest.mark.ref

CASES = [
    "gemma2_plt_jumprelu",
    "llama_plt_relu_skip",
    "llama_clt",
    "gemma2_clt",
    "qwen3_plt_relu",
    "gemma3_plt_jumprelu",
    "gemma3_clt",
]

FLOAT_KEYS = [
    "hf_logits",
    "tl_logits",
    "activations",
    "activation_values",
    "error_vectors",
    "reconstruction",
    "mlp_out",
    "feature_input",
    "token_vectors",
    "token_vector_scale",
    "token_columns_shipped",
    "adjacency_matrix",
    "logit_probabilities",
    "adjacency_matrix_sel",
    "logit_probabilities_sel",
    "cumulative_scores",
    "replacement_score",
    "completeness_score",
    "intervention",
    "intervened_logits",
    "intervened_logits_constrained",
    "intervened_activations",
    "intervened_activations_constrained",
]
GENERATION_SETTINGS = ["closed", "open", "past_prompt"]
FLOAT_KEYS += [
    f"{k}_{s}"
    for s in GENERATION_SETTINGS
    for k in ["generation_interventions", "generated_logits", "generated_activations"]
]
INT_KEYS = [
    "tokens",
    "active_features",
    "selected_features",
    "logit_token_ids",
    "selected_features_sel",
    "logit_token_ids_sel",
    *[f"generated_tokens_{s}" for s in GENERATION_SETTINGS],
]
BOOL_KEYS = ["node_mask", "edge_mask"]


@pytest.fixture(scope="module", params=CASES)
def case(request, ref_cases):
    d = ref_cases / request.param
    if not d.is_dir():
        pytest.fail(f"reference case {request.param} missing under {ref_cases}")
    with np.load(d / "ref.npz") as z:
        ref = {k: z[k] for k in z.files}
    meta = json.loads((d / "meta.json").read_text())
    return d, ref, meta


def _dims(ref, meta):
    L, T, F = ref["activations"].shape
    return L, T, F, ref["hf_logits"].shape[1], ref["error_vectors"].shape[2]


def test_files_exist(case):
    d, ref, meta = case
    for f in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]:
        assert (d / "model" / f).is_file(), f
    cfg = yaml.safe_load((d / "transcoders" / "config.yaml").read_text())
    assert cfg["feature_input_hook"] == meta["transcoder"]["config"]["feature_input_hook"]
    L = ref["activations"].shape[0]
    if cfg["model_kind"] == "transcoder_set":
        assert cfg["transcoders"] == [f"layer_{i}.safetensors" for i in range(L)]
    else:
        assert cfg["model_kind"] == "cross_layer_transcoder"
        for i in range(L):
            assert (d / "transcoders" / f"W_enc_{i}.safetensors").is_file()
            assert (d / "transcoders" / f"W_dec_{i}.safetensors").is_file()


def test_keys_and_dtypes(case):
    _, ref, _ = case
    assert set(ref) == set(FLOAT_KEYS + INT_KEYS + BOOL_KEYS), "README.md documents exactly these keys"
    for k in FLOAT_KEYS:
        assert ref[k].dtype == np.float32, k
    for k in INT_KEYS:
        assert ref[k].dtype == np.int64, k
    for k in BOOL_KEYS:
        assert ref[k].dtype == np.bool_, k


def test_transcoder_files(case):
    d, ref, meta = case
    L, T, F, V, D = _dims(ref, meta)
    tc = meta["transcoder"]
    t = d / "transcoders"
    for i in range(L):
        if tc["kind"] == "plt":
            w = load_file(str(t / f"layer_{i}.safetensors"))
            want = {"W_enc": (F, D), "W_dec": (F, D), "b_enc": (F,), "b_dec": (D,)}
            if tc["activation"] == "jumprelu":
                want["activation_function.threshold"] = (F,)
            if tc["skip"]:
                want["W_skip"] = (D, D)
        else:
            w = load_file(str(t / f"W_enc_{i}.safetensors")) | load_file(str(t / f"W_dec_{i}.safetensors"))
            want = {f"W_enc_{i}": (F, D), f"b_enc_{i}": (F,), f"b_dec_{i}": (D,), f"W_dec_{i}": (F, L - i, D)}
            if tc["activation"] == "jumprelu":
                want[f"threshold_{i}"] = (F,)
        assert {k: v.shape for k, v in w.items()} == want
        assert all(v.dtype == np.float32 for v in w.values())


def test_shapes_consistent(case):
    _, ref, meta = case
    L, T, F, V, D = _dims(ref, meta)
    n = ref["active_features"].shape[0]
    K = ref["logit_token_ids"].shape[0]
    N = n + L * T + T + K
    assert ref["tokens"].shape == (T,)
    assert ref["tl_logits"].shape == (T, V)
    for k in ["error_vectors", "reconstruction", "mlp_out", "feature_input"]:
        assert ref[k].shape == (L, T, D), k
    assert ref["token_vectors"].shape == (T, D)
    assert ref["active_features"].shape == (n, 3) and ref["activation_values"].shape == (n,)
    assert ref["adjacency_matrix"].shape == (N, N)
    np.testing.assert_array_equal(ref["selected_features"], np.arange(n))
    assert ref["logit_probabilities"].shape == (K,)
    n_sel = ref["selected_features_sel"].shape[0]
    K_sel = ref["logit_token_ids_sel"].shape[0]
    assert n_sel == meta["settings"]["attribute_sel"]["max_feature_nodes"] < n
    assert ref["adjacency_matrix_sel"].shape == (n_sel + L * T + T + K_sel,) * 2
    assert np.all(np.diff(ref["selected_features_sel"]) > 0) and ref["selected_features_sel"].max() < n
    assert ref["node_mask"].shape == (N,) and ref["cumulative_scores"].shape == (N,)
    assert ref["edge_mask"].shape == (N, N)
    assert ref["intervention"].ndim == 2 and ref["intervention"].shape[1] == 4
    for k in ["intervened_logits", "intervened_logits_constrained"]:
        assert ref[k].shape == (T, V), k
    for k in ["intervened_activations", "intervened_activations_constrained"]:
        assert ref[k].shape == (L, T, F), k
    n_new = meta["settings"]["feature_intervention_generate"]["max_new_tokens"]
    for s in GENERATION_SETTINGS:
        assert (
            ref[f"generation_interventions_{s}"].ndim == 2
            and ref[f"generation_interventions_{s}"].shape[1] == 5
        )
        assert ref[f"generated_tokens_{s}"].shape == (n_new,), s
        assert ref[f"generated_logits_{s}"].shape == (n_new, V), s
        assert ref[f"generated_activations_{s}"].shape == (L, T + n_new - 1, F), s
    assert meta["sizes"]["n_active_features"] == n and meta["sizes"]["n_logit_targets"] == K
    assert meta["tokens"] == ref["tokens"].tolist()


def test_active_features_match_activations(case):
    _, ref, _ = case
    acts = ref["activations"]
    nz = np.argwhere(acts != 0)  # C order == lexicographic (layer, pos, feat), as circuit-tracer's coalesce
    np.testing.assert_array_equal(ref["active_features"], nz)
    np.testing.assert_array_equal(ref["activation_values"], acts[tuple(nz.T)])
    assert np.all(ref["activation_values"] > 0)
    assert not acts[:, 0].any(), "position 0 must be zeroed"


def test_few_percent_active(case):
    _, ref, _ = case
    acts = ref["activations"][:, 1:]
    frac = float((acts != 0).mean())
    assert 0.01 <= frac <= 0.10, frac
    per = (acts != 0).sum(-1)  # [L, T-1]
    assert per.min() >= 1, "every (layer, position >= 1) should have an active feature"


def test_logits_not_collapsed(case):
    _, ref, _ = case
    assert ref["logit_token_ids"].shape[0] >= 2
    assert ref["logit_probabilities"].max() < 0.9
    assert np.abs(ref["hf_logits"] - ref["tl_logits"]).max() <= 1e-4


def test_logit_probabilities_are_softmax_of_model_output(case):
    _, ref, _ = case
    z = ref["tl_logits"][-1].astype(np.float64)
    p = np.exp(z - z.max())
    p /= p.sum()
    ids = ref["logit_token_ids"]
    np.testing.assert_allclose(ref["logit_probabilities"], p[ids], rtol=1e-4, atol=1e-7)
    # salient targets: descending probabilities, smallest prefix reaching 0.95, at most 10
    order = np.argsort(-p, kind="stable")[: len(ids)]
    np.testing.assert_array_equal(ids, order)
    c = np.cumsum(p[order])
    assert len(ids) == 10 or (c[-1] >= 0.95 and (len(ids) == 1 or c[-2] < 0.95))


def test_error_plus_reconstruction_is_mlp_out(case):
    _, ref, _ = case
    e, r, m = ref["error_vectors"], ref["reconstruction"], ref["mlp_out"]
    np.testing.assert_allclose(e[:, 1:] + r[:, 1:], m[:, 1:], atol=1e-5, rtol=0)
    assert not e[:, 0].any(), "error vectors are zeroed at position 0"


def test_token_vectors_are_residual_embeddings(case):
    """Token vectors are the vectors written into the residual stream (Gemma: the embedding × sqrt(d_model)).

    circuit-tracer's nnsight backend takes rows of the embedding matrix instead, so for Gemma-3 its token columns
    are sqrt(d_model) too small; make_cases keeps them as shipped (``token_columns_shipped``) and computes
    everything else with the residual-stream vectors (``token_vector_scale`` = the factor, 1 on the TL backend)."""
    d, ref, meta = case
    w = load_file(str(d / "model" / "model.safetensors"))["model.embed_tokens.weight"]
    emb = w[ref["tokens"]]
    gemma = meta["architecture"] in ("gemma2", "gemma3")
    if gemma:
        emb = emb * np.float32(math.sqrt(emb.shape[1]))
    np.testing.assert_allclose(ref["token_vectors"], emb, rtol=1e-6, atol=1e-6)
    want_scale = math.sqrt(emb.shape[1]) if gemma and meta["backend"] == "nnsight" else 1.0
    assert float(ref["token_vector_scale"]) == pytest.approx(want_scale, rel=1e-6)
    assert meta["token_vector_scale"] == pytest.approx(want_scale, rel=1e-6)
    L, T, _ = ref["activations"].shape
    n = ref["active_features"].shape[0]
    tok = ref["adjacency_matrix"][:, n + L * T : n + (L + 1) * T]
    assert np.abs(tok).max() > 0
    np.testing.assert_allclose(
        ref["token_columns_shipped"] * ref["token_vector_scale"], tok, rtol=1e-5, atol=1e-6
    )


def test_adjacency_structure(case):
    _, ref, _ = case
    A = ref["adjacency_matrix"]
    L, T, F = ref["activations"].shape
    n = ref["active_features"].shape[0]
    K = ref["logit_token_ids"].shape[0]
    assert np.all(np.isfinite(A))
    # error and token nodes have no incoming edges; logit nodes have no outgoing edges
    assert not A[n : n + L * T + T].any()
    assert not A[:, -K:].any()
    assert np.abs(A[-K:]).sum(1).min() > 0
    assert np.abs(A[:n]).sum(1).min() > 0
    # features only receive edges from strictly lower layers (the MLP write at layer l is downstream of the
    # read at layer l) and from positions <= their own
    lay, pos = ref["active_features"][:, 0], ref["active_features"][:, 1]
    FF = A[:n, :n]
    bad = (lay[None, :] >= lay[:, None]) | (pos[None, :] > pos[:, None])
    assert not FF[bad].any()
    # error node (l, t) sits at n + l*T + t: features at layer <= l get nothing from it
    E = A[:n, n : n + L * T].reshape(n, L, T)
    el = np.arange(L)[None, :, None]
    assert not E[np.broadcast_to(el >= lay[:, None, None], E.shape)].any()
    # error and token nodes at position 0 are present; error vectors there are zero so their edges are zero
    assert not E[:, :, 0].any()


def test_sel_graph_is_submatrix_of_full(case):
    _, ref, _ = case
    A, S = ref["adjacency_matrix"], ref["adjacency_matrix_sel"]
    n = ref["active_features"].shape[0]
    sel = ref["selected_features_sel"]
    np.testing.assert_array_equal(ref["logit_token_ids_sel"], ref["logit_token_ids"])
    cols = np.concatenate([sel, np.arange(n, A.shape[1])])
    rows = np.concatenate([sel, np.arange(A.shape[0] - len(ref["logit_token_ids"]), A.shape[0])])
    m = len(sel)
    np.testing.assert_allclose(S[:m], A[np.ix_(sel, cols)], atol=1e-5, rtol=1e-4)
    K = len(ref["logit_token_ids"])
    np.testing.assert_allclose(S[-K:], A[np.ix_(rows[-K:], cols)], atol=1e-5, rtol=1e-4)
    assert not S[m:-K].any()


def test_pruning_outputs(case):
    _, ref, _ = case
    nm, em = ref["node_mask"], ref["edge_mask"]
    T = ref["tokens"].shape[0]
    K = ref["logit_token_ids"].shape[0]
    assert nm[-(K + T) :].all(), "tokens and logits are always kept"
    assert 0 < nm.sum() < nm.size and 0 < em.sum()
    assert not em[~nm].any() and not em[:, ~nm].any()
    cs = ref["cumulative_scores"]
    assert 0 < cs.min() and cs.max() <= 1 + 1e-6
    assert 0 < float(ref["replacement_score"]) <= 1 and 0 < float(ref["completeness_score"]) <= 1


def test_intervention_recorded(case):
    _, ref, _ = case
    iv = ref["intervention"]
    acts = ref["activations"]
    for l, p, f, _ in iv:
        assert acts[int(l), int(p), int(f)] > 0, "interventions edit active features"
    assert np.abs(ref["intervened_logits"] - ref["tl_logits"]).max() > 1e-3
    assert np.abs(ref["intervened_logits_constrained"] - ref["tl_logits"]).max() > 1e-3
    # circuit-tracer's returned activations are the encoder outputs of the intervened forward pass; the edit
    # itself is a delta added at the output hook, so an edited feature's own entry keeps its original value
    # (its layer's input is upstream of the edit) unless another edit sits upstream of it
    ia = ref["intervened_activations"]
    for l, p, f, _ in iv:
        if any(l2 < l and p2 <= p for l2, p2, _, _ in iv):
            continue
        assert ia[int(l), int(p), int(f)] == pytest.approx(acts[int(l), int(p), int(f)], rel=1e-5)
    assert np.abs(ia - acts).max() > 1e-3


def test_constrained_intervention_is_linear_in_logit_edges(case):
    """With constrained_layers=range(L) everything but the edits is frozen, so the change of the demeaned
    pre-soft-cap logit equals sum_s (value_s - a_s) / a_s * A[logit, s] (edges are scaled by a_s)."""
    d, ref, _ = case
    A, af, av = ref["adjacency_matrix"], ref["active_features"], ref["activation_values"]
    ids = ref["logit_token_ids"]
    K = len(ids)
    pred = np.zeros(K)
    for l, p, f, v in ref["intervention"]:
        j = int(np.flatnonzero((af == [int(l), int(p), int(f)]).all(1))[0])
        pred += (v - av[j]) / av[j] * A[-K:, j]
    cap = json.loads((d / "model" / "config.json").read_text()).get("final_logit_softcapping") or 0.0

    def uncap(z):
        z = z.astype(np.float64)
        return cap * np.arctanh(z / cap) if cap else z

    delta = uncap(ref["intervened_logits_constrained"][-1]) - uncap(ref["tl_logits"][-1])
    got = (delta - delta.mean())[ids]
    np.testing.assert_allclose(pred, got, atol=1e-4 * max(1.0, np.abs(got).max()))


def test_generations_recorded(case):
    """feature_intervention_generate's outputs: greedy tokens; its prompt pass is a feature_intervention run
    with attention frozen (so with nothing edited inside the prompt it is the clean forward); its activations
    over the prompt are those of that run; the new tokens are the ones processed afterwards."""
    _, ref, meta = case
    L, T, F = ref["activations"].shape
    for s in GENERATION_SETTINGS:
        toks, logits, acts = (
            ref[f"{k}_{s}"] for k in ["generated_tokens", "generated_logits", "generated_activations"]
        )
        np.testing.assert_array_equal(toks, logits.argmax(-1), err_msg=s)
        # greedy choices are clear-cut, so a parity test at atol 1e-4 cannot flip a token
        top2 = np.sort(logits, axis=-1)[:, -2:]
        assert (top2[:, 1] - top2[:, 0]).min() > 1e-3, f"{s}: near-tie between the two best tokens"
        rows = ref[f"generation_interventions_{s}"]
        assert np.all(rows[:, 1] >= 0) and np.all((rows[:, 2] == -1) | (rows[:, 2] > rows[:, 1]))
    # closed and open share the point edits of `intervention`; only the open one reaches the new tokens
    for s in ["closed", "open"]:
        np.testing.assert_array_equal(
            ref[f"generation_interventions_{s}"][:3, [0, 1, 3, 4]], ref["intervention"]
        )
        np.testing.assert_array_equal(
            ref[f"generation_interventions_{s}"][:3, 2], ref["intervention"][:, 1] + 1
        )
    assert (ref["generation_interventions_closed"][:, 2] > 0).all()
    assert (ref["generation_interventions_closed"][:, 2] <= T).all()
    assert (
        ref["generation_interventions_open"][-1, 2] == -1 and ref["generation_interventions_open"][-1, 1] < T
    )
    # past_prompt edits nothing in the prompt: its prompt pass is the clean forward
    (row,) = ref["generation_interventions_past_prompt"]
    assert row[1] >= T and row[2] == -1
    np.testing.assert_allclose(ref["generated_logits_past_prompt"][0], ref["tl_logits"][-1], atol=1e-5)
    np.testing.assert_allclose(ref["generated_activations_past_prompt"][:, :T], ref["activations"], atol=1e-5)
