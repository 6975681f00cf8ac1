"""The embedded default model that ``jcircuits attribute`` traces when no ``--model`` is given.

A tiny 4-layer Llama-architecture model trained in this repository (``jcircuits train-default``) on a synthetic
corpus of two-hop geography facts and small-number addition, with JumpReLU per-layer transcoders trained on its
own activations. Its files are package data beside this module: ``config.json``, ``model.safetensors``,
``tokenizer.json``, ``transcoders/`` (circuit-tracer ``config.yaml`` + ``layer_{i}.safetensors``) and
``training.json`` (how it was made and its measured numbers). It is read with the ordinary loaders
(``load_model``, ``load_transcoders``), so it exercises the same path as any Hugging Face checkpoint.
Re-create it with ``jcircuits train-default jcircuits/default --seed 0``.

``features/`` holds the transcoders' feature dashboards (circuit-tracer's feature layout, read with
``default_features()``), made over 1000 documents (48,000 tokens) of the model's own corpus by one command,
from the repository root (about 25 s on 2 CPU cores)::

    jcircuits features build --n-docs 1000 --n-top 8 --n-per-quantile 2 --context 16 --n-bins 32 --digits 4 \
        --no-resume -q -o jcircuits/default/features

Those settings keep the package data under 2 MB (1.8 MB for 2,048 features): 8 top examples and 2 per quantile
band, 16 tokens of context around each example's position (the corpus's sentences are 4 to 9 words, so the
sentence holding the position is kept), activations written to 4 significant digits, 32 histogram bins.
"""

from __future__ import annotations

from pathlib import Path

from jcircuits.features.format import FeatureStore
from jcircuits.models import Model, load_model
from jcircuits.transcoders import TranscoderSet, load_transcoders

__all__ = ["default_model", "default_transcoders", "default_features", "DEFAULT_DIR", "DEFAULT_NAME", "DEFAULT_NOTICE"]

DEFAULT_DIR = Path(__file__).resolve().parent
DEFAULT_NAME = "jcircuits-default-tiny-llama"

DEFAULT_NOTICE = (
    "NOTE: no --model given; using the embedded default: a tiny 4-layer Llama-architecture model trained in "
    "this repo on a synthetic corpus of two-hop facts ('the capital of the state containing dallas is' -> austin) "
    "and small-number addition ('3 plus 4 is' -> 7; lowercase words only), with JumpReLU transcoders trained on "
    "its activations. Pass --model and --transcoders to trace another model."
)


def default_model() -> Model:
    """The embedded trained model (HF Llama ``config.json`` + ``model.safetensors`` + word-level
    ``tokenizer.json`` in this package)."""
    if not (DEFAULT_DIR / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"the embedded default model is missing from {DEFAULT_DIR}; re-create it with "
            f"`jcircuits train-default {DEFAULT_DIR}` or reinstall jcircuits"
        )
    return load_model(DEFAULT_DIR, name=DEFAULT_NAME)


def default_transcoders(model: Model | None = None) -> TranscoderSet:
    """The embedded model's per-layer JumpReLU transcoders (circuit-tracer format, ``transcoders/``)."""
    n_layers = None if model is None else model.cfg.n_layers
    return load_transcoders(DEFAULT_DIR / "transcoders", lazy_decoder=False, n_layers=n_layers)


def default_features() -> FeatureStore:
    """The default transcoders' feature dashboards shipped in ``features/`` (every layer and feature)."""
    if not (DEFAULT_DIR / "features" / "index.json.gz").is_file():
        raise FileNotFoundError(
            f"the default model's feature dashboards are missing from {DEFAULT_DIR / 'features'}; re-create them "
            "with the command in jcircuits.default's docstring or reinstall jcircuits"
        )
    return FeatureStore(DEFAULT_DIR / "features")
