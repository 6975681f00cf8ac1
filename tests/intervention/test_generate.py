"""Generation with a KV cache (jcircuits.models.decode) and with feature interventions (jcircuits.intervention).

The reference is full recomputation: because the models are causal, the logits at position t of one forward over
a fixed-length buffer depend only on tokens ≤ t, so filling the buffer one greedy token at a time reproduces
generation without a cache (one compilation for every step).
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from thresholds import assert_activations_close
from tiny import tiny_model, tiny_transcoders

from jcircuits.intervention import feature_intervention, generate
from jcircuits.models import forward
from jcircuits.models.decode import generate as generate_plain

PROMPT = np.array([1, 5, 9, 33, 7, 2, 60, 11])
N = 7  # prompt 8 + 7 > Gemma's window 4 and Llama's original_max_position_embeddings 16 is crossed at 15


def _recompute(step_logits, n_new):
    """Greedy full-recompute generation: ``step_logits(buffer) -> logits [S, V]`` over a fixed buffer."""
    T = len(PROMPT)
    buf = np.concatenate([PROMPT, np.zeros(n_new, PROMPT.dtype)])
    toks, logits = [], []
    for j in range(n_new):
        lg = np.asarray(step_logits(buf))[T + j - 1]
        buf[T + j] = int(np.argmax(lg))
        toks.append(buf[T + j])
        logits.append(lg)
    return np.array(toks), np.stack(logits)


@pytest.mark.parametrize("arch", ["llama", "gemma2"])
def test_kv_cache_generation_equals_full_recompute(arch):
    model = tiny_model(arch)
    new, logits = generate_plain(model.params, model.cfg, PROMPT[None], N)
    ref_toks, ref_logits = _recompute(lambda b: forward(model.params, model.cfg, b[None])[0], N)
    np.testing.assert_array_equal(np.asarray(new)[0], ref_toks)
    np.testing.assert_allclose(np.asarray(logits)[0], ref_logits, atol=1e-4)
    assert len(set(ref_toks.tolist())) > 1  # not a degenerate repeat of one token


@pytest.mark.parametrize("arch", ["qwen3", "gemma3"])
def test_kv_cache_logits_equal_one_forward_over_the_generated_sequence(arch):
    """Qwen3 / Gemma-3 (QK-norm on cached keys, windows shorter than prompt + new tokens, Gemma-3's two RoPE bases):
    every cached step's logits equal those of one full forward over the prompt and the generated tokens at the
    same position; compared as continuous values on the cache's own tokens, so no argmax tie can decide it."""
    model = tiny_model(arch)
    cfg = model.cfg
    assert cfg.qk_norm and max(w or 0 for w in cfg.layer_windows) < len(PROMPT) + N
    new, logits = generate_plain(model.params, cfg, PROMPT[None], N)
    seq = np.concatenate([PROMPT, np.asarray(new)[0]])
    full = np.asarray(forward(model.params, cfg, seq[None])[0])  # [T + N, V]
    T = len(PROMPT)
    np.testing.assert_allclose(np.asarray(logits)[0], full[T - 1 : T + N - 1], atol=1e-4)
    assert len(set(np.asarray(new)[0].tolist())) > 1  # not a degenerate repeat of one token


GEN_CASES = [
    ("llama", "plt", "jumprelu", False, "mlp.hook_in", "mlp.hook_out"),
    ("llama", "plt", "relu", True, "mlp.hook_in", "mlp.hook_out"),
    ("gemma2", "clt", "jumprelu", False, "hook_resid_mid", "mlp.hook_out"),
    ("gemma2", "plt", "jumprelu", False, "ln2.hook_normalized", "hook_mlp_out"),
]


@pytest.mark.parametrize(
    "case", GEN_CASES, ids=[f"{a}-{k}-{f}{'-skip' if s else ''}" for a, k, f, s, *_ in GEN_CASES]
)
def test_intervened_kv_cache_generation_equals_full_recompute(case):
    arch, kind, act, skip, ih, oh = case
    model = tiny_model(arch)
    ts = tiny_transcoders(model.cfg, kind, act, skip, input_hook=ih, output_hook=oh)
    T = len(PROMPT)
    # an ablation inside the prompt, an open-ended amplification that also edits every generated token, and an
    # edit at one generated position only
    iv = [(1, 3, 5, 0.0), (0, slice(T - 2, None), 7, 4.0), (2, T + 2, 11, 3.0)]
    g = generate(model, ts, PROMPT, iv, max_new_tokens=N, freeze_attention=False, return_activations=True)
    ref_toks, ref_logits = _recompute(
        lambda b: feature_intervention(model, ts, b, iv, freeze_attention=False, return_activations=False)[0],
        N,
    )
    np.testing.assert_array_equal(g.tokens, ref_toks)
    np.testing.assert_allclose(g.logits, ref_logits, atol=1e-4)
    # activations over prompt + processed new tokens equal those of one forward over the final sequence
    full = np.concatenate([PROMPT, g.tokens[:-1]])
    _, acts = feature_intervention(model, ts, full, iv, freeze_attention=False)
    np.testing.assert_allclose(g.activations, np.asarray(acts), atol=1e-4)
    # the edits change the continuation's distributions, including the open-ended one after the prompt
    plain = generate(model, ts, PROMPT, [], max_new_tokens=N)
    assert np.abs(plain.logits - g.logits).max(axis=-1).min() > 1e-3


def test_default_generation_freezes_attention_for_the_prompt_pass_only():
    model = tiny_model("gemma2")
    ts = tiny_transcoders(model.cfg, "plt", "jumprelu")
    iv = [(0, slice(2, None), 7, 5.0), (1, 4, 3, 0.0)]
    for constrained in (None, range(model.cfg.n_layers)):
        g = generate(model, ts, PROMPT, iv, max_new_tokens=3, constrained_layers=constrained)
        lg, _ = feature_intervention(model, ts, PROMPT, iv, constrained_layers=constrained)
        np.testing.assert_allclose(g.logits[0], np.asarray(lg)[-1], atol=1e-5)
        assert g.tokens[0] == int(np.argmax(np.asarray(lg)[-1]))
    # freezing matters: with live attention the first step differs
    live = generate(model, ts, PROMPT, iv, max_new_tokens=1, freeze_attention=False)
    assert np.abs(live.logits[0] - g.logits[0]).max() > 1e-4


def test_greedy_is_deterministic_and_sampling_reproducible_from_the_key():
    model = tiny_model("llama")
    ts = tiny_transcoders(model.cfg, "clt", "relu")
    iv = [(0, slice(3, None), 2, 3.0)]
    a = generate(model, ts, PROMPT, iv, max_new_tokens=N)
    b = generate(model, ts, PROMPT, iv, max_new_tokens=N)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    s1 = generate(model, ts, PROMPT, iv, N, temperature=1.0, rng=jax.random.key(7))
    s2 = generate(model, ts, PROMPT, iv, N, temperature=1.0, rng=jax.random.key(7))
    s3 = generate(model, ts, PROMPT, iv, N, temperature=1.0, rng=jax.random.key(8))
    np.testing.assert_array_equal(s1.tokens, s2.tokens)
    assert not np.array_equal(s1.tokens, s3.tokens)
    # each sampled token is one the model gives non-negligible probability
    p = jax.nn.softmax(s1.logits, axis=-1)
    assert (np.asarray(p)[np.arange(N), s1.tokens] > 1e-6).all()
    # without edits, the transcoder-aware decode path (taken when activations are requested) samples exactly
    # what the plain model-level generator samples
    plain = generate(
        model, ts, PROMPT, [], N, temperature=1.0, rng=jax.random.key(7), return_activations=True
    )
    assert plain.activations.shape == (model.cfg.n_layers, len(PROMPT) + N - 1, ts.cfg.n_features)
    ref, _ = generate_plain(model.params, model.cfg, PROMPT[None], N, temperature=1.0, key=jax.random.key(7))
    np.testing.assert_array_equal(plain.tokens, np.asarray(ref)[0])


REF_CASES = [
    "gemma2_plt_jumprelu",
    "llama_plt_relu_skip",
    "llama_clt",
    "gemma2_clt",
    "qwen3_plt_relu",
    "gemma3_plt_jumprelu",
    "gemma3_clt",
]


def _thresholds(ts):
    return None if ts.params.threshold is None else np.asarray(ts.params.threshold)


def _decode_interventions(rows):
    """``generation_interventions_*`` rows ``(layer, start, stop, feature, value)`` (stop -1: open-ended)."""
    return [(int(l), slice(int(a), None if b < 0 else int(b)), int(f), float(v)) for l, a, b, f, v in rows]


@pytest.mark.ref
@pytest.mark.parametrize("case", REF_CASES)
def test_generation_matches_circuit_tracer_feature_intervention_generate(loaded, case):
    """Greedy generation against circuit-tracer's ``feature_intervention_generate`` (KV cache, attention frozen
    in the prompt pass) for edits closed inside the prompt and for an open-ended slice starting in the prompt.

    Open-ended slices differ past the prompt: circuit-tracer applies ``slice(k, None)`` to every new token
    whatever ``k`` is, we apply it from absolute position ``k``. They agree when ``k`` is inside the prompt, and
    circuit-tracer's ``slice(T + 2, None)`` is our ``slice(T, None)``."""
    model, ts, ref, meta = loaded(case)
    settings = meta["settings"]["feature_intervention_generate"]
    assert settings["freeze_attention"] and not settings["do_sample"] and settings["use_past_kv_cache"]
    n_new, T = settings["max_new_tokens"], len(ref["tokens"])
    plain = generate(model, ts, ref["tokens"], [], max_new_tokens=n_new, return_activations=True)
    for name in ("closed", "open", "past_prompt"):
        iv = _decode_interventions(ref[f"generation_interventions_{name}"])
        want_toks, want_logits = ref[f"generated_tokens_{name}"], ref[f"generated_logits_{name}"]
        want_acts = ref[f"generated_activations_{name}"]
        if name == "past_prompt":
            ((l, pos, f, v),) = iv
            assert pos.start == T + 2 and pos.stop is None
            iv = [(l, slice(T, None), f, v)]  # circuit-tracer: every new token
        g = generate(model, ts, ref["tokens"], iv, max_new_tokens=n_new, return_activations=True)
        # the edits matter, inside the prompt (first step) and, for open-ended ones, after it
        assert np.abs(want_logits - plain.logits).max(-1)[int(name == "past_prompt")] > 0.1, name
        if name != "closed":
            assert np.abs(want_acts[..., T:, :] - plain.activations[..., T:, :]).max() > 0.1, name
        np.testing.assert_array_equal(g.tokens, want_toks, err_msg=name)
        np.testing.assert_allclose(g.logits, want_logits, atol=1e-4, err_msg=name)
        # a JumpReLU feature sitting on its threshold may fire on one side only (round-off): compared apart
        assert_activations_close(g.activations, want_acts, _thresholds(ts), atol=1e-4, err_msg=name)
    # the difference: our slice(T + 2, None) starts at absolute position T + 2, so the first three steps (the
    # prompt pass, then positions T and T + 1) are unedited while circuit-tracer's second step already is
    ((l, pos, f, v),) = _decode_interventions(ref["generation_interventions_past_prompt"])
    ours = generate(model, ts, ref["tokens"], [(l, pos, f, v)], max_new_tokens=n_new, return_activations=True)
    np.testing.assert_allclose(ours.logits[:3], plain.logits[:3], atol=1e-5)
    assert np.abs(ours.logits[1] - ref["generated_logits_past_prompt"][1]).max() > 0.1


def test_bad_generation_arguments_raise_clear_errors():
    model = tiny_model("llama")
    ts = tiny_transcoders(model.cfg)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(model, ts, PROMPT, [], max_new_tokens=0)
    with pytest.raises(ValueError, match="temperature"):
        generate(model, ts, PROMPT, [], max_new_tokens=2, temperature=-1.0)
    with pytest.raises(ValueError, match="PRNG key"):
        generate(model, ts, PROMPT, [], max_new_tokens=2, temperature=0.5)
    with pytest.raises(ValueError, match="exceeds the model's context"):
        generate(model, ts, PROMPT, [], max_new_tokens=model.cfg.max_position_embeddings)
    with pytest.raises(ValueError, match="out of range for a sequence of 10 positions"):
        generate(model, ts, PROMPT, [(0, 10, 1, 1.0)], max_new_tokens=2)
