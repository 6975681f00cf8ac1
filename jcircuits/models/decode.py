"""Autoregressive decoding with a fixed-size KV cache, for every architecture ``transformer.forward`` runs.

A generation is one *prefill* (the ordinary ``forward_fn`` over the prompt with ``capture=True``; the cache is
built from the captured block inputs and ln1 scales, so whatever the prefill froze or patched is what later tokens
attend to) and a jitted ``lax.scan`` of *decode steps*, each processing one token at a traced position against
the cache ``[L, B, S, K, E]`` (S = prompt length + new tokens, fixed, so one compilation serves the whole loop).

The decode step reuses the block pieces of ``transformer.py`` (``embed``, ``block_mlp_points``, ``unembed``) and the
attention of ``layers.py`` (projections, ``softmax_pattern``, ``mix_values``, ``attention_mask`` at the step's
position) with one query row against the cache; only the cache bookkeeping is written here. Sliding windows and
RoPE bases (per-layer, scanned with the weights: Gemma-2/3, Qwen3), QK-norm (Qwen3, Gemma-3), soft-caps and
post-norms are therefore the full forward's own code, so cached decoding equals full recomputation up to float
round-off.

MLP seam: ``decode_step`` takes the same ``mlp_fn(layer, points, state) -> (write, state)`` as ``forward_fn``
(``points`` are ``[B, 1, D]``). The loop takes ``mlp_fn_for(pos) -> mlp_fn``, called inside the trace with the
step's traced absolute position, so position-dependent edits (interventions) need no Python loop; ``mlp_state0``
is the state every step starts from, and each step's final state is returned stacked over steps.

Letters: L layers, B batch, S cache length, K kv heads, G query heads per kv head, E head dim, D model, V vocab.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp

from jcircuits.common.pytree import pytree_dataclass
from jcircuits.models import layers as nn
from jcircuits.models.config import ModelConfig
from jcircuits.models.transformer import (
    Intermediates,
    LayerParams,
    MLPFn,
    Params,
    block_mlp_points,
    check_tokens,
    embed,
    forward_fn,
    layer_rope_array,
    layer_windows_array,
    unembed,
)

__all__ = [
    "KVCache",
    "kv_cache_from_intermediates",
    "prefill_fn",
    "decode_step",
    "decode_loop_fn",
    "sample_token",
    "generate",
]


@pytree_dataclass
class KVCache:
    """Roped keys and values of every layer, ``[L, B, S, K, E]`` each; positions ``>=`` the current one are
    garbage and masked out."""

    k: jax.Array
    v: jax.Array


def _project_kv(lp: LayerParams, cfg: ModelConfig, h_BTD: jax.Array, cos_TE: jax.Array, sin_TE: jax.Array):
    """Roped (and QK-normed, where the model has it) keys and values ``[B, T, K, E]`` of the ln1-normalised
    block input ``h``."""
    return nn.project_keys(h_BTD, lp.wk, cos_TE, sin_TE, lp.k_norm, cfg), nn.project_values(h_BTD, lp.wv)


def kv_cache_from_intermediates(
    params: Params, cfg: ModelConfig, inter: Intermediates, max_len: int
) -> KVCache:
    """Build a cache of length ``max_len`` from a captured forward over the first ``T`` positions.

    Keys and values are recomputed from the captured block inputs ``resid[l]`` and the ln1 scales the forward
    actually used (frozen or live), i.e. exactly the vectors that forward's attention read."""
    L, B, T, _ = inter.resid[:-1].shape
    if max_len < T:
        raise ValueError(f"cache length {max_len} is shorter than the prefilled prompt ({T} tokens)")
    cos_all, sin_all = nn.rope_cos_sin(jnp.arange(T), cfg)

    def one(lp, rope, x, s):
        cos, sin = nn.layer_rope(cos_all, sin_all, rope)
        return _project_kv(lp, cfg, nn.apply_rms(x, s, lp.ln1, cfg.norm_offset), cos, sin)

    ropes = jnp.asarray(layer_rope_array(cfg))
    k, v = jax.vmap(one)(params.layers, ropes, inter.resid[:-1], inter.ln1_scale)  # [L, B, T, K, E]
    pad = [(0, 0), (0, 0), (0, max_len - T), (0, 0), (0, 0)]
    return KVCache(jnp.pad(k, pad), jnp.pad(v, pad))


def prefill_fn(params: Params, cfg: ModelConfig, tokens_BT: jax.Array, max_len: int, **forward_kwargs):
    """Un-jitted prefill: ``forward_fn(…, capture=True, **forward_kwargs)`` plus its cache.
    Returns ``(logits [B, T, V], intermediates, mlp_state, cache)``."""
    logits, inter, state = forward_fn(params, cfg, tokens_BT, capture=True, **forward_kwargs)
    return logits, inter, state, kv_cache_from_intermediates(params, cfg, inter, max_len)


def _cached_attention(lp: LayerParams, cfg: ModelConfig, x_B1D, window, pos, cos, sin, k_BSKE, v_BSKE):
    """Attention of one new position ``pos`` (traced) against the cache, writing its own key/value first: the
    projections, pattern and value mix of ``layers.py`` with one query row and the mask row of ``pos``.
    Returns ``(attention output added to the residual [B, 1, D], k, v)``."""
    ln1_s = nn.rms_scale(x_B1D, cfg.rms_norm_eps)
    h = nn.apply_rms(x_B1D, ln1_s, lp.ln1, cfg.norm_offset)
    k_new, v_new = _project_kv(lp, cfg, h, cos, sin)
    k_BSKE = jax.lax.dynamic_update_slice_in_dim(k_BSKE, k_new.astype(k_BSKE.dtype), pos, axis=1)
    v_BSKE = jax.lax.dynamic_update_slice_in_dim(v_BSKE, v_new.astype(v_BSKE.dtype), pos, axis=1)
    q = nn.project_queries(h, lp.wq, cos, sin, lp.q_norm, cfg)
    mask = nn.attention_mask(1, k_BSKE.shape[1], window, q_start=pos)  # [1, S]
    pattern = nn.softmax_pattern(q, k_BSKE, mask, cfg, x_B1D.dtype)
    a = nn.mix_values(pattern, v_BSKE, lp.wo, cfg)
    if cfg.post_norms:
        a = nn.apply_rms(a, nn.rms_scale(a, cfg.rms_norm_eps), lp.post_attn_norm, cfg.norm_offset)
    return a, k_BSKE, v_BSKE


def decode_step(
    params: Params,
    cfg: ModelConfig,
    cache: KVCache,
    tokens_B: jax.Array,
    pos: jax.Array,
    *,
    mlp_fn: MLPFn | None = None,
    mlp_state: Any = None,
    mlp_at: str = "mlp_out",
):
    """Process ``tokens_B`` at absolute position ``pos`` (traced int). Un-jitted, for use inside other jitted
    code. Returns ``(logits [B, V] float32 after any final soft-cap, updated cache, final mlp_state)``.

    ``mlp_fn``/``mlp_at`` mean what they mean in ``transformer.forward_fn`` (no frozen constants here: every
    scale and pattern of a new token is live)."""
    x = embed(params, cfg, tokens_B[:, None])
    cos_all, sin_all = nn.rope_cos_sin(jnp.reshape(pos, (1,)), cfg)
    windows = jnp.asarray(layer_windows_array(cfg))
    ropes = jnp.asarray(layer_rope_array(cfg))

    def step(carry, xs):
        x, state, k_all, v_all = carry
        lp, window, rope, layer = xs
        cos, sin = nn.layer_rope(cos_all, sin_all, rope)
        a, k, v = _cached_attention(lp, cfg, x, window, pos, cos, sin, k_all[layer], v_all[layer])
        k_all, v_all = k_all.at[layer].set(k), v_all.at[layer].set(v)
        mid = x + a
        points, _ = block_mlp_points(lp, cfg, mid)
        if mlp_fn is None:
            write = points.mlp_out
        else:
            write, state = mlp_fn(layer, points, state)
            if mlp_at == "mlp_out_raw" and cfg.post_norms:
                write = nn.apply_rms(
                    write, nn.rms_scale(write, cfg.rms_norm_eps), lp.post_mlp_norm, cfg.norm_offset
                )
        return (mid + write.astype(mid.dtype), state, k_all, v_all), None

    carry = (x, mlp_state, cache.k, cache.v)
    (x, state, k_all, v_all), _ = jax.lax.scan(
        step, carry, (params.layers, windows, ropes, jnp.arange(cfg.n_layers))
    )
    logits, _, _ = unembed(params, cfg, x)
    return logits[:, 0], KVCache(k_all, v_all), state


def sample_token(logits_BV: jax.Array, key: jax.Array, temperature, greedy: bool) -> jax.Array:
    """Next token ids ``[B]``: argmax when ``greedy`` (ties go to the lowest id), else a draw from
    ``softmax(logits / temperature)`` with ``key``."""
    if greedy:
        return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
    return jax.random.categorical(key, logits_BV / temperature, axis=-1).astype(jnp.int32)


def decode_loop_fn(
    params: Params,
    cfg: ModelConfig,
    cache: KVCache,
    first_B: jax.Array,
    start_pos,
    n_steps: int,
    key: jax.Array,
    temperature,
    *,
    greedy: bool,
    mlp_fn_for: Callable[[jax.Array], MLPFn] | None = None,
    mlp_state0: Any = None,
    mlp_at: str = "mlp_out",
    key_offset: int = 1,
):
    """Feed ``first_B`` at ``start_pos`` and ``n_steps - 1`` further sampled tokens, under one ``lax.scan``.

    Step ``i`` processes the token at ``start_pos + i`` and samples the next one with
    ``fold_in(key, key_offset + i)``. Returns ``(tokens [n_steps, B], logits [n_steps, B, V], states, cache)``
    where ``tokens[i]`` was sampled from ``logits[i]`` and ``states`` are the per-step final mlp states."""

    def body(carry, i):
        cache, tok = carry
        pos = start_pos + i
        mlp_fn = None if mlp_fn_for is None else mlp_fn_for(pos)
        logits, cache, state = decode_step(
            params, cfg, cache, tok, pos, mlp_fn=mlp_fn, mlp_state=mlp_state0, mlp_at=mlp_at
        )
        nxt = sample_token(logits, jax.random.fold_in(key, key_offset + i), temperature, greedy)
        return (cache, nxt), (nxt, logits, state)

    (cache, _), (toks, logits, states) = jax.lax.scan(body, (cache, first_B), jnp.arange(n_steps))
    return toks, logits, states, cache


@partial(jax.jit, static_argnums=(1, 3, 5))
def _generate_jit(params, cfg, tokens_BT, max_new_tokens, key, greedy, temperature):
    T = tokens_BT.shape[1]
    logits, _, _, cache = prefill_fn(params, cfg, tokens_BT, T + max_new_tokens)
    first = sample_token(logits[:, -1], jax.random.fold_in(key, 0), temperature, greedy)
    if max_new_tokens == 1:
        return first[:, None], logits[:, -1:]
    toks, step_logits, _, _ = decode_loop_fn(
        params, cfg, cache, first, T, max_new_tokens - 1, key, temperature, greedy=greedy
    )
    tokens = jnp.concatenate([first[:, None], toks.T], axis=1)
    all_logits = jnp.concatenate([logits[:, -1:], jnp.moveaxis(step_logits, 0, 1)], axis=1)
    return tokens, all_logits


def generate(
    params: Params,
    cfg: ModelConfig,
    tokens_BT,
    max_new_tokens: int,
    *,
    temperature: float = 0.0,
    key: jax.Array | None = None,
):
    """Plain generation (no edits): ``max_new_tokens`` new tokens after ``tokens_BT [B, T]``.

    ``temperature == 0`` is greedy and deterministic; otherwise tokens are drawn with ``key`` (required), the same
    key giving the same tokens. Returns ``(new tokens [B, N] int32, logits [B, N, V])`` where ``logits[:, i]`` is
    the distribution ``tokens[:, i]`` was drawn from. Prefill and the decode loop compile once per (T, N)."""
    check_tokens(cfg, tokens_BT)
    temperature = check_sampling(cfg, tokens_BT.shape[1], max_new_tokens, temperature, key)
    greedy = temperature == 0.0
    key = jax.random.key(0) if key is None else key
    return _generate_jit(params, cfg, jnp.asarray(tokens_BT), max_new_tokens, key, greedy, temperature)


def check_sampling(cfg: ModelConfig, T: int, max_new_tokens, temperature, key) -> float:
    """Validate generation arguments; returns the temperature as a float."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    if T + max_new_tokens > cfg.max_position_embeddings:
        raise ValueError(
            f"prompt ({T}) + max_new_tokens ({max_new_tokens}) exceeds the model's context "
            f"({cfg.max_position_embeddings}); generate fewer tokens"
        )
    try:
        t = float(temperature)
    except (TypeError, ValueError):
        raise ValueError(f"temperature must be a number, got {temperature!r}") from None
    if not (t >= 0.0 and t < float("inf")):
        raise ValueError(f"temperature must be finite and >= 0 (0 = greedy), got {temperature!r}")
    if t > 0.0 and key is None:
        raise ValueError("sampling (temperature > 0) needs a PRNG key: pass rng=jax.random.key(seed)")
    return t
