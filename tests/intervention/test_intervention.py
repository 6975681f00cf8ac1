"""Feature interventions: parity with circuit-tracer 0.5.0's ``feature_intervention``, and checks against the
definition of attribution edges (with every layer constrained, doubling a feature moves each target by its edge).
"""

from __future__ import annotations

import numpy as np
import pytest
from thresholds import assert_activations_close
from tiny import tiny_model, tiny_transcoders

from jcircuits.attribution import attribute
from jcircuits.cli import main as cli_main
from jcircuits.intervention import (
    InterventionSpec,
    feature_intervention,
    parse_intervention,
    resolve_interventions,
    specs_to_interventions,
)
from jcircuits.models import forward
from jcircuits.replacement import replace
from jcircuits.transcoders.io import load_transcoders

CASES = [
    "gemma2_plt_jumprelu",
    "llama_plt_relu_skip",
    "llama_clt",
    "gemma2_clt",
    "qwen3_plt_relu",
    "gemma3_plt_jumprelu",
    "gemma3_clt",
]
TOKENS = np.array([1, 5, 9, 33, 7, 2, 60, 11, 4, 8, 17])
TINY = [
    # arch, kind, activation, skip, input hook, output hook
    ("llama", "plt", "jumprelu", False, "mlp.hook_in", "mlp.hook_out"),
    ("llama", "plt", "relu", True, "mlp.hook_in", "mlp.hook_out"),
    ("gemma2", "plt", "jumprelu", False, "ln2.hook_normalized", "hook_mlp_out"),
    ("gemma2", "clt", "jumprelu", False, "hook_resid_mid", "mlp.hook_out"),
    ("llama", "clt", "relu", True, "ln2.hook_normalized", "hook_mlp_out"),
]
TINY_IDS = [f"{a}-{k}-{f}{'-skip' if s else ''}" for a, k, f, s, *_ in TINY]
QK_NORM = [  # Qwen3 and Gemma-3 (QK-norm, Gemma-3's two RoPE bases), a TopK CLT among them
    ("qwen3", "plt", "jumprelu", True, "mlp.hook_in", "mlp.hook_out"),
    ("gemma3", "clt", "topk", False, "hook_resid_mid", "hook_mlp_out"),
]
QK_NORM_IDS = [f"{a}-{k}-{f}{'-skip' if s else ''}" for a, k, f, s, *_ in QK_NORM]


def _tiny(case):
    arch, kind, act, skip, ih, oh = case
    model = tiny_model(arch)
    top_k = 5 if act == "topk" else None
    return model, tiny_transcoders(model.cfg, kind, act, skip, input_hook=ih, output_hook=oh, top_k=top_k)


# ----------------------------------------------------------------------------------- circuit-tracer parity


@pytest.mark.parametrize("case", CASES)
def test_logits_and_activations_match_circuit_tracer_feature_intervention(loaded, ref_cases, case):
    model, ts, ref, meta = loaded(case)
    ref_dir = ref_cases
    settings = meta["settings"]["feature_intervention"]
    assert settings["freeze_attention"] and settings["apply_activation_function"]
    iv = [(int(l), int(p), int(f), float(v)) for l, p, f, v in ref["intervention"]]
    assert any(v == 0 for *_, v in iv) and any(v != 0 for *_, v in iv)  # ablations and an amplification
    for constrained, sfx in [(None, ""), (range(model.cfg.n_layers), "_constrained")]:
        logits, acts = feature_intervention(model, ts, ref["tokens"], iv, constrained_layers=constrained)
        logits, acts = np.asarray(logits), np.asarray(acts)
        # the edit matters (so the comparison can fail) …
        assert np.abs(ref[f"intervened_logits{sfx}"] - ref["tl_logits"]).max() > 0.1
        # … and we reproduce it
        np.testing.assert_allclose(logits, ref[f"intervened_logits{sfx}"], atol=1e-4, err_msg=sfx)
        theta = None if ts.params.threshold is None else np.asarray(ts.params.threshold)
        assert_activations_close(acts, ref[f"intervened_activations{sfx}"], theta, atol=1e-4, err_msg=sfx)
    # decoder rows are read from the host-side store, so transcoders left on disk give the same result
    lazy = load_transcoders(ref_dir / case / "transcoders" / "config.yaml", lazy_decoder=True)
    assert type(lazy.decoders) is not type(ts.decoders)
    lazy_logits, _ = feature_intervention(model, lazy, ref["tokens"], iv, constrained_layers=constrained)
    np.testing.assert_allclose(np.asarray(lazy_logits), logits, atol=1e-6)


# ------------------------------------------------------------------------------------- definition checks


@pytest.mark.parametrize("case", [TINY[0], TINY[3], TINY[4]], ids=[TINY_IDS[0], TINY_IDS[3], TINY_IDS[4]])
def test_setting_features_to_their_current_value_changes_nothing(case):
    model, ts = _tiny(case)
    rep = replace(model, ts, TOKENS)
    base = np.asarray(forward(model.params, model.cfg, TOKENS[None])[0])
    rng = np.random.default_rng(0)
    picks = rng.choice(rep.n_active, size=min(3, rep.n_active), replace=False)
    iv = [(*map(int, rep.active_features[j]), float(rep.activation_values[j])) for j in picks]
    iv.append((1, 0, 3, 0.0))  # position 0 counts as zero activation: setting it to 0 is a no-op
    for constrained in (None, range(model.cfg.n_layers)):
        logits, acts = feature_intervention(model, ts, TOKENS, iv, constrained_layers=constrained)
        np.testing.assert_allclose(np.asarray(logits), base, atol=1e-6, rtol=0)
        a = np.asarray(acts)
        np.testing.assert_allclose(
            a[tuple(rep.active_features.T)], rep.activation_values, atol=1e-6, rtol=1e-6
        )
        assert np.count_nonzero(a) == rep.n_active


def _pre_softcap(logits, cap):
    x = np.asarray(logits, np.float64)
    return x if cap is None else cap * np.arctanh(x / cap)


@pytest.mark.parametrize("case", TINY + QK_NORM, ids=TINY_IDS + QK_NORM_IDS)
def test_doubling_a_feature_with_all_layers_constrained_moves_every_target_by_its_edge(case):
    model, ts = _tiny(case)
    cfg = model.cfg
    g = attribute(model, ts, TOKENS, batch_size=64)
    n_sel, K, T = len(g.selected_features), len(g.logit_token_ids), len(TOKENS)
    act_f = g.active_features[g.selected_features]
    ids = np.asarray(g.logit_token_ids)
    every = range(cfg.n_layers)
    s0 = g.selected_features[0]  # a no-op edit (a feature set to its own value) gives the frozen clean run
    noop = [(*map(int, g.active_features[s0]), float(g.activation_values[s0]))]
    base_logits, base_pre = feature_intervention(
        model, ts, TOKENS, noop, constrained_layers=every, apply_activation_function=False
    )
    base_z = _pre_softcap(base_logits, cfg.final_softcap)[T - 1]
    base_pre = np.asarray(base_pre)
    a_max = float(np.abs(g.adjacency_matrix).max())
    rng = np.random.default_rng(1)
    # the features with the largest logit edges, plus a random few
    strongest = np.argsort(-np.abs(g.adjacency_matrix[-K:, :n_sel]).max(axis=0))[:2]
    cols = np.unique(np.concatenate([strongest, rng.choice(n_sel, size=min(3, n_sel), replace=False)]))
    moved = 0.0
    for col in cols:
        l, t, f = map(int, act_f[col])
        a = float(g.activation_values[g.selected_features[col]])
        logits, pre = feature_intervention(
            model, ts, TOKENS, [(l, t, f, 2 * a)], constrained_layers=every, apply_activation_function=False
        )
        d_pre = (np.asarray(pre) - base_pre)[act_f[:, 0], act_f[:, 1], act_f[:, 2]]
        dz = _pre_softcap(logits, cfg.final_softcap)[T - 1] - base_z
        d_logit = dz[ids] - dz.mean()
        col_f, col_l = g.adjacency_matrix[:n_sel, col], g.adjacency_matrix[-K:, col]
        scale = max(np.abs(d_pre).max(), np.abs(d_logit).max(), 1e-3)
        atol = 2e-5 * scale + 1e-6 * a_max
        np.testing.assert_allclose(d_pre, col_f, atol=atol, err_msg=f"feature targets, source {col}")
        np.testing.assert_allclose(d_logit, col_l, atol=atol, err_msg=f"logit targets, source {col}")
        moved = max(moved, float(np.abs(col_l).max()))
        # non-active features move too (their pre-activations), but the source's own layer-l inputs do not
        assert np.allclose(np.asarray(pre)[: l + 1, :t], base_pre[: l + 1, :t], atol=1e-6)
    assert moved > 1e-2  # the edits were not trivially zero


@pytest.mark.parametrize("case", TINY[:3] + TINY[4:], ids=TINY_IDS[:3] + TINY_IDS[4:])
def test_zero_ablating_a_strong_logit_feature_moves_that_logit_as_the_graph_predicts(case):
    model, ts = _tiny(case)
    g = attribute(model, ts, TOKENS, batch_size=64)
    n_sel, K, T = len(g.selected_features), len(g.logit_token_ids), len(TOKENS)
    A = g.adjacency_matrix[-K:, :n_sel]
    k, col = np.unravel_index(np.argmax(np.abs(A)), A.shape)
    edge = float(A[k, col])
    l, t, f = map(int, g.active_features[g.selected_features[col]])
    tid = int(g.logit_token_ids[k])
    cap = model.cfg.final_softcap
    base = _pre_softcap(forward(model.params, model.cfg, TOKENS[None])[0], cap)[T - 1]
    for constrained in (None, range(model.cfg.n_layers)):
        logits, _ = feature_intervention(model, ts, TOKENS, [(l, t, f, 0.0)], constrained_layers=constrained)
        z = _pre_softcap(logits, cap)[T - 1]
        change = (z[tid] - z.mean()) - (base[tid] - base.mean())
        assert np.sign(change) == -np.sign(edge), (constrained, change, edge)
        if constrained is not None:  # direct effects only: exactly minus the edge
            assert abs(change + edge) <= 1e-4 * max(1.0, abs(edge)), (change, edge)
        else:  # indirect effects may add, but the direct edge dominates in these models
            assert abs(change) > 0.3 * abs(edge), (change, edge)


def test_clt_edit_reaches_later_layers_and_plt_edit_does_not():
    """With only layers 1.. constrained (so writes are applied there only), a CLT edit read at layer 0 still acts
    through its decoders into layers ≥ 1; a PLT edit at layer 0 writes only to slot 0 and is dropped."""
    model = tiny_model("llama")
    base = np.asarray(forward(model.params, model.cfg, TOKENS[None])[0])
    changes = {}
    for kind in ("clt", "plt"):
        ts = tiny_transcoders(model.cfg, kind, "relu")
        rep = replace(model, ts, TOKENS)
        j = int(np.argmax(np.where(rep.active_features[:, 0] == 0, rep.activation_values, -1)))
        l, t, f = map(int, rep.active_features[j])
        iv = [(l, t, f, 3.0 * float(rep.activation_values[j]))]
        logits, _ = feature_intervention(
            model, ts, TOKENS, iv, constrained_layers=range(1, model.cfg.n_layers)
        )
        changes[kind] = float(np.abs(np.asarray(logits) - base).max())
    assert changes["clt"] > 1e-3, changes
    assert changes["plt"] < 1e-5, changes


def test_slices_sequences_and_overrides_resolve_like_circuit_tracer():
    model, ts = _tiny(TINY[0])
    T = len(TOKENS)
    rep = replace(model, ts, TOKENS)
    l, t, f = map(int, rep.active_features[0])
    # a later edit of the same (layer, feature, position) wins
    a, _ = feature_intervention(model, ts, TOKENS, [(l, t, f, 5.0), (l, t, f, 0.0)])
    b, _ = feature_intervention(model, ts, TOKENS, [(l, t, f, 0.0)])
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    # a slice equals the same edit at each position; a negative position counts from the end
    s, _ = feature_intervention(model, ts, TOKENS, [(1, slice(T - 3, None), 7, 2.0)])
    e, _ = feature_intervention(model, ts, TOKENS, [(1, [-3, -2, -1], 7, 2.0)])
    np.testing.assert_allclose(np.asarray(s), np.asarray(e), atol=1e-6)
    plan = resolve_interventions([(0, slice(None, None, 2), 1, 1.0), (0, 4, 1, 2.0)], 3, 96, T)
    assert plan.mask[0].tolist() == [i % 2 == 0 and i != 4 for i in range(T)]
    assert plan.mask[1].tolist() == [i == 4 for i in range(T)]
    # numpy scalars are accepted
    feature_intervention(model, ts, TOKENS, [(np.int64(l), np.int32(t), np.int64(f), np.float32(1.0))])


def test_bad_interventions_raise_clear_errors():
    model, ts = _tiny(TINY[0])
    T, L, F = len(TOKENS), model.cfg.n_layers, ts.cfg.n_features
    bad = [
        ((L, 1, 0, 1.0), ValueError, "layer 3 is out of range"),
        ((-1, 1, 0, 1.0), ValueError, "layer -1 is out of range"),
        ((0, 1, F, 1.0), ValueError, f"feature {F} is out of range"),
        ((0, T, 0, 1.0), ValueError, f"position {T} is out of range"),
        ((0, -T - 1, 0, 1.0), ValueError, "out of range"),
        ((0, slice(T + 2, None), 0, 1.0), ValueError, "covers no position"),
        ((0, slice(0, None, -1), 0, 1.0), ValueError, "step must be positive"),
        ((0, 1, 0, float("nan")), ValueError, "must be finite"),
        ((0, 1, 0, float("inf")), ValueError, "must be finite"),
        ((0, 1, 0, "big"), TypeError, "real number"),
        ((0, 1.5, 0, 1.0), TypeError, "position"),
        ((0.0, 1, 0, 1.0), TypeError, "layer must be an integer"),
        ((0, 1, 0), TypeError, "4-tuple"),
    ]
    for iv, exc, msg in bad:
        with pytest.raises(exc, match=msg):
            feature_intervention(model, ts, TOKENS, [iv])
    with pytest.raises(ValueError, match="constrained_layers is empty"):
        feature_intervention(model, ts, TOKENS, [(0, 1, 0, 1.0)], constrained_layers=[])
    with pytest.raises(ValueError, match=r"constrained_layers \[7\] out of range"):
        feature_intervention(model, ts, TOKENS, [(0, 1, 0, 1.0)], constrained_layers=[0, 7])
    with pytest.raises(ValueError, match="zero_positions"):
        feature_intervention(model, ts, TOKENS, [], zero_positions=-1)


def test_parse_intervention_specs():
    assert parse_intervention("1:5:42=0") == InterventionSpec(1, 5, 42, 0.0, False)
    assert parse_intervention(" 2 : -1 : 7 = -1.5e1 ") == InterventionSpec(2, -1, 7, -15.0, False)
    assert parse_intervention("0:3..:9=2") == InterventionSpec(0, slice(3, None), 9, 2.0, False)
    assert parse_intervention("0:..:9*=2") == InterventionSpec(0, slice(None, None), 9, 2.0, True)
    assert parse_intervention("0:2..5:9*=0.5").position == slice(2, 5)
    for spec in [
        "1:5:42",
        "1:5=0",
        "a:5:42=0",
        "1:x:42=0",
        "1:5:42=nan",
        "1:5:42=inf",
        "1:5:-3=0",
        "1:a..b:2=0",
    ]:
        with pytest.raises(ValueError):
            parse_intervention(spec)
    acts = np.zeros((2, 4, 3), np.float32)
    acts[1, 1:3, 2] = [2.0, 4.0]
    out = specs_to_interventions([parse_intervention("1:1..3:2*=3"), parse_intervention("0:1:1=5")], acts, 4)
    assert out == [(1, 1, 2, 6.0), (1, 2, 2, 12.0), (0, 1, 1, 5.0)]
    with pytest.raises(ValueError, match="inside the prompt"):
        specs_to_interventions([parse_intervention("1:1..:2*=3")], acts, 4)
    with pytest.raises(ValueError, match="feature 9 is out of range"):
        specs_to_interventions([parse_intervention("1:1:9*=3")], acts, 4)


def test_cli_intervene_prints_top_tokens_and_continuations(capsys):
    from jcircuits.default import default_model, default_transcoders

    model = default_model()
    ts = default_transcoders(model)
    prompt = "the capital of texas is"
    rep = replace(model, ts, model.tokenizer.encode(prompt))
    order = np.argsort(-rep.activation_values)
    (l0, t0, f0), (l1, t1, f1) = rep.active_features[order[0]], rep.active_features[order[1]]
    capsys.readouterr()
    argv = ["intervene", "--prompt", prompt, "--set", f"{l0}:{t0}:{f0}=0", "--set", f"{l1}:2..:{f1}=6"]
    rc = cli_main([*argv, "--set", f"{l1}:{t1}:{f1}*=4", "--generate", "3", "--top-k", "3"])
    out = capsys.readouterr().out
    assert rc == 0
    a0 = rep.activation_values[order[0]]
    assert f"set layer {l0} position {t0} feature {f0} -> 0 (clean activation {a0:.4g})" in out
    assert f"position 2.. feature {f1}" in out
    assert f"feature {f1} -> {4 * rep.activation_values[order[1]]:.4g}" in out
    lines = out.splitlines()
    header = next(i for i, s in enumerate(lines) if s.strip().startswith("rank"))
    assert len([s for s in lines[header + 1 :] if s.strip()[:1].isdigit()]) == 3
    assert any(s.startswith("continuation before:") for s in lines)
    assert any(s.startswith("continuation after:") for s in lines)
    assert cli_main(["intervene", "--prompt", "the capital", "--set", f"{model.cfg.n_layers}:1:2=0"]) == 2
    assert f"layer {model.cfg.n_layers} is out of range" in capsys.readouterr().err
