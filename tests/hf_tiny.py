"""Seeded tiny random Hugging Face models (Gemma-2, Llama-3) for parity and converter tests.

The configs are chosen to exercise the code paths that are easy to get wrong: Gemma-2 sliding windows shorter
than the test prompts, both soft-caps biting, ``query_pre_attn_scalar`` != ``head_dim``; Llama-3
``rope_scaling`` with ``original_max_position_embeddings`` below the prompt length and factors that put RoPE
frequencies in all three bands (kept, interpolated, scaled). Weights are redrawn with a large std and norm
gains far from identity so that a wrong transpose, head order or norm placement shows up in the logits.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from transformers import Gemma2Config, Gemma2ForCausalLM, LlamaConfig, LlamaForCausalLM

VOCAB = 96
LONG_PROMPT = 40  # > sliding_window (5) and > original_max_position_embeddings (32)

# head_dim 16, rope_theta 1e4: wavelengths 2π·1e4^(i/8) = 6.3, 20, 63, … With original_max_position_embeddings
# 32, low_freq_factor 1, high_freq_factor 4 the bands are: < 8 kept (i=0), 8..32 interpolated (i=1), > 32
# scaled.
LLAMA3_ROPE = dict(
    rope_type="llama3",
    factor=8.0,
    low_freq_factor=1.0,
    high_freq_factor=4.0,
    original_max_position_embeddings=32,
)


def gemma2_config(n_kv_heads: int = 2, **overrides) -> Gemma2Config:
    kw = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=n_kv_heads,
        head_dim=16,
        sliding_window=5,
        query_pre_attn_scalar=24,
        attn_logit_softcapping=4.0,
        final_logit_softcapping=8.0,
        max_position_embeddings=64,
        bos_token_id=2,
        eos_token_id=1,
        pad_token_id=0,
        attn_implementation="eager",
    )
    kw.update(overrides)
    return Gemma2Config(**kw)


def llama_config(n_kv_heads: int = 2, tied: bool = False, **overrides) -> LlamaConfig:
    kw = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=n_kv_heads,
        head_dim=16,
        rope_theta=10000.0,
        rope_scaling=dict(LLAMA3_ROPE),
        max_position_embeddings=64,
        tie_word_embeddings=tied,
        bos_token_id=1,
        eos_token_id=2,
        attn_implementation="eager",
    )
    kw.update(overrides)
    return LlamaConfig(**kw)


def randomize_(model: torch.nn.Module, seed: int, std: float = 0.2) -> torch.nn.Module:
    """Redraw every weight: matrices N(0, std²), norm weights around the identity gain (Gemma stores ``w``
    with gain ``1 + w``; Llama stores the gain), embeddings N(0, 1) for Gemma (which scales them by √d) and
    N(0, 0.5²)
    for Llama (with std 1 a tied Llama puts nearly all probability on the last input token)."""
    g = torch.Generator().manual_seed(seed)
    gemma = model.config.model_type == "gemma2"
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if "norm" in name:
                value = 0.3 * noise if gemma else 1.0 + 0.3 * noise
            elif "embed_tokens" in name:
                value = noise if gemma else 0.5 * noise
            else:
                value = std * noise
            p.copy_(value.to(p.dtype))
    return model


def build(config, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    cls = Gemma2ForCausalLM if config.model_type == "gemma2" else LlamaForCausalLM
    return randomize_(cls(config).eval(), seed)


def save(model: torch.nn.Module, directory: Path, **kwargs) -> Path:
    """``save_pretrained`` with safetensors (kwargs e.g. ``max_shard_size``)."""
    model.save_pretrained(directory, safe_serialization=True, **kwargs)
    return Path(directory)


def prompts(seed: int, batch: int, length: int, bos: int) -> np.ndarray:
    """Random token ids ``[batch, length]`` starting with ``bos``."""
    rng = np.random.default_rng(seed)
    toks = rng.integers(3, VOCAB, size=(batch, length), dtype=np.int32)
    toks[:, 0] = bos
    return toks
