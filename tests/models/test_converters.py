"""``converters``: the safetensors glue (sharded checkpoints, dtypes) and the HF Gemma-2 / Llama-3 key maps."""

from __future__ import annotations

import json
import struct
import subprocess
import sys

import hf_tiny
import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy
import safetensors.torch
import torch

from jcircuits_converters import hf as hfc
from jcircuits_converters import safetensors_io as st


@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory):
    model = hf_tiny.build(hf_tiny.gemma2_config(num_hidden_layers=2), seed=3)
    return hf_tiny.save(model, tmp_path_factory.mktemp("gemma")), model


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    model = hf_tiny.build(hf_tiny.llama_config(num_hidden_layers=2, tied=False), seed=4)
    return hf_tiny.save(model, tmp_path_factory.mktemp("llama")), model


def _state(model) -> dict[str, np.ndarray]:
    return {k: v.detach().float().numpy() for k, v in model.state_dict().items()}


def _assert_trees_equal(a, b, path=""):
    assert isinstance(a, dict) == isinstance(b, dict), path
    if isinstance(a, dict):
        assert a.keys() == b.keys(), f"{path}: {sorted(a)} vs {sorted(b)}"
        for k in a:
            _assert_trees_equal(a[k], b[k], f"{path}.{k}")
    else:
        assert a.dtype == b.dtype and a.shape == b.shape, f"{path}: {a.dtype}{a.shape} vs {b.dtype}{b.shape}"
        np.testing.assert_array_equal(a, b, err_msg=path)


# ------------------------------------------------------------------------------------------- safetensors


def test_reader_matches_reference_safetensors_on_a_transformers_file(gemma_dir):
    directory, _ = gemma_dir
    ours = st.load_file(directory / "model.safetensors")
    ref = safetensors.numpy.load_file(str(directory / "model.safetensors"))
    assert ours.keys() == ref.keys()
    for k in ref:
        np.testing.assert_array_equal(ours[k], ref[k], err_msg=k)


@pytest.mark.parametrize(
    "dtype", [np.float32, np.float16, np.float64, np.int64, np.int32, np.int8, np.uint8, bool]
)
def test_writer_output_reads_back_with_reference_and_ours(tmp_path, dtype):
    rng = np.random.default_rng(0)
    tensors = {
        "a.weight": (rng.normal(size=(5, 3)) * 50).astype(dtype),
        "scalar": np.asarray(3, dtype),
        "empty": np.zeros((0, 4), dtype),
    }
    path = tmp_path / "x.safetensors"
    st.save_file(tensors, path, metadata={"format": "pt"})
    ref = safetensors.numpy.load_file(str(path))
    with st.SafeFile(path) as f:
        assert f.metadata == {"format": "pt"}
        for k, v in tensors.items():
            np.testing.assert_array_equal(ref[k], v)
            got = f.get(k)
            assert got.dtype == v.dtype and got.shape == v.shape
            np.testing.assert_array_equal(got, v)


def test_bf16_checkpoint_written_by_torch_reads_exactly(tmp_path):
    x = torch.randn(7, 9, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    x[0, :3] = torch.tensor([float("inf"), -float("inf"), 1e-40])  # inf and a bf16 subnormal
    path = tmp_path / "bf16.safetensors"
    safetensors.torch.save_file({"w": x}, str(path))
    with st.SafeFile(path) as f:
        assert f.dtype_name("w") == "BF16"
        as_f32 = f.get("w")
        native = f.get("w", bf16="native")
    assert as_f32.dtype == np.float32
    np.testing.assert_array_equal(as_f32, x.float().numpy())
    assert native.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(native.astype(np.float32), x.float().numpy())


def test_float32_to_bf16_rounds_to_nearest_even_like_torch():
    rng = np.random.default_rng(1)
    bits = rng.integers(0, 2**32, size=20000, dtype=np.uint64).astype(np.uint32)
    x = bits.view(np.float32)
    x = x[np.isfinite(x)]
    # exact halfway cases
    ties = (np.arange(1, 200, dtype=np.uint32) << 16 | np.uint32(0x8000)).view(np.float32)
    x = np.concatenate([x, ties, np.float32([0.0, -0.0, np.inf, -np.inf, 3.4e38])])
    ours = x.astype(ml_dtypes.bfloat16).view(np.uint16)  # what the writer's dtype="BF16" does
    ref = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(ours, ref)
    assert np.isnan(np.float32([np.nan]).astype(ml_dtypes.bfloat16).astype(np.float32)).all()


def test_bf16_writer_round_trips_through_torch(tmp_path):
    x = np.random.default_rng(2).normal(size=(4, 6)).astype(np.float32)
    path = tmp_path / "w.safetensors"
    st.save_file({"w": x, "n": x.astype(ml_dtypes.bfloat16)}, path, dtype="BF16")
    ref = safetensors.torch.load_file(str(path))
    assert ref["w"].dtype == torch.bfloat16
    np.testing.assert_array_equal(ref["w"].float().numpy(), torch.from_numpy(x).bfloat16().float().numpy())
    np.testing.assert_array_equal(st.load_file(path)["n"], ref["w"].float().numpy())


def test_row_slice_reads_only_the_selected_rows(tmp_path):
    x = np.arange(60, dtype=np.float32).reshape(10, 2, 3)
    bits = x.astype(ml_dtypes.bfloat16).view(np.uint16)
    path = tmp_path / "r.safetensors"
    st.save_file({"x": x, "b": x.astype(ml_dtypes.bfloat16)}, path)
    with st.SafeFile(path) as f:
        np.testing.assert_array_equal(f.get("x", rows=slice(3, 7)), x[3:7])
        np.testing.assert_array_equal(f.get("x", rows=slice(8, None)), x[8:])
        np.testing.assert_array_equal(f.get("b", rows=slice(2, 4), bf16="native").view(np.uint16), bits[2:4])
        np.testing.assert_array_equal(f.get_slice("x")[3:7, 1:], x[3:7, 1:])


def test_missing_file_truncated_header_truncated_data_and_missing_key_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        st.SafeFile(tmp_path / "nope.safetensors")
    short = tmp_path / "short.safetensors"
    short.write_bytes(b"\x10\x00")
    with pytest.raises(st.SafetensorsError, match="truncated header"):
        st.SafeFile(short)
    lying = tmp_path / "lying.safetensors"
    lying.write_bytes(struct.pack("<Q", 1000) + b"{}")
    with pytest.raises(st.SafetensorsError, match="truncated or corrupt header"):
        st.SafeFile(lying)
    good = tmp_path / "good.safetensors"
    st.save_file({"w": np.ones((8, 8), np.float32)}, good)
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[:-10])
    with pytest.raises(st.SafetensorsError, match=r"cut\.safetensors: file is truncated"):
        st.SafeFile(cut)
    with st.SafeFile(good) as f, pytest.raises(KeyError, match=r"'bias' not found in .*good\.safetensors"):
        f.get("bias")


def test_sharded_writer_produces_an_index_the_reader_follows(tmp_path):
    tensors = {f"t{i}": np.full((16,), i, np.float32) for i in range(5)}
    written = st.save_sharded(tensors, tmp_path, max_shard_bytes=130)
    index = json.loads((tmp_path / st.INDEX_NAME).read_text())
    assert len(set(index["weight_map"].values())) == 3 and len(written) == 4
    with st.open_checkpoint(tmp_path) as ck:
        assert sorted(ck) == sorted(tensors)
        for k, v in tensors.items():
            np.testing.assert_array_equal(ck[k], v)
    (tmp_path / index["weight_map"]["t0"]).unlink()
    with pytest.raises(FileNotFoundError, match="missing"):
        st.open_checkpoint(tmp_path)


# ------------------------------------------------------------------------------------------------- HF maps


def test_gemma2_norm_names_map_to_our_norms(gemma_dir):
    directory, model = gemma_dir
    params, _ = hfc.load_hf_checkpoint(directory)
    layer = model.model.layers[1]
    for ours, theirs in [
        ("ln1", layer.input_layernorm),
        ("post_attn_norm", layer.post_attention_layernorm),
        ("ln2", layer.pre_feedforward_layernorm),
        ("post_mlp_norm", layer.post_feedforward_layernorm),
    ]:
        np.testing.assert_array_equal(params["layers"][ours][1], theirs.weight.detach().numpy(), err_msg=ours)
    assert "unembed" not in params  # tied
    q = layer.self_attn.q_proj.weight.detach().numpy()  # [H*E, D]: head h is rows h*E:(h+1)*E
    np.testing.assert_array_equal(params["layers"]["wq"][1][:, 2, :], q[2 * 16 : 3 * 16].T)
    o = layer.self_attn.o_proj.weight.detach().numpy()  # [D, H*E]
    np.testing.assert_array_equal(params["layers"]["wo"][1][3], o[:, 3 * 16 : 4 * 16].T)


def test_llama_post_attention_layernorm_is_the_mlp_input_norm(llama_dir):
    directory, model = llama_dir
    params, _ = hfc.load_hf_checkpoint(directory)
    np.testing.assert_array_equal(
        params["layers"]["ln2"][0], model.model.layers[0].post_attention_layernorm.weight.detach().numpy()
    )
    assert "post_attn_norm" not in params["layers"]
    np.testing.assert_array_equal(params["unembed"], model.lm_head.weight.detach().numpy().T)


@pytest.mark.parametrize("which", ["gemma", "llama"])
def test_params_to_hf_inverts_hf_to_params_bitwise(which, gemma_dir, llama_dir, tmp_path):
    directory, model = gemma_dir if which == "gemma" else llama_dir
    params, hf_config = hfc.load_hf_checkpoint(directory)
    state = hfc.params_to_hf(params, hf_config)
    ref = _state(model)
    if hf_config.get("tie_word_embeddings", True):
        ref.pop("lm_head.weight", None)
    assert state.keys() == ref.keys()
    for k in ref:
        np.testing.assert_array_equal(state[k], ref[k], err_msg=k)
    # write with our writer, read back with ours and with transformers
    out = hfc.save_hf_checkpoint(params, hf_config, tmp_path / "out")
    again, _ = hfc.load_hf_checkpoint(out)
    _assert_trees_equal(params, again)
    reloaded = type(model).from_pretrained(out, attn_implementation="eager")
    for k, v in _state(reloaded).items():
        np.testing.assert_array_equal(v, _state(model)[k], err_msg=k)


def test_sharded_transformers_checkpoint_loads_equal_to_single_file(llama_dir, tmp_path):
    directory, model = llama_dir
    hf_tiny.save(model, tmp_path, max_shard_size="40KB")
    assert (tmp_path / st.INDEX_NAME).is_file()
    assert len(list(tmp_path.glob("*.safetensors"))) > 2
    sharded, _ = hfc.load_hf_checkpoint(tmp_path)
    single, _ = hfc.load_hf_checkpoint(directory)
    _assert_trees_equal(sharded, single)


def test_bf16_checkpoint_converts_exactly(gemma_dir, tmp_path):
    directory, model = gemma_dir
    model16 = hf_tiny.build(hf_tiny.gemma2_config(num_hidden_layers=2), seed=3).to(torch.bfloat16)
    hf_tiny.save(model16, tmp_path)
    with st.open_checkpoint(tmp_path) as ck:
        assert {ck.dtype_name(k) for k in ck} == {"BF16"}
    params, _ = hfc.load_hf_checkpoint(tmp_path)
    assert params["embed"].dtype == np.float32
    np.testing.assert_array_equal(params["embed"], model16.model.embed_tokens.weight.detach().float().numpy())
    native, _ = hfc.load_hf_checkpoint(tmp_path, dtype=ml_dtypes.bfloat16)
    assert native["layers"]["wq"].dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(native["layers"]["wq"].astype(np.float32), params["layers"]["wq"])


def _rewrite(directory, dest, edit):
    """Copy an HF dir, applying ``edit`` to its state dict (dict name -> array)."""
    tensors = st.load_file(directory)
    edit(tensors)
    dest.mkdir()
    st.save_file(tensors, dest / "model.safetensors")
    (dest / "config.json").write_text((directory / "config.json").read_text())
    return dest


def test_missing_tensor_is_named(llama_dir, tmp_path):
    bad = _rewrite(llama_dir[0], tmp_path / "m", lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(hfc.ConversionError, match=r"missing tensors.*model\.layers\.1\.mlp\.up_proj\.weight"):
        hfc.load_hf_checkpoint(bad)


def test_unexpected_tensor_is_named(llama_dir, tmp_path):
    def add(t):
        t["model.layers.0.self_attn.q_proj.bias"] = np.zeros(64, np.float32)

    bad = _rewrite(llama_dir[0], tmp_path / "u", add)
    with pytest.raises(hfc.ConversionError, match=r"unexpected tensors.*q_proj\.bias"):
        hfc.load_hf_checkpoint(bad)


def test_misshaped_tensor_names_key_and_both_shapes(gemma_dir, tmp_path):
    def shrink(t):
        t["model.layers.0.self_attn.k_proj.weight"] = t["model.layers.0.self_attn.k_proj.weight"][:16]

    bad = _rewrite(gemma_dir[0], tmp_path / "s", shrink)
    with pytest.raises(
        hfc.ConversionError,
        match=r"model\.layers\.0\.self_attn\.k_proj\.weight: expected \(32, 64\), got \(16, 64\)",
    ):
        hfc.load_hf_checkpoint(bad)


def test_tied_checkpoint_with_lm_head_must_equal_embeddings(gemma_dir, tmp_path):
    same = _rewrite(
        gemma_dir[0],
        tmp_path / "same",
        lambda t: t.update({"lm_head.weight": t["model.embed_tokens.weight"]}),
    )
    params, _ = hfc.load_hf_checkpoint(same)
    assert "unembed" not in params

    def differ(t):
        t["lm_head.weight"] = t["model.embed_tokens.weight"] + 1

    bad = _rewrite(gemma_dir[0], tmp_path / "differ", differ)
    with pytest.raises(hfc.ConversionError, match="lm_head.weight differs"):
        hfc.load_hf_checkpoint(bad)


def test_unknown_model_type_is_rejected_by_the_converter():
    with pytest.raises(hfc.ConversionError, match="unsupported model_type 'mistral'"):
        hfc.Dims.from_hf({"model_type": "mistral"})


def test_converters_import_neither_jax_torch_nor_jcircuits():
    code = (
        "import sys, jcircuits_converters.hf, jcircuits_converters.safetensors_io; "
        "bad = [m for m in ('jax', 'torch', 'jcircuits', 'safetensors') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_conversion_peak_memory_is_about_one_copy_of_the_model(tmp_path):
    """Streaming from the memory map: reading a ~20 MB checkpoint allocates little beyond the output arrays."""
    import tracemalloc

    hf_config = {
        "model_type": "llama", "hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4,
        "num_key_value_heads": 2, "intermediate_size": 1024, "vocab_size": 2048, "tie_word_embeddings": False,
    }  # fmt: skip
    rng = np.random.default_rng(0)
    dims = hfc.Dims.from_hf(hf_config)
    state = {
        k: rng.standard_normal(shape, dtype=np.float32) for k, shape in hfc.expected_shapes(dims).items()
    }
    st.save_file(state, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(hf_config))
    size = sum(v.nbytes for v in state.values())
    del state
    tracemalloc.start()
    params, _ = hfc.load_hf_checkpoint(tmp_path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 1.25 * size, f"peak {peak / 1e6:.1f} MB for a {size / 1e6:.1f} MB model"
    assert params["layers"]["w_down"].shape == (4, 1024, 256)
