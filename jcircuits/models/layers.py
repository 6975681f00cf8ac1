"""Building blocks shared by every architecture: RMSNorm, RoPE (incl. llama3 and linear scaling, and per-layer
bases), QK-norm, GQA attention with sliding windows and soft-capping, gated MLPs.

Einsum legend: B batch, T query positions, S key positions, D model, H query heads, K kv heads,
G query heads per kv head (H = K·G), E head dim, F MLP hidden.

Every normalisation is split into its *scale* ``rsqrt(mean x² + eps)`` (a per-position scalar, frozen during
attribution) and its *gain* (a learned linear map, never frozen), so the same code computes the live and the
frozen model. Likewise attention is split into its pattern (frozen) and the value path (linear), and both into
projections (``project_*``) and what acts on them (``softmax_pattern``, ``mix_values``), so the one-query cached
decode step (``decode.py``) runs the same score/soft-cap/window/GQA code as the full forward.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jcircuits.models.config import ModelConfig, RopeScaling

NEG_INF = -1e30  # large finite negative: keeps fully-masked rows NaN-free


def rms_scale(x_BTD: jax.Array, eps: float) -> jax.Array:
    """``rsqrt(mean(x²) + eps)`` in float32, shape ``[..., 1]``."""
    x = x_BTD.astype(jnp.float32)
    return jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps)


def apply_rms(x_BTD: jax.Array, scale_BT1: jax.Array, weight_D: jax.Array, offset: float) -> jax.Array:
    """Normalise with a given scale and apply the gain ``offset + w``, computed in float32 like HF, cast back.

    Llama casts the normalised vector to the input dtype *before* multiplying by the weight; Gemma multiplies in
    float32. In float32 both are the same; in bfloat16 we follow each (``offset`` tells them apart).
    """
    normed = x_BTD.astype(jnp.float32) * scale_BT1
    if offset:  # Gemma: (x·s)·(1 + w) in float32
        return (normed * (offset + weight_D.astype(jnp.float32))).astype(x_BTD.dtype)
    return weight_D * normed.astype(x_BTD.dtype)  # Llama: w · (x·s).to(dtype)


def rope_inv_freq(head_dim: int, theta: float, scaling: RopeScaling | None) -> np.ndarray:
    """Inverse frequencies ``[E/2]`` in float32, computed from an integer arange exactly as HF does
    (including the llama3 NTK-by-parts and the linear scaling)."""
    exponent = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(head_dim)
    inv = (np.float32(1.0) / (np.float32(theta) ** exponent)).astype(np.float32)
    if scaling is None:
        return inv
    if scaling.rope_type == "linear":
        return (inv / np.float32(scaling.factor)).astype(np.float32)
    f, lo, hi = np.float32(scaling.factor), scaling.low_freq_factor, scaling.high_freq_factor
    old = scaling.original_max_position_embeddings
    low_wavelen, high_wavelen = old / lo, old / hi
    wavelen = (np.float32(2 * np.pi) / inv).astype(np.float32)
    scaled = np.where(wavelen > low_wavelen, inv / f, inv).astype(np.float32)
    smooth = ((old / wavelen - lo) / (hi - lo)).astype(np.float32)
    smoothed = ((1 - smooth) * scaled / f + smooth * scaled).astype(np.float32)
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def rope_cos_sin(positions_T: jax.Array, cfg: ModelConfig) -> tuple[jax.Array, jax.Array]:
    """cos/sin tables ``[R, T, E]`` in float32 for the (rotate-half) RoPE convention of HF Gemma/Llama/Qwen, one
    per entry of ``cfg.rope_bases`` (R = 1, or 2 for Gemma-3's global and local bases); layer ``l`` uses table
    ``cfg.layer_rope_index[l]`` (``layer_rope``)."""
    inv = jnp.asarray(np.stack([rope_inv_freq(cfg.head_dim, t, s) for t, s in cfg.rope_bases]))  # [R, E/2]
    freqs = positions_T.astype(jnp.float32)[None, :, None] * inv[:, None, :]
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def layer_rope(cos_RTE: jax.Array, sin_RTE: jax.Array, index) -> tuple[jax.Array, jax.Array]:
    """The ``[T, E]`` tables of one layer (``index``: its entry of ``cfg.layer_rope_index``, may be traced)."""
    return cos_RTE[index], sin_RTE[index]


def qk_normalize(x_BTNE: jax.Array, weight_E: jax.Array | None, cfg: ModelConfig) -> jax.Array:
    """QK-norm (Qwen3, Gemma-3): RMSNorm over the head dim of every head, gain ``cfg.norm_offset + w``;
    the identity when ``weight_E`` is ``None`` (models without it)."""
    if weight_E is None:
        return x_BTNE
    return apply_rms(x_BTNE, rms_scale(x_BTNE, cfg.rms_norm_eps), weight_E, cfg.norm_offset)


def apply_rope(x_BTNE: jax.Array, cos_TE: jax.Array, sin_TE: jax.Array) -> jax.Array:
    half = x_BTNE.shape[-1] // 2
    rotated = jnp.concatenate([-x_BTNE[..., half:], x_BTNE[..., :half]], axis=-1)
    cos = cos_TE.astype(x_BTNE.dtype)[None, :, None, :]
    sin = sin_TE.astype(x_BTNE.dtype)[None, :, None, :]
    return x_BTNE * cos + rotated * sin


def softcap(x: jax.Array, cap: float | None) -> jax.Array:
    return x if cap is None else jnp.tanh(x / cap) * cap


def attention_mask(t_q: int, t_k: int, window: jax.Array | int | None, q_start=None) -> jax.Array:
    """Boolean ``[T, S]``: causal, and within ``window`` keys of the query when a window is given
    (``window`` may be a traced int; a value ≤ 0 means global). Key ``s`` is visible from query ``t`` iff
    ``s <= t`` and ``s > t - window``, as in HF's sliding-window overlay. Queries sit at absolute positions
    ``q_start + i`` (default ``t_k - t_q``: the last ``t_q`` keys; a traced int for one cached decode step)."""
    q = jnp.arange(t_q)[:, None] + (t_k - t_q if q_start is None else q_start)
    k = jnp.arange(t_k)[None, :]
    mask = k <= q
    if window is not None:
        w = jnp.asarray(window)
        mask = mask & ((w <= 0) | (k > q - w))
    return mask


def project_queries(
    x_BTD: jax.Array, wq_DHE: jax.Array, cos_TE: jax.Array, sin_TE: jax.Array, norm_E=None, cfg=None
) -> jax.Array:
    """Roped queries ``[B, T, H, E]`` (QK-normed before RoPE when ``norm_E`` is given, with ``cfg``)."""
    q = jnp.einsum("btd,dhe->bthe", x_BTD, wq_DHE)
    return apply_rope(q if norm_E is None else qk_normalize(q, norm_E, cfg), cos_TE, sin_TE)


def project_keys(
    x_BSD: jax.Array, wk_DKE: jax.Array, cos_SE: jax.Array, sin_SE: jax.Array, norm_E=None, cfg=None
) -> jax.Array:
    """Roped keys ``[B, S, K, E]`` (QK-normed before RoPE when ``norm_E`` is given, with ``cfg``)."""
    k = jnp.einsum("bsd,dke->bske", x_BSD, wk_DKE)
    return apply_rope(k if norm_E is None else qk_normalize(k, norm_E, cfg), cos_SE, sin_SE)


def project_values(x_BSD: jax.Array, wv_DKE: jax.Array) -> jax.Array:
    """Values ``[B, S, K, E]``."""
    return jnp.einsum("bsd,dke->bske", x_BSD, wv_DKE)


def softmax_pattern(q_BTHE: jax.Array, k_BSKE: jax.Array, mask_TS: jax.Array, cfg: ModelConfig, dtype):
    """The attention pattern ``[B, H, T, S]`` of queries against keys, in ``dtype``: scaled scores, soft-capped
    (Gemma-2), masked, softmax in float32. Query head ``h = k·G + g`` reads kv head ``k`` (GQA). Shared by the
    full forward (``T = S``) and the cached decode step (``T = 1`` against the cache)."""
    B, T, H, E = q_BTHE.shape
    q = q_BTHE.reshape(B, T, cfg.n_kv_heads, cfg.n_rep, E)
    scores = jnp.einsum("btkge,bske->bkgts", q, k_BSKE) * jnp.asarray(cfg.attn_scale, q.dtype)
    scores = softcap(scores, cfg.attn_softcap)
    scores = jnp.where(mask_TS[None, None, None], scores.astype(jnp.float32), NEG_INF)
    pattern = jax.nn.softmax(scores, axis=-1).astype(dtype)
    return pattern.reshape(B, H, T, -1)


def mix_values(pattern_BHTS: jax.Array, v_BSKE: jax.Array, wo_HED: jax.Array, cfg: ModelConfig) -> jax.Array:
    """``pattern · v`` per head, then ``W_o``: what attention adds to the residual stream, ``[B, T, D]``."""
    B, H, T, S = pattern_BHTS.shape
    p = pattern_BHTS.reshape(B, cfg.n_kv_heads, cfg.n_rep, T, S)
    z = jnp.einsum("bkgts,bske->btkge", p, v_BSKE).reshape(B, T, H, -1)
    return jnp.einsum("bthe,hed->btd", z, wo_HED)


def attention_pattern(
    x_BTD: jax.Array,
    wq_DHE: jax.Array,
    wk_DKE: jax.Array,
    cos_TE: jax.Array,
    sin_TE: jax.Array,
    mask_TS: jax.Array,
    cfg: ModelConfig,
    q_norm_E: jax.Array | None = None,
    k_norm_E: jax.Array | None = None,
) -> jax.Array:
    """Post-softmax attention pattern ``[B, H, T, S]`` in the activation dtype (softmax in float32); with QK-norm
    weights, queries and keys are normalised per head before RoPE."""
    q = project_queries(x_BTD, wq_DHE, cos_TE, sin_TE, q_norm_E, cfg)
    k = project_keys(x_BTD, wk_DKE, cos_TE, sin_TE, k_norm_E, cfg)
    return softmax_pattern(q, k, mask_TS, cfg, x_BTD.dtype)


def attention_values(
    x_BTD: jax.Array, pattern_BHTS: jax.Array, wv_DKE: jax.Array, wo_HED: jax.Array, cfg: ModelConfig
) -> jax.Array:
    """The value path ``pattern · (x W_v) W_o`` — linear in ``x`` once the pattern is fixed. ``[B, T, D]``."""
    return mix_values(pattern_BHTS, project_values(x_BTD, wv_DKE), wo_HED, cfg)


def gated_mlp(x_BTD: jax.Array, w_gate_DF: jax.Array, w_up_DF: jax.Array, w_down_FD: jax.Array, act: str):
    """``down(act(x W_gate) * (x W_up))`` with tanh-GELU (Gemma) or SiLU (Llama)."""
    g = x_BTD @ w_gate_DF
    g = jax.nn.gelu(g, approximate=True) if act == "gelu_tanh" else jax.nn.silu(g)
    return (g * (x_BTD @ w_up_DF)) @ w_down_FD
