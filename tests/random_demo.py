"""A seeded random tiny Llama (4 layers, d_model 64) with a small word tokenizer and random JumpReLU transcoders,
built in memory from the seed: its graphs are exact for that network but mean nothing (tests only; the package
ships the trained default, ``jcircuits.default``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jcircuits.models import Model, RopeScaling, Tokenizer, init_params
from jcircuits.models.config import llama_config
from jcircuits.transcoders import DenseDecoders, TranscoderConfig, Transcoders, TranscoderSet

__all__ = ["demo_model", "demo_transcoders"]


_WORDS = (
    "the a an of in on at to is was are be and or not it this that with for as by from capital city state "
    "country river mountain red green blue one two three four five six seven eight nine ten plus minus equals "
    "paris france texas austin dallas california sacramento ohio columbus utah salt lake john mary dog cat "
    "containing contains runs sat big small old new first last answer question what which who where when why how he she they we "
    "you i my your his her their our"
).split()


def _tokenizer() -> Tokenizer:
    import tokenizers
    from tokenizers import models, pre_tokenizers

    specials = ["<pad>", "<bos>", "<eos>", "<unk>"]
    vocab = {w: i for i, w in enumerate(specials + sorted(set(_WORDS)) + list(".,?!"))}
    tk = tokenizers.Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.add_special_tokens(specials)
    tk.decoder = tokenizers.decoders.WordPiece(prefix="##")  # joins words with spaces
    return Tokenizer(tk, bos_id=1, pad_id=0, eos_id=2)


def demo_model(seed: int = 0) -> Model:
    """A seeded random tiny Llama (4 layers, d_model 64) with a small word tokenizer; built in memory."""
    tok = _tokenizer()
    cfg = llama_config(
        vocab_size=tok.vocab_size,
        d_model=64,
        n_layers=4,
        n_heads=4,
        n_kv_heads=2,
        head_dim=16,
        d_mlp=128,
        max_position_embeddings=256,
        rope_scaling=RopeScaling(8.0, 1.0, 4.0, 32),
    )
    params = init_params(cfg, jax.random.key(seed), scale=0.6)
    return Model(params=params, cfg=cfg, tokenizer=tok, name=f"demo-random-llama-seed{seed}")


def demo_transcoders(model: Model, seed: int = 1, n_features: int = 256) -> TranscoderSet:
    """Seeded random JumpReLU per-layer transcoders for ``model`` (a few percent of features active)."""
    cfg = model.cfg
    rng = np.random.default_rng(seed)
    L, D, F = cfg.n_layers, cfg.d_model, n_features
    f32 = lambda a: jnp.asarray(np.asarray(a, np.float32))  # noqa: E731
    tcfg = TranscoderConfig(
        kind="plt",
        n_layers=L,
        d_model=D,
        n_features=F,
        activation="jumprelu",
        input_hook="mlp.hook_in",
        output_hook="mlp.hook_out",
        scan=f"demo-random-plt-seed{seed}",
    )
    params = Transcoders(
        W_enc=f32(rng.normal(0, 1.0 / np.sqrt(D), (L, D, F))),
        b_enc=f32(rng.normal(-1.0, 0.1, (L, F))),
        b_dec=f32(np.zeros((L, D))),
        threshold=f32(np.abs(rng.normal(0.3, 0.1, (L, F)))),
    )
    W_dec = rng.normal(0, 0.5 / np.sqrt(D), (L, F, D)).astype(np.float32)
    return TranscoderSet(tcfg, params, DenseDecoders("plt", W_dec))
