"""Pure-function decoder models (Gemma-2, Gemma-3 text, Llama-3, Qwen3) over plain pytrees: the strict HF config
reader, the layers, the decoder, KV-cache decoding, the tokenizer with its BOS rule, checkpoint loading and the
``Model`` type."""

from jcircuits.models.config import ConfigError, ModelConfig, RopeScaling, config_from_hf, load_hf_config
from jcircuits.models.loading import load_model, load_params
from jcircuits.models.model import Model, encode_prompt, single_token_id
from jcircuits.models.tokenizer import Tokenizer
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
    param_specs,
)

__all__ = [
    "Model",
    "Tokenizer",
    "encode_prompt",
    "single_token_id",
    "load_model",
    "load_params",
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
    "param_specs",
    "param_shapes",
]
