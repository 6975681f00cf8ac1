"""The replacement model for one prompt: active transcoder features, reconstruction and error vectors.

``replace(model, transcoders, tokens)`` runs the base model once (capturing every intermediate), encodes each
layer's feature input, keeps the active features (position-sorted sparse triples), reads decoder rows for those
features only, and returns the reconstruction and the exact error ``true MLP output − reconstruction`` at the
transcoders' output hook. By construction ``reconstruction + error == base MLP output`` everywhere; the
``replacement_forward`` below re-encodes live and is the real test that features + errors reproduce the model.

``replace(..., active_features=F)`` uses the node set ``F`` instead of the one the activation function picks (each
given feature valued at its pre-activation, as if active; the others 0), so that graphs computed where round-off
puts a feature on the other side of its threshold can still be compared. Either way ``Replacement.round_off``
lists the features whose presence round-off decides (``RoundOff``).

Letters: L layers, T positions, D model, F features, n active features.
"""

from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from jcircuits.common.buckets import attention_block, encode_chunk, length_bucket
from jcircuits.models import Intermediates, forward, forward_fn
from jcircuits.models.hooks import input_field, output_field
from jcircuits.models.model import Model
from jcircuits.models.transformer import check_finite_logits, embed
from jcircuits.transcoders.core import (
    DecoderStore,
    DenseDecoders,
    TranscoderConfig,
    Transcoders,
    activate,
    encode_layer,
)
from jcircuits.transcoders.transcoder_set import TranscoderSet, check_compatible

__all__ = ["Replacement", "RoundOff", "ROUND_OFF_MARGIN", "replace", "replacement_forward", "decode_sparse"]


ROUND_OFF_MARGIN = 1e-5  # relative: |pre-activation − threshold| <= margin · max(1, |threshold|)


@dataclasses.dataclass
class RoundOff:
    """Features whose presence in the node set round-off decides: their pre-activation lies within
    ``margin · max(1, |θ|)`` of the value ``θ`` that decides whether they are active, on either side.

    ``θ`` is the JumpReLU threshold (0 for ReLU). For TopK it is the value the feature competes with at its
    (layer, position): the (k+1)-th largest pre-activation for an active feature, the k-th for an inactive one.
    ``features [m, 3]`` (layer, pos, feat) int32 sorted as ``replace`` sorts active features; ``pre``, ``threshold``
    ``[m]`` float32; ``active [m]`` whether the feature is in this computation's own active set. Positions that
    are zeroed (< ``zero_positions``) never appear.
    """

    features: np.ndarray
    pre: np.ndarray
    threshold: np.ndarray
    active: np.ndarray
    margin: float

    @property
    def gap(self) -> np.ndarray:
        """``pre − threshold`` ``[m]`` (positive: on the active side for JumpReLU/ReLU)."""
        return self.pre - self.threshold

    def __len__(self) -> int:
        return int(self.features.shape[0])

    def to_json(self) -> dict:
        """Plain JSON: the margin, the rule and one ``[layer, pos, feature, pre, threshold, gap, active]`` per
        feature (what ``attribute`` writes into ``graph.settings["round_off"]``)."""
        return {
            "margin": self.margin,
            "rule": "|pre - threshold| <= margin * max(1, |threshold|); TopK: threshold = the competing "
            "k-th (inactive) or (k+1)-th (active) largest pre-activation at that position",
            "n": len(self),
            "features": [
                [int(l), int(t), int(f), float(p), float(th), float(p - th), bool(a)]
                for (l, t, f), p, th, a in zip(
                    self.features, self.pre, self.threshold, self.active, strict=True
                )
            ],
        }


@dataclasses.dataclass
class Replacement:
    """Everything one prompt's replacement model needs downstream (attribution, interventions).

    ``active_features [n, 3]`` (layer, pos, feat) int32, sorted; ``activation_values [n]`` float32;
    ``reconstruction``/``errors``/``mlp_out`` ``[L, T, D]`` at the output hook; ``feature_inputs [L, T, D]`` at the
    input hook; ``embeddings [T, D]`` the token vectors written into the residual stream; ``inter`` the base
    model's intermediates (batch of one); ``logits [T, V]``. ``round_off`` lists the features whose presence
    round-off decides; ``given_features`` is true when the node set was given (``replace(active_features=…)``).
    """

    tokens: np.ndarray
    logits: jax.Array
    inter: Intermediates
    active_features: np.ndarray
    activation_values: np.ndarray
    reconstruction: jax.Array
    errors: jax.Array
    mlp_out: jax.Array
    feature_inputs: jax.Array
    embeddings: jax.Array
    zero_positions: int
    round_off: RoundOff | None = None
    given_features: bool = False

    @property
    def n_active(self) -> int:
        return int(self.active_features.shape[0])


def _counted(T: int, zero_positions, n_pos) -> jax.Array:
    """``[T]``: the positions a feature may be active at: from ``zero_positions`` up to the prompt's ``n_pos``
    (positions past it pad the prompt to its length bucket)."""
    ix = jnp.arange(T)
    return (ix >= zero_positions) & (ix < n_pos)


@partial(jax.jit, static_argnums=(0,))
def _encode_all(tcfg: TranscoderConfig, tc: Transcoders, x_LTD: jax.Array, zero_positions, n_pos):
    """``(activations, pre-activations)`` ``[L, T, F]`` in float32, activations zeroed at the first
    ``zero_positions`` positions and from ``n_pos`` on. Layer by layer (``lax.map``), so bfloat16-stored encoders
    are upcast one layer at a time."""
    layers = jnp.arange(x_LTD.shape[0])
    f32 = jnp.float32
    pre = jax.lax.map(lambda lx: encode_layer(tcfg, tc, lx[0], lx[1].astype(f32), pre=True, dtype=f32), (layers, x_LTD))
    th = tc.threshold
    acts = jax.vmap(lambda l, h: activate(tcfg, h, None if th is None else th[l]))(layers, pre)
    return acts * _counted(x_LTD.shape[1], zero_positions, n_pos)[None, :, None], pre


@partial(jax.jit, static_argnums=(0,))
def _deciding_values(
    tcfg: TranscoderConfig, tc: Transcoders, pre: jax.Array, active: jax.Array, margin, zero_positions, n_pos
):
    """``(near [L, T, F] bool, theta [L, T, F])``: the value each feature's presence is decided against (see
    ``RoundOff``) and whether its pre-activation lies within the margin of it."""
    L, T, F = pre.shape
    if tcfg.activation == "jumprelu":
        theta = jnp.broadcast_to(tc.threshold.astype(jnp.float32)[:, None, :], pre.shape)
    elif tcfg.activation == "relu":
        theta = jnp.zeros_like(pre)
    elif tcfg.top_k >= F:  # every feature is kept: nothing competes
        theta = jnp.full_like(pre, -jnp.inf)
    else:
        top, _ = jax.lax.top_k(pre, tcfg.top_k + 1)  # [L, T, k+1]
        theta = jnp.where(active, top[..., tcfg.top_k, None], top[..., tcfg.top_k - 1, None])
    near = jnp.abs(pre - theta) <= margin * jnp.maximum(1.0, jnp.abs(theta))
    near = near & _counted(T, zero_positions, n_pos)[None, :, None]
    return near, theta


def _round_off(tcfg, tc, pre: jax.Array, acts: jax.Array, zero_positions: int, n_pos: int, margin: float) -> RoundOff:
    near, theta = _deciding_values(tcfg, tc, pre, acts != 0, jnp.float32(margin), zero_positions, n_pos)
    idx = np.argwhere(np.asarray(near)).astype(np.int32)
    at = tuple(jnp.asarray(idx[:, i]) for i in range(3))
    return RoundOff(
        features=idx,
        pre=np.asarray(pre[at], np.float32),
        threshold=np.asarray(theta[at], np.float32),
        active=np.asarray(acts[at] != 0),
        margin=float(margin),
    )


def check_active_features(active_features, n_layers: int, n_pos: int, n_features: int, zero_positions: int):
    """The given node set as an int32 ``[n, 3]`` (layer, pos, feature) array, or a clear ``ValueError``: every
    triple in range, none at a zeroed position, sorted by (layer, pos, feature) without repeats."""
    a = np.asarray(active_features)
    if a.size == 0:
        return np.zeros((0, 3), np.int32)
    if a.ndim != 2 or a.shape[1] != 3 or not np.issubdtype(a.dtype, np.integer):
        raise ValueError(
            f"active_features must be an int array [n, 3] of (layer, pos, feature), got {a.dtype} {a.shape}"
        )
    for col, (name, size) in enumerate((("layer", n_layers), ("position", n_pos), ("feature", n_features))):
        bad = np.flatnonzero((a[:, col] < 0) | (a[:, col] >= size))
        if len(bad):
            raise ValueError(
                f"active_features[{bad[0]}] = {a[bad[0]].tolist()}: {name} out of range (0 to {size - 1}); "
                f"{len(bad)} such rows"
            )
    bad = np.flatnonzero(a[:, 1] < zero_positions)
    if len(bad):
        raise ValueError(
            f"active_features[{bad[0]}] = {a[bad[0]].tolist()} is at a zeroed position (< zero_positions = "
            f"{zero_positions}): features there are always 0; {len(bad)} such rows"
        )
    key = (a[:, 0].astype(np.int64) * n_pos + a[:, 1]) * n_features + a[:, 2]
    bad = np.flatnonzero(np.diff(key) <= 0)
    if len(bad):
        raise ValueError(
            f"active_features must be sorted by (layer, pos, feature) without repeats, as replace sorts them: "
            f"row {bad[0] + 1} {a[bad[0] + 1].tolist()} follows {a[bad[0]].tolist()}"
        )
    return a.astype(np.int32)


@jax.jit
def _skip_all(W_skip: jax.Array, x_LTD: jax.Array) -> jax.Array:
    """``x @ W_skip`` per layer in float32 (a bfloat16-stored ``W_skip`` upcast one layer at a time)."""
    f32 = jnp.float32
    return jax.lax.map(lambda wx: wx[1].astype(f32) @ wx[0].astype(f32), (W_skip, x_LTD))


@partial(jax.jit, static_argnums=(0, 1))
def _complete_and_trim(cfg, T: int, params, b_dec, W_skip, tokens, logits, inter, x_in, true_out, recon_sparse):
    """The reconstruction (``Σ a·W_dec`` + ``b_dec`` + skip) and errors at the padded length, and everything the
    ``Replacement`` holds trimmed to the prompt's ``T`` positions: one small program per ``T``, while the forward
    pass and the encoders compile once per length bucket."""
    f32 = jnp.float32
    recon = recon_sparse + b_dec.astype(f32)[:, None, :]
    if W_skip is not None:
        recon = recon + _skip_all(W_skip, x_in)
    emb = embed(params, cfg, tokens[None], f32)[0]

    def trim(a, axes):
        return jax.lax.slice(a, [0] * a.ndim, [T if i in axes else n for i, n in enumerate(a.shape)])

    def trim_inter(name, a):
        if a is None:
            return None
        if name == "attn_pattern":  # [L, B, H, T, T]
            return trim(a, (3, 4))
        if name == "final_scale" or name == "final_normed":  # [B, T, ...]
            return trim(a, (1,))
        return trim(a, (2,))  # [L(+1), B, T, ...]

    inter_T = type(inter)(**{f.name: trim_inter(f.name, getattr(inter, f.name)) for f in dataclasses.fields(inter)})
    true_T, recon_T = trim(true_out, (1,)), trim(recon, (1,))
    return dict(
        logits=trim(logits, (0,)), inter=inter_T, reconstruction=recon_T, errors=true_T - recon_T, mlp_out=true_T,
        feature_inputs=trim(x_in, (1,)), embeddings=trim(emb, (0,)),
    )


def decode_sparse(
    tcfg: TranscoderConfig, decoders: DecoderStore, feats: np.ndarray, values: np.ndarray, n_pos: int
) -> np.ndarray:
    """Σ a·W_dec over the given active features → ``[L, T, D]`` (biases and skip excluded), on host.

    ``feats`` must be sorted by (layer, position), as ``replace`` produces them: each (layer, position) group is
    then contiguous and summed with one ``np.add.reduceat``."""
    out = np.zeros((tcfg.n_layers, n_pos, tcfg.d_model), np.float32)
    if not len(feats):
        return out
    key = feats[:, 0].astype(np.int64) * n_pos + feats[:, 1]
    if np.any(np.diff(key) < 0):
        raise ValueError("decode_sparse needs features sorted by (layer, position)")
    for l in np.unique(feats[:, 0]):
        sel = np.flatnonzero(feats[:, 0] == l)
        rows = decoders.rows(int(l), feats[sel, 2]) * values[sel].reshape(
            -1, *([1] * (2 if tcfg.kind == "clt" else 1))
        )
        pos, starts = np.unique(feats[sel, 1], return_index=True)
        summed = np.add.reduceat(rows, starts, axis=0)  # [n_pos_active, D] or [n_pos_active, L - l, D]
        if tcfg.kind == "plt":
            out[l, pos] = summed
        else:
            out[l:, pos] += np.moveaxis(summed, 1, 0)
    return out


def _node_set(tcfg, tc, x_in: jax.Array, zero_positions: int, T: int, margin: float, given: np.ndarray | None):
    """``(active features [n, 3], values [n], RoundOff)`` from the feature inputs ``x_in [L, Tb, D]``: the
    features the activation function keeps (or the ``given`` ones, valued at their pre-activations).

    The ``[L, positions, F]`` activations are made ``buckets.encode_chunk`` positions at a time (all of them on
    short prompts; the last chunk zero-padded, its extra positions never active), each chunk's non-zeros kept on
    the host, so a long prompt never holds ``[L, T, F]``."""
    L, Tb, _ = x_in.shape
    C = encode_chunk(L, Tb, tcfg.n_features)
    parts = []
    for c0 in range(0, Tb, C):
        x = x_in[:, c0 : c0 + C]
        if x.shape[1] < C:
            x = jnp.pad(x, ((0, 0), (0, C - x.shape[1]), (0, 0)))
        acts_dev, pre = _encode_all(tcfg, tc, x, zero_positions - c0, T - c0)
        ro = _round_off(tcfg, tc, pre, acts_dev, zero_positions - c0, T - c0, margin)
        if given is None:
            acts = np.asarray(acts_dev)
            idx = np.argwhere(acts != 0).astype(np.int32)  # C order: sorted by (layer, pos, feat)
            values = acts[idx[:, 0], idx[:, 1], idx[:, 2]].astype(np.float32)
            del acts
        else:
            idx = given[(given[:, 1] >= c0) & (given[:, 1] < c0 + C)].copy()
            idx[:, 1] -= c0
            values = np.asarray(pre[tuple(jnp.asarray(idx[:, i]) for i in range(3))], np.float32)
        del acts_dev, pre
        idx[:, 1] += c0
        ro.features[:, 1] += c0
        parts.append((idx, values, ro))
    if len(parts) == 1:
        return parts[0]
    idx = np.concatenate([p[0] for p in parts])
    by_layer = np.argsort(idx[:, 0], kind="stable")  # chunks are in position order: (layer, pos, feat) order
    cat = lambda name: np.concatenate([getattr(p[2], name) for p in parts])  # noqa: E731
    ro_feats = cat("features")
    ro_order = np.argsort(ro_feats[:, 0], kind="stable")
    round_off = RoundOff(
        features=ro_feats[ro_order],
        pre=cat("pre")[ro_order],
        threshold=cat("threshold")[ro_order],
        active=cat("active")[ro_order],
        margin=float(margin),
    )
    return idx[by_layer], np.concatenate([p[1] for p in parts])[by_layer], round_off


def replace(
    model: Model,
    transcoders: TranscoderSet,
    tokens,
    *,
    zero_positions: int = 1,
    active_features=None,
    round_off_margin: float = ROUND_OFF_MARGIN,
    capture_patterns: bool = True,
) -> Replacement:
    """Run the replacement step on one prompt (``tokens [T]`` int, BOS already prepended), in float32 whatever the
    weights' storage dtype (bfloat16-stored weights are upcast layer by layer, exactly): what decides the node
    set never sees bfloat16 arithmetic.

    ``active_features`` (int ``[n, 3]`` (layer, pos, feature), sorted as this function sorts them): use exactly
    that node set. Each given feature's value is its pre-activation (what the activation function passes when the
    feature is active, for ReLU, JumpReLU and TopK alike), every other feature is 0, and reconstruction and errors
    follow from those values. Triples out of range or at zeroed positions raise ``ValueError``.
    ``round_off_margin``: the relative margin of ``Replacement.round_off`` (see ``RoundOff``).
    ``capture_patterns=False``: ``inter.attn_pattern`` is ``None`` (a long prompt's ``[L, 1, H, T, T]`` is never
    stored; the frozen model recomputes patterns from ``inter.resid``), and the forward pass attends
    ``buckets.attention_block`` query rows at a time."""
    cfg, tcfg = model.cfg, transcoders.cfg
    check_compatible(cfg, tcfg)
    tokens = np.asarray(tokens)
    if tokens.ndim != 1:
        raise ValueError(f"tokens must be one prompt [T], got shape {tokens.shape}")
    # The forward pass and the encoders run on the prompt padded to its length bucket (repeating its last token),
    # so that prompts of nearby lengths share their compiled code; attention is causal, so the padding changes
    # nothing at the prompt's own positions, and features past them are never active.
    T = tokens.shape[0]
    padded = np.concatenate([tokens, np.full(length_bucket(T) - T, tokens[-1], tokens.dtype)])
    block = None if capture_patterns else attention_block(padded.shape[0])  # no [H, T, T] held either
    logits, inter = forward(
        model.params, cfg, padded[None], capture=True, dtype=jnp.float32, capture_patterns=capture_patterns,
        attention_block=block,
    )
    check_finite_logits(np.asarray(logits[0])[:T], inter, "the model's forward pass on this prompt")
    x_in = inter.hook(tcfg.input_hook)[:, 0]  # [L, Tb, D]
    true_out = inter.hook(tcfg.output_hook)[:, 0].astype(jnp.float32)
    given = None
    if active_features is not None:
        L, F = tcfg.n_layers, tcfg.n_features
        given = check_active_features(active_features, L, T, F, zero_positions)
    idx, values, round_off = _node_set(tcfg, transcoders.params, x_in, zero_positions, T, round_off_margin, given)
    recon = decode_sparse(tcfg, transcoders.decoders, idx, values, padded.shape[0])
    p = transcoders.params
    out = _complete_and_trim(
        cfg, T, model.params, p.b_dec, p.W_skip, jnp.asarray(padded), logits[0], inter, x_in, true_out, recon
    )
    return Replacement(
        tokens=tokens,
        active_features=idx,
        activation_values=values,
        zero_positions=zero_positions,
        round_off=round_off,
        given_features=active_features is not None,
        **out,
    )


def replacement_forward(
    model: Model,
    transcoders: TranscoderSet,
    tokens,
    *,
    errors: jax.Array | None = None,
    frozen: Intermediates | None = None,
    zero_positions: int = 1,
) -> jax.Array:
    """Forward pass with every MLP replaced by its transcoder, features re-encoded live at each layer.

    Each slot writes ``decode(active features) + b_dec + skip + errors[l]``; with the errors of ``replace`` on the
    same prompt this reproduces the base model's logits. Needs dense decoders (``DenseDecoders``). Returns
    ``logits [T, V]``.
    """
    if not isinstance(transcoders.decoders, DenseDecoders):
        raise TypeError(
            "replacement_forward needs DenseDecoders (load the transcoders with lazy_decoder=False)"
        )
    cfg, tcfg = model.cfg, transcoders.cfg
    check_compatible(cfg, tcfg)
    tokens = np.asarray(tokens)
    dec = jnp.asarray(transcoders.decoders.padded())  # [L_src, F, L_out or 1, D]
    err = jnp.zeros((cfg.n_layers, tokens.shape[0], cfg.d_model)) if errors is None else jnp.asarray(errors)
    return _replacement_forward(
        model.params, cfg, tcfg, transcoders.params, dec, err, jnp.asarray(tokens), frozen, zero_positions
    )


@partial(jax.jit, static_argnums=(1, 2))
def _replacement_forward(params, cfg, tcfg, tc, dec, err, tokens, frozen, zero_positions):
    read = input_field(tcfg.input_hook)
    zero = jnp.zeros((1, tokens.shape[0], cfg.d_model), jnp.float32)
    pending0 = jnp.zeros((cfg.n_layers,) + zero.shape, jnp.float32)  # CLT writes waiting for later slots

    def mlp_fn(layer, points, pending):
        x = getattr(points, read)
        acts = encode_layer(tcfg, tc, layer, x)  # [1, T, F]
        acts = acts * (jnp.arange(tokens.shape[0]) >= zero_positions)[None, :, None]
        if tcfg.kind == "plt":
            write = jnp.einsum("btf,fd->btd", acts, dec[layer, :, 0])
        else:
            pending = pending + jnp.einsum("btf,fld->lbtd", acts, dec[layer])
            write, pending = pending[layer], pending.at[layer].set(0.0)
        write = write + tc.b_dec[layer] + err[layer][None]
        if tc.W_skip is not None:
            write = write + x.astype(jnp.float32) @ tc.W_skip[layer]
        return write, pending

    mlp_at = output_field(tcfg.output_hook)
    logits, _, _ = forward_fn(
        params, cfg, tokens[None], frozen=frozen, mlp_fn=mlp_fn, mlp_state=pending0, mlp_at=mlp_at
    )
    return logits[0]
