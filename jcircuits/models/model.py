"""``Model``: what a traced model is (params, static config, tokenizer, name), and how a prompt becomes token ids.

A prompt given as text is tokenized with the BOS rule of ``Tokenizer.encode`` (a special start token is prepended
when the text does not begin with one); a prompt given as ids is used as given.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jcircuits.models.config import ModelConfig
from jcircuits.models.tokenizer import Tokenizer
from jcircuits.models.transformer import Params

__all__ = ["Model", "encode_prompt", "single_token_id"]


@dataclasses.dataclass
class Model:
    """A model ready to trace: params, static config and (optionally) its tokenizer and a name."""

    params: Params
    cfg: ModelConfig
    tokenizer: Tokenizer | None = None
    name: str = "model"


def encode_prompt(model: Model, prompt) -> np.ndarray:
    """Token ids ``[T]`` for a prompt given as text (tokenized with the BOS rule) or as ids (used as given)."""
    if isinstance(prompt, str):
        if model.tokenizer is None:
            raise ValueError(
                "a text prompt needs a tokenizer: load the model with its tokenizer or pass token ids"
            )
        if not prompt.strip():
            raise ValueError("empty prompt")
        return np.asarray(model.tokenizer.encode(prompt), dtype=np.int32)
    tokens = np.asarray(prompt)
    if tokens.ndim != 1 or tokens.size == 0:
        raise ValueError(f"token ids must be a non-empty 1-D sequence, got shape {tokens.shape}")
    if not np.issubdtype(tokens.dtype, np.integer):
        raise TypeError(f"token ids must be integers, got {tokens.dtype}")
    return tokens.astype(np.int32)


def single_token_id(tok: Tokenizer, s: str) -> int:
    """The id of ``s`` when it is exactly one token of ``tok``; a ``ValueError`` naming it otherwise."""
    try:
        return int(tok.token_to_id(s))
    except KeyError:
        raise ValueError(f"target {s!r} is not a single token of this tokenizer") from None
