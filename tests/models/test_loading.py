"""``jcircuits.models.loading``: HF directories and Hub ids to ``Params``, orbax round trips, and input errors."""

from __future__ import annotations

import json
import shutil

import hf_tiny
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jcircuits.models import forward
from jcircuits.models.loading import (
    load_params,
    load_params_orbax,
    params_from_numpy,
    params_to_numpy,
    resolve_model_dir,
    save_params_orbax,
)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    model = hf_tiny.build(hf_tiny.llama_config(num_hidden_layers=2, tied=False), seed=5)
    return hf_tiny.save(model, tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory):
    model = hf_tiny.build(hf_tiny.gemma2_config(num_hidden_layers=2), seed=6)
    return hf_tiny.save(model, tmp_path_factory.mktemp("gemma"))


def _assert_params_equal(a, b):
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    assert ta == tb
    for x, y in zip(la, lb, strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_hf_dir_to_orbax_and_back_is_bitwise_equal(gemma_dir, tmp_path, dtype):
    params, cfg = load_params(gemma_dir, dtype=dtype)
    assert params.unembed is None and params.layers.post_attn_norm.dtype == dtype
    save_params_orbax(tmp_path / "ckpt", params, cfg)
    assert (
        json.loads((tmp_path / "ckpt" / "model_config.json").read_text())["model_config"]["arch"] == "gemma2"
    )
    again, cfg2 = load_params_orbax(tmp_path / "ckpt")
    assert cfg2 == cfg
    _assert_params_equal(params, again)


def test_untied_llama_orbax_round_trip_keeps_unembed(llama_dir, tmp_path):
    params, cfg = load_params(llama_dir)
    assert params.unembed.shape == (cfg.d_model, cfg.vocab_size) and params.layers.post_mlp_norm is None
    save_params_orbax(tmp_path / "c", params, cfg)
    again, _ = load_params_orbax(tmp_path / "c")
    _assert_params_equal(params, again)


def test_numpy_tree_round_trip_and_shape_check(llama_dir):
    params, cfg = load_params(llama_dir)
    tree = params_to_numpy(params)
    _assert_params_equal(params, params_from_numpy(tree, cfg))
    tree["layers"]["wk"] = tree["layers"]["wk"][:, :, :1]
    with pytest.raises(ValueError, match=r"wk.*expected \(2, 64, 2, 16\), got \(2, 64, 1, 16\)"):
        params_from_numpy(tree, cfg)


def test_load_params_orbax_without_config_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="model_config.json"):
        load_params_orbax(tmp_path)


def test_hub_repo_not_cached_while_offline_raises(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    with pytest.raises(FileNotFoundError, match=r"'some-org/some-model'.*HF_HUB_OFFLINE is set"):
        load_params("some-org/some-model")
    with pytest.raises(FileNotFoundError, match=r"revision v2"):
        load_params("hf://some-org/some-model?revision=v2")


def test_hub_repo_in_the_cache_resolves_offline(monkeypatch, tmp_path, llama_dir):
    """A snapshot laid out as huggingface_hub caches it is found without the network."""
    home = tmp_path / "hf_home"
    repo = home / "hub" / "models--org--tiny-llama"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(llama_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    assert resolve_model_dir("org/tiny-llama") == repo / "snapshots" / commit
    from_hub, cfg = load_params("hf://org/tiny-llama?revision=main")
    local, _ = load_params(llama_dir)
    _assert_params_equal(from_hub, local)


def test_local_path_that_is_neither_dir_nor_repo_id(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither an existing directory"):
        resolve_model_dir(str(tmp_path / "a" / "b" / "c"))


def test_bad_tokens_are_rejected_with_clear_errors(llama_dir):
    params, cfg = load_params(llama_dir)
    with pytest.raises(ValueError, match="empty prompt"):
        forward(params, cfg, np.zeros((1, 0), np.int32))
    with pytest.raises(ValueError, match="longer than the model's context"):
        forward(params, cfg, np.ones((1, cfg.max_position_embeddings + 1), np.int32))
    with pytest.raises(ValueError, match=r"out of vocabulary \[0, 96\): \[96\]"):
        forward(params, cfg, np.array([[1, 5, hf_tiny.VOCAB]], np.int32))
