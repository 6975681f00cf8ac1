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

Rows are computed for a batch of targets at once, and three facts keep the work near its floor:
- A feature read at layer ``s`` depends only on blocks ``< s`` plus block ``s``'s attention, so
  ``backward_rows`` scans the layers top-down and *skips* blocks above the start layer with ``lax.switch`` (one
  compiled function serves every start layer).
- The start block's cotangent sits at one query position ``p``, so its attention is transposed for that single
  row, in the cheap order ``(P[:, p, :] · ln1(x)) W_v W_o``: ``O(D² + H·T·D)`` per target instead of ``O(T·D²)``.
- Attention is causal, so a target at position ``p`` only depends on positions ``≤ p``: the frozen model restricted
  to the first ``n`` positions is exactly the same linear map there. ``rows_for_features`` takes a static prefix
  length ``n`` (a few buckets) and transposes only that prefix; sources at later positions get exact zeros.
Decoder contractions happen inside the scan, per layer, against decoders padded by position (``[T, K, D]``,
``einsum('btd,tkd->btk')``) — never a ``[B, n_active, D]`` array. On long prompts neither ``[L, T, K, D]`` nor ``[L, H, T, T]`` is
stored: the scan builds one block's decoder vectors from the gathered form (``_layer_decoders``) and recomputes
one block's pattern from what defines it (``QKContext``, ``_with_pattern``) just before transposing it.

The constants travel as named pytrees: ``LinearContext`` for the prompt, ``LayerConsts`` for the one block a scan
step transposes.

Precision (``Static.compute``). Gradients always flow in float32; every contraction goes through ``contract``, which
casts both operands to the compute dtype and accumulates in float32 (``preferred_element_type``) with an explicit
matmul precision. In ``"float32"`` that is a plain float32 einsum at ``Precision.HIGHEST`` (no TF32 on GPUs). In
``"bfloat16"`` (mixed precision) the operands are rounded to bfloat16 and the products summed in float32, and
``mixed_einsum``'s custom vjp makes the transposed contractions (which is all ``jax.vjp`` of the frozen model
computes) do the same: the cotangent is rounded to bfloat16 on its way into each matmul, the result accumulates
in float32. Norm scales and gains, the residual-stream gradient and the rows stay float32; only matmul inputs are
rounded, so each rounding adds at most ``2^-8`` relative (bfloat16's unit round-off) to one operand.

Letters: B batch of target rows, L layers, T positions, D model, K padded sources per (layer, position).
"""

from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp

from jcircuits.common.pytree import pytree_dataclass
from jcircuits.models import layers as nn
from jcircuits.models.config import ModelConfig
from jcircuits.models.hooks import input_field, output_field
from jcircuits.models.transformer import LayerParams, layer_rope_array, layer_windows_array

__all__ = [
    "QKContext",
    "LinearContext",
    "LayerConsts",
    "contract",
    "mixed_einsum",
    "Static",
    "backward_rows",
    "logit_cotangents",
    "prefix",
    "layers_prefix",
    "rows_for_features",
    "token_rows_for_layer0",
    "rows_for_logits",
]


@pytree_dataclass
class QKContext:
    """What defines a prompt's frozen attention patterns, kept instead of the ``[L, H, T, T]`` patterns on long
    prompts: each block's normalised attention input ``attn_in [L, T, D]`` and its float32 query/key weights
    (QK-norm gains where the model has them). The scan recomputes one block's pattern at a time
    (``_with_pattern``: the forward pass's own ``attention_pattern``, causal prefix and sliding window
    included), so memory is ``O(L·T·D)`` plus one block's ``[H, T, T]`` while it is transposed."""

    attn_in: jax.Array  # [L, T, D] float32
    wq: jax.Array  # [L, D, H, E] float32
    wk: jax.Array  # [L, D, KV, E] float32
    q_norm: jax.Array | None = None  # [L, E]
    k_norm: jax.Array | None = None


@pytree_dataclass
class LinearContext:
    """Every constant of the frozen linear model for one prompt (device arrays; per-layer fields lead with L).

    ``dec`` holds PLT decoder vectors already scaled by activations, ``[L, T, K, D]`` (zero padding), or for a
    CLT ``dec_clt[l]`` ``[T, K_l, L-l, D]`` per source layer. A long prompt's PLT sources are kept *gathered*
    instead (``dec`` is None): each layer's distinct active decoder rows ``dec_rows [L, U, D]`` (float32), and per
    padded source slot the row ``dec_idx [L, T, K]`` and activation ``dec_val [L, T, K]`` (0 for padding); the scan
    builds one layer's ``[T, K, D]`` at a time (``_layer_decoders``), bit for bit the vectors ``dec`` would hold.
    ``errors`` has the zeroed positions zeroed.
    """

    layers: LayerParams
    ln1_scale: jax.Array  # [L, T, 1]
    pattern: jax.Array | None  # [L, H, T, T], or None: recomputed per block from ``attn_in`` (``QKContext``)
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
    dec_rows: jax.Array | None = None  # gathered PLT sources: [L, U, D] float32
    dec_idx: jax.Array | None = None  # [L, T, K] int32 rows of dec_rows
    dec_val: jax.Array | None = None  # [L, T, K] float32 activations (0: padding)
    qk: QKContext | None = None  # what defines the patterns, when they are not stored

    @property
    def n_sources(self) -> int:
        """K, the padded source slots per (layer, position) of a PLT (``dec`` or the gathered form)."""
        return (self.dec if self.dec is not None else self.dec_idx).shape[2]


@dataclasses.dataclass(frozen=True)
class Static:
    """Hashable static part: model config, the transcoders' hook points and the matmul input dtype ``compute``
    (``"float32"`` or ``"bfloat16"``: bfloat16 inputs with float32 accumulation; see the module docstring)."""

    cfg: ModelConfig
    input_hook: str
    output_hook: str
    compute: str = "float32"


def _bf16_einsum(spec: str, a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.einsum(
        spec,
        a.astype(jnp.bfloat16),
        b.astype(jnp.bfloat16),
        precision=jax.lax.Precision.DEFAULT,  # one bf16 pass: bf16 products are exact in float32
        preferred_element_type=jnp.float32,
    )


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def mixed_einsum(spec: str, a: jax.Array, b: jax.Array) -> jax.Array:
    """``einsum(spec, a, b)`` with both operands rounded to bfloat16 and float32 accumulation; float32 result.

    Its vjp does the same for each transposed contraction (cotangent rounded to bfloat16, float32 sums), so a
    ``jax.vjp`` through it (the attribution transpose) runs bfloat16 matmuls without losing the float32 sums. The
    default rule would instead produce each operand's cotangent in bfloat16. ``spec`` is a two-operand einsum
    without ``...``, in which every index of each operand also appears in the other operand or in the output
    (``check_transposable``)."""
    return _bf16_einsum(spec, a, b)


def _mixed_fwd(spec, a, b):
    return _bf16_einsum(spec, a, b), (a, b)


def _mixed_bwd(spec, res, ct):
    a, b = res
    (sa, sb), out = spec.split("->")[0].split(","), spec.split("->")[1]
    da = _bf16_einsum(f"{out},{sb}->{sa}", ct, b).astype(a.dtype)
    db = _bf16_einsum(f"{sa},{out}->{sb}", a, ct).astype(b.dtype)
    return da, db


mixed_einsum.defvjp(_mixed_fwd, _mixed_bwd)


def check_transposable(spec: str) -> None:
    """Raise ``ValueError`` unless ``spec`` is ``"ab,bc->ac"``-like: two operands, explicit output, no ``...``, no
    index repeated within an operand, and every operand index present in the other operand or the output."""
    if "->" not in spec or "..." in spec or spec.count(",") != 1:
        raise ValueError(f"mixed_einsum needs two operands, an explicit output and no '...': {spec!r}")
    (sa, sb), out = spec.split("->")[0].split(","), spec.split("->")[1]
    for mine, other in ((sa, sb), (sb, sa)):
        if len(set(mine)) != len(mine) or not set(mine) <= set(other) | set(out):
            raise ValueError(f"mixed_einsum cannot transpose {spec!r}: operand {mine!r}")


def contract(st: Static, spec: str, a: jax.Array, b: jax.Array) -> jax.Array:
    """The frozen model's one way to contract two arrays: float32 at ``Precision.HIGHEST`` when
    ``st.compute == "float32"``, else ``mixed_einsum`` (bfloat16 inputs, float32 accumulation). Float32 result."""
    if st.compute == "float32":
        return jnp.einsum(
            spec, a, b, precision=jax.lax.Precision.HIGHEST, preferred_element_type=jnp.float32
        )
    if st.compute != "bfloat16":
        raise ValueError(f"compute must be 'float32' or 'bfloat16', got {st.compute!r}")
    check_transposable(spec)
    return mixed_einsum(spec, a, b)


_POSITION_AXES = dict(  # the fields of a LinearContext that carry a position axis, and which axes
    ln1_scale=(1,), pattern=(2, 3), ln2_scale=(1,), errors=(1,), embeddings=(0,), final_scale=(0,),
    post_attn_scale=(1,), post_mlp_scale=(1,), dec=(1,), dec_idx=(1,), dec_val=(1,), qk=(1,),
)


@partial(jax.jit, static_argnums=(1,))
def _pad_fields(fields: dict, n: int) -> dict:
    def pad(a, axes):
        if a is None:
            return None
        return jnp.pad(a, [(0, n - a.shape[i] if i in axes else 0) for i in range(a.ndim)])

    out = {k: pad(a, _POSITION_AXES[k]) for k, a in fields.items() if k not in ("dec_clt", "qk")}
    qk = fields["qk"]
    out["qk"] = None if qk is None else dataclasses.replace(qk, attn_in=pad(qk.attn_in, (1,)))
    out["dec_clt"] = None if fields["dec_clt"] is None else tuple(pad(d, (0,)) for d in fields["dec_clt"])
    return out


def pad_positions(ctx: LinearContext, n: int) -> LinearContext:
    """``ctx`` zero-padded to ``n ≥ T`` positions. Exact for the real positions: attention is causal, so padded
    positions (after the prompt) never receive gradient from targets inside it, and their constants are zero.
    One compiled program pads every field."""
    T = ctx.embeddings.shape[0]
    if n == T:
        return ctx
    names = [*_POSITION_AXES, "dec_clt"]
    return dataclasses.replace(ctx, **_pad_fields({k: getattr(ctx, k) for k in names}, n))


def prefix(ctx: LinearContext, n: int) -> LinearContext:
    """The frozen model restricted to the first ``n`` positions (exact for those positions: attention is causal
    and everything else is per-position)."""
    T = ctx.embeddings.shape[0]
    if n == T:
        return ctx
    cut = lambda a: None if a is None else a[:, :n]  # noqa: E731  [L, T, …] fields
    return dataclasses.replace(
        ctx,
        ln1_scale=cut(ctx.ln1_scale),
        pattern=None if ctx.pattern is None else ctx.pattern[:, :, :n, :n],
        qk=None if ctx.qk is None else dataclasses.replace(ctx.qk, attn_in=ctx.qk.attn_in[:, :n]),
        ln2_scale=cut(ctx.ln2_scale),
        errors=cut(ctx.errors),
        embeddings=ctx.embeddings[:n],
        final_scale=ctx.final_scale[:n],
        post_attn_scale=cut(ctx.post_attn_scale),
        post_mlp_scale=cut(ctx.post_mlp_scale),
        dec=cut(ctx.dec),
        dec_clt=None if ctx.dec_clt is None else tuple(d[:n] for d in ctx.dec_clt),
        dec_idx=cut(ctx.dec_idx),
        dec_val=cut(ctx.dec_val),
    )


def layers_prefix(ctx: LinearContext, m: int) -> LinearContext:
    """The frozen model's first ``m`` blocks: enough for targets read at layers ``< m`` (nothing above a
    target's layer is upstream of it). A CLT keeps each source layer's writes into those blocks only."""
    L = ctx.errors.shape[0]
    if m == L:
        return ctx
    cut = lambda a: None if a is None else a[:m]  # noqa: E731
    return dataclasses.replace(
        ctx,
        layers=jax.tree.map(cut, ctx.layers),
        ln1_scale=cut(ctx.ln1_scale),
        pattern=cut(ctx.pattern),
        ln2_scale=cut(ctx.ln2_scale),
        errors=cut(ctx.errors),
        post_attn_scale=cut(ctx.post_attn_scale),
        post_mlp_scale=cut(ctx.post_mlp_scale),
        W_skip=cut(ctx.W_skip),
        dec=cut(ctx.dec),
        dec_clt=None
        if ctx.dec_clt is None
        else tuple(d[:, :, : m - l] for l, d in enumerate(ctx.dec_clt[:m])),
        dec_rows=cut(ctx.dec_rows),
        dec_idx=cut(ctx.dec_idx),
        dec_val=cut(ctx.dec_val),
        qk=None if ctx.qk is None else jax.tree.map(cut, ctx.qk),
    )


@pytree_dataclass
class LayerConsts:
    """One block's slice of ``LinearContext`` (``_layer_consts`` stacks them over L for ``lax.scan``): its
    weights and its frozen constants, named as the block's linear map reads them."""

    lp: LayerParams
    ln1: jax.Array  # [T, 1]
    pattern: jax.Array | None  # [H, T, T] (None: ``_with_pattern`` recomputes it from ``qk``)
    ln2: jax.Array  # [T, 1]
    err: jax.Array  # [T, D]
    post_attn: jax.Array | None = None  # [T, 1]
    post_mlp: jax.Array | None = None  # [T, 1]
    skip: jax.Array | None = None  # [D, D]
    dec: jax.Array | None = None  # PLT [T, K, D]
    dec_rows: jax.Array | None = None  # gathered PLT sources: [U, D], [T, K], [T, K]
    dec_idx: jax.Array | None = None
    dec_val: jax.Array | None = None
    qk: QKContext | None = None  # one block's slice
    window: jax.Array | None = None  # [] int32 sliding window (0: global), with ``qk``
    rope: jax.Array | None = None  # [] int32 RoPE table index, with ``qk``


def _with_pattern(st: Static, c: LayerConsts) -> LayerConsts:
    """``c`` with its block's frozen pattern ``[H, T, T]``: the stored one, or recomputed from ``c.qk`` exactly as
    the forward pass computes it (float32, then the compute dtype). Equal to the stored pattern to float32
    round-off: ``attn_in`` is recomputed outside the forward pass's fusion."""
    if c.pattern is not None:
        return c
    cfg, qk = st.cfg, c.qk
    T = qk.attn_in.shape[0]
    cos_all, sin_all = nn.rope_cos_sin(jnp.arange(T), cfg)
    cos, sin = nn.layer_rope(cos_all, sin_all, c.rope)
    mask = nn.attention_mask(T, T, c.window)
    P = nn.attention_pattern(qk.attn_in[None], qk.wq, qk.wk, cos, sin, mask, cfg, qk.q_norm, qk.k_norm)[0]
    return dataclasses.replace(c, pattern=P.astype(_compute_dtype(st)))


def _layer_decoders(st: Static, c: LayerConsts) -> jax.Array:
    """One block's PLT source vectors ``[T, K, D]`` in the compute dtype: stored (``c.dec``), or built from the
    gathered form, ``dec_rows[dec_idx] · dec_val`` in float32 then cast, as the host builds ``dec``."""
    if c.dec is not None:
        return c.dec
    return (c.dec_rows[c.dec_idx] * c.dec_val[..., None]).astype(_compute_dtype(st))


def _compute_dtype(st: Static):
    """The dtype stored constants take in ``st.compute`` mode (what ``build_context`` casts them to)."""
    return jnp.float32 if st.compute == "float32" else jnp.bfloat16


def _layer_consts(st: Static, ctx: LinearContext) -> LayerConsts:
    """Per-layer constants to scan over (all lead with L)."""
    L = ctx.errors.shape[0]
    recompute = ctx.pattern is None
    return LayerConsts(
        lp=ctx.layers,
        ln1=ctx.ln1_scale,
        pattern=ctx.pattern,
        post_attn=ctx.post_attn_scale,
        ln2=ctx.ln2_scale,
        post_mlp=ctx.post_mlp_scale,
        err=ctx.errors,
        skip=ctx.W_skip,
        dec=ctx.dec,
        dec_rows=ctx.dec_rows,
        dec_idx=ctx.dec_idx,
        dec_val=ctx.dec_val,
        qk=ctx.qk,
        window=jnp.asarray(layer_windows_array(st.cfg)[:L]) if recompute else None,
        rope=jnp.asarray(layer_rope_array(st.cfg)[:L]) if recompute else None,
    )


def _attn(st: Static, c: LayerConsts, x_TD):
    cfg = st.cfg
    h = nn.apply_rms(x_TD, c.ln1, c.lp.ln1, cfg.norm_offset)
    v = contract(st, "td,dke->tke", h, c.lp.wv)  # the value path of nn.attention_values, through ``contract``
    T = x_TD.shape[0]
    p = c.pattern.reshape(cfg.n_kv_heads, cfg.n_rep, T, T)
    z = contract(st, "kgts,ske->tkge", p, v).reshape(T, cfg.n_heads, -1)
    a = contract(st, "the,hed->td", z, c.lp.wo)
    if cfg.post_norms:
        a = nn.apply_rms(a, c.post_attn, c.lp.post_attn_norm, cfg.norm_offset)
    return x_TD + a


def _hook_in(st: Static, c: LayerConsts, mid_TD):
    field = input_field(st.input_hook)
    if field == "resid_mid":
        return mid_TD
    if field == "normalized":
        return mid_TD * c.ln2
    return nn.apply_rms(mid_TD, c.ln2, c.lp.ln2, st.cfg.norm_offset)


def _hook_out(st: Static, c: LayerConsts, slot_TD):
    if output_field(st.output_hook) == "mlp_out_raw" and st.cfg.post_norms:
        return nn.apply_rms(slot_TD, c.post_mlp, c.lp.post_mlp_norm, st.cfg.norm_offset)
    return slot_TD


def _attn_hook_in_at(st: Static, c: LayerConsts, x_TD, p):
    """``hook_in(x + Attn(x))`` at the single query position ``p`` ``[D]``, computed in the order whose transpose
    is cheap: mix positions first (``H·T·D``), then ``W_v`` and ``W_o`` on one row per head (``2·H·E·D``)."""
    cfg = st.cfg
    lp = c.lp
    h = nn.apply_rms(x_TD, c.ln1, lp.ln1, cfg.norm_offset)  # [T, D]
    P = c.pattern[:, p, :].reshape(cfg.n_kv_heads, cfg.n_rep, -1)  # [K, R, T]
    z = contract(st, "krt,td->krd", P, h)
    v = contract(st, "krd,dke->kre", z, lp.wv)
    a = contract(st, "kre,kred->d", v, lp.wo.reshape(cfg.n_kv_heads, cfg.n_rep, *lp.wo.shape[1:]))
    at = lambda a: a[p][None]  # noqa: E731  per-position constant at p, [1, 1]
    if cfg.post_norms:
        a = nn.apply_rms(a[None], at(c.post_attn), lp.post_attn_norm, cfg.norm_offset)[0]
    mid = x_TD[p] + a
    return _hook_in(st, dataclasses.replace(c, ln2=at(c.ln2)), mid[None])[0]


def _block(st: Static, c: LayerConsts, x_TD, slot_TD):
    mid = _attn(st, c, x_TD)
    s = slot_TD
    if c.skip is not None:
        s = s + contract(st, "td,de->te", _hook_in(st, c, mid), c.skip)
    return mid + _hook_out(st, c, s)


def backward_rows(st: Static, ctx: LinearContext, g0_BTD, enc_BD, pos_B, start_B):
    """Transpose the frozen model for a batch of targets.

    ``g0`` is the gradient at the final residual (logit targets; zeros for feature targets); ``enc`` the encoder
    vector injected at block ``start``'s input hook at position ``pos``, per row (feature targets; none when
    ``start == L``). A batch may mix start layers: each row's gradient is exactly zero above its own start, so
    the blocks between a row's start and the batch's highest start add nothing to it (only work).
    Returns ``(src [L, B, T, K] or grad_slot [L, B, T, D] for CLT, err [L, B, T], tok [B, T])``.
    """
    L = ctx.errors.shape[0]  # may be a prefix of the model's blocks (``layers_prefix``)
    B, T, D = g0_BTD.shape
    consts = _layer_consts(st, ctx)
    clt = ctx.dec_clt is not None
    K = D if clt else ctx.n_sources
    top = jnp.max(start_B)
    zeros_out = lambda dt: (jnp.zeros((B, T, K), dt), jnp.zeros((B, T), dt))  # noqa: E731

    def inject(layer, c, dtype):
        zero = jnp.zeros((T, D), dtype)
        e = enc_BD.astype(dtype) * (start_B == layer)[:, None].astype(dtype)

        def one(e_D, p):
            _, vjp = jax.vjp(lambda x: _attn_hook_in_at(st, c, x, p), zero)
            return vjp(e_D)[0]

        return jax.vmap(one)(e, pos_B)

    def full(layer, g, c):  # rows already started pass through; rows starting here are injected
        c = _with_pattern(st, c)
        zero = jnp.zeros((T, D), g.dtype)
        _, vjp = jax.vjp(lambda x, s: _block(st, c, x, s), zero, zero)
        gx, gslot = jax.vmap(vjp)(g)
        err = contract(st, "btd,td->bt", gslot, c.err)
        src = gslot if clt else contract(st, "btd,tkd->btk", gslot, _layer_decoders(st, c))
        return gx + inject(layer, c, g.dtype), (src, err)

    def first(layer, g, c):  # the batch's highest start: every gradient is still zero, only inject
        return inject(layer, _with_pattern(st, c), g.dtype), zeros_out(g.dtype)

    def skip(layer, g, c):
        return g, zeros_out(g.dtype)

    def body(g, xs):
        layer, c = xs
        branch = jnp.where(layer < top, 0, jnp.where(layer == top, 1, 2))
        return jax.lax.switch(branch, [full, first, skip], layer, g, c)

    g, (src, err) = jax.lax.scan(body, g0_BTD, (jnp.arange(L), consts), reverse=True)
    tok = contract(st, "btd,td->bt", g, ctx.embeddings)
    return src, err, tok


def contract_clt(st: Static, ctx: LinearContext, gslot_LBTD):
    """CLT source edges from the stacked slot gradients: ``edge = Σ_{j ≥ l} grad_slot[j] · a·W_dec[l → j]``.
    Returns a list over source layers of ``[B, T, K_l]``."""
    L = gslot_LBTD.shape[0]
    return [contract(st, "jbtd,tkjd->btk", gslot_LBTD[l:], ctx.dec_clt[l]) for l in range(L)]


def logit_cotangents(st: Static, ctx: LinearContext, vecs_KD, last):
    """Gradient at the final residual for each logit direction ``v`` read at ``final_norm(x_L)[last]``."""
    cfg = st.cfg

    def final(x_TD):
        return nn.apply_rms(x_TD, ctx.final_scale, ctx.final_norm, cfg.norm_offset)

    T = ctx.embeddings.shape[0]
    zero = jnp.zeros((T, cfg.d_model), vecs_KD.dtype)
    _, vjp = jax.vjp(final, zero)
    cot = jnp.zeros((vecs_KD.shape[0], T, cfg.d_model), vecs_KD.dtype).at[:, last].set(vecs_KD)
    return jax.vmap(lambda c: vjp(c)[0])(cot)


@partial(jax.jit, static_argnums=(0, 7, 8))
def rows_for_features(
    st: Static, ctx: LinearContext, start_B, pos_B, feat_B, valid_B, src_index, n_pos: int, n_layers: int
):
    """Adjacency rows for a batch of feature targets read at layers ``start_B < n_layers`` and positions
    ``pos_B < n_pos``.

    Only the first ``n_pos`` positions (see ``prefix``) and the first ``n_layers`` blocks (``layers_prefix``) are
    transposed (both static, a few buckets each), and within them only the blocks up to the batch's highest start
    layer. ``src_index`` maps every active feature to its flat (layer, position, k) slot of the padded source
    edges of that prefix, or one past the end (read as zero) for sources outside it (``source_index``).
    Returns ``(features [B, n], errors [B, L·T], tokens [B, T])`` in float32.
    """
    L, T, D = ctx.errors.shape[0], ctx.embeddings.shape[0], st.cfg.d_model
    f32 = jnp.float32  # gradients are float32 in every mode (module docstring)
    enc = ctx.W_enc[start_B, :, feat_B].astype(f32) * valid_B[:, None].astype(f32)  # [B, D]
    B = pos_B.shape[0]
    sub = layers_prefix(prefix(ctx, n_pos), n_layers)
    out = backward_rows(st, sub, jnp.zeros((B, n_pos, D), f32), enc, pos_B, start_B)
    return _finish(st, sub, *out, src_index, T, L)


@partial(jax.jit, static_argnums=(0,))
def token_rows_for_layer0(st: Static, ctx: LinearContext, pos_B, feat_B, valid_B):
    """Rows of feature targets read at layer 0: only token nodes are upstream of them (their input is the
    embeddings plus layer 0's attention of the embeddings), so their feature and error edges are exactly zero and
    only ``tokens [B, T]`` (float32) is computed — no scan, no source contraction."""
    T, D = ctx.embeddings.shape[0], st.cfg.d_model
    f32 = jnp.float32
    enc = ctx.W_enc[0][:, feat_B].T.astype(f32) * valid_B[:, None].astype(f32)  # [B, D]
    c0 = _with_pattern(st, jax.tree.map(lambda a: a[0], _layer_consts(st, ctx)))
    zero = jnp.zeros((T, D), f32)

    def one(e_D, p):
        _, vjp = jax.vjp(lambda x: _attn_hook_in_at(st, c0, x, p), zero)
        return contract(st, "td,td->t", vjp(e_D)[0], ctx.embeddings)

    return jax.vmap(one)(enc, pos_B).astype(jnp.float32)


@partial(jax.jit, static_argnums=(0,))
def rows_for_logits(st: Static, ctx: LinearContext, vecs_BD, src_index, last):
    """Adjacency rows for a batch of logit directions (already demeaned), read at position ``last`` (the
    prompt's last token; ``ctx`` may be padded past it)."""
    T = ctx.embeddings.shape[0]
    B, D = vecs_BD.shape
    g0 = logit_cotangents(st, ctx, vecs_BD.astype(jnp.float32), last)
    start = jnp.full(B, st.cfg.n_layers, jnp.int32)
    out = backward_rows(st, ctx, g0, jnp.zeros((B, D), g0.dtype), jnp.zeros(B, jnp.int32), start)
    return _finish(st, ctx, *out, src_index, T, ctx.errors.shape[0])


def _finish(st: Static, ctx: LinearContext, src, err, tok, src_index, T: int, L: int):
    """Flatten the padded source edges, pick the active features' columns (an index one past the end reads zero:
    sources outside the prefix), and pad error/token edges back to all ``T`` positions."""
    B, n = tok.shape
    if ctx.dec_clt is not None:
        per_layer = contract_clt(st, ctx, src)
        flat = jnp.concatenate([p.reshape(B, -1) for p in per_layer], axis=1)
    else:
        flat = jnp.moveaxis(src, 1, 0).reshape(B, -1)  # [B, L·n·K]
    # index == width (sources past the prefix, padding) reads as zero: no concatenated zero column to copy
    feats = jnp.take(flat, src_index, axis=1, mode="fill", fill_value=0)
    m = err.shape[0]  # blocks transposed; error edges of the blocks above are zero
    errs = jnp.pad(jnp.moveaxis(err, 1, 0), ((0, 0), (0, L - m), (0, T - n))).reshape(B, -1)
    toks = jnp.pad(tok, ((0, 0), (0, T - n)))
    return feats.astype(jnp.float32), errs.astype(jnp.float32), toks.astype(jnp.float32)
