"""The frozen replacement model as a linear map, and its transpose by vmapped ``jax.vjp``.

With attention patterns, every norm scale and every MLP output frozen (``skip(x) + stop_gradient(mlp − skip)``),
block ``l`` is the linear map

    mid   = x + Attn_l(x)                       (frozen ln1 scale, pattern, post-attention scale)
    in_l  = Hin_l(mid)                          (the transcoders' input hook: resid_mid | x·s | x·s·g)
    slot  = in_l @ W_skip[l] + (constants + what sources inject)      (the transcoders' output hook)
    x'    = mid + Hout_l(slot)                  (identity, or Gemma-2's frozen post-MLP norm)

and the final logit direction ``v`` is read at ``final_norm(x_L)``. One backward step through block ``l`` is the
vjp of ``(x, slot) ↦ x'``: it yields the gradient at the next residual and at the slot. A source writing vector
``u`` into slot ``l`` at position ``t`` has edge ``grad_slot[l, t] · u``; an error node's ``u`` is its error
vector; a token node's edge is ``grad(x_0)[t] · embedding[t]``.

Rows are computed for a batch of targets at once. A feature read at layer ``s`` depends only on blocks ``< s``
plus block ``s``'s attention, so ``backward_rows`` scans the layers top-down and *skips* blocks above the start
layer with ``lax.switch`` (one compiled function serves every start layer), injecting feature targets' encoder
vectors at the start block's input hook. Decoder contractions happen inside the scan, per layer, against decoders
padded by position (``[T, K, D]``, ``einsum('btd,tkd->btk')``) — never a ``[B, n_active, D]`` array.

Letters: B batch of target rows, L layers, T positions, D model, K padded sources per (layer, position).
"""

from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp

from jcircuits.models import layers as nn
from jcircuits.models.config import ModelConfig
from jcircuits.models.transformer import LayerParams
from jcircuits.pytree import pytree_dataclass

__all__ = ["LinearContext", "backward_rows", "logit_cotangents"]


@pytree_dataclass
class LinearContext:
    """Every constant of the frozen linear model for one prompt (device arrays; per-layer fields lead with L).

    ``dec`` holds PLT decoder vectors already scaled by activations, ``[L, T, K, D]`` (zero padding), or for a
    CLT ``dec_clt[l]`` ``[T, K_l, L-l, D]`` per source layer. ``errors`` has the zeroed positions zeroed.
    """

    layers: LayerParams
    ln1_scale: jax.Array  # [L, T, 1]
    pattern: jax.Array  # [L, H, T, T]
    ln2_scale: jax.Array  # [L, T, 1]
    errors: jax.Array  # [L, T, D]
    embeddings: jax.Array  # [T, D]
    W_enc: jax.Array  # [L, D, F]
    final_norm: jax.Array  # [D]
    final_scale: jax.Array  # [T, 1]
    post_attn_scale: jax.Array | None = None
    post_mlp_scale: jax.Array | None = None
    W_skip: jax.Array | None = None  # [L, D, D]
    dec: jax.Array | None = None  # PLT [L, T, K, D]
    dec_clt: tuple | None = None  # CLT: tuple of [T, K_l, L-l, D]


@dataclasses.dataclass(frozen=True)
class Static:
    """Hashable static part: model config and the transcoders' hook points."""

    cfg: ModelConfig
    input_hook: str
    output_hook: str


def _layer_consts(ctx: LinearContext):
    """Per-layer constants to scan over (all lead with L)."""
    return dict(
        lp=ctx.layers,
        ln1=ctx.ln1_scale,
        pattern=ctx.pattern,
        post_attn=ctx.post_attn_scale,
        ln2=ctx.ln2_scale,
        post_mlp=ctx.post_mlp_scale,
        err=ctx.errors,
        skip=ctx.W_skip,
        dec=ctx.dec,
    )


def _attn(st: Static, c, x_TD):
    cfg = st.cfg
    h = nn.apply_rms(x_TD, c["ln1"], c["lp"].ln1, cfg.norm_offset)
    a = nn.attention_values(h[None], c["pattern"][None], c["lp"].wv, c["lp"].wo, cfg)[0]
    if cfg.post_norms:
        a = nn.apply_rms(a, c["post_attn"], c["lp"].post_attn_norm, cfg.norm_offset)
    return x_TD + a


def _hook_in(st: Static, c, mid_TD):
    if st.input_hook == "hook_resid_mid":
        return mid_TD
    if st.input_hook == "ln2.hook_normalized":
        return mid_TD * c["ln2"]
    return nn.apply_rms(mid_TD, c["ln2"], c["lp"].ln2, st.cfg.norm_offset)


def _hook_out(st: Static, c, slot_TD):
    if st.output_hook == "mlp.hook_out" and st.cfg.post_norms:
        return nn.apply_rms(slot_TD, c["post_mlp"], c["lp"].post_mlp_norm, st.cfg.norm_offset)
    return slot_TD


def _block(st: Static, c, x_TD, slot_TD):
    mid = _attn(st, c, x_TD)
    s = slot_TD
    if c["skip"] is not None:
        s = s + _hook_in(st, c, mid) @ c["skip"]
    return mid + _hook_out(st, c, s)


def backward_rows(st: Static, ctx: LinearContext, g0_BTD, cot_in_BTD, start):
    """Transpose the frozen model for a batch of targets.

    ``g0`` is the gradient at the final residual (logit targets; zeros for feature targets); ``cot_in`` the
    cotangent at block ``start``'s input hook (feature targets; ignored when ``start == L``).
    Returns ``(src [L, B, T, K] or grad_slot [L, B, T, D] for CLT, err [L, B, T], tok [B, T])``.
    """
    L = st.cfg.n_layers
    B, T, D = g0_BTD.shape
    consts = _layer_consts(ctx)
    clt = ctx.dec_clt is not None
    K = D if clt else ctx.dec.shape[2]

    def full(g, c):
        zero = jnp.zeros((T, D), g.dtype)
        _, vjp = jax.vjp(lambda x, s: _block(st, c, x, s), zero, zero)
        gx, gslot = jax.vmap(vjp)(g)
        err = jnp.einsum("btd,td->bt", gslot, c["err"])
        src = gslot if clt else jnp.einsum("btd,tkd->btk", gslot, c["dec"])
        return gx, (src, err)

    def inject(g, c):
        zero = jnp.zeros((T, D), g.dtype)
        _, vjp = jax.vjp(lambda x: _hook_in(st, c, _attn(st, c, x)), zero)
        (gx,) = jax.vmap(vjp)(cot_in_BTD.astype(g.dtype))
        return gx, (jnp.zeros((B, T, K), g.dtype), jnp.zeros((B, T), g.dtype))

    def skip(g, c):
        return g, (jnp.zeros((B, T, K), g.dtype), jnp.zeros((B, T), g.dtype))

    def body(g, xs):
        layer, c = xs
        branch = jnp.where(layer < start, 0, jnp.where(layer == start, 1, 2))
        return jax.lax.switch(branch, [full, inject, skip], g, c)

    g, (src, err) = jax.lax.scan(body, g0_BTD, (jnp.arange(L), consts), reverse=True)
    tok = jnp.einsum("btd,td->bt", g, ctx.embeddings.astype(g.dtype))
    return src, err, tok


def contract_clt(ctx: LinearContext, gslot_LBTD):
    """CLT source edges from the stacked slot gradients: ``edge = Σ_{j ≥ l} grad_slot[j] · a·W_dec[l → j]``.
    Returns a list over source layers of ``[B, T, K_l]``."""
    L = gslot_LBTD.shape[0]
    return [jnp.einsum("jbtd,tkjd->btk", gslot_LBTD[l:], ctx.dec_clt[l]) for l in range(L)]


def logit_cotangents(st: Static, ctx: LinearContext, vecs_KD, T: int):
    """Gradient at the final residual for each logit direction ``v`` read at ``final_norm(x_L)[T-1]``."""
    cfg = st.cfg

    def final(x_TD):
        return nn.apply_rms(x_TD, ctx.final_scale, ctx.final_norm, cfg.norm_offset)

    zero = jnp.zeros((T, cfg.d_model), vecs_KD.dtype)
    _, vjp = jax.vjp(final, zero)
    cot = jnp.zeros((vecs_KD.shape[0], T, cfg.d_model), vecs_KD.dtype).at[:, T - 1].set(vecs_KD)
    return jax.vmap(lambda c: vjp(c)[0])(cot)


@partial(jax.jit, static_argnums=(0,))
def rows_for_features(st: Static, ctx: LinearContext, start, pos_B, feat_B, valid_B, src_index):
    """Adjacency rows for a batch of feature targets read at layer ``start`` (traced).

    ``src_index`` maps every active feature to its flat (layer, position, k) slot of the padded source edges.
    Returns ``(features [B, n], errors [B, L·T], tokens [B, T])`` in float32.
    """
    T, D = ctx.embeddings.shape[0], st.cfg.d_model
    dtype = ctx.embeddings.dtype
    enc = jnp.take(ctx.W_enc[start], feat_B, axis=1).T * valid_B[:, None].astype(dtype)  # [B, D]
    B = pos_B.shape[0]
    cot = jnp.zeros((B, T, D), dtype).at[jnp.arange(B), pos_B].set(enc)
    return _finish(st, ctx, *backward_rows(st, ctx, jnp.zeros((B, T, D), dtype), cot, start), src_index)


@partial(jax.jit, static_argnums=(0,))
def rows_for_logits(st: Static, ctx: LinearContext, vecs_BD, src_index):
    """Adjacency rows for a batch of logit directions (already demeaned), read at the last position."""
    T = ctx.embeddings.shape[0]
    g0 = logit_cotangents(st, ctx, vecs_BD.astype(ctx.embeddings.dtype), T)
    return _finish(st, ctx, *backward_rows(st, ctx, g0, jnp.zeros_like(g0), st.cfg.n_layers), src_index)


def _finish(st: Static, ctx: LinearContext, src, err, tok, src_index):
    B = tok.shape[0]
    if ctx.dec_clt is not None:
        per_layer = contract_clt(ctx, src)
        flat = jnp.concatenate([p.reshape(B, -1) for p in per_layer], axis=1)
    else:
        flat = jnp.moveaxis(src, 1, 0).reshape(B, -1)  # [B, L·T·K]
    feats = jnp.take(flat, src_index, axis=1)
    errs = jnp.moveaxis(err, 1, 0).reshape(B, -1)
    return feats.astype(jnp.float32), errs.astype(jnp.float32), tok.astype(jnp.float32)
