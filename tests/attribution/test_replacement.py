"""The replacement model reproduces the base model: features (re-encoded live at every layer) + errors."""

from __future__ import annotations

import numpy as np
import pytest
from tiny import tiny_model, tiny_transcoders

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
