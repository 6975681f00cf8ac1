"""Re-create the embedded default model end to end: corpus → tiny Llama LM → harvest → per-layer transcoders.

``train_default(out_dir, seed)`` writes, into ``out_dir``::

    config.json, model.safetensors, tokenizer.json     the LM (Hugging Face Llama layout)
    transcoders/config.yaml, transcoders/layer_{i}.safetensors   JumpReLU PLTs (circuit-tracer format)
    training.json                                      settings, timings, accuracies, FVU and L0

Every stage is seeded from ``seed``; the committed ``jcircuits/default`` is ``train_default(..., seed=0)`` with the
defaults below (see the README for the command and its run time).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from jcircuits.training import corpus

__all__ = ["DefaultSettings", "train_default"]


@dataclasses.dataclass(frozen=True)
class DefaultSettings:
    """Sizes and step counts of the default pipeline (small enough for a few CPU minutes)."""

    seq_len: int = 48
    n_train_docs: int = 20000
    d_model: int = 64
    n_layers: int = 4
    n_heads: int = 4
    d_mlp: int = 256
    lm_steps: int = 2000
    lm_batch: int = 32
    lm_lr: float = 3e-3
    n_harvest_docs: int = 1500
    n_eval_docs: int = 300
    n_features: int = 512
    tc_steps: int = 2000
    tc_batch: int = 1024
    tc_sparsity_coeff: float = 2e-3
    tc_lr: float = 1e-2


def train_default(
    out_dir: str | Path,
    *,
    seed: int = 0,
    settings: DefaultSettings | None = None,
    reuse_lm: bool = False,
    log=print,
) -> dict[str, Any]:
    """Train the default LM and its transcoders into ``out_dir``; returns the ``training.json`` record.

    ``reuse_lm=True`` keeps an LM already in ``out_dir`` that an earlier run with the same seed and LM settings
    wrote (LM training is deterministic, so this only saves time) and retrains the transcoders."""
    import jax

    from jcircuits.models.loading import load_params
    from jcircuits.models.tokenizer import Tokenizer
    from jcircuits.training import lm
    from jcircuits.training.harvest import harvest
    from jcircuits.training.transcoder import (
        TrainConfig,
        evaluate_transcoders,
        to_transcoder_set,
        train_transcoders,
    )
    from jcircuits.transcoders.io import save_transcoders

    s = settings or DefaultSettings()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {
        "seed": seed,
        "settings": dataclasses.asdict(s),
        "backend": jax.default_backend(),
    }
    t_all = time.perf_counter()

    world = corpus.make_world(seed)
    tk = corpus.build_tokenizer(world, out / "tokenizer.json")
    docs = corpus.sample_documents(world, s.n_train_docs, s.seq_len, seed=seed + 1)
    data = corpus.encode_documents(tk, docs, s.seq_len)
    cfg = lm.tiny_llama_config(
        tk.get_vocab_size(), d_model=s.d_model, n_layers=s.n_layers, n_heads=s.n_heads, d_mlp=s.d_mlp
    )
    prev = _previous(out, seed, s) if reuse_lm else None
    if prev is not None:
        record["lm_train_s"], record["lm_final_loss"] = prev["lm_train_s"], prev["lm_final_loss"]
        if log:
            log(f"reusing the LM in {out} (trained in {prev['lm_train_s']:.0f} s)")
    else:
        t0 = time.perf_counter()
        params, lm_hist = lm.train_lm(
            cfg, data, steps=s.lm_steps, batch_size=s.lm_batch, lr=s.lm_lr, seed=seed, log_every=250, log=log
        )
        record["lm_train_s"] = time.perf_counter() - t0
        record["lm_final_loss"] = lm_hist[-1]["loss"]
        lm.save_lm(params, cfg, out)

    # Everything downstream reads the files back, so it sees exactly what ships.
    params, cfg = load_params(out)
    tok = Tokenizer.from_file(out)
    record["accuracy"] = {
        name: lm.accuracy(params, cfg, tok, pairs) for name, pairs in corpus.eval_prompts(world).items()
    }
    record["n_eval_prompts"] = {k: len(v) for k, v in corpus.eval_prompts(world).items()}
    if log:
        log(f"accuracy: {record['accuracy']}")

    t0 = time.perf_counter()
    hdocs = corpus.sample_documents(world, s.n_harvest_docs + s.n_eval_docs, s.seq_len, seed=seed + 2)
    htoks = corpus.encode_documents(tk, hdocs, s.seq_len)
    x, y = harvest(params, cfg, htoks[: s.n_harvest_docs], batch_size=64)
    xe, ye = harvest(params, cfg, htoks[s.n_harvest_docs :], batch_size=64)
    record["harvest_s"] = time.perf_counter() - t0
    record["harvest_tokens"] = {"train": int(x.shape[0]), "eval": int(xe.shape[0])}

    tcfg = TrainConfig(
        kind="plt",
        n_features=s.n_features,
        activation="jumprelu",
        sparsity="l0",
        sparsity_coeff=s.tc_sparsity_coeff,
        steps=s.tc_steps,
        batch_size=s.tc_batch,
        lr=s.tc_lr,
        seed=seed,
        log_every=250,
    )
    t0 = time.perf_counter()
    res = train_transcoders(x, y, tcfg, out_dir=None, log=log)
    record["tc_train_s"] = time.perf_counter() - t0
    ts = to_transcoder_set(res, scan=f"jcircuits-default-plt-seed{seed}")
    save_transcoders(ts, out / "transcoders")
    record["transcoders"] = evaluate_transcoders(ts, xe, ye)
    record["transcoder_config"] = dataclasses.asdict(tcfg)
    record["total_s"] = time.perf_counter() - t_all
    (out / "training.json").write_text(json.dumps(_round(record), indent=2) + "\n")
    if log:
        log(f"transcoders (held-out tokens): {record['transcoders']}")
    return record


_LM_FIELDS = (
    "seq_len",
    "n_train_docs",
    "d_model",
    "n_layers",
    "n_heads",
    "d_mlp",
    "lm_steps",
    "lm_batch",
    "lm_lr",
)


def _previous(out: Path, seed: int, s: DefaultSettings) -> dict[str, Any] | None:
    """The earlier record in ``out`` if its LM was trained with this seed and these LM settings."""
    f = out / "training.json"
    if not (f.is_file() and (out / "model.safetensors").is_file()):
        return None
    rec = json.loads(f.read_text())
    same = rec.get("seed") == seed and all(rec["settings"].get(k) == getattr(s, k) for k in _LM_FIELDS)
    return rec if same else None


def _round(v):
    if isinstance(v, float):
        return float(np.round(v, 5))
    if isinstance(v, dict):
        return {k: _round(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_round(x) for x in v]
    return v
