"""Transcoders (per-layer and cross-layer): their arrays and activation functions (``core``), the
``TranscoderSet`` a model is traced with, and circuit-tracer's file formats, local or on the hub (``io``)."""

from jcircuits.transcoders.core import (
    DecoderStore,
    DenseDecoders,
    TranscoderConfig,
    TranscoderError,
    Transcoders,
    activate,
    encode_layer,
)
from jcircuits.transcoders.io import load_transcoders, save_transcoders
from jcircuits.transcoders.transcoder_set import TranscoderSet, check_compatible

__all__ = [
    "TranscoderSet",
    "check_compatible",
    "load_transcoders",
    "save_transcoders",
    "DecoderStore",
    "DenseDecoders",
    "TranscoderConfig",
    "TranscoderError",
    "Transcoders",
    "activate",
    "encode_layer",
]
