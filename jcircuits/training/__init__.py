"""Training in JAX: the synthetic corpus and tiny Llama LM of the embedded default model (``corpus``, ``lm``,
``default_model``), activation harvesting (``harvest``), and per-layer / cross-layer transcoder training with
optax and orbax checkpoints (``transcoder``, ``checkpoint``)."""

from jcircuits.training.default_model import DefaultSettings, train_default
from jcircuits.training.harvest import harvest, load_shards
from jcircuits.training.lm import train_lm
from jcircuits.training.transcoder import (
    TrainConfig,
    TrainResult,
    evaluate_transcoders,
    to_transcoder_set,
    train_transcoders,
)

__all__ = [
    "DefaultSettings",
    "train_default",
    "harvest",
    "load_shards",
    "train_lm",
    "TrainConfig",
    "TrainResult",
    "evaluate_transcoders",
    "to_transcoder_set",
    "train_transcoders",
]
