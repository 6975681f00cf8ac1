"""``TranscoderSet``: one model's transcoders as the rest of the package uses them, and the check that a set fits
a model (same width, one transcoder per layer)."""

from __future__ import annotations

import dataclasses

from jcircuits.models.config import ModelConfig
from jcircuits.transcoders.core import DecoderStore, TranscoderConfig, TranscoderError, Transcoders

__all__ = ["TranscoderSet", "check_compatible"]


@dataclasses.dataclass
class TranscoderSet:
    """A transcoder set: static config, device-side encoder arrays and host-side decoder rows."""

    cfg: TranscoderConfig
    params: Transcoders
    decoders: DecoderStore


def check_compatible(cfg: ModelConfig, tcfg: TranscoderConfig) -> None:
    """Raise ``TranscoderError`` unless ``tcfg`` covers every layer of ``cfg`` at its width."""
    if tcfg.d_model != cfg.d_model:
        raise TranscoderError(f"transcoder d_model {tcfg.d_model} != model d_model {cfg.d_model}")
    if tcfg.n_layers != cfg.n_layers:
        raise TranscoderError(
            f"transcoder set covers {tcfg.n_layers} layers but the model has {cfg.n_layers}: every layer needs one"
        )
