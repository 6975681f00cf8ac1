"""``jax.eval_shape`` over ``init_params`` and ``forward`` for the published Gemma-2 / Llama-3 / Qwen3 configs (no
memory is allocated): output shapes and parameter counts match the released models."""

from __future__ import annotations

import math
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from jcircuits.models import config_from_hf, forward, init_params

CONFIGS = Path(__file__).resolve().parents[1] / "data" / "configs"
PUBLISHED_PARAMS = {  # as reported by the releases (embeddings counted once when tied)
    "gemma-2-2b": 2.61e9,
    "gemma-2-9b": 9.24e9,
    "llama-3.2-1b": 1.24e9,
    "llama-3.1-8b": 8.03e9,
    "qwen3-8b": 8.19e9,  # the model card: 8.2B, 6.95B without the (untied) embeddings
}


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_eval_shape_of_init_and_forward_for_published_configs(name):
    cfg = config_from_hf(CONFIGS / f"{name}.json")
    params = jax.eval_shape(lambda k: init_params(cfg, k, dtype=jnp.bfloat16), jax.random.key(0))
    n = sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(params))
    assert abs(n - PUBLISHED_PARAMS[name]) <= 0.01 * PUBLISHED_PARAMS[name], f"{name}: {n:,} parameters"
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree_util.tree_leaves(params))
    assert params.layers.wq.shape == (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.head_dim)

    tokens = jax.ShapeDtypeStruct((2, 16), jnp.int32)
    logits, inter = jax.eval_shape(lambda p, t: forward(p, cfg, t, capture=True), params, tokens)
    L, D, H = cfg.n_layers, cfg.d_model, cfg.n_heads
    assert logits.shape == (2, 16, cfg.vocab_size) and logits.dtype == jnp.float32
    assert inter.resid.shape == (L + 1, 2, 16, D)
    assert inter.attn_pattern.shape == (L, 2, H, 16, 16)
    assert inter.mlp_out.shape == (L, 2, 16, D)
    assert (inter.post_mlp_scale is not None) == (cfg.arch in ("gemma2", "gemma3"))
    assert (params.layers.q_norm is not None) == cfg.qk_norm
