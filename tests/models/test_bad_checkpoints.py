"""Bad model inputs are refused with a message naming the problem: non-finite weights (named by tensor, on the
host and the sharded path), pickle files, files for directories, paths that do not exist."""

from __future__ import annotations

import hf_tiny
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from jcircuits.cli import main
from jcircuits.models.loading import load_params, resolve_model_dir


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    model = hf_tiny.build(hf_tiny.llama_config(num_hidden_layers=2, tied=False), seed=5)
    return hf_tiny.save(model, tmp_path_factory.mktemp("llama"))


def _poisoned(src, dst, key: str, value: float):
    import shutil

    shutil.copytree(src, dst)
    f = dst / "model.safetensors"
    tensors = load_file(f)
    t = tensors[key].copy()
    t.flat[7] = value
    tensors[key] = t
    save_file(tensors, f, metadata={"format": "pt"})
    return dst


@pytest.mark.parametrize("value", [np.nan, np.inf], ids=["nan", "inf"])
def test_non_finite_weights_are_refused_naming_the_tensor(llama_dir, tmp_path, value):
    key = "model.layers.1.mlp.down_proj.weight"
    d = _poisoned(llama_dir, tmp_path / "m", key, value)
    with pytest.raises(ValueError, match=rf"{key}.*non-finite"):
        load_params(d)


def test_sharded_loading_refuses_non_finite_weights_too(llama_dir, tmp_path):
    from jcircuits.scale.sharded_loading import load_model_sharded
    from jcircuits.scale.sharding import make_mesh

    key = "model.layers.0.self_attn.q_proj.weight"
    d = _poisoned(llama_dir, tmp_path / "m", key, np.nan)
    with pytest.raises(ValueError, match=rf"{key}.*non-finite"):
        load_model_sharded(d, make_mesh())  # every visible device on the data axis


def test_cli_names_the_tensor_and_exits_2(llama_dir, tmp_path, capsys):
    key = "model.embed_tokens.weight"
    from tiny import tiny_transcoders

    from jcircuits.transcoders import save_transcoders

    d = _poisoned(llama_dir, tmp_path / "m", key, -np.inf)
    save_transcoders(tiny_transcoders(load_params(llama_dir)[1]), tmp_path / "tc")
    code = main(["attribute", "--model", str(d), "--transcoders", str(tmp_path / "tc"), "--tokens", "1,2,3"])
    err = capsys.readouterr().err
    assert code == 2 and key in err and "Traceback" not in err


def test_model_paths_that_are_not_model_directories_say_what_they_are(tmp_path):
    (tmp_path / "model.pt").write_bytes(b"\x80\x04not really")
    with pytest.raises(ValueError, match="pickle file, and jcircuits never unpickles"):
        resolve_model_dir(tmp_path / "model.pt")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(NotADirectoryError, match="is a file"):
        resolve_model_dir(tmp_path / "config.json")
    for missing in ["./models/gemma", str(tmp_path / "nope"), "org/model.safetensors"]:
        with pytest.raises(FileNotFoundError, match="no such model directory"):
            resolve_model_dir(missing)


def test_a_hub_id_not_in_the_cache_offline_says_it_was_read_as_a_hub_id(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    with pytest.raises(FileNotFoundError, match="not a local directory, so it was read as a Hub id.*HF_HUB_OFFLINE"):
        resolve_model_dir("some-org/some-model")
