"""Build seeded tiny reference cases with circuit-tracer 0.5.0 (TransformerLens backend).

Run inside the reference virtualenv (see setup_ref_env.sh):

    .venv-ref/bin/python tests/reference/make_cases.py --out DIR [--cases a,b]

For every case it writes DIR/<case>/{model/, transcoders/, ref.npz, meta.json} (see README.md beside this
file for the exact formats and conventions) and DIR/STAMP (a hash of this script) when all cases succeed.

Everything is built offline: the tokenizer with `tokenizers`, the model with `transformers` (random,
seeded init from numpy), the TransformerLens model by hand from the HF config and weights, the
transcoders from numpy and written in circuit-tracer's own on-disk formats, then loaded back with
circuit-tracer's own loaders. No code of circuit-tracer is copied here; it is only called.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402

# ----------------------------------------------------------------------------------------------------
# Cases
# ----------------------------------------------------------------------------------------------------

PROMPT = "the old king said that the small red bird would fly over the river and"

CASES: dict[str, dict] = {
    # GemmaScope-style per-layer transcoders: read the pre-MLP RMSNorm output without gain, write after the
    # post-MLP norm. JumpReLU. Also written in GemmaScope's npz layout (transcoders_gemmascope_npz/).
    "gemma2_plt_jumprelu": dict(
        arch="gemma2",
        kind="plt",
        act="jumprelu",
        skip=False,
        n_features=256,
        seed=11,
        feature_input_hook="ln2.hook_normalized",
        feature_output_hook="hook_mlp_out",
    ),
    # mntss/transcoder-Llama-3.2-1B-style: read the MLP input (gain included), write the MLP output; skip.
    "llama_plt_relu_skip": dict(
        arch="llama",
        kind="plt",
        act="relu",
        skip=True,
        n_features=256,
        seed=12,
        feature_input_hook="mlp.hook_in",
        feature_output_hook="mlp.hook_out",
    ),
    # Cross-layer transcoder reading the residual stream after attention (mntss/clt-* style), ReLU.
    "llama_clt": dict(
        arch="llama",
        kind="clt",
        act="relu",
        skip=False,
        n_features=256,
        seed=13,
        feature_input_hook="hook_resid_mid",
        feature_output_hook="hook_mlp_out",
    ),
    # Cross-layer transcoder on Gemma-2, JumpReLU.
    "gemma2_clt": dict(
        arch="gemma2",
        kind="clt",
        act="jumprelu",
        skip=False,
        n_features=256,
        seed=14,
        feature_input_hook="ln2.hook_normalized",
        feature_output_hook="hook_mlp_out",
    ),
    # Qwen3 (QK-norm, head_dim != d_model / n_heads, GQA, sliding layers, tied embeddings) on the
    # TransformerLens backend (TL 3.2.1 has Qwen3: use_qk_norm); mwhanna/qwen3-*-transcoders-style hooks.
    "qwen3_plt_relu": dict(
        arch="qwen3",
        backend="transformerlens",
        kind="plt",
        act="relu",
        skip=False,
        n_features=256,
        seed=15,
        feature_input_hook="mlp.hook_in",
        feature_output_hook="mlp.hook_out",
    ),
    # Gemma-3 (QK-norm with the (1+w) gain, local/global layers with two RoPE bases, linear scaling on the
    # global ones) on circuit-tracer's nnsight backend: its TransformerLens backend cannot run it (README.md).
    "gemma3_plt_jumprelu": dict(
        arch="gemma3",
        backend="nnsight",
        kind="plt",
        act="jumprelu",
        skip=False,
        n_features=256,
        seed=16,
        feature_input_hook="ln2.hook_normalized",
        feature_output_hook="hook_mlp_out",
    ),
    # GemmaScope-2-style cross-layer transcoder on Gemma-3 (nnsight backend), reading the residual after attention.
    "gemma3_clt": dict(
        arch="gemma3",
        backend="nnsight",
        kind="clt",
        act="jumprelu",
        skip=False,
        n_features=256,
        seed=17,
        feature_input_hook="hook_resid_mid",
        feature_output_hook="hook_mlp_out",
    ),
}

TARGET_ACTIVE_FRACTION = 0.035  # of (position >= 1, feature) pairs per layer
ATTR_BATCH_SIZE = 256
SEL_BATCH_SIZE = 16
SEL_UPDATE_INTERVAL = 2
ATOL_LOGITS = 1e-4

# ----------------------------------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------------------------------

SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>"]  # ids 0..3; <bos> deliberately not 0 (see README)
WORDS = """the a an old young king queen man woman child bird dog cat fish horse small big red blue green
black white said says that would could should will can fly run swim walk sing over under river sea
mountain forest city house and or but then when because of in on at to from with without is was are
were be been has have had not no yes one two three four five first last good bad happy sad fast slow
day night sun moon star tree flower stone water fire wind rain snow gold silver king's very quite
""".split()


def build_tokenizer(model_dir: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = list(dict.fromkeys(WORDS))
    vocab = {tok: i for i, tok in enumerate(SPECIALS + words)}
    # pad the vocabulary to a multiple of 16 with unused words
    i = 0
    while len(vocab) % 16:
        vocab[f"w{i}"] = len(vocab)
        i += 1
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins word tokens with spaces
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )
    hf_tok.save_pretrained(str(model_dir))
    return len(vocab)


# ----------------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------------

N_LAYERS, D_MODEL, N_HEADS, N_KV, D_MLP = 4, 64, 4, 2, 128
# head_dim per architecture: Qwen3 and Gemma-3 take 24 != D_MODEL / N_HEADS (q/k/v are 96 wide)
HEAD_DIM = {"gemma2": 16, "llama": 16, "qwen3": 24, "gemma3": 24}
GEMMA_ARCHS = ("gemma2", "gemma3")  # RMSNorm gain stored as w (gain = 1 + w), embeddings scaled by sqrt(d)


def hf_config(arch: str, vocab_size: int):
    common = dict(
        vocab_size=vocab_size,
        hidden_size=D_MODEL,
        intermediate_size=D_MLP,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=N_HEADS,
        num_key_value_heads=N_KV,
        head_dim=HEAD_DIM[arch],
        max_position_embeddings=64,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    if arch == "gemma2":
        from transformers import Gemma2Config

        return Gemma2Config(
            **common,
            hidden_activation="gelu_pytorch_tanh",
            rms_norm_eps=1e-6,
            rope_theta=10000.0,
            query_pre_attn_scalar=24,
            sliding_window=6,
            attn_logit_softcapping=8.0,
            final_logit_softcapping=12.0,
            tie_word_embeddings=True,
            attn_implementation="eager",
        )
    if arch == "llama":
        from transformers import LlamaConfig

        return LlamaConfig(
            **common,
            hidden_act="silu",
            rms_norm_eps=1e-5,
            rope_theta=500000.0,
            tie_word_embeddings=False,
            rope_scaling=dict(
                rope_type="llama3",
                factor=8.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=8,
            ),
            attention_bias=False,
            mlp_bias=False,
            attn_implementation="eager",
        )
    if arch == "qwen3":
        from transformers import Qwen3Config

        return Qwen3Config(
            **common,
            hidden_act="silu",
            rms_norm_eps=1e-6,
            rope_theta=10000.0,
            tie_word_embeddings=True,
            use_sliding_window=True,
            sliding_window=6,
            layer_types=["sliding_attention", "full_attention"] * (N_LAYERS // 2),
            attention_bias=False,
            attn_implementation="eager",
        )
    if arch == "gemma3":
        from transformers import Gemma3TextConfig

        return Gemma3TextConfig(
            **common,
            hidden_activation="gelu_pytorch_tanh",
            rms_norm_eps=1e-6,
            rope_theta=1e5,  # global layers, linearly scaled by 4
            rope_scaling={"rope_type": "linear", "factor": 4.0},
            rope_local_base_freq=1e3,  # local layers
            query_pre_attn_scalar=20,
            sliding_window=6,
            layer_types=["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"],
            final_logit_softcapping=None,
            attn_logit_softcapping=None,
            tie_word_embeddings=True,
            attn_implementation="eager",
        )
    raise ValueError(arch)


def init_weights(model, arch: str, rng: np.random.Generator) -> None:
    """Overwrite every parameter with a seeded numpy draw, scaled so the model is not degenerate."""
    d = D_MODEL
    gemma = arch in GEMMA_ARCHS
    for name, p in sorted(model.named_parameters()):
        shape = tuple(p.shape)
        if name.endswith("embed_tokens.weight"):
            std = {"gemma2": 0.25, "gemma3": 0.1, "llama": 1.0, "qwen3": 0.15}[arch]
            v = rng.normal(0, std, shape)
        elif name.endswith("lm_head.weight"):
            v = rng.normal(0, 3.0 / math.sqrt(d), shape)
        elif name.endswith(("q_norm.weight", "k_norm.weight")):  # QK-norm gains spread over ~[0.3, 3]
            gain = np.exp(0.6 * rng.normal(0, 1, shape))
            v = gain - 1.0 if gemma else gain
        elif "norm" in name:
            if gemma:  # Gemma stores w, gain = 1 + w
                mean = 0.8 if name == "model.norm.weight" else 0.3
                v = rng.normal(mean, 0.2, shape)
            else:
                mean = 1.0
                v = rng.normal(mean, 0.2, shape)
        elif name.endswith(("q_proj.weight", "k_proj.weight")):
            v = rng.normal(0, 0.2, shape)
        elif name.endswith(("v_proj.weight", "gate_proj.weight", "up_proj.weight")):
            v = rng.normal(0, 1.0 / math.sqrt(d), shape)
        elif name.endswith("o_proj.weight"):
            v = rng.normal(0, 0.8 / math.sqrt(shape[1]), shape)
        elif name.endswith("down_proj.weight"):
            v = rng.normal(0, 1.5 / math.sqrt(D_MLP), shape)
        else:
            raise KeyError(f"no init rule for {name}")
        with torch.no_grad():
            p.copy_(torch.from_numpy(v.astype(np.float32)))


def build_hf_model(arch: str, vocab_size: int, model_dir: Path, seed: int):
    from transformers import AutoModelForCausalLM

    cfg = hf_config(arch, vocab_size)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager", dtype=torch.float32)
    init_weights(model, arch, np.random.default_rng(seed))
    if cfg.tie_word_embeddings:
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr(), "tied"
    model.save_pretrained(str(model_dir), safe_serialization=True)
    # reload from disk so everything below uses exactly what was written
    model = AutoModelForCausalLM.from_pretrained(
        str(model_dir), attn_implementation="eager", dtype=torch.float32
    )
    model.eval()
    return model


def tl_config(hf_cfg, arch: str, model_name: str):
    from transformer_lens import HookedTransformerConfig

    common = dict(
        d_model=hf_cfg.hidden_size,
        d_head=hf_cfg.head_dim,
        n_heads=hf_cfg.num_attention_heads,
        d_mlp=hf_cfg.intermediate_size,
        n_layers=hf_cfg.num_hidden_layers,
        n_ctx=hf_cfg.max_position_embeddings,
        eps=hf_cfg.rms_norm_eps,
        d_vocab=hf_cfg.vocab_size,
        n_key_value_heads=hf_cfg.num_key_value_heads,
        normalization_type="RMS",
        positional_embedding_type="rotary",
        rotary_dim=hf_cfg.head_dim,
        rotary_base=hf_cfg.rope_theta,
        rotary_adjacent_pairs=False,
        gated_mlp=True,
        final_rms=True,
        model_name=model_name,
        dtype=torch.float32,
        device="cpu",
        default_prepend_bos=True,
    )
    if arch == "gemma2":
        return HookedTransformerConfig(
            **common,
            act_fn=hf_cfg.hidden_activation,
            original_architecture="Gemma2ForCausalLM",
            use_attn_scale=True,
            attn_scale=math.sqrt(hf_cfg.query_pre_attn_scalar),
            window_size=hf_cfg.sliding_window,
            use_local_attn=True,
            attn_types=["local" if t == "sliding_attention" else "global" for t in hf_cfg.layer_types],
            attn_scores_soft_cap=hf_cfg.attn_logit_softcapping,
            output_logits_soft_cap=hf_cfg.final_logit_softcapping,
            use_normalization_before_and_after=True,
        )
    if arch == "qwen3":
        return HookedTransformerConfig(
            **common,
            act_fn=hf_cfg.hidden_act,
            original_architecture="Qwen3ForCausalLM",
            use_qk_norm=True,  # RMSNorm over head_dim on q and k (gain w), before RoPE
            window_size=hf_cfg.sliding_window,
            use_local_attn=True,
            attn_types=["local" if t == "sliding_attention" else "global" for t in hf_cfg.layer_types],
        )
    rs = hf_cfg.rope_scaling
    return HookedTransformerConfig(
        **common,
        act_fn=hf_cfg.hidden_act,
        original_architecture="LlamaForCausalLM",
        use_NTK_by_parts_rope=True,
        NTK_by_parts_factor=rs["factor"],
        NTK_by_parts_low_freq_factor=rs["low_freq_factor"],
        NTK_by_parts_high_freq_factor=rs["high_freq_factor"],
        NTK_original_ctx_len=rs["original_max_position_embeddings"],
    )


def build_tl_model(hf_model, hf_tok, arch: str, model_name: str):
    from circuit_tracer.replacement_model.replacement_model_transformerlens import (
        TransformerLensReplacementModel,
    )
    from transformer_lens.pretrained.weight_conversions import (
        convert_gemma_weights,
        convert_llama_weights,
        convert_qwen3_weights,
    )

    cfg = tl_config(hf_model.config, arch, model_name)
    model = TransformerLensReplacementModel(cfg, tokenizer=hf_tok)
    conv = {"gemma2": convert_gemma_weights, "llama": convert_llama_weights, "qwen3": convert_qwen3_weights}[
        arch
    ]
    sd = conv(hf_model, cfg)
    model.load_and_process_state_dict(
        sd,
        fold_ln=False,
        center_writing_weights=False,
        center_unembed=False,
        fold_value_biases=False,
        refactor_factored_attn_matrices=False,
    )
    # TL loads key by key with strict=False: compare every tensor.
    have = model.state_dict()
    for k, v in sd.items():
        if k not in have:
            raise RuntimeError(f"TL dropped weight {k}")
        if not torch.equal(have[k].float(), v.float()):
            raise RuntimeError(f"TL weight {k} differs after loading")
    model.eval()
    return model


# ----------------------------------------------------------------------------------------------------
# Transcoders
# ----------------------------------------------------------------------------------------------------


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def _unit_rows(rng, shape) -> np.ndarray:
    w = rng.normal(0, 1, shape)
    return w / np.linalg.norm(w, axis=-1, keepdims=True)


def calibrate_encoder(rng, x: np.ndarray, n_features: int, act: str):
    """W_enc [F,d], b_enc [F], threshold [F] | None so that ~TARGET_ACTIVE_FRACTION of features fire."""
    d = x.shape[-1]
    xs = x[1:]  # position 0 is zeroed by circuit-tracer anyway
    w = rng.normal(0, 1.0 / (math.sqrt(d) * _rms(xs)), (n_features, d))
    pre = xs @ w.T
    z = rng.normal(0, 1, n_features)
    if act == "relu":
        cut = np.quantile(pre, 1 - TARGET_ACTIVE_FRACTION)
        b = -(cut + 0.2 * z * np.std(pre))
        return w, b, None
    b = 0.1 * z * np.std(pre)
    cut = np.quantile(pre + b, 1 - TARGET_ACTIVE_FRACTION)
    thr = cut * np.exp(0.15 * rng.normal(0, 1, n_features))
    assert np.all(thr > 0)
    return w, b, thr


def activation(pre: np.ndarray, b, thr):
    pre = pre + b
    if thr is None:
        return np.maximum(pre, 0)
    return pre * (pre > thr)


def build_plt(rng, spec, xin: np.ndarray, mlp_out: np.ndarray):
    """Per-layer transcoders: list of dicts of numpy float32 arrays in circuit-tracer's safetensors layout."""
    L, T, d = xin.shape
    F = spec["n_features"]
    layers = []
    for l in range(L):
        W_enc, b_enc, thr = calibrate_encoder(rng, xin[l], F, spec["act"])
        acts = activation(xin[l] @ W_enc.T, b_enc, thr)
        acts[0] = 0
        W_dec = _unit_rows(rng, (F, d))
        target = _rms(mlp_out[l, 1:])
        W_dec *= 0.6 * target / max(_rms((acts @ W_dec)[1:]), 1e-6)
        b_dec = rng.normal(0, 0.1 * target, d)
        t = {"W_enc": W_enc, "W_dec": W_dec, "b_enc": b_enc, "b_dec": b_dec}
        if thr is not None:
            t["activation_function.threshold"] = thr
        if spec["skip"]:
            t["W_skip"] = rng.normal(0, 0.3 * target / (math.sqrt(d) * _rms(xin[l, 1:])), (d, d))
        layers.append({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in t.items()})
    return layers


def build_clt(rng, spec, xin: np.ndarray, mlp_out: np.ndarray):
    """Cross-layer transcoder: per source layer i, enc dict and dec [F, L-i, d]."""
    L, T, d = xin.shape
    F = spec["n_features"]
    enc, dec, acts = [], [], []
    for i in range(L):
        W_enc, b_enc, thr = calibrate_encoder(rng, xin[i], F, spec["act"])
        a = activation(xin[i] @ W_enc.T, b_enc, thr)
        a[0] = 0
        acts.append(a)
        e = {
            f"W_enc_{i}": W_enc,
            f"b_enc_{i}": b_enc,
            f"b_dec_{i}": rng.normal(0, 0.1 * _rms(mlp_out[i, 1:]), d),
        }
        if thr is not None:
            e[f"threshold_{i}"] = thr
        enc.append(e)
        dec.append(_unit_rows(rng, (F, L - i, d)))
    for tgt in range(L):  # scale decoders per target layer
        recon = sum(acts[i] @ dec[i][:, tgt - i] for i in range(tgt + 1))
        s = 0.6 * _rms(mlp_out[tgt, 1:]) / max(_rms(recon[1:]), 1e-6)
        for i in range(tgt + 1):
            dec[i][:, tgt - i] *= s
    enc = [{k: np.ascontiguousarray(v, dtype=np.float32) for k, v in e.items()} for e in enc]
    dec = [{f"W_dec_{i}": np.ascontiguousarray(w, dtype=np.float32)} for i, w in enumerate(dec)]
    return enc, dec


def write_and_load_transcoders(case_dir: Path, spec, tensors, scan: str):
    from circuit_tracer.transcoder.cross_layer_transcoder import load_clt
    from circuit_tracer.transcoder.single_layer_transcoder import load_transcoder_set

    tdir = case_dir / "transcoders"
    tdir.mkdir(parents=True)
    cfg = {
        "model_kind": "transcoder_set" if spec["kind"] == "plt" else "cross_layer_transcoder",
        "feature_input_hook": spec["feature_input_hook"],
        "feature_output_hook": spec["feature_output_hook"],
        "scan": scan,
    }
    if spec["kind"] == "plt":
        names = []
        for l, t in enumerate(tensors):
            names.append(f"layer_{l}.safetensors")
            save_file(t, str(tdir / names[-1]))
        cfg["transcoders"] = names  # relative to this config.yaml
        with open(tdir / "config.yaml", "w") as f:
            yaml.safe_dump(cfg, f, sort_keys=False)
        paths = {l: str(tdir / n) for l, n in enumerate(names)}
        tc = load_transcoder_set(
            paths,
            scan=scan,
            feature_input_hook=cfg["feature_input_hook"],
            feature_output_hook=cfg["feature_output_hook"],
            device=torch.device("cpu"),
            dtype=torch.float32,
            lazy_encoder=False,
            lazy_decoder=True,
        )
        # every tensor as circuit-tracer sees it == what we wrote
        for l, t in enumerate(tensors):
            m = tc[l]
            got = {"W_enc": m.W_enc, "W_dec": m._get_decoder_vectors(), "b_enc": m.b_enc, "b_dec": m.b_dec}
            if "activation_function.threshold" in t:
                got["activation_function.threshold"] = m.activation_function.threshold
            if "W_skip" in t:
                got["W_skip"] = m.W_skip
            assert (m.W_skip is not None) == ("W_skip" in t)
            _check_equal(got, t, f"layer {l}")
        if spec["arch"] == "gemma2" and spec["act"] == "jumprelu":
            write_gemmascope_npz(case_dir, tensors, cfg, tc)
    else:
        enc, dec = tensors
        for i, (e, w) in enumerate(zip(enc, dec, strict=True)):
            save_file(e, str(tdir / f"W_enc_{i}.safetensors"))
            save_file(w, str(tdir / f"W_dec_{i}.safetensors"))
        with open(tdir / "config.yaml", "w") as f:
            yaml.safe_dump(cfg, f, sort_keys=False)
        tc = load_clt(
            str(tdir),
            feature_input_hook=cfg["feature_input_hook"],
            feature_output_hook=cfg["feature_output_hook"],
            scan=scan,
            device=torch.device("cpu"),
            dtype=torch.float32,
            lazy_decoder=True,
            lazy_encoder=False,
        )
        assert tc.W_skip is None
        for i, (e, w) in enumerate(zip(enc, dec, strict=True)):
            got = {
                f"W_enc_{i}": tc.W_enc[i],
                f"b_enc_{i}": tc.b_enc[i],
                f"b_dec_{i}": tc.b_dec[i],
                f"W_dec_{i}": tc._get_decoder_vectors(i),
            }
            if f"threshold_{i}" in e:
                got[f"threshold_{i}"] = tc.activation_function.threshold[i, 0]
            else:
                assert not hasattr(tc.activation_function, "threshold")
            _check_equal(got, {**e, **w}, f"CLT layer {i}")
    return tc, cfg


def write_gemmascope_npz(case_dir: Path, tensors, cfg, tc_ref):
    """The same transcoders in GemmaScope's params.npz layout (W_enc [d,F], `threshold`), checked with
    circuit-tracer's GemmaScope loader."""
    from circuit_tracer.transcoder.single_layer_transcoder import load_transcoder_set

    ndir = case_dir / "transcoders_gemmascope_npz"
    paths = {}
    for l, t in enumerate(tensors):
        (ndir / f"layer_{l}").mkdir(parents=True)
        p = ndir / f"layer_{l}" / "params.npz"
        np.savez(
            p,
            W_enc=np.ascontiguousarray(t["W_enc"].T),
            W_dec=t["W_dec"],
            b_enc=t["b_enc"],
            b_dec=t["b_dec"],
            threshold=t["activation_function.threshold"],
        )
        paths[l] = str(p)
    ncfg = dict(cfg, transcoders=[f"layer_{l}/params.npz" for l in range(len(tensors))])
    with open(ndir / "config.yaml", "w") as f:
        yaml.safe_dump(ncfg, f, sort_keys=False)
    tc = load_transcoder_set(
        paths,
        scan=cfg["scan"],
        feature_input_hook=cfg["feature_input_hook"],
        feature_output_hook=cfg["feature_output_hook"],
        device=torch.device("cpu"),
        dtype=torch.float32,
        special_load_fn="gemma-scope",
    )
    for l, t in enumerate(tensors):
        m = tc[l]
        got = {
            "W_enc": m.W_enc,
            "W_dec": m.W_dec,
            "b_enc": m.b_enc,
            "b_dec": m.b_dec,
            "activation_function.threshold": m.activation_function.threshold,
        }
        _check_equal(got, t, f"gemmascope npz layer {l}")


def _check_equal(got: dict, want: dict, where: str):
    if set(got) != set(want):
        raise RuntimeError(f"{where}: keys {sorted(got)} != {sorted(want)}")
    for k, v in got.items():
        g = v.detach().cpu().numpy()
        if g.shape != want[k].shape or not np.array_equal(g, want[k]):
            raise RuntimeError(
                f"{where}: circuit-tracer's {k} differs from the file written ({g.shape} vs {want[k].shape})"
            )


# ----------------------------------------------------------------------------------------------------
# nnsight backend (Gemma-3)
# ----------------------------------------------------------------------------------------------------


def hf_hook_values(hf_model, arch: str, tokens: torch.Tensor, in_hook: str, out_hook: str):
    """Values [L, T, d] at the feature input / output hooks, read from the transformers model with forward
    hooks at the modules circuit-tracer's nnsight mapping names (to calibrate the transcoders before the
    nnsight model exists; make_case checks them against what circuit-tracer reads)."""
    if arch != "gemma3" or out_hook != "hook_mlp_out":
        raise NotImplementedError(f"hook values for {arch} {in_hook} -> {out_hook}")
    seen: dict[str, list] = {"pre_in": [], "pre_out": [], "post_out": []}

    def record(*keys):
        def hook(module, args, output):  # returns None: the module's output is left as it is
            for k, v in zip(keys, (args[0], output), strict=False):
                if k:
                    seen[k].append(v[0])

        return hook

    handles = []
    for layer in hf_model.model.layers:
        handles.append(layer.pre_feedforward_layernorm.register_forward_hook(record("pre_in", "pre_out")))
        handles.append(layer.post_feedforward_layernorm.register_forward_hook(record(None, "post_out")))
    try:
        with torch.no_grad():
            hf_model(tokens[None])
    finally:
        for h in handles:
            h.remove()
    if in_hook == "ln2.hook_normalized":  # the RMSNorm's x * rsqrt(mean x^2 + eps), before the (1 + w) gain
        eps = hf_model.config.rms_norm_eps
        xs = [x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) for x in seen["pre_in"]]
    elif in_hook == "hook_resid_mid":
        xs = seen["pre_in"]
    elif in_hook == "mlp.hook_in":
        xs = seen["pre_out"]
    else:
        raise NotImplementedError(in_hook)
    return torch.stack(xs).numpy(), torch.stack(seen["post_out"]).numpy()


def build_nnsight_model(hf_model, model_dir: Path, tc):
    """circuit-tracer's NNSightReplacementModel, loaded from the local model directory (offline)."""
    from circuit_tracer.replacement_model.replacement_model_nnsight import NNSightReplacementModel

    model = NNSightReplacementModel.from_pretrained_and_transcoders(
        str(model_dir), tc, device=torch.device("cpu"), dtype=torch.float32
    )
    # circuit-tracer registers the transcoders as a submodule (their tensors were checked against the files)
    have = {k: v for k, v in model._model.state_dict().items() if not k.startswith("transcoders.")}
    want = hf_model.state_dict()
    if set(have) != set(want):
        raise RuntimeError(
            f"nnsight model weights {sorted(set(have) ^ set(want))} differ from the HF model's"
        )
    for k, v in want.items():
        if not torch.equal(have[k], v):
            raise RuntimeError(f"nnsight weight {k} differs from the HF model's")
    return model


def nnsight_hook_values(model, tokens: torch.Tensor):
    """Values at the feature input / output locations [L, T, d] and the embedding module's output [T, d] (the
    token vectors written into the residual stream), read in one nnsight trace as setup_attribution does."""
    from nnsight import save

    with torch.no_grad(), model.trace(tokens):  # locations in execution order, as nnsight requires
        emb = save(model.embed_location.output)
        ins, outs = [], []
        for in_loc, out_loc in zip(model.feature_input_locs, model.feature_output_locs, strict=True):
            ins.append(in_loc.output)
            outs.append(out_loc.output)
        ins, outs = save(torch.cat(ins, 0)), save(torch.cat(outs, 0))
    return ins.detach(), outs.detach(), emb.detach()[0]


def common_scale(x: torch.Tensor, y: torch.Tensor) -> float:
    """The scalar s with x == s * y (to float32 round-off); raises if there is none. 1.0 when x == y."""
    if torch.equal(x, y):
        return 1.0
    s = float((x.double() * y.double()).sum() / (y.double() ** 2).sum())
    if not torch.allclose(x, s * y, rtol=1e-5, atol=1e-6):
        raise RuntimeError("token vectors are not a common multiple of the residual-stream token vectors")
    return s


# ----------------------------------------------------------------------------------------------------
# One case
# ----------------------------------------------------------------------------------------------------


def make_case(name: str, spec: dict, out: Path) -> dict:
    import circuit_tracer
    from circuit_tracer import attribute
    from circuit_tracer.graph import compute_graph_scores, prune_graph
    from circuit_tracer.replacement_model.common import ensure_tokenized
    from transformers import AutoTokenizer

    t0 = time.time()
    case_dir = out / name
    if case_dir.exists():
        shutil.rmtree(case_dir)
    model_dir = case_dir / "model"
    model_dir.mkdir(parents=True)
    rng = np.random.default_rng(spec["seed"])

    vocab_size = build_tokenizer(model_dir)
    hf_tok = AutoTokenizer.from_pretrained(str(model_dir))
    arch_seed = {"gemma2": 1002, "llama": 1003, "qwen3": 1004, "gemma3": 1005}[spec["arch"]]  # one per arch
    hf_model = build_hf_model(spec["arch"], vocab_size, model_dir, arch_seed)
    backend = spec.get("backend", "transformerlens")
    model_name = f"jcircuits-tiny-{spec['arch']}"
    in_hook, out_hook = spec["feature_input_hook"], spec["feature_output_hook"]
    L = N_LAYERS

    # tokens exactly as circuit-tracer makes them (add_special_tokens=False, then prepend a special token)
    tokens = ensure_tokenized(PROMPT, hf_tok, "cpu", model_name)
    assert int(tokens[0]) == hf_tok.bos_token_id and hf_tok.unk_token_id not in tokens.tolist()
    T = int(tokens.shape[0])

    with torch.no_grad():
        hf_logits = hf_model(tokens[None]).logits[0].float().numpy()
    if backend == "transformerlens":
        tl = build_tl_model(hf_model, hf_tok, spec["arch"], model_name)
        # feature-input / output activations of the plain TL model, to calibrate the transcoders
        with torch.no_grad():
            _, cache = tl.run_with_cache(tokens[None])
        xin = []
        for l in range(L):
            if in_hook == "mlp.hook_in":  # exists only after circuit-tracer wraps the MLP
                x = cache[f"blocks.{l}.ln2.hook_normalized"] * tl.blocks[l].ln2.w
            else:
                x = cache[f"blocks.{l}.{in_hook}"]
            xin.append(x[0].detach().numpy())
        xin = np.stack(xin)
        mlp_true = np.stack([cache[f"blocks.{l}.hook_mlp_out"][0].numpy() for l in range(L)])
        if out_hook == "mlp.hook_out" and spec["arch"] == "gemma2":
            raise NotImplementedError("mlp.hook_out on Gemma-2 is before ln2_post; not calibrated here")
        del cache
    else:
        xin, mlp_true = hf_hook_values(hf_model, spec["arch"], tokens, in_hook, out_hook)

    scan = f"jcircuits/{name}"
    tensors = (build_plt if spec["kind"] == "plt" else build_clt)(rng, spec, xin, mlp_true)
    tc, tc_cfg = write_and_load_transcoders(case_dir, spec, tensors, scan)
    if backend == "transformerlens":
        tl._configure_replacement_model(tc)
        with torch.no_grad():
            tl_logits = tl(tokens[None])[0].float().numpy()
    else:
        tl = build_nnsight_model(hf_model, model_dir, tc)
        if not torch.equal(tl.ensure_tokenized(PROMPT), tokens):
            raise RuntimeError(f"{name}: the nnsight model tokenizes the prompt differently")
        tl_logits = tl.get_activations(tokens)[0][0].float().numpy()
    err = float(np.max(np.abs(hf_logits - tl_logits)))
    if not err <= ATOL_LOGITS:
        raise RuntimeError(f"{name}: HF vs {backend} logits differ by {err:.3g} > {ATOL_LOGITS}")

    # --- activations, reconstruction, errors (as circuit-tracer's setup_attribution computes them) ---
    _, acts_dense = tl.get_activations(tokens)
    acts_dense = acts_dense.float()
    ctx = tl.setup_attribution(tokens)
    am = ctx.activation_matrix.coalesce()
    if not torch.equal(am.to_dense(), acts_dense):
        raise RuntimeError(f"{name}: get_activations != setup_attribution activation matrix")
    if backend == "transformerlens":
        in_cache, in_hooks, _ = tl.get_caching_hooks(lambda n: tl.feature_input_hook in n)
        out_cache, out_hooks, _ = tl.get_caching_hooks(lambda n: tl.feature_output_hook in n)
        with torch.no_grad():
            tl.run_with_hooks(tokens, fwd_hooks=in_hooks + out_hooks)
        mlp_in = torch.cat(list(in_cache.values()), 0)
        mlp_out = torch.cat(list(out_cache.values()), 0)
        assert list(in_cache) == [f"blocks.{l}.{tl.feature_input_hook}" for l in range(L)], list(in_cache)
        assert list(out_cache) == [f"blocks.{l}.{tl.feature_output_hook}" for l in range(L)], list(out_cache)
        residual_token_vectors = tl.W_E[tokens].detach()
    else:
        mlp_in, mlp_out, residual_token_vectors = nnsight_hook_values(tl, tokens)
    comps = tc.compute_attribution_components(mlp_in, tl.zero_positions)
    reconstruction = comps["reconstruction"]
    error_vectors = ctx.error_vectors
    if not torch.allclose(error_vectors[:, 1:], (mlp_out - reconstruction)[:, 1:], atol=1e-6):
        raise RuntimeError(f"{name}: error vectors inconsistent")
    if not np.allclose(mlp_in.numpy(), xin, atol=1e-5):
        raise RuntimeError(f"{name}: feature-input hook values differ from the calibration values")
    # circuit-tracer's token-node vectors against the vectors written into the residual stream: the same on
    # the TransformerLens backend (TL's W_E includes Gemma's sqrt(d_model)); the nnsight backend takes rows
    # of the embedding matrix (`embed_weight`), which for Gemma lack the sqrt(d_model) its embedding module
    # multiplies in, so its token-node edges come out too small by that factor
    token_scale = common_scale(residual_token_vectors, ctx.token_vectors)
    if backend == "transformerlens" and token_scale != 1.0:
        raise RuntimeError(f"{name}: TL token vectors differ from W_E[tokens] (scale {token_scale})")
    shipped = None
    if token_scale != 1.0:
        # keep the token columns circuit-tracer computes as shipped, then give it the residual-stream token
        # vectors (scaling `embed_weight`, read only for them) so that every graph below, and its feature
        # ranking, pruning and scores, use the token-node definition of the TL backend and of jcircuits
        shipped = attribute(tokens, tl, max_feature_nodes=None, batch_size=ATTR_BATCH_SIZE)
        tl.embed_weight = tl.embed_weight * token_scale
        ctx = tl.setup_attribution(tokens)
        if not torch.allclose(ctx.token_vectors, residual_token_vectors, rtol=1e-6, atol=1e-6):
            raise RuntimeError(f"{name}: scaled embed_weight does not give the residual token vectors")
    token_vectors = ctx.token_vectors

    active = am.indices().T.contiguous()  # [n, 3] (layer, pos, feat), lexicographic
    values = am.values()
    n_active = int(active.shape[0])
    per_layer_pos = torch.zeros(L, T, dtype=torch.long)
    for l, p, _ in active.tolist():
        per_layer_pos[l, p] += 1
    if int(per_layer_pos[:, 1:].min()) == 0 and spec["kind"] == "plt":
        print("  note: some (layer, pos>=1) have no active feature", file=sys.stderr)
    if spec["kind"] == "clt" and int(per_layer_pos[:, -1].sum()) == 0:
        raise RuntimeError(
            "CLT needs an active feature at the last position (circuit-tracer infers n_pos from it)"
        )

    # --- attribution: full graph ---
    torch.manual_seed(0)
    g = attribute(tokens, tl, max_feature_nodes=None, batch_size=ATTR_BATCH_SIZE)
    assert torch.equal(g.active_features.cpu(), active) and torch.equal(g.activation_values.cpu(), values)
    n_sel = max(1, n_active // 3)
    g_sel = attribute(
        tokens, tl, max_feature_nodes=n_sel, batch_size=SEL_BATCH_SIZE, update_interval=SEL_UPDATE_INTERVAL
    )
    tok_cols = slice(n_active + L * T, n_active + (L + 1) * T)
    if shipped is None:
        token_columns_shipped = g.adjacency_matrix[:, tok_cols]
    else:  # the shipped graph differs in its token columns only, by the factor 1 / token_scale
        a, b = shipped.adjacency_matrix, g.adjacency_matrix
        other = torch.ones(a.shape[1], dtype=torch.bool)
        other[tok_cols] = False
        if not torch.allclose(a[:, other], b[:, other], rtol=1e-5, atol=1e-6 * float(b.abs().max())):
            raise RuntimeError(f"{name}: the shipped graph differs outside its token columns")
        if not torch.allclose(a[:, tok_cols] * token_scale, b[:, tok_cols], rtol=1e-5, atol=1e-6):
            raise RuntimeError(
                f"{name}: the shipped token columns are not 1/{token_scale} of the scaled ones"
            )
        token_columns_shipped = a[:, tok_cols]
    pr = prune_graph(g)  # default node_threshold=0.8, edge_threshold=0.98
    replacement_score, completeness_score = compute_graph_scores(g)
    n_logits = len(g.logit_targets)
    if n_logits < 2:
        raise RuntimeError(f"{name}: only {n_logits} logit target(s); the output distribution is collapsed")

    # --- interventions ---
    valsnp = values.numpy()
    order = np.argsort(-valsnp, kind="stable")
    picks, used = [], set()
    for j in order:  # strongest features at distinct (layer,pos), skipping the last layer where possible
        l, p, f = active[j].tolist()
        if (l, p) in used or l == L - 1:
            continue
        picks.append(j)
        used.add((l, p))
        if len(picks) == 3:
            break
    interventions = []
    for k, j in enumerate(picks):
        l, p, f = active[j].tolist()
        val = 0.0 if k < 2 else 2.0 * float(valsnp[j])
        interventions.append((l, p, f, val))
    il, iacts = tl.feature_intervention(tokens, interventions)
    il_c, iacts_c = tl.feature_intervention(tokens, interventions, constrained_layers=range(L))
    t_gen = time.time()
    generations = record_generations(tl, backend, tokens, interventions, spec["n_features"])
    t_gen = time.time() - t_gen

    ref = {
        "tokens": tokens.numpy().astype(np.int64),
        "hf_logits": hf_logits,
        "tl_logits": tl_logits,
        "activations": acts_dense.numpy(),
        "active_features": active.numpy().astype(np.int64),
        "activation_values": values.numpy(),
        "error_vectors": error_vectors.numpy(),
        "reconstruction": reconstruction.numpy(),
        "mlp_out": mlp_out.numpy(),
        "feature_input": mlp_in.numpy(),
        "token_vectors": token_vectors.numpy(),
        "token_vector_scale": np.float32(token_scale),
        "token_columns_shipped": token_columns_shipped.numpy(),
        "adjacency_matrix": g.adjacency_matrix.numpy(),
        "selected_features": g.selected_features.numpy().astype(np.int64),
        "logit_token_ids": g.logit_token_ids.numpy().astype(np.int64),
        "logit_probabilities": g.logit_probabilities.numpy(),
        "adjacency_matrix_sel": g_sel.adjacency_matrix.numpy(),
        "selected_features_sel": g_sel.selected_features.numpy().astype(np.int64),
        "logit_token_ids_sel": g_sel.logit_token_ids.numpy().astype(np.int64),
        "logit_probabilities_sel": g_sel.logit_probabilities.numpy(),
        "node_mask": pr.node_mask.numpy(),
        "edge_mask": pr.edge_mask.numpy(),
        "cumulative_scores": pr.cumulative_scores.numpy(),
        "replacement_score": np.float32(replacement_score),
        "completeness_score": np.float32(completeness_score),
        "intervention": np.array(interventions, dtype=np.float32),
        "intervened_logits": il[0].float().numpy(),
        "intervened_logits_constrained": il_c[0].float().numpy(),
        "intervened_activations": iacts.float().numpy(),
        "intervened_activations_constrained": iacts_c.float().numpy(),
        **generations,
    }
    for k, v in ref.items():
        if isinstance(v, np.ndarray) and v.dtype == np.float64:
            ref[k] = v.astype(np.float32)
    np.savez(case_dir / "ref.npz", **ref)

    meta = {
        "case": name,
        "prompt": PROMPT,
        "tokens": ref["tokens"].tolist(),
        "token_strings": hf_tok.convert_ids_to_tokens(ref["tokens"].tolist()),
        "circuit_tracer_version": circuit_tracer.__version__,
        "torch_version": torch.__version__,
        "transformers_version": importlib.metadata.version("transformers"),
        "transformer_lens_version": importlib.metadata.version("transformer-lens"),
        "architecture": spec["arch"],
        "backend": backend,
        "tl_model_name": model_name,
        "token_vector_scale": token_scale,
        "transcoder": {
            "kind": spec["kind"],
            "activation": spec["act"],
            "skip": spec["skip"],
            "n_features": spec["n_features"],
            "config": tc_cfg,
        },
        "sizes": {
            "n_layers": L,
            "n_pos": T,
            "d_model": D_MODEL,
            "d_vocab": vocab_size,
            "n_active_features": n_active,
            "n_logit_targets": n_logits,
            "n_nodes": int(g.adjacency_matrix.shape[0]),
            "n_selected_sel": int(g_sel.selected_features.shape[0]),
            "n_logit_targets_sel": len(g_sel.logit_targets),
            "active_fraction": n_active / (L * (T - 1) * spec["n_features"]),
        },
        "settings": {
            "attribute_full": {
                "max_feature_nodes": None,
                "batch_size": ATTR_BATCH_SIZE,
                "max_n_logits": 10,
                "desired_logit_prob": 0.95,
                "attribution_targets": None,
            },
            "attribute_sel": {
                "max_feature_nodes": n_sel,
                "batch_size": SEL_BATCH_SIZE,
                "update_interval": SEL_UPDATE_INTERVAL,
                "max_n_logits": 10,
                "desired_logit_prob": 0.95,
            },
            "prune_graph": {"node_threshold": 0.8, "edge_threshold": 0.98},
            "feature_intervention": {
                "interventions": interventions,
                "freeze_attention": True,
                "apply_activation_function": True,
                "constrained": "constrained_layers=range(n_layers)",
            },
            "feature_intervention_generate": {
                "settings": list(GENERATION_SETTINGS),
                "max_new_tokens": N_GEN,
                "do_sample": False,
                "stop_at_eos": False,
                "freeze_attention": True,
                "use_past_kv_cache": True,
                "interventions": {
                    s: generations[f"generation_interventions_{s}"].tolist() for s in GENERATION_SETTINGS
                },
            },
            "dtype": "float32",
            "device": "cpu",
        },
        "logit_targets": [{"token": t.token_str, "id": int(t.vocab_idx)} for t in g.logit_targets],
        "max_abs_hf_minus_tl_logits": err,
        "conventions": {
            "activations": "dense [L,T,F] post-activation (JumpReLU: x*(x>threshold); ReLU), "
            "position 0 zeroed",
            "error_vectors": "mlp_out - reconstruction, position 0 zeroed",
            "reconstruction": "as circuit-tracer computes it: sum a*W_dec + b_dec (+ skip(x)); "
            "at position 0 the activations are zero so it is b_dec (+ skip)",
            "mlp_out": "true value at blocks.{l}.<feature_output_hook> "
            "(Gemma-2 hook_mlp_out is after ln2_post)",
            "feature_input": "value at blocks.{l}.<feature_input_hook> that the encoder reads",
            "token_vectors": "TL W_E[tokens] (Gemma: HF embedding * sqrt(d_model), the vector written "
            "into the residual stream); token node edges are grad(hook_embed) . token_vectors",
            "node_order": "[active features (layer,pos,feat lexicographic) | errors layer-major (l*T+t) | "
            "tokens (T) | logits (K, in logit_token_ids order)]; A[target, source]",
        },
        "seconds": round(time.time() - t0, 2),
        "seconds_generation": round(t_gen, 2),
    }
    with open(case_dir / "meta.json", "w") as f:
        json.dump(meta, f, indent=1)
    return meta


# ----------------------------------------------------------------------------------------------------
# Generation with interventions
# ----------------------------------------------------------------------------------------------------

N_GEN = 6  # new tokens per generation (the first comes from the prompt pass, the rest from KV-cache steps)
GENERATION_SETTINGS = ("closed", "open", "past_prompt")


def generation_interventions(interventions, T: int) -> dict[str, list]:
    """The interventions of each generation setting, positions as ints or slices (see README.md).

    closed: the three point edits of `intervention` plus a closed slice, all inside the prompt, so only the
    prompt pass is edited. open: the same plus an open-ended slice starting inside the prompt, which
    circuit-tracer also applies to every new token. past_prompt: only an open-ended slice starting two
    positions after the prompt, where circuit-tracer's semantics (every new token) and absolute positions
    differ."""
    l2, _, f2, _ = interventions[2]
    return {
        "closed": [*interventions, (0, slice(2, T - 2), f2, 3.0)],
        "open": [*interventions, (l2, slice(T - 3, None), f2, 5.0)],
        "past_prompt": [(l2, slice(T + 2, None), f2, 5.0)],
    }


def _encode_interventions(ivs) -> np.ndarray:
    """[n, 5] float32 rows (layer, start, stop, feature, value); an int position p is stored as (p, p + 1),
    an open-ended slice with stop = -1."""
    rows = []
    for layer, pos, feat, val in ivs:
        if isinstance(pos, slice):
            assert pos.step is None and pos.start is not None and pos.start >= 0
            start, stop = pos.start, -1 if pos.stop is None else pos.stop
        else:
            start, stop = pos, pos + 1
        rows.append((layer, start, stop, feat, val))
    return np.array(rows, dtype=np.float32)


def record_generations(
    tl, backend: str, tokens: torch.Tensor, interventions, n_features: int
) -> dict[str, np.ndarray]:
    """Greedy `feature_intervention_generate` (defaults: freeze_attention=True, KV cache) for each setting:
    the new token ids [N_GEN], the logits [N_GEN, V] it returns (prompt pass's last position, then one row
    per KV-cache step; after any final soft-cap) and its activations [L, T + N_GEN - 1, F] (prompt pass with
    position 0 zeroed, then each processed new token).

    The nnsight backend runs transformers' `generate` (greedy with do_sample=False, KV cache; its prompt pass
    keeps the last position's logits only) and returns the decoded text instead of ids; the ids are the rows'
    argmax, checked against the decoded text."""
    T = int(tokens.shape[0])
    out = {}
    for name, ivs in generation_interventions(interventions, T).items():
        if backend == "transformerlens":
            seq, logits, acts = tl.feature_intervention_generate(
                tokens[None], ivs, max_new_tokens=N_GEN, do_sample=False, stop_at_eos=False, verbose=False
            )
            seq = torch.as_tensor(seq).reshape(-1)
        else:
            text, logits, acts = tl.feature_intervention_generate(
                tokens[None], ivs, max_new_tokens=N_GEN, do_sample=False
            )
            seq = torch.cat([tokens, logits.argmax(-1)])  # shapes are checked below
            if text != tl.tokenizer.decode(seq):
                raise RuntimeError(f"{name}: generated text {text!r} is not the argmax continuation")
        if not torch.equal(seq[:T], tokens) or seq.shape[0] != T + N_GEN:
            raise RuntimeError(f"feature_intervention_generate returned {tuple(seq.shape)} tokens")
        logits = logits.float()
        if tuple(logits.shape) != (N_GEN, tl.cfg.d_vocab):
            raise RuntimeError(f"feature_intervention_generate returned logits {tuple(logits.shape)}")
        new = seq[T:]
        if not torch.equal(new, logits.argmax(-1)):  # greedy: each token is its row's argmax
            raise RuntimeError(f"{name}: generated tokens are not the argmax of the returned logits")
        out[f"generation_interventions_{name}"] = _encode_interventions(ivs)
        out[f"generated_tokens_{name}"] = new.numpy().astype(np.int64)
        out[f"generated_logits_{name}"] = logits.numpy()
        acts = acts.float()
        if tuple(acts.shape) != (tl.cfg.n_layers, T + N_GEN - 1, n_features):
            raise RuntimeError(f"feature_intervention_generate returned activations {tuple(acts.shape)}")
        out[f"generated_activations_{name}"] = acts.numpy()
    return out


def script_hash() -> str:
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--cases", default=",".join(CASES), help="comma-separated subset of: " + ",".join(CASES))
    args = ap.parse_args(argv)
    names = [c for c in args.cases.split(",") if c]
    unknown = [c for c in names if c not in CASES]
    if unknown:
        ap.error(f"unknown case(s) {unknown}; known: {list(CASES)}")
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    torch.use_deterministic_algorithms(True, warn_only=True)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = args.out / "STAMP"
    if stamp.exists():
        stamp.unlink()
    t0 = time.time()
    for name in names:
        m = make_case(name, CASES[name], args.out)
        s = m["sizes"]
        print(
            f"{name}: T={s['n_pos']} active={s['n_active_features']} ({100 * s['active_fraction']:.1f}%) "
            f"logit_targets={s['n_logit_targets']} "
            f"nodes={s['n_nodes']} sel={s['n_selected_sel']} |hf-tl|={m['max_abs_hf_minus_tl_logits']:.2e} "
            f"{m['seconds']}s",
            flush=True,
        )
    stamp.write_text(
        json.dumps({"script_hash": script_hash(), "cases": names, "complete": names == list(CASES)}) + "\n"
    )
    print(f"all {len(names)} case(s) in {time.time() - t0:.1f}s -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
