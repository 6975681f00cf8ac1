"""``jcircuits convert``: PyTorch state dicts into safetensors, read with ``torch.load(weights_only=True)`` and
only on that request; the loaders themselves never unpickle. Files are made here with the test env's torch."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import hf_tiny
import numpy as np
import pytest
import torch
from safetensors import safe_open

from jcircuits.cli import main
from jcircuits.models.loading import load_params, params_to_numpy


def _read(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)


def test_a_nested_pt_file_is_flattened_with_shared_tensors_cloned_and_dtypes_kept(tmp_path, capsys):
    g = torch.Generator().manual_seed(0)
    embed = torch.randn(10, 4, generator=g)
    flat = torch.arange(12, dtype=torch.float32)
    state = {
        "model": {"embed": embed, "head": embed, "bf16": torch.randn(3, 2, generator=g).to(torch.bfloat16)},
        "parts": [flat[:4].view(2, 2), flat[4:]],  # views of one storage
        "steps": torch.tensor([7, 8], dtype=torch.int64),
        "epoch": 3,  # not a tensor: skipped, and said so
        "cfg": {"name": "sae"},
    }
    torch.save(state, tmp_path / "sae.pt")
    from safetensors.torch import save_file

    with pytest.raises(RuntimeError, match="share memory"):  # what convert has to work around
        save_file({"a": embed, "b": embed}, str(tmp_path / "direct.safetensors"))
    assert main(["convert", str(tmp_path / "sae.pt"), "-o", str(tmp_path / "out")]) == 0
    out = capsys.readouterr()
    assert (
        "6 tensors" in out.out and "skipped 2 non-tensor value(s): sae.pt: epoch, sae.pt: cfg.name" in out.err
    )
    got = _read(tmp_path / "out" / "sae.safetensors")
    assert set(got) == {"model.embed", "model.head", "model.bf16", "parts.0", "parts.1", "steps"}
    for key, want in [
        ("model.embed", embed), ("model.head", embed), ("model.bf16", state["model"]["bf16"]),
        ("parts.0", flat[:4].view(2, 2)), ("parts.1", flat[4:]), ("steps", state["steps"]),
    ]:  # fmt: skip
        assert (
            got[key].dtype == want.dtype and got[key].shape == want.shape and torch.equal(got[key], want)
        ), key
    # an explicit file name works too; an existing output is never overwritten
    assert main(["convert", str(tmp_path / "sae.pt"), "-o", str(tmp_path / "one.safetensors")]) == 0
    assert set(_read(tmp_path / "one.safetensors")) == set(got)
    capsys.readouterr()
    assert main(["convert", str(tmp_path / "sae.pt"), "-o", str(tmp_path / "one.safetensors")]) == 2
    assert "exists" in capsys.readouterr().err


def test_a_sharded_hf_pytorch_checkpoint_becomes_a_sharded_safetensors_one_that_loads_the_same(
    tmp_path, capsys
):
    model = hf_tiny.build(hf_tiny.llama_config(tied=True), seed=3)
    reference = hf_tiny.save(model, tmp_path / "safetensors")  # transformers' own safetensors checkpoint
    src = tmp_path / "pytorch"
    src.mkdir()
    (src / "config.json").write_text((reference / "config.json").read_text())
    state = model.state_dict()
    assert state["lm_head.weight"].data_ptr() == state["model.embed_tokens.weight"].data_ptr()  # tied: shared
    keys = list(state)
    shards = {
        "pytorch_model-00001-of-00002.bin": keys[: len(keys) // 2],
        "pytorch_model-00002-of-00002.bin": keys[len(keys) // 2 :],
    }
    shards["pytorch_model-00001-of-00002.bin"].append(
        "lm_head.weight"
    )  # with the embedding it shares memory with
    shards["pytorch_model-00002-of-00002.bin"].remove("lm_head.weight")
    for name, names in shards.items():
        torch.save({k: state[k] for k in names}, src / name)
    weight_map = {k: name for name, names in shards.items() for k in names}
    (src / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))

    with pytest.raises(FileNotFoundError, match=r"PyTorch pickles .*`jcircuits convert"):
        load_params(src)  # loading never unpickles; it says how to convert
    assert main(["convert", str(src), "-o", str(tmp_path / "converted")]) == 0
    assert "copied 1 other file(s)" in capsys.readouterr().out
    out = tmp_path / "converted"
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ]
    assert index["weight_map"] == {k: v.replace("pytorch_model", "model").replace(".bin", ".safetensors")
                                   for k, v in weight_map.items()}  # fmt: skip
    assert index["metadata"]["total_size"] == sum(t.nbytes for t in state.values())
    assert not list(out.glob("*.bin"))
    ours, cfg = load_params(out)
    theirs, cfg_ref = load_params(reference)
    assert cfg == cfg_ref
    a, b = params_to_numpy(ours), params_to_numpy(theirs)
    flat_a = {k: np.asarray(v) for k, v in _flatten(a).items()}
    flat_b = {k: np.asarray(v) for k, v in _flatten(b).items()}
    assert flat_a.keys() == flat_b.keys() and all(np.array_equal(flat_a[k], flat_b[k]) for k in flat_a)


def _flatten(tree, prefix=""):
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix: tree}


class _Touch:
    """Unpickling this would create a file (a stand-in for any code a crafted pickle runs)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_a_malicious_pickle_is_refused_by_weights_only_and_never_runs(tmp_path, capsys):
    marker = tmp_path / "pwned"
    torch.save({"weight": torch.ones(2), "payload": _Touch(marker)}, tmp_path / "evil.pt")
    assert main(["convert", str(tmp_path / "evil.pt"), "-o", str(tmp_path / "evil.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "weights_only=True" in err and "refused" in err and len(err.strip().splitlines()) == 1
    assert not marker.exists() and not (tmp_path / "evil.safetensors").exists()
    torch.load(tmp_path / "evil.pt", weights_only=False)  # the file really does run code when fully unpickled
    assert marker.exists()


def test_without_torch_convert_says_how_to_get_it_and_other_inputs_are_named(tmp_path, capsys, monkeypatch):
    torch.save({"w": torch.ones(1)}, tmp_path / "w.pt")
    (tmp_path / "notes.txt").write_text("hi")
    assert main(["convert", str(tmp_path / "notes.txt"), "-o", str(tmp_path / "x.safetensors")]) == 2
    assert "not a PyTorch state dict" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["convert", str(empty), "-o", str(tmp_path / "y")]) == 2
    assert "holds no PyTorch state dict" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    assert main(["convert", str(tmp_path / "w.pt"), "-o", str(tmp_path / "w.safetensors")]) == 2
    err = capsys.readouterr().err
    assert (
        "needs torch, which is not installed: `pip install torch`" in err
        and len(err.strip().splitlines()) == 1
    )
    assert not (tmp_path / "w.safetensors").exists()
