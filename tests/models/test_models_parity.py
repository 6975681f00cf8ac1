"""Parity of ``jcircuits.models`` with Hugging Face ``transformers`` (PyTorch CPU, eager attention).

Seeded tiny random models (``hf_tiny``) are saved with ``save_pretrained``, loaded through ``load_model`` (so
the converter is part of what is tested) and run on several prompts. Tolerances:

* float32 logits: max-abs ≤ 1e-4 (measured: Gemma-2 ≤ 7e-6, Llama-3 ≤ 4e-5, Qwen3 ≤ 2e-5, Gemma-3 ≤ 3e-5).
* float32 intermediates: attention patterns max-abs ≤ 1e-5; residual stream, MLP input/output, final-normed
  residual max-abs ≤ 1e-5 · max(1, max|reference|) — float32 rounding grows with the magnitude of the stream
  (these random models reach |x| ≈ 30), so the bound is relative to it (measured ≤ 3e-6 relative; attention
  patterns ≤ 5e-6 absolute).
* bfloat16 (our params cast to bf16, the HF model ``.to(torch.bfloat16)``): the two bf16 computations round
  differently and drift apart through the layers as much as HF's own bf16 drifts from its float32. We require
  max-abs(ours_bf16 − hf_bf16) ≤ 2 · max-abs(hf_bf16 − hf_f32) and ≤ 0.1 · max|hf_f32 logits| (measured:
  0.15–1.0 absolute, ≤ 1.02× HF's own bf16 error, ≤ 0.056 of the logit scale).
"""

from __future__ import annotations

import dataclasses

import hf_tiny
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jcircuits.models import forward
from jcircuits.models.layers import rope_inv_freq
from jcircuits.models.loading import load_params

CASES = {
    "gemma2_gqa": lambda: hf_tiny.gemma2_config(n_kv_heads=2),
    "gemma2_mha": lambda: hf_tiny.gemma2_config(n_kv_heads=4),
    "llama3_gqa_untied": lambda: hf_tiny.llama_config(n_kv_heads=2, tied=False),
    "llama3_mha_tied": lambda: hf_tiny.llama_config(n_kv_heads=4, tied=True),
    "qwen3_gqa_sliding_untied": lambda: hf_tiny.qwen3_config(n_kv_heads=2, tied=False, sliding=True),
    "qwen3_mha_tied": lambda: hf_tiny.qwen3_config(n_kv_heads=4, tied=True, sliding=False),
    "gemma3_gqa_final_softcap": lambda: hf_tiny.gemma3_config(n_kv_heads=2, final_logit_softcapping=30.0),
    # transformers' multimodal Gemma-3 applies no final soft-cap (config_from_hf refuses one there)
    "gemma3_multimodal_mqa": lambda: hf_tiny.gemma3_multimodal_config(n_kv_heads=1),
}
L_LONG = hf_tiny.LONG_PROMPT


def _hf_run(model, tokens):
    """HF logits plus every per-layer intermediate we compare, captured with forward hooks."""
    caught: dict[str, list] = {"mlp_in": [], "mlp_out_raw": [], "mlp_out": [], "last": []}

    def keep(name, what):
        def hook(module, args, out):  # returns None: a forward hook that returns a value replaces the output
            caught[name].append(args[0] if what == "in" else out)

        return hook

    hooks = []
    layers = hf_tiny.text_layers(model)
    for layer in layers:
        hooks.append(layer.mlp.register_forward_hook(keep("mlp_in", "in")))
        hooks.append(layer.mlp.register_forward_hook(keep("mlp_out_raw", "out")))
        if hasattr(layer, "post_feedforward_layernorm"):
            hooks.append(layer.post_feedforward_layernorm.register_forward_hook(keep("mlp_out", "out")))
    hooks.append(layers[-1].register_forward_hook(keep("last", "out")))
    try:
        with torch.no_grad():
            out = model(
                torch.as_tensor(tokens, dtype=torch.long), output_hidden_states=True, output_attentions=True
            )
    finally:
        for h in hooks:
            h.remove()
    last = caught["last"][0]
    last = last[0] if isinstance(last, tuple) else last
    as_np = lambda ts: np.stack([t.float().numpy() for t in ts])  # noqa: E731
    ref = {
        "logits": out.logits.float().numpy(),
        # hidden_states = inputs of every layer, then the final-normed output
        "resid": np.concatenate([as_np(out.hidden_states[:-1]), last.float().numpy()[None]]),
        "final_normed": out.hidden_states[-1].float().numpy(),
        "attn_pattern": as_np(out.attentions),
        "mlp_in": as_np(caught["mlp_in"]),
        "mlp_out_raw": as_np(caught["mlp_out_raw"]),
        "mlp_out": as_np(caught["mlp_out"] or caught["mlp_out_raw"]),
    }
    return ref


@pytest.fixture(scope="module", params=list(CASES))
def case(request, tmp_path_factory):
    conf = CASES[request.param]()
    model = hf_tiny.build(conf, seed=len(request.param))
    directory = hf_tiny.save(model, tmp_path_factory.mktemp(request.param))
    params, cfg = load_params(directory)
    bos = conf.get_text_config().bos_token_id
    prompts = {
        "batch3_long": hf_tiny.prompts(1, 3, L_LONG, bos),
        "batch1_short": hf_tiny.prompts(2, 1, 9, bos),
    }
    return dict(name=request.param, conf=conf, model=model, params=params, cfg=cfg, prompts=prompts)


def test_tiny_configs_exercise_windows_softcaps_and_all_llama3_rope_bands():
    g = hf_tiny.gemma2_config()
    assert g.sliding_window < L_LONG and g.query_pre_attn_scalar != g.head_dim
    assert g.attn_logit_softcapping and g.final_logit_softcapping
    r = hf_tiny.LLAMA3_ROPE
    assert r["original_max_position_embeddings"] < L_LONG
    from jcircuits.models.config import RopeScaling

    inv_plain = rope_inv_freq(16, 10000.0, None)
    wavelen = 2 * np.pi / inv_plain
    orig = r["original_max_position_embeddings"]
    low, high = orig / r["low_freq_factor"], orig / r["high_freq_factor"]
    assert (wavelen < high).any() and ((wavelen >= high) & (wavelen <= low)).any() and (wavelen > low).any()
    scaled = rope_inv_freq(16, 10000.0, RopeScaling(**{k: v for k, v in r.items() if k != "rope_type"}))
    assert not np.allclose(scaled, inv_plain)


def test_float32_logits_and_intermediates_match_transformers(case):
    for prompt_name, tokens in case["prompts"].items():
        ref = _hf_run(case["model"], tokens)
        logits, inter = forward(case["params"], case["cfg"], tokens, capture=True)
        err = np.abs(np.asarray(logits) - ref["logits"]).max()
        assert err <= 1e-4, f"{case['name']} {prompt_name}: logits max-abs error {err:.3g}"
        ours = {k: np.asarray(getattr(inter, k)) for k in ref if k != "logits"}
        for key, want in ref.items():
            if key == "logits":
                continue
            got = ours[key]
            assert got.shape == want.shape, f"{key}: {got.shape} vs {want.shape}"
            err = np.abs(got - want).max()
            bound = 1e-5 if key == "attn_pattern" else 1e-5 * max(1.0, np.abs(want).max())
            assert err <= bound, f"{case['name']} {prompt_name} {key}: max-abs error {err:.3g} > {bound:.3g}"


def test_qwen3_and_gemma3_details_matter_on_the_test_prompt(case):
    """Each Qwen3 / Gemma-3 detail changes the logits on the long prompt by far more than the parity tolerance:
    QK-norm gains (reset to the identity), head_dim != d_model / n_heads, sliding windows shorter than the prompt
    (removed), and for Gemma-3 the local RoPE base and the global linear scaling (each replaced by the other
    layers')."""
    cfg, params = case["cfg"], case["params"]
    if cfg.arch not in ("qwen3", "gemma3"):
        pytest.skip("Qwen3 / Gemma-3 details only")
    tokens = case["prompts"]["batch3_long"]
    want = _hf_run(case["model"], tokens)["logits"]
    assert cfg.qk_norm and cfg.head_dim * cfg.n_heads != cfg.d_model
    identity = jnp.full_like(params.layers.q_norm, 1.0 - cfg.norm_offset)
    variants = {
        "qk_norm identity": (
            cfg,
            dataclasses.replace(params, layers=dataclasses.replace(params.layers, q_norm=identity, k_norm=identity)),
        ),
    }
    if any(cfg.layer_windows):
        assert max(w or 0 for w in cfg.layer_windows) < L_LONG
        variants["no windows"] = (cfg.replace(layer_windows=(None,) * cfg.n_layers), params)
    if cfg.arch == "gemma3":
        assert cfg.local_rope_theta != cfg.rope_theta and cfg.rope_scaling.rope_type == "linear"
        assert 0 < sum(w is None for w in cfg.layer_windows) < cfg.n_layers  # local and global layers
        variants["local base = global"] = (cfg.replace(local_rope_theta=None), params)
        variants["global unscaled"] = (cfg.replace(rope_scaling=None), params)
    for name, (c, p) in variants.items():
        err = np.abs(np.asarray(forward(p, c, tokens)) - want).max()
        assert err > 1e-2, f"{case['name']}: {name} moves the logits by only {err:.3g}"


def test_sliding_window_layers_ignore_keys_beyond_the_window(case):
    if not any(case["cfg"].layer_windows):
        pytest.skip("no sliding windows")
    tokens = case["prompts"]["batch3_long"]
    _, inter = forward(case["params"], case["cfg"], tokens, capture=True)
    pattern = np.asarray(inter.attn_pattern)  # [L, B, H, T, S]
    t, s = np.meshgrid(np.arange(L_LONG), np.arange(L_LONG), indexing="ij")
    for layer, window in enumerate(case["cfg"].layer_windows):
        outside = (s <= t - window) if window else np.zeros_like(t, bool)
        assert np.all(pattern[layer][..., outside] == 0)
        if not window:
            assert np.all(pattern[layer][..., t - s >= 5].max() > 0)


def test_bfloat16_logits_track_transformers_bfloat16(case):
    tokens = case["prompts"]["batch3_long"]
    ref32 = _hf_run(case["model"], tokens)["logits"]
    model16 = case["model"].to(torch.bfloat16)
    try:
        with torch.no_grad():
            ref16 = model16(torch.as_tensor(tokens, dtype=torch.long)).logits.float().numpy()
    finally:
        case["model"].to(torch.float32)
    params16 = jax.tree_util.tree_map(lambda x: x.astype(jnp.bfloat16), case["params"])
    ours = np.asarray(forward(params16, case["cfg"], tokens), np.float32)
    err = np.abs(ours - ref16).max()
    hf_own = np.abs(ref16 - ref32).max()
    scale = np.abs(ref32).max()
    assert err <= 0.1 * scale, f"{case['name']}: bf16 max-abs {err:.3g} vs logit scale {scale:.3g}"
    assert err <= 2 * hf_own, f"{case['name']}: bf16 max-abs {err:.3g}, HF's own bf16 error {hf_own:.3g}"
