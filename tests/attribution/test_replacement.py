"""The replacement model reproduces the base model: features (re-encoded live at every layer) + errors."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
from tiny import forced_node_set, pre_activations, tiny_model, tiny_transcoders

from jcircuits.attribution import CustomTarget, attribute
from jcircuits.models.transformer import unembed_matrix
from jcircuits.replacement import replace, replacement_forward
from jcircuits.transcoders.core import TranscoderError

TOKENS = np.array([1, 5, 9, 33, 7, 2, 60, 11, 4, 8])
KINDS = [
    ("llama", "plt", "jumprelu", False, "mlp.hook_in", "mlp.hook_out"),
    ("gemma2", "plt", "relu", True, "ln2.hook_normalized", "hook_mlp_out"),
    ("gemma2", "plt", "jumprelu", False, "mlp.hook_in", "mlp.hook_out"),
    ("gemma2", "clt", "jumprelu", False, "hook_resid_mid", "mlp.hook_out"),
    ("llama", "clt", "relu", True, "mlp.hook_in", "hook_mlp_out"),
    ("llama", "plt", "topk", False, "mlp.hook_in", "mlp.hook_out"),
    ("qwen3", "clt", "topk", True, "hook_resid_mid", "mlp.hook_out"),
    ("gemma3", "plt", "topk", False, "ln2.hook_normalized", "hook_mlp_out"),
]


@pytest.mark.parametrize(
    "case", KINDS, ids=[f"{a}-{k}-{f}{'-skip' if s else ''}" for a, k, f, s, *_ in KINDS]
)
def test_live_replacement_with_errors_reproduces_base_logits(case):
    arch, kind, act, skip, ih, oh = case
    model = tiny_model(arch)
    ts = tiny_transcoders(
        model.cfg, kind, act, skip, input_hook=ih, output_hook=oh, top_k=5 if act == "topk" else None
    )
    rep = replace(model, ts, TOKENS)
    assert 0 < rep.n_active
    assert (rep.active_features[:, 1] >= 1).all()  # position 0 is an attention sink: no features there
    # reconstruction + error is the base MLP output at every layer and position
    np.testing.assert_allclose(
        np.asarray(rep.reconstruction + rep.errors), np.asarray(rep.mlp_out), atol=1e-5
    )
    logits = np.asarray(replacement_forward(model, ts, TOKENS, errors=rep.errors))
    base = np.asarray(rep.logits)
    np.testing.assert_allclose(logits, base, atol=1e-5 * max(1.0, np.abs(base).max()))
    # without the errors the replacement model is a different model (the test above is not vacuous)
    assert np.abs(np.asarray(replacement_forward(model, ts, TOKENS)) - base).max() > 1e-2
    if act == "topk":
        per_pos = np.bincount(rep.active_features[:, 0] * len(TOKENS) + rep.active_features[:, 1])
        assert per_pos.max() <= 5


def test_transcoders_that_do_not_fit_the_model_are_rejected():
    model = tiny_model("llama")
    other = tiny_model("llama", d_model=48)
    with pytest.raises(TranscoderError, match="d_model"):
        replace(model, tiny_transcoders(other.cfg), TOKENS)
    with pytest.raises(TranscoderError, match="layers"):
        replace(model, tiny_transcoders(tiny_model("llama", n_layers=2).cfg), TOKENS)


def test_custom_logit_difference_target_equals_difference_of_token_rows():
    model = tiny_model("llama")
    ts = tiny_transcoders(model.cfg)
    W_U = np.asarray(unembed_matrix(model.params))
    a, b = 7, 11
    g_tok = attribute(model, ts, TOKENS, attribution_targets=[a, b])
    g_diff = attribute(
        model, ts, TOKENS, attribution_targets=[CustomTarget("a-b", 1.0, W_U[:, a] - W_U[:, b])]
    )
    assert g_diff.logit_token_ids.tolist() == [model.cfg.vocab_size]  # virtual id
    assert g_diff.logit_labels == ["a-b"]
    n_src = g_diff.adjacency_matrix.shape[0] - 1  # features, errors, tokens (logit columns are all zero)
    rows = g_tok.adjacency_matrix[-2:, :n_src]
    assert np.abs(rows[0] - rows[1]).max() > 1e-3
    np.testing.assert_allclose(g_diff.adjacency_matrix[-1, :n_src], rows[0] - rows[1], atol=1e-5)


def test_a_given_node_set_is_used_exactly_even_below_threshold():
    model = tiny_model("llama")
    ts = tiny_transcoders(model.cfg, "plt", "jumprelu", False)
    rep = replace(model, ts, TOKENS)
    assert not rep.given_features
    given, i, pre = forced_node_set(ts, rep)
    forced = replace(model, ts, TOKENS, active_features=given)
    assert forced.given_features
    np.testing.assert_array_equal(forced.active_features, given)
    np.testing.assert_allclose(forced.activation_values[i], pre, rtol=1e-6)  # its pre-activation, as if active
    others = np.delete(np.arange(len(given)), i)
    np.testing.assert_array_equal(forced.activation_values[others], rep.activation_values)  # bit for bit
    np.testing.assert_allclose(
        np.asarray(forced.reconstruction + forced.errors), np.asarray(forced.mlp_out), atol=1e-5
    )
    l, t, f = given[i]
    w = ts.decoders.rows(int(l), np.array([f]))[0] * np.float32(pre)  # the forced feature's write, moved
    np.testing.assert_allclose(np.asarray(forced.reconstruction - rep.reconstruction)[l, t], w, atol=1e-6)
    np.testing.assert_allclose(np.asarray(rep.errors - forced.errors)[l, t], w, atol=1e-6)
    # the own node set given back reproduces the replacement bit for bit
    same = replace(model, ts, TOKENS, active_features=rep.active_features)
    np.testing.assert_array_equal(same.activation_values, rep.activation_values)
    np.testing.assert_array_equal(np.asarray(same.errors), np.asarray(rep.errors))
    empty = replace(model, ts, TOKENS, active_features=np.zeros((0, 3), np.int64))
    assert empty.n_active == 0
    np.testing.assert_allclose(
        np.asarray(empty.reconstruction + empty.errors), np.asarray(rep.mlp_out), atol=1e-5
    )


@pytest.mark.parametrize(
    "bad, words",
    [
        ([[0, 1, 96]], "feature out of range"),
        ([[3, 1, 0]], "layer out of range"),
        ([[0, 10, 0]], "position out of range"),
        ([[0, -1, 0]], "position out of range"),
        ([[1, 0, 5]], "zeroed position"),
        ([[1, 2, 5], [0, 3, 4]], "sorted"),
        ([[1, 2, 5], [1, 2, 5]], "without repeats"),
        ([[1.0, 2.0, 5.0]], "int array"),
        ([1, 2, 5], "int array"),
    ],
)
def test_a_bad_node_set_is_refused(bad, words):
    model = tiny_model("llama")
    ts = tiny_transcoders(model.cfg)
    with pytest.raises(ValueError, match=words):
        replace(model, ts, TOKENS, active_features=np.asarray(bad))


def test_round_off_decided_features_are_recorded():
    model = tiny_model("llama")
    ts = tiny_transcoders(model.cfg, "plt", "jumprelu", False)
    rep = replace(model, ts, TOKENS)
    assert len(rep.round_off) == 0  # seeded: nothing sits on a threshold
    pre = pre_activations(ts, rep)
    (l1, t1, f1), (l2, t2, f2) = rep.active_features[3], rep.active_features[-2]
    theta = np.asarray(ts.params.threshold).copy()
    theta[l1, f1] = pre[l1, t1, f1]  # exactly on it: pre > θ fails, the feature drops out
    theta[l2, f2] = pre[l2, t2, f2] * (1 - 2e-6)  # just below it: still active, by a round-off margin
    moved = dataclasses.replace(ts, params=dataclasses.replace(ts.params, threshold=jnp.asarray(theta)))
    g = attribute(model, moved, TOKENS)
    rep2 = replace(model, moved, TOKENS)
    ro = rep2.round_off
    rows = {tuple(r) for r in ro.features.tolist()}
    assert {(l1, t1, f1), (l2, t2, f2)} <= rows
    assert (l1, t1, f1) not in {tuple(r) for r in rep2.active_features.tolist()}
    for k, r in enumerate(ro.features.tolist()):
        assert abs(ro.gap[k]) <= ro.margin * max(1.0, abs(ro.threshold[k]))
        assert ro.active[k] == (tuple(r) in {tuple(a) for a in rep2.active_features.tolist()})
        assert ro.threshold[k] == np.float32(theta[r[0], r[2]])
    k1 = [tuple(r) for r in ro.features.tolist()].index((l1, t1, f1))
    assert ro.gap[k1] == 0 and not ro.active[k1]
    rec = g.settings["round_off"]
    assert rec["n"] == len(ro) and rec["margin"] == ro.margin
    assert [tuple(r[:3]) for r in rec["features"]] == [tuple(r) for r in ro.features.tolist()]
    assert g.settings["precision"] == {
        "mode": "float32",
        "compute": "float32",
        "accumulate": "float32",
        "replacement": "float32",
        "weights": "float32",
        "transcoders": "float32",
        "bf16_compute": False,
        "bf16_storage": False,
    }
    mixed = attribute(model, ts, TOKENS, dtype=jnp.bfloat16).settings["precision"]
    assert mixed["mode"] == "mixed bfloat16" and mixed["bf16_compute"] and not mixed["bf16_storage"]


def test_topk_round_off_is_measured_against_the_competing_value():
    model = tiny_model("llama")
    ts = tiny_transcoders(model.cfg, "plt", "topk", False, top_k=5)
    rep = replace(model, ts, TOKENS)
    pre = pre_activations(ts, rep)
    l, t = 1, 4
    order = np.argsort(-pre[l, t])
    inside, outside = order[4], order[5]  # the k-th (kept) and (k+1)-th (dropped) at (l, t)
    b_enc = np.asarray(ts.params.b_enc).copy()
    b_enc[l, outside] += (pre[l, t, inside] - pre[l, t, outside]) * (1 - 1e-7) - 1e-6  # just under the k-th
    moved = dataclasses.replace(ts, params=dataclasses.replace(ts.params, b_enc=jnp.asarray(b_enc)))
    ro = replace(model, moved, TOKENS).round_off
    rows = [tuple(r) for r in ro.features.tolist()]
    assert (l, t, inside) in rows and (l, t, outside) in rows
    ki, ko = rows.index((l, t, inside)), rows.index((l, t, outside))
    assert ro.active[ki] and not ro.active[ko]
    assert ro.threshold[ki] == ro.pre[ko] and ro.threshold[ko] == ro.pre[ki]  # each against the other
