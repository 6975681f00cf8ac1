"""The built-in default that ``jcircuits attribute`` traces when no ``--model`` is given, and a seeded random model.

The default (``default_model`` / ``default_transcoders``) is the embedded, trained model in ``jcircuits/default``: a
tiny 4-layer Llama-architecture model trained in this repo (``jcircuits train-default``) on a synthetic corpus of
two-hop geography facts and small-number addition, with JumpReLU per-layer transcoders trained on its own
activations. It is read with the ordinary loaders (``load_model``, ``load_transcoders``), so it exercises the same
path as any Hugging Face checkpoint.

The seeded random model (``demo_model`` / ``demo_transcoders``) is still here for tests: its graphs are exact for
that network but mean nothing. It is built in memory from the seed; nothing is read or downloaded.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jcircuits.models import RopeScaling, init_params
from jcircuits.models.config import llama_config
from jcircuits.replacement import Model, TranscoderSet
from jcircuits.tokenizer import Tokenizer
from jcircuits.transcoders.core import DenseDecoders, TranscoderConfig, Transcoders

__all__ = [
    "demo_model",
    "demo_transcoders",
    "default_model",
    "default_transcoders",
    "DEFAULT_DIR",
    "DEFAULT_NAME",
    "DEMO_NOTICE",
]

DEFAULT_DIR = Path(__file__).resolve().parent / "default"
DEFAULT_NAME = "jcircuits-default-tiny-llama"

DEMO_NOTICE = (
    "NOTE: no --model given; tracing the embedded default: a tiny 4-layer Llama-architecture model trained in "
    "this repo on a synthetic corpus of two-hop facts ('the capital of the state containing dallas is' -> austin) "
    "and small-number addition ('3 plus 4 is' -> 7; lowercase words only), with JumpReLU transcoders trained on "
    "its activations. Pass --model and --transcoders to trace another model."
)


def default_model() -> Model:
    """The embedded trained model (``jcircuits/default``: HF Llama ``config.json`` + ``model.safetensors`` +
    word-level ``tokenizer.json``)."""
    from jcircuits.loading import load_model

    if not (DEFAULT_DIR / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"the embedded default model is missing from {DEFAULT_DIR}; re-create it with "
            f"`jcircuits train-default {DEFAULT_DIR}` or reinstall jcircuits"
        )
    params, cfg = load_model(DEFAULT_DIR)
    return Model(params=params, cfg=cfg, tokenizer=Tokenizer.from_file(DEFAULT_DIR), name=DEFAULT_NAME)


def default_transcoders(model: Model | None = None) -> TranscoderSet:
    """The embedded model's per-layer JumpReLU transcoders (circuit-tracer format, ``default/transcoders``)."""
    from jcircuits.transcoders.io import load_transcoders

    n_layers = None if model is None else model.cfg.n_layers
    return load_transcoders(DEFAULT_DIR / "transcoders", lazy_decoder=False, n_layers=n_layers)


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
