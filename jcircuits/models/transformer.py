"""The decoder: pure functions over a params pytree, shared by Gemma-2, Gemma-3, Llama-3 and Qwen3.

``forward(params, cfg, tokens)`` is the model. Two optional arguments make it the object of interpretability:

* ``capture=True`` also returns ``Intermediates``: the residual stream at every block boundary and mid-block,
  attention patterns, every RMSNorm scale, MLP inputs (before and after the norm) and outputs, the final-normed
  residual. These are exactly the constants attribution freezes and the points transcoders read and write.
* ``frozen=Intermediates`` (or any object with the same ``Frozen`` fields) replaces attention patterns and norm
  scales by the given constants; a field set to ``None`` is computed live (e.g. only patterns frozen). With
  them all frozen the network is linear in the residual stream except for the MLPs, which a caller replaces
  through ``mlp_fn``.

``mlp_fn(layer, points, state) -> (write, state)`` (optional) replaces what each block's MLP adds to the residual
stream. ``points`` is an ``MLPPoints`` with the MLP's input and the true MLP output at every hook point; ``layer`` is
a traced int (layers run under ``lax.scan``); ``state`` is threaded through the layers (a cross-layer transcoder
carries its pending writes there). Models know nothing of transcoders: this argument is the only seam.

Layers are stacked (every weight has a leading ``L`` axis) and run under ``jax.lax.scan``, so compile time does not
grow with depth; per-layer sliding windows and RoPE table indices (Gemma-3's local and global bases) are scanned
alongside the weights.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jcircuits.common.arrays import ArrayInfo, array_axes, array_init, array_shapes
from jcircuits.common.pytree import pytree_dataclass
from jcircuits.models import layers as nn
from jcircuits.models.config import ModelConfig
from jcircuits.models.hooks import MLP_HOOKS

__all__ = [
    "Params",
    "LayerParams",
    "Intermediates",
    "MLPPoints",
    "forward",
    "init_params",
    "param_specs",
    "param_shapes",
    "param_axes",
    "layer_windows_array",
    "layer_rope_array",
    "embed",
    "unembed",
    "block_attention",
    "block_mlp_points",
    "check_tokens",
    "check_finite_logits",
]


@pytree_dataclass
class LayerParams:
    """One block's weights; in ``Params.layers`` every field carries a leading layer axis ``L``.

    Norm weights are stored as in the checkpoint; the gain is ``cfg.norm_offset + w``.
    """

    ln1: jax.Array  # [D]
    wq: jax.Array  # [D, H, E]
    wk: jax.Array  # [D, K, E]
    wv: jax.Array  # [D, K, E]
    wo: jax.Array  # [H, E, D]
    ln2: jax.Array  # [D]
    w_gate: jax.Array  # [D, F]
    w_up: jax.Array  # [D, F]
    w_down: jax.Array  # [F, D]
    post_attn_norm: jax.Array | None = None  # [D] (Gemma-2, Gemma-3)
    post_mlp_norm: jax.Array | None = None  # [D] (Gemma-2, Gemma-3)
    q_norm: jax.Array | None = None  # [E] QK-norm of queries (Qwen3, Gemma-3)
    k_norm: jax.Array | None = None  # [E] QK-norm of keys (Qwen3, Gemma-3)


@pytree_dataclass
class Params:
    embed: jax.Array  # [V, D]
    layers: LayerParams  # stacked over L
    final_norm: jax.Array  # [D]
    unembed: jax.Array | None = None  # [D, V]; None when tied to embed


@pytree_dataclass
class MLPPoints:
    """Every hook point around one block's MLP, for one layer. ``[B, T, D]`` each.

    ``resid_mid`` (``hook_resid_mid``): residual stream entering the MLP half of the block.
    ``normalized`` (``ln2.hook_normalized``): ``resid_mid · scale``, before the norm's gain.
    ``mlp_in`` (``mlp.hook_in``): the MLP's input, gain included.
    ``mlp_out_raw`` (``mlp.hook_out``): the MLP's output. ``mlp_out`` (``hook_mlp_out``): what is added to the
    residual stream (after Gemma-2's post-MLP norm; equal to ``mlp_out_raw`` for Llama).
    """

    resid_mid: jax.Array
    normalized: jax.Array
    mlp_in: jax.Array
    mlp_out_raw: jax.Array
    mlp_out: jax.Array


@pytree_dataclass
class Intermediates:
    """What one forward pass captures. Per-layer fields carry a leading ``L`` axis.

    Frozen constants (the fields ``forward(frozen=…)`` reads): ``ln1_scale``, ``post_attn_scale``, ``ln2_scale``,
    ``post_mlp_scale`` ``[L, B, T, 1]`` (post-norms are ``None`` without Gemma's post-norms), ``attn_pattern``
    ``[L, B, H, T, T]`` and ``final_scale`` ``[B, T, 1]``.
    """

    resid: jax.Array  # [L+1, B, T, D]: resid[0] = embeddings, resid[l+1] = output of block l
    resid_mid: jax.Array  # [L, B, T, D]
    attn_out: jax.Array  # [L, B, T, D] what attention adds to the residual stream
    attn_pattern: jax.Array  # [L, B, H, T, T]
    ln1_scale: jax.Array
    ln2_scale: jax.Array
    mlp_in: jax.Array  # [L, B, T, D]
    mlp_out_raw: jax.Array  # [L, B, T, D]
    mlp_out: jax.Array  # [L, B, T, D]
    final_scale: jax.Array  # [B, T, 1]
    final_normed: jax.Array  # [B, T, D]
    post_attn_scale: jax.Array | None = None
    post_mlp_scale: jax.Array | None = None

    def hook(self, name: str) -> jax.Array:
        """A TransformerLens-named hook point, stacked over layers: ``hook_resid_pre``, ``hook_resid_post``, or
        one of the MLP hooks of ``hooks.MLP_HOOKS``."""
        if name == "hook_resid_pre":
            return self.resid[:-1]
        if name == "hook_resid_post":
            return self.resid[1:]
        if name not in MLP_HOOKS:
            known = ["hook_resid_pre", "hook_resid_post", *MLP_HOOKS]
            raise KeyError(f"unknown hook point {name!r}; known: {sorted(known)}")
        field = MLP_HOOKS[name]
        if field == "normalized":  # not captured: the ln2 scale without the gain
            return (self.resid_mid.astype(jnp.float32) * self.ln2_scale).astype(self.resid_mid.dtype)
        return getattr(self, field)


MLPFn = Callable[[jax.Array, MLPPoints, Any], tuple[jax.Array, Any]]


# --------------------------------------------------------------------------------------------------- shapes


def _normal(fan_in: int):
    """Normal values with standard deviation ``scale / √fan_in``."""

    def init(key, shape, dtype, scale):
        std = scale / np.sqrt(fan_in)
        return (jax.random.normal(key, shape, jnp.float32) * std).astype(dtype)

    return init


def _gain(cfg: ModelConfig):
    """Norm weights at the identity gain (``cfg.norm_offset + w == 1``)."""
    return lambda key, shape, dtype, scale: jnp.full(shape, 1.0 - cfg.norm_offset, dtype)


def param_specs(cfg: ModelConfig) -> Params:
    """Every weight once (``ArrayInfo`` leaves, same tree as ``Params``): shape, logical axes (mapped to a mesh by
    ``jcircuits.scale.sharding``) and initialiser (normal, fan-in scaled; embeddings unit-variance, or 1/√d when
    Gemma scales them by √d; norm weights at the identity gain)."""
    L, D, H, K, E, F, V = (
        cfg.n_layers,
        cfg.d_model,
        cfg.n_heads,
        cfg.n_kv_heads,
        cfg.head_dim,
        cfg.d_mlp,
        cfg.vocab_size,
    )
    post = cfg.post_norms
    gain, dense, emb = _gain(cfg), _normal(D), _normal(D if cfg.embed_scale else 1)
    norm = ArrayInfo((L, D), ("layers", "embed"), gain)
    head_norm = ArrayInfo((L, E), ("layers", "head_dim"), gain) if cfg.qk_norm else None
    return Params(
        embed=ArrayInfo((V, D), ("vocab", "embed"), emb),
        layers=LayerParams(
            ln1=norm,
            wq=ArrayInfo((L, D, H, E), ("layers", "embed", "q_heads", "head_dim"), dense),
            wk=ArrayInfo((L, D, K, E), ("layers", "embed", "kv_heads", "head_dim"), dense),
            wv=ArrayInfo((L, D, K, E), ("layers", "embed", "kv_heads", "head_dim"), dense),
            wo=ArrayInfo((L, H, E, D), ("layers", "q_heads", "head_dim", "embed"), _normal(H * E)),
            ln2=norm,
            w_gate=ArrayInfo((L, D, F), ("layers", "embed", "mlp"), dense),
            w_up=ArrayInfo((L, D, F), ("layers", "embed", "mlp"), dense),
            w_down=ArrayInfo((L, F, D), ("layers", "mlp", "embed"), _normal(F)),
            post_attn_norm=norm if post else None,
            post_mlp_norm=norm if post else None,
            q_norm=head_norm,
            k_norm=head_norm,
        ),
        final_norm=ArrayInfo((D,), ("embed",), gain),
        unembed=None if cfg.tie_embeddings else ArrayInfo((D, V), ("embed", "vocab"), emb),
    )


def param_shapes(cfg: ModelConfig, dtype=jnp.float32) -> Params:
    """Abstract params (``jax.ShapeDtypeStruct`` leaves) for ``cfg`` (from ``param_specs``)."""
    return array_shapes(param_specs(cfg), dtype)


def param_axes(cfg: ModelConfig) -> Params:
    """Logical axis names of every weight (same tree as ``Params``; from ``param_specs``);
    ``jcircuits.scale.sharding`` maps them to a mesh."""
    return array_axes(param_specs(cfg))


@partial(jax.jit, static_argnums=(0, 2, 3))
def init_params(cfg: ModelConfig, key: jax.Array, dtype=jnp.float32, scale: float = 1.0) -> Params:
    """Random params from ``param_specs`` (one key per weight, in pytree order).
    Jitted: works under ``jax.eval_shape`` for full-size configs."""
    return array_init(param_specs(cfg), key, dtype, scale)


def layer_windows_array(cfg: ModelConfig) -> np.ndarray:
    """Per-layer sliding windows as int32 (0 = global), scanned alongside the layer weights."""
    return np.array([w or 0 for w in cfg.layer_windows], dtype=np.int32)


def layer_rope_array(cfg: ModelConfig) -> np.ndarray:
    """Per-layer index into the RoPE tables of ``layers.rope_cos_sin`` as int32, scanned alongside the
    weights."""
    return np.array(cfg.layer_rope_index, dtype=np.int32)


# ------------------------------------------------------------------------------------------------ pieces


def embed(params: Params, cfg: ModelConfig, tokens_BT: jax.Array, dtype=None) -> jax.Array:
    """Token embeddings as written into the residual stream ``[B, T, D]`` (Gemma: times √d, rounded to the
    activation dtype as HF does). ``dtype``: the activation dtype (default: the table's)."""
    x = params.embed[tokens_BT]
    if dtype is not None:
        x = x.astype(dtype)
    if cfg.embed_scale:
        x = x * jnp.asarray(np.sqrt(cfg.d_model), dtype=x.dtype)
    return x


def unembed_matrix(params: Params) -> jax.Array:
    """``W_U`` ``[D, V]``."""
    return params.embed.T if params.unembed is None else params.unembed


def unembed(params: Params, cfg: ModelConfig, x_BTD: jax.Array, final_scale=None):
    """Final norm, unembedding and final soft-cap. Returns ``(logits [B,T,V] float32, normed, scale)``."""
    scale = nn.rms_scale(x_BTD, cfg.rms_norm_eps) if final_scale is None else final_scale
    normed = nn.apply_rms(x_BTD, scale, params.final_norm, cfg.norm_offset)
    logits = (normed @ unembed_matrix(params)).astype(jnp.float32)
    return nn.softcap(logits, cfg.final_softcap), normed, scale


def _blocked_attention(lp: LayerParams, cfg: ModelConfig, h, window, cos, sin, q_block: int):
    """What attention adds, ``[B, T, D]``, computed ``q_block`` query rows at a time (``lax.map``): each block's
    pattern ``[B, H, q_block, T]`` lives only while its rows mix the values, so no ``[H, T, T]`` is ever held.
    Row by row the same softmax over the same keys as the whole pattern, up to float32 round-off."""
    B, T, _ = h.shape
    q = nn.project_queries(h, lp.wq, cos, sin, lp.q_norm, cfg)
    k = nn.project_keys(h, lp.wk, cos, sin, lp.k_norm, cfg)
    v = nn.project_values(h, lp.wv)
    n = T // q_block
    q = jnp.moveaxis(q.reshape(B, n, q_block, *q.shape[2:]), 1, 0)  # [n, B, q_block, H, E]

    def rows(args):
        i, q_i = args
        mask = nn.attention_mask(q_block, T, window, q_start=i * q_block)
        return nn.mix_values(nn.softmax_pattern(q_i, k, mask, cfg, h.dtype), v, lp.wo, cfg)

    out = jax.lax.map(rows, (jnp.arange(n), q))  # [n, B, q_block, D]
    return jnp.moveaxis(out, 0, 1).reshape(B, T, -1)


def block_attention(lp: LayerParams, cfg: ModelConfig, x, window, cos, sin, frozen=None, q_block=None):
    """Attention half of a block. ``frozen`` is ``None`` or ``(ln1_scale, pattern, post_attn_scale)``; an entry
    that is ``None`` is computed live (e.g. patterns frozen, scales live). ``q_block`` (live patterns only, a
    divisor of ``T``): attention ``q_block`` query rows at a time, and no pattern is returned (``None``).

    Returns ``(resid_mid, aux)`` with ``aux = (ln1_scale, pattern, post_attn_scale, attn_out)``.
    """
    T = x.shape[1]
    ln1_s = nn.rms_scale(x, cfg.rms_norm_eps) if frozen is None or frozen[0] is None else frozen[0]
    h = nn.apply_rms(x, ln1_s, lp.ln1, cfg.norm_offset)
    live = frozen is None or frozen[1] is None
    if live and q_block is not None and q_block < T:
        pattern, a = None, _blocked_attention(lp, cfg, h, window, cos, sin, q_block)
    else:
        if live:
            mask = nn.attention_mask(T, T, window)
            pattern = nn.attention_pattern(h, lp.wq, lp.wk, cos, sin, mask, cfg, lp.q_norm, lp.k_norm)
        else:
            pattern = frozen[1]
        a = nn.attention_values(h, pattern, lp.wv, lp.wo, cfg)
    post_s = None
    if cfg.post_norms:
        post_s = nn.rms_scale(a, cfg.rms_norm_eps) if frozen is None or frozen[2] is None else frozen[2]
        a = nn.apply_rms(a, post_s, lp.post_attn_norm, cfg.norm_offset)
    return x + a, (ln1_s, pattern, post_s, a)


def block_mlp_points(lp: LayerParams, cfg: ModelConfig, resid_mid, frozen=None):
    """MLP half of a block, returning every hook point (``MLPPoints``) and the scales used.

    ``frozen`` is ``None`` or ``(ln2_scale, post_mlp_scale)``; a ``None`` entry is computed live.
    """
    ln2_s = nn.rms_scale(resid_mid, cfg.rms_norm_eps) if frozen is None or frozen[0] is None else frozen[0]
    normalized = (resid_mid.astype(jnp.float32) * ln2_s).astype(resid_mid.dtype)
    mlp_in = nn.apply_rms(resid_mid, ln2_s, lp.ln2, cfg.norm_offset)
    raw = nn.gated_mlp(mlp_in, lp.w_gate, lp.w_up, lp.w_down, cfg.activation)
    post_s, out = None, raw
    if cfg.post_norms:
        post_s = nn.rms_scale(raw, cfg.rms_norm_eps) if frozen is None or frozen[1] is None else frozen[1]
        out = nn.apply_rms(raw, post_s, lp.post_mlp_norm, cfg.norm_offset)
    return MLPPoints(resid_mid, normalized, mlp_in, raw, out), (ln2_s, post_s)


# ----------------------------------------------------------------------------------------------- forward


def check_tokens(cfg: ModelConfig, tokens) -> None:
    shape = np.shape(tokens)
    if len(shape) != 2:
        raise ValueError(f"tokens must be [batch, seq], got shape {shape}")
    if shape[1] == 0:
        raise ValueError("empty prompt: tokens has zero positions")
    if shape[1] > cfg.max_position_embeddings:
        raise ValueError(
            f"prompt of {shape[1]} tokens is longer than the model's context "
            f"(max_position_embeddings={cfg.max_position_embeddings}); shorten it"
        )
    if not isinstance(tokens, jax.core.Tracer):
        t = np.asarray(tokens)
        if not np.issubdtype(t.dtype, np.integer):
            raise TypeError(f"tokens must be integers, got dtype {t.dtype}")
        bad = t[(t < 0) | (t >= cfg.vocab_size)]
        if bad.size:
            raise ValueError(
                f"token ids out of vocabulary [0, {cfg.vocab_size}): {sorted(set(bad.tolist()))[:10]}"
            )


def check_finite_logits(logits_TV, inter: Intermediates | None = None, what: str = "the forward pass") -> None:
    """Raise ``ValueError`` when ``logits [T, V]`` hold NaN/Inf, naming the first position and, with the captured
    ``inter`` (batch of one), the first layer whose MLP input or output is non-finite there: a graph or an
    intervention computed from such a pass would be silently meaningless."""
    bad_T = ~np.isfinite(np.asarray(logits_TV)).all(axis=-1)
    if not bad_T.any():
        return
    pos = int(np.argmax(bad_T))
    where = ""
    if inter is not None:  # resid [L+1, B, T, D]: resid[0] the embeddings, resid[l+1] block l's output
        bad_L = ~np.isfinite(np.asarray(inter.resid)[:, 0, pos]).all(axis=-1)
        if bad_L.any():
            first = int(np.argmax(bad_L))
            where = ", already in the embeddings" if first == 0 else f", first in the output of layer {first - 1}"
    raise ValueError(
        f"{what} gave non-finite logits at position {pos}{where}: the weights, the inputs or an edit overflow "
        "float range"
    )


def forward(
    params: Params,
    cfg: ModelConfig,
    tokens: jax.Array,
    *,
    frozen: Intermediates | None = None,
    capture: bool = False,
    mlp_fn: MLPFn | None = None,
    mlp_state: Any = None,
    mlp_at: str = "mlp_out",
    dtype=None,
    capture_patterns: bool = True,
    attention_block: int | None = None,
):
    """Run the model on ``tokens [B, T]`` (int). Returns ``logits [B, T, V]`` (float32, after any final
    soft-cap), or ``(logits, Intermediates)`` with ``capture=True``, plus the final ``mlp_state`` when ``mlp_fn``
    is given: ``(logits, intermediates_or_None, mlp_state)``.

    ``dtype``: compute in this dtype whatever the weights' storage (each layer's weights are cast inside the
    layer scan, so a bfloat16-stored model runs in float32 with one layer's float32 copy at a time); default: the
    weights' own dtype. ``capture_patterns=False`` leaves ``attn_pattern`` out of the capture (``None``): the
    ``[L, B, H, T, T]`` stack is what a long prompt cannot afford. ``attention_block`` (a divisor of ``T``; only
    without captured or frozen patterns): attention runs that many query rows at a time, so no layer holds its
    ``[B, H, T, T]`` either (equal to the whole-pattern forward to float32 round-off).

    Validates tokens eagerly (shape, context length, vocabulary) and dispatches to a jitted implementation.
    """
    check_tokens(cfg, tokens)
    if mlp_at not in ("mlp_out", "mlp_out_raw"):
        raise ValueError(f"mlp_at must be 'mlp_out' or 'mlp_out_raw', got {mlp_at!r}")
    dtype = None if dtype is None else jnp.dtype(dtype)
    if attention_block is not None:
        T = np.shape(tokens)[1]
        if (capture and capture_patterns) or (frozen is not None and frozen.attn_pattern is not None):
            raise ValueError("attention_block computes patterns in blocks: pass capture_patterns=False, no frozen ones")
        if attention_block < 1 or T % attention_block:
            raise ValueError(f"attention_block must divide the {T} positions, got {attention_block}")
    out = _forward_jit(
        params, cfg, jnp.asarray(tokens), frozen, capture, mlp_fn, mlp_state, mlp_at, dtype, capture_patterns,
        attention_block,
    )
    if mlp_fn is not None:
        return out
    logits, inter, _ = out
    return (logits, inter) if capture else logits


@partial(jax.jit, static_argnums=(1, 4, 5, 7, 8, 9, 10))
def _forward_jit(
    params, cfg, tokens, frozen, capture, mlp_fn, mlp_state, mlp_at, dtype, capture_patterns, attention_block
):
    return forward_fn(
        params,
        cfg,
        tokens,
        frozen=frozen,
        capture=capture,
        mlp_fn=mlp_fn,
        mlp_state=mlp_state,
        mlp_at=mlp_at,
        dtype=dtype,
        capture_patterns=capture_patterns,
        attention_block=attention_block,
    )


def forward_fn(
    params,
    cfg,
    tokens,
    *,
    frozen=None,
    capture=False,
    mlp_fn=None,
    mlp_state=None,
    mlp_at="mlp_out",
    dtype=None,
    capture_patterns=True,
    attention_block=None,
):
    """Un-jitted ``forward`` for composing inside other jitted functions. Always returns
    ``(logits, intermediates_or_None, mlp_state)``.

    ``mlp_at`` says where ``mlp_fn``'s value stands: ``"mlp_out"`` (added to the residual stream as is) or
    ``"mlp_out_raw"`` (the MLP's own output; Gemma-2's post-MLP norm is applied to it, with the frozen scale
    when ``frozen`` is given)."""
    T = tokens.shape[1]
    cos_all, sin_all = nn.rope_cos_sin(jnp.arange(T), cfg)
    x = embed(params, cfg, tokens, dtype)
    windows = jnp.asarray(layer_windows_array(cfg))
    ropes = jnp.asarray(layer_rope_array(cfg))
    layer_ids = jnp.arange(cfg.n_layers)
    if frozen is not None:
        fz = (
            frozen.ln1_scale,
            frozen.attn_pattern,
            frozen.post_attn_scale,
            frozen.ln2_scale,
            frozen.post_mlp_scale,
        )
    else:
        fz = None

    def step(carry, xs):
        x, state = carry
        lp, window, rope, layer, fzl = xs
        if dtype is not None:  # one layer's copy in the compute dtype at a time
            lp = jax.tree.map(lambda a: a.astype(dtype), lp)
        cos, sin = nn.layer_rope(cos_all, sin_all, rope)
        mid, (ln1_s, pattern, post_a, a) = block_attention(
            lp, cfg, x, window, cos, sin, None if fzl is None else fzl[:3], attention_block
        )
        points, (ln2_s, post_m) = block_mlp_points(lp, cfg, mid, None if fzl is None else fzl[3:])
        if mlp_fn is None:
            write = points.mlp_out
        else:
            write, state = mlp_fn(layer, points, state)
            if mlp_at == "mlp_out_raw" and cfg.post_norms:
                s = nn.rms_scale(write, cfg.rms_norm_eps) if fzl is None or fzl[4] is None else fzl[4]
                write = nn.apply_rms(write, s, lp.post_mlp_norm, cfg.norm_offset)
        out = mid + write.astype(mid.dtype)
        ys = None
        if capture:
            ys = dict(
                resid=out,
                resid_mid=mid,
                attn_out=a,
                attn_pattern=pattern if capture_patterns else None,
                ln1_scale=ln1_s,
                ln2_scale=ln2_s,
                mlp_in=points.mlp_in,
                mlp_out_raw=points.mlp_out_raw,
                mlp_out=points.mlp_out,
                post_attn_scale=post_a,
                post_mlp_scale=post_m,
            )
        return (out, state), ys

    (x_final, state), ys = jax.lax.scan(step, (x, mlp_state), (params.layers, windows, ropes, layer_ids, fz))
    logits, normed, fscale = unembed(params, cfg, x_final, None if frozen is None else frozen.final_scale)
    inter = None
    if capture:
        resid = jnp.concatenate([x[None], ys.pop("resid")], axis=0)
        inter = Intermediates(resid=resid, final_scale=fscale, final_normed=normed, **ys)
    return logits, inter, state
