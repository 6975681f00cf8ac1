"""The replacement model for one prompt: active transcoder features, reconstruction and error vectors.

``replace(model, transcoders, tokens)`` runs the base model once (capturing every intermediate), encodes each
layer's feature input, keeps the active features (position-sorted sparse triples), reads decoder rows for those
features only, and returns the reconstruction and the exact error ``true MLP output − reconstruction`` at the
transcoders' output hook. By construction ``reconstruction + error == base MLP output`` everywhere; the
``replacement_forward`` below re-encodes live and is the real test that features + errors reproduce the model.

Letters: L layers, T positions, D model, F features, n active features.
"""

from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from jcircuits.models import Intermediates, forward, forward_fn
from jcircuits.models.hooks import input_field, output_field
from jcircuits.models.model import Model
from jcircuits.models.transformer import check_finite_logits, embed
from jcircuits.transcoders.core import (
    DecoderStore,
    DenseDecoders,
    TranscoderConfig,
    Transcoders,
    encode_layer,
)
from jcircuits.transcoders.transcoder_set import TranscoderSet, check_compatible

__all__ = ["Replacement", "replace", "replacement_forward", "decode_sparse"]


@dataclasses.dataclass
class Replacement:
    """Everything one prompt's replacement model needs downstream (attribution, interventions).

    ``active_features [n, 3]`` (layer, pos, feat) int32, sorted; ``activation_values [n]`` float32;
    ``reconstruction``/``errors``/``mlp_out`` ``[L, T, D]`` at the output hook; ``feature_inputs [L, T, D]`` at the
    input hook; ``embeddings [T, D]`` the token vectors written into the residual stream; ``inter`` the base
    model's intermediates (batch of one); ``logits [T, V]``.
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

    @property
    def n_active(self) -> int:
        return int(self.active_features.shape[0])


@partial(jax.jit, static_argnums=(0,))
def _encode_all(tcfg: TranscoderConfig, tc: Transcoders, x_LTD: jax.Array, zero_positions: int):
    """Activations ``[L, T, F]`` with the first ``zero_positions`` positions zeroed."""
    acts = jax.vmap(lambda l, x: encode_layer(tcfg, tc, l, x))(jnp.arange(x_LTD.shape[0]), x_LTD)
    keep = jnp.arange(x_LTD.shape[1]) >= zero_positions
    return acts * keep[None, :, None]


@jax.jit
def _skip_all(W_skip: jax.Array, x_LTD: jax.Array) -> jax.Array:
    return jnp.einsum("ltd,lde->lte", x_LTD.astype(W_skip.dtype), W_skip).astype(jnp.float32)


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


def replace(model: Model, transcoders: TranscoderSet, tokens, *, zero_positions: int = 1) -> Replacement:
    """Run the replacement step on one prompt (``tokens [T]`` int, BOS already prepended)."""
    cfg, tcfg = model.cfg, transcoders.cfg
    check_compatible(cfg, tcfg)
    tokens = np.asarray(tokens)
    if tokens.ndim != 1:
        raise ValueError(f"tokens must be one prompt [T], got shape {tokens.shape}")
    logits, inter = forward(model.params, cfg, tokens[None], capture=True)
    check_finite_logits(logits[0], inter, "the model's forward pass on this prompt")
    x_in = inter.hook(tcfg.input_hook)[:, 0]  # [L, T, D]
    true_out = inter.hook(tcfg.output_hook)[:, 0].astype(jnp.float32)
    acts = np.asarray(_encode_all(tcfg, transcoders.params, x_in, zero_positions))
    idx = np.argwhere(acts != 0).astype(np.int32)  # C order: sorted by (layer, pos, feat)
    values = acts[idx[:, 0], idx[:, 1], idx[:, 2]].astype(np.float32)
    recon = decode_sparse(tcfg, transcoders.decoders, idx, values, tokens.shape[0])
    recon = jnp.asarray(recon) + transcoders.params.b_dec.astype(jnp.float32)[:, None, :]
    if transcoders.params.W_skip is not None:
        recon = recon + _skip_all(transcoders.params.W_skip, x_in)
    return Replacement(
        tokens=tokens,
        logits=logits[0],
        inter=inter,
        active_features=idx,
        activation_values=values,
        reconstruction=recon,
        errors=true_out - recon,
        mlp_out=true_out,
        feature_inputs=x_in,
        embeddings=embed(model.params, cfg, jnp.asarray(tokens)[None])[0],
        zero_positions=zero_positions,
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
