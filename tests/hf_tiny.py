"""Seeded tiny random Hugging Face models (Gemma-2, Gemma-3, Llama-3, Qwen3) for parity and converter tests.

The configs are chosen to exercise the code paths that are easy to get wrong: Gemma-2 sliding windows shorter
than the test prompts, both soft-caps biting, ``query_pre_attn_scalar`` != ``head_dim``; Llama-3
``rope_scaling`` with ``original_max_position_embeddings`` below the prompt length and factors that put RoPE
frequencies in all three bands (kept, interpolated, scaled); Qwen3 and Gemma-3 with ``head_dim`` != d_model /
n_heads, GQA, sliding windows shorter than the prompt, QK-norm gains far from 1, and (Gemma-3) local and global
layers with different RoPE bases, the global one linearly scaled. Weights are redrawn with a large std and norm
gains far from identity so that a wrong transpose, head order or norm placement shows up in the logits.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3Config,
    Gemma3ForCausalLM,
    Gemma3ForConditionalGeneration,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

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


def _base(n_kv_heads: int, hidden: int = 64, inter: int = 96, n_layers: int = 3, head_dim: int = 16, bos: int = 1,
          eos: int = 2, **kw) -> dict:
    """What every tiny config shares: the vocabulary, the sizes, the special ids and eager attention."""
    return dict(
        vocab_size=VOCAB, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=n_layers,
        num_attention_heads=4, num_key_value_heads=n_kv_heads, head_dim=head_dim, max_position_embeddings=64,
        bos_token_id=bos, eos_token_id=eos, attn_implementation="eager", **kw,
    )


def gemma2_config(n_kv_heads: int = 2, **overrides) -> Gemma2Config:
    kw = _base(
        n_kv_heads, bos=2, eos=1, pad_token_id=0, sliding_window=5, query_pre_attn_scalar=24,
        attn_logit_softcapping=4.0, final_logit_softcapping=8.0,
    )
    kw.update(overrides)
    return Gemma2Config(**kw)


def llama_config(n_kv_heads: int = 2, tied: bool = False, **overrides) -> LlamaConfig:
    kw = _base(n_kv_heads, rope_theta=10000.0, rope_scaling=dict(LLAMA3_ROPE), tie_word_embeddings=tied)
    kw.update(overrides)
    return LlamaConfig(**kw)


def qwen3_config(n_kv_heads: int = 2, tied: bool = False, sliding: bool = True, **overrides) -> Qwen3Config:
    """head_dim 16 != 48 / 4; with ``sliding`` the even layers see only the last 6 keys (prompts are 40 long)."""
    kw = _base(
        n_kv_heads, hidden=48, inter=80, rope_theta=10000.0, tie_word_embeddings=tied, use_sliding_window=sliding,
        sliding_window=6 if sliding else None,
    )
    kw.update(overrides)
    if sliding and "layer_types" not in overrides:  # even layers slide
        kw["layer_types"] = [("sliding_attention", "full_attention")[i % 2] for i in range(kw["num_hidden_layers"])]
    return Qwen3Config(**kw)


# Gemma-3: local layers RoPE base 1e3, global ones 1e5 with linear scaling by 4; every third layer global.
GEMMA3_ROPE = dict(rope_theta=1e5, rope_local_base_freq=1e3, rope_scaling={"rope_type": "linear", "factor": 4.0})


def gemma3_config(n_kv_heads: int = 2, **overrides) -> Gemma3TextConfig:
    """head_dim 24 != 64 / 4, query_pre_attn_scalar 20, window 5, layers local, local, global, local."""
    kw = _base(
        n_kv_heads, n_layers=4, head_dim=24, bos=2, eos=1, pad_token_id=0, sliding_window=5,
        sliding_window_pattern=3, query_pre_attn_scalar=20, **GEMMA3_ROPE,
    )
    kw.update(overrides)
    return Gemma3TextConfig(**kw)


def gemma3_multimodal_config(**text_overrides) -> Gemma3Config:
    """A ``Gemma3ForConditionalGeneration`` config: the tiny Gemma-3 text tower plus a tiny SigLIP tower."""
    text = gemma3_config(**text_overrides).to_dict()
    vision = dict(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=14
    )
    return Gemma3Config(
        text_config=text,
        vision_config=vision,
        mm_tokens_per_image=4,
        boi_token_index=VOCAB - 3,
        eoi_token_index=VOCAB - 2,
        image_token_index=VOCAB - 1,
        attn_implementation="eager",
    )


def randomize_(model: torch.nn.Module, seed: int, std: float = 0.2) -> torch.nn.Module:
    """Redraw every weight: matrices N(0, std²), norm weights around the identity gain (Gemma stores ``w``
    with gain ``1 + w``; Llama stores the gain), embeddings N(0, 1) for Gemma (which scales them by √d) and
    N(0, 0.5²)
    for Llama (with std 1 a tied Llama puts nearly all probability on the last input token)."""
    g = torch.Generator().manual_seed(seed)
    gemma = model.config.model_type in ("gemma2", "gemma3", "gemma3_text")
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if "q_norm" in name or "k_norm" in name:  # QK-norm gains spread over about [0.3, 3]
                gain = torch.exp(0.6 * noise)
                value = gain - 1.0 if gemma else gain
            elif "norm" in name:
                value = 0.3 * noise if gemma else 1.0 + 0.3 * noise
            elif "embed_tokens" in name:
                value = noise if gemma else 0.5 * noise
            else:
                value = std * noise
            p.copy_(value.to(p.dtype))
    return model


_CLASSES = {
    "gemma2": Gemma2ForCausalLM,
    "gemma3_text": Gemma3ForCausalLM,
    "gemma3": Gemma3ForConditionalGeneration,
    "llama": LlamaForCausalLM,
    "qwen3": Qwen3ForCausalLM,
}


def build(config, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return randomize_(_CLASSES[config.model_type](config).eval(), seed)


def text_layers(model: torch.nn.Module):
    """The decoder layers of a causal LM or of a multimodal model's language model."""
    inner = model.model
    return getattr(inner, "language_model", inner).layers


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


# ------------------------------------------------------------------ chat tokenizers (Gemma-3- and Qwen3-shaped)
CHAT_WORDS = ["[UNK]", "the", "capital", "of", "texas", "is", "user", "model", "assistant", "system", "be", "brief"]
CHAT_SPECIALS = ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>", "<|im_start|>", "<|im_end|>"]

GEMMA_LIKE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first = messages[0]['content'] + ' ' -%}{%- set turns = messages[1:] -%}"
    "{%- else -%}{%- set first = '' -%}{%- set turns = messages -%}{%- endif -%}"
    "{%- for m in turns -%}"
    "{%- if (m['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('turns must alternate user / assistant') }}{%- endif -%}"
    "<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
    "{{ (first if loop.first else '') + m['content'] | trim }}<end_of_turn>\n"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<start_of_turn>model\n{%- endif -%}"
)
QWEN_LIKE = """{%- for m in messages %}
{%- if loop.index0 > 6 %}{% break %}{% endif %}
{{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}
{%- endfor %}
{%- if add_generation_prompt %}
{{- '<|im_start|>assistant\\n' }}
{%- endif %}"""


def chat_tokenizer_folder(tmp_path, *, template=None, jinja=None, bos: str | None = "<bos>"):
    """A WordLevel ``tokenizer.json`` (ids below ``VOCAB``) with Gemma-3's and Qwen3's turn tokens, and its
    ``tokenizer_config.json`` carrying ``template`` (and ``chat_template.jinja`` holding ``jinja``)."""
    import json

    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

    vocab = {w: i for i, w in enumerate(CHAT_WORDS)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.add_special_tokens([AddedToken(s, special=True) for s in CHAT_SPECIALS])
    tk.save(str(tmp_path / "tokenizer.json"))
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<eos>", "pad_token": "<pad>",
           "unk_token": "[UNK]"}
    if bos is not None:
        cfg["bos_token"] = bos
    if template is not None:
        cfg["chat_template"] = template
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    if jinja is not None:
        (tmp_path / "chat_template.jinja").write_text(jinja)
    return tmp_path
