"""``config_from_hf``: published configs read to the right ``ModelConfig``; unknown or unimplemented settings
are
errors that name the offending key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jcircuits.models import ConfigError, ModelConfig, RopeScaling, config_from_hf

CONFIGS = Path(__file__).resolve().parents[1] / "data" / "configs"


def _hf(name: str) -> dict:
    return json.loads((CONFIGS / f"{name}.json").read_text())


def test_gemma2_2b_published_config():
    cfg = config_from_hf(CONFIGS / "gemma-2-2b.json")
    assert (cfg.arch, cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.d_mlp) == (
        "gemma2",
        2304,
        26,
        8,
        4,
        256,
        9216,
    )
    assert cfg.attn_scale == 256**-0.5 and cfg.attn_softcap == 50.0 and cfg.final_softcap == 30.0
    assert cfg.layer_windows[:4] == (4096, None, 4096, None)  # HF: layer 0 slides
    assert cfg.tie_embeddings and cfg.embed_scale and cfg.post_norms and cfg.norm_offset == 1.0
    assert (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) == (2, 1, 0)


def test_llama32_1b_published_config():
    cfg = config_from_hf(_hf("llama-3.2-1b"))
    assert cfg.rope_scaling == RopeScaling(32.0, 1.0, 4.0, 8192)
    assert cfg.rope_theta == 500000.0 and cfg.tie_embeddings and cfg.head_dim == 64
    assert cfg.layer_windows == (None,) * 16 and cfg.attn_softcap is None and cfg.norm_offset == 0.0


def test_llama31_8b_derives_head_dim_and_is_untied():
    cfg = config_from_hf(_hf("llama-3.1-8b"))
    assert cfg.head_dim == 128 and not cfg.tie_embeddings and cfg.rope_scaling.factor == 8.0


def test_transformers5_rope_parameters_spelling_reads_the_same():
    old = _hf("llama-3.2-1b")
    new = dict(old)
    scaling = new.pop("rope_scaling")
    new["rope_parameters"] = {**scaling, "rope_theta": new.pop("rope_theta")}
    assert config_from_hf(new) == config_from_hf(old)


def test_to_dict_from_dict_round_trip_and_hashable():
    for name in ("gemma-2-9b", "llama-3.1-8b"):
        cfg = config_from_hf(_hf(name))
        again = ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
        assert again == cfg and hash(again) == hash(cfg)


def test_unknown_model_type_is_rejected():
    with pytest.raises(ConfigError, match="unsupported model_type 'mistral'"):
        config_from_hf({**_hf("llama-3.2-1b"), "model_type": "mistral"})


def test_unknown_config_key_is_named():
    with pytest.raises(ConfigError, match=r"does not understand: \['mystery_scale'\]"):
        config_from_hf({**_hf("gemma-2-2b"), "mystery_scale": 2.0})


def test_unimplemented_rope_type_is_rejected():
    hf = _hf("llama-3.2-1b")
    hf["rope_scaling"] = {**hf["rope_scaling"], "rope_type": "yarn"}
    with pytest.raises(ConfigError, match="rope_type 'yarn' is not implemented"):
        config_from_hf(hf)


def test_missing_config_json_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        config_from_hf(tmp_path)
