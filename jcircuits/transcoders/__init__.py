"""Transcoders (per-layer and cross-layer) and their activation functions."""

from jcircuits.transcoders.core import (
    DecoderStore,
    DenseDecoders,
    TranscoderConfig,
    TranscoderError,
    Transcoders,
    activate,
    encode_layer,
)

__all__ = [
    "DecoderStore",
    "DenseDecoders",
    "TranscoderConfig",
    "TranscoderError",
    "Transcoders",
    "activate",
    "encode_layer",
]
