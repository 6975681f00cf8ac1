"""Transcoders: per-layer (PLT) and cross-layer (CLT), as pure functions over a params pytree.

One ``Transcoders`` value holds a whole set (every layer). The encoder side lives on device and is used under jit;
the decoder side is a host-side ``DecoderStore`` so that tracing a prompt reads decoder rows only for active
features (a 400k-feature CLT never needs its decoder in RAM). Letters: L layers, T positions, D model, F features.

Conventions (one per quantity, whatever the file format):
* encode: ``pre = x @ W_enc[l] + b_enc[l]`` with ``W_enc [L, D, F]``; activation ReLU, JumpReLU
  ``pre · (pre > θ)`` or TopK (the k largest pre-activations per position, others zero).
* decode, PLT: feature ``f`` read at layer ``l`` writes ``a · W_dec[l][f]`` (``[D]``) into MLP slot ``l``.
  CLT: it writes ``a · W_dec[l][f, j]`` into slot ``l + j`` for ``j = 0 … L-1-l`` (``W_dec[l]: [F, L-l, D]``).
* every slot adds ``b_dec[l]`` and, with a skip connection, ``x_l @ W_skip[l]`` (``W_skip [L, D_in, D_out]``;
  loaders transpose circuit-tracer's PLT ``W_skip`` which it applies as ``x @ W_skip.T``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol

import jax
import jax.numpy as jnp
import numpy as np

from jcircuits.common.arrays import ArrayInfo
from jcircuits.common.pytree import pytree_dataclass
from jcircuits.models.hooks import INPUT_HOOKS, OUTPUT_HOOKS

__all__ = [
    "TranscoderConfig",
    "Transcoders",
    "transcoder_specs",
    "DecoderStore",
    "DenseDecoders",
    "HOOKS_IN",
    "HOOKS_OUT",
    "DEFAULT_HOOKS",
    "encode_layer",
    "activate",
    "TranscoderError",
]

HOOKS_IN = tuple(INPUT_HOOKS)  # the names of the one hook table, ``models.hooks``
HOOKS_OUT = tuple(OUTPUT_HOOKS)
DEFAULT_HOOKS = {"plt": ("mlp.hook_in", "mlp.hook_out"), "clt": ("hook_resid_mid", "hook_mlp_out")}
ACTIVATIONS = ("relu", "jumprelu", "topk")


class TranscoderError(ValueError):
    """A transcoder set that is inconsistent, malformed or does not fit the model."""


@dataclasses.dataclass(frozen=True)
class TranscoderConfig:
    """Static description of a transcoder set (hashable; a jit static argument)."""

    kind: str  # "plt" | "clt"
    n_layers: int
    d_model: int
    n_features: int
    activation: str = "relu"  # "relu" | "jumprelu" | "topk"
    top_k: int | None = None
    input_hook: str = "mlp.hook_in"
    output_hook: str = "mlp.hook_out"
    skip: bool = False
    scan: str | None = None

    def __post_init__(self):
        if self.kind not in ("plt", "clt"):
            raise TranscoderError(f"kind must be 'plt' or 'clt', got {self.kind!r}")
        if self.activation not in ACTIVATIONS:
            raise TranscoderError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if self.activation == "topk" and not (self.top_k and self.top_k > 0):
            raise TranscoderError("a TopK transcoder needs top_k >= 1")
        if self.input_hook not in HOOKS_IN:
            raise TranscoderError(f"unknown feature_input_hook {self.input_hook!r}; known: {list(HOOKS_IN)}")
        if self.output_hook not in HOOKS_OUT:
            raise TranscoderError(
                f"unknown feature_output_hook {self.output_hook!r}; known: {list(HOOKS_OUT)}"
            )


@pytree_dataclass
class Transcoders:
    """Device-side arrays of a transcoder set (encoders, biases, thresholds, skips)."""

    W_enc: jax.Array  # [L, D, F]
    b_enc: jax.Array  # [L, F]
    b_dec: jax.Array  # [L, D]
    threshold: jax.Array | None = None  # [L, F] (JumpReLU)
    W_skip: jax.Array | None = None  # [L, D, D], applied as x @ W_skip[l]


def transcoder_specs(cfg: TranscoderConfig) -> Transcoders:
    """Every device array of a set once (``ArrayInfo`` leaves, same tree as ``Transcoders``): shape and logical
    axes. Thresholds only for JumpReLU, skips only with a skip connection."""
    L, D, F = cfg.n_layers, cfg.d_model, cfg.n_features
    return Transcoders(
        W_enc=ArrayInfo((L, D, F), ("layers", "embed", "features")),
        b_enc=ArrayInfo((L, F), ("layers", "features")),
        b_dec=ArrayInfo((L, D), ("layers", "embed")),
        threshold=ArrayInfo((L, F), ("layers", "features")) if cfg.activation == "jumprelu" else None,
        W_skip=ArrayInfo((L, D, D), ("layers", "embed", "embed_out")) if cfg.skip else None,
    )


class DecoderStore(Protocol):
    """Host-side decoder rows. ``rows(l, feats)`` → PLT ``[n, D]``; CLT ``[n, L-l, D]`` (float32 numpy)."""

    kind: str
    n_layers: int

    def rows(self, layer: int, feats: np.ndarray) -> np.ndarray: ...


@dataclasses.dataclass
class DenseDecoders:
    """Decoders held in memory: PLT ``[L, F, D]`` array, or CLT list of ``[F, L-l, D]`` arrays."""

    kind: str
    W_dec: np.ndarray | Sequence[np.ndarray]

    @property
    def n_layers(self) -> int:
        return len(self.W_dec)

    def rows(self, layer: int, feats: np.ndarray) -> np.ndarray:
        return np.asarray(self.W_dec[layer][np.asarray(feats)], dtype=np.float32)

    def padded(self) -> np.ndarray:
        """Dense ``[L_src, F, L_out, D]`` (CLT; zeros where ``l_out < l_src``) or ``[L, F, 1, D]`` (PLT)."""
        if self.kind == "plt":
            return np.asarray(self.W_dec, np.float32)[:, :, None, :]
        L = self.n_layers
        F, _, D = self.W_dec[0].shape
        out = np.zeros((L, F, L, D), np.float32)
        for l, w in enumerate(self.W_dec):
            out[l, :, l:] = w
        return out


def activate(cfg: TranscoderConfig, pre_TF: jax.Array, threshold_F: jax.Array | None) -> jax.Array:
    """Apply the set's activation function to pre-activations ``[..., F]``."""
    if cfg.activation == "relu":
        return jax.nn.relu(pre_TF)
    if cfg.activation == "jumprelu":
        return pre_TF * (pre_TF > threshold_F)
    _, idx = jax.lax.top_k(pre_TF, cfg.top_k)
    flat, fidx = pre_TF.reshape(-1, pre_TF.shape[-1]), idx.reshape(-1, cfg.top_k)
    gate = jax.vmap(lambda row, i: jnp.zeros_like(row).at[i].set(1.0))(flat, fidx)
    return pre_TF * gate.reshape(pre_TF.shape)


def encode_layer(
    cfg: TranscoderConfig, tc: Transcoders, layer, x_TD: jax.Array, *, pre: bool = False, dtype=None
):
    """Pre-activations (``pre=True``) or activations ``[..., F]`` of layer ``layer`` (may be traced), computed in
    ``dtype`` (default: the encoder's storage dtype; this layer's encoder is cast to it)."""
    W, b = tc.W_enc[layer], tc.b_enc[layer]
    if dtype is not None:
        W, b = W.astype(dtype), b.astype(dtype)
    h = (x_TD.astype(W.dtype) @ W + b).astype(jnp.float32)
    if pre:
        return h
    return activate(cfg, h, None if tc.threshold is None else tc.threshold[layer])
