"""Train the tiny Llama-architecture language model of the embedded default, with optax.

The model is ``jcircuits.models.forward`` itself (the same pure function attribution traces), so what is trained
is exactly what is later loaded and traced. Training is next-token cross-entropy over the synthetic corpus
(``corpus.py``), AdamW with linear warm-up and cosine decay, batches drawn deterministically from
``(seed, step)``: the same seed gives the same model (on the same backend and XLA version).

Letters: B batch, T positions, V vocabulary.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jcircuits.models import ModelConfig, init_params
from jcircuits.models.config import llama_config
from jcircuits.models.transformer import Params, forward_fn

__all__ = [
    "tiny_llama_config",
    "hf_config_dict",
    "lm_loss",
    "train_lm",
    "predict_next",
    "accuracy",
    "save_lm",
]


def tiny_llama_config(
    vocab_size: int, *, d_model: int = 128, n_layers: int = 4, n_heads: int = 4, d_mlp: int = 512
) -> ModelConfig:
    """A small Llama-3-style config (GQA with 2 KV heads, SiLU MLP, untied embeddings, plain RoPE)."""
    return llama_config(
        vocab_size=vocab_size,
        d_model=d_model,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=max(1, n_heads // 2),
        head_dim=d_model // n_heads,
        d_mlp=d_mlp,
    )


def hf_config_dict(cfg: ModelConfig) -> dict[str, Any]:
    """The Hugging Face ``config.json`` (``LlamaForCausalLM``) that ``config_from_hf`` maps back to ``cfg``."""
    if cfg.arch != "llama" or cfg.rope_scaling is not None:
        raise ValueError("hf_config_dict writes plain-RoPE Llama configs only")
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.d_mlp,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_position_embeddings,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": cfg.tie_embeddings,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id,
        "pad_token_id": cfg.pad_token_id,
        "torch_dtype": "float32",
    }


def lm_loss(params: Params, cfg: ModelConfig, tokens_BT: jax.Array, pad_id: int) -> jax.Array:
    """Mean next-token cross-entropy over non-pad targets of ``tokens [B, T]``."""
    logits, _, _ = forward_fn(params, cfg, tokens_BT[:, :-1])
    targets = tokens_BT[:, 1:]
    mask = (targets != pad_id).astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
    return (ce * mask).sum() / jnp.maximum(mask.sum(), 1.0)


def train_lm(
    cfg: ModelConfig,
    data_NT: np.ndarray,
    *,
    steps: int = 3000,
    batch_size: int = 64,
    lr: float = 3e-3,
    warmup: int = 100,
    weight_decay: float = 0.01,
    seed: int = 0,
    log_every: int = 100,
    log: Callable[[dict], None] | None = print,
) -> tuple[Params, list[dict]]:
    """Train from a seeded init on the documents ``data [N, T]``; returns ``(params, metrics history)``.

    Each step's batch is ``batch_size`` rows drawn from ``fold_in(seed, step)``, so a run is a function of its
    arguments only.
    """
    key = jax.random.key(seed)
    params = init_params(cfg, jax.random.fold_in(key, 0))
    sched = optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(steps, warmup + 1), lr * 0.05)
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(sched, weight_decay=weight_decay))
    state = opt.init(params)
    data = jnp.asarray(data_NT)

    @partial(jax.jit, donate_argnums=(0, 1))
    def step_fn(params, state, step):
        idx = jax.random.randint(jax.random.fold_in(key, step + 1), (batch_size,), 0, data.shape[0])
        loss, grads = jax.value_and_grad(lm_loss)(params, cfg, data[idx], cfg.pad_token_id)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    history, t0 = [], time.perf_counter()
    for step in range(steps):
        params, state, loss = step_fn(params, state, jnp.int32(step))
        if (step + 1) % log_every == 0 or step == steps - 1:
            row = {
                "step": step + 1,
                "loss": float(loss),
                "lr": float(sched(step)),
                "s": time.perf_counter() - t0,
            }
            history.append(row)
            if log is not None:
                log(row)
    return params, history


@partial(jax.jit, static_argnums=(1,))
def _last_logits(params, cfg, tokens_BT):
    logits, _, _ = forward_fn(params, cfg, tokens_BT)
    return logits[:, -1].astype(jnp.float32)


def predict_next(params: Params, cfg: ModelConfig, tokenizer, prompts: list[str]) -> np.ndarray:
    """Next-token probabilities ``[n, V]`` after each prompt (prompts batched by token length)."""
    enc = [tokenizer.encode(p) for p in prompts]
    out = np.zeros((len(prompts), cfg.vocab_size), np.float32)
    for n in sorted({len(e) for e in enc}):
        idx = [i for i, e in enumerate(enc) if len(e) == n]
        logits = _last_logits(params, cfg, jnp.asarray(np.stack([enc[i] for i in idx])))
        out[idx] = np.asarray(jax.nn.softmax(logits, -1))
    return out


def accuracy(params: Params, cfg: ModelConfig, tokenizer, pairs: list[tuple[str, str]]) -> float:
    """Fraction of ``(prompt, answer)`` pairs whose most likely next token is the answer word."""
    if not pairs:
        return float("nan")
    probs = predict_next(params, cfg, tokenizer, [p for p, _ in pairs])
    want = np.array([tokenizer.token_to_id(a) for _, a in pairs])
    return float((probs.argmax(-1) == want).mean())


def save_lm(params: Params, cfg: ModelConfig, out_dir: str | Path, *, dtype: str = "F32") -> Path:
    """Write ``config.json`` + ``model.safetensors`` (Hugging Face Llama layout) into ``out_dir``."""
    from jcircuits.models.loading import params_to_numpy
    from jcircuits_converters.hf import save_hf_checkpoint

    return save_hf_checkpoint(params_to_numpy(params), hf_config_dict(cfg), out_dir, dtype=dtype)
