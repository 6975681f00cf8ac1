"""Pure-function decoder models (Gemma-2, Llama-3) over plain pytrees."""

from jcircuits.models.config import ConfigError, ModelConfig, RopeScaling, config_from_hf, load_hf_config
from jcircuits.models.transformer import (
    Intermediates,
    LayerParams,
    MLPPoints,
    Params,
    forward,
    forward_fn,
    init_params,
    param_axes,
    param_shapes,
)

__all__ = [
    "ConfigError",
    "ModelConfig",
    "RopeScaling",
    "config_from_hf",
    "load_hf_config",
    "Intermediates",
    "LayerParams",
    "MLPPoints",
    "Params",
    "forward",
    "forward_fn",
    "init_params",
    "param_axes",
    "param_shapes",
]
