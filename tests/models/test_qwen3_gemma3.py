"""Qwen3 and Gemma-3 (text) outside the forward pass: strict config reading, checked against transformers' own
reading of the same ``config.json`` (published configs and the tiny ones of ``hf_tiny``); the HF converter both
ways, for ``Gemma3ForCausalLM``, ``Qwen3ForCausalLM`` and the text tower of ``Gemma3ForConditionalGeneration``
checkpoints (both key layouts); sharded loading of the multimodal tower; the memory estimator's count of the
QK-norm weights. Forward parity is in ``test_models_parity.py``."""

from __future__ import annotations

import json
from pathlib import Path

import hf_tiny
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import Gemma3Config, Gemma3ForCausalLM, Gemma3TextConfig, Qwen3Config

from jcircuits.models import ConfigError, config_from_hf, forward
from jcircuits.models.loading import load_model, load_params
from jcircuits_converters import hf as hfc
from jcircuits_converters import safetensors_io as st

CONFIGS = Path(__file__).resolve().parents[1] / "data" / "configs"
TPU_CONFIGS = Path(__file__).resolve().parents[2] / "tpu" / "configs"


def _published(name: str) -> dict:
    return json.loads((CONFIGS / f"{name}.json").read_text())


def _hf_reading(hf: dict):
    """What transformers makes of a config: the text config object of the right class."""
    if hf["model_type"] == "gemma3":
        return Gemma3Config(**hf).text_config
    cls = {"gemma3_text": Gemma3TextConfig, "qwen3": Qwen3Config}[hf["model_type"]]
    return cls(**hf)


def _assert_reads_like_transformers(hf: dict):
    """Our ``ModelConfig`` agrees with transformers' reading on every field that changes the computation."""
    cfg, ref = config_from_hf(hf), _hf_reading(hf)
    assert (cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.d_mlp, cfg.vocab_size) == (
        ref.hidden_size,
        ref.num_hidden_layers,
        ref.num_attention_heads,
        ref.num_key_value_heads,
        ref.head_dim,
        ref.intermediate_size,
        ref.vocab_size,
    )
    assert cfg.rms_norm_eps == ref.rms_norm_eps and cfg.tie_embeddings == ref.tie_word_embeddings
    assert cfg.qk_norm
    window = ref.sliding_window
    want_windows = tuple(window if t == "sliding_attention" and window else None for t in ref.layer_types)
    assert cfg.layer_windows == want_windows
    if hf["model_type"] == "qwen3":
        assert cfg.attn_scale == ref.head_dim**-0.5 and cfg.norm_offset == 0.0 and not cfg.embed_scale
        assert cfg.rope_theta == ref.rope_parameters["rope_theta"] and cfg.rope_scaling is None
        return
    assert cfg.attn_scale == ref.query_pre_attn_scalar**-0.5 and cfg.norm_offset == 1.0 and cfg.embed_scale
    assert cfg.final_softcap == ref.final_logit_softcapping and cfg.attn_softcap is None
    full, local = ref.rope_parameters["full_attention"], ref.rope_parameters["sliding_attention"]
    assert cfg.rope_theta == full["rope_theta"] and cfg.local_rope_theta == local["rope_theta"]
    assert local["rope_type"] == "default"
    if full["rope_type"] == "linear":
        assert cfg.rope_scaling.rope_type == "linear" and cfg.rope_scaling.factor == full["factor"]
    else:
        assert full["rope_type"] == "default" and cfg.rope_scaling is None


@pytest.mark.parametrize(
    "name",
    ["qwen3-8b", "gemma-3-27b-it", "tpu:qwen3-8b", "tpu:qwen3-14b", "tpu:gemma-3-12b-it", "tpu:gemma-3-27b-it"],
)
def test_published_configs_read_like_transformers(name):
    if name.startswith("tpu:"):
        hf = json.loads((TPU_CONFIGS / f"{name[4:]}.hf.json").read_text())
    else:
        hf = _published(name)
    _assert_reads_like_transformers(hf)


@pytest.mark.parametrize(
    "conf",
    [
        hf_tiny.qwen3_config(),
        hf_tiny.qwen3_config(sliding=False, tied=True),
        hf_tiny.qwen3_config(layer_types=None, max_window_layers=1),  # sliding layers from max_window_layers
        hf_tiny.gemma3_config(),
        hf_tiny.gemma3_config(final_logit_softcapping=30.0, sliding_window_pattern=2),
        hf_tiny.gemma3_multimodal_config(),
    ],
    ids=["qwen3", "qwen3-full-tied", "qwen3-max-window-layers", "gemma3", "gemma3-pattern2-softcap", "gemma3-mm"],
)
def test_saved_tiny_configs_read_like_transformers(conf, tmp_path):
    conf.save_pretrained(tmp_path)  # the transformers>=5 spelling (rope_parameters keyed by layer type)
    _assert_reads_like_transformers(json.loads((tmp_path / "config.json").read_text()))


def test_gemma3_published_27b_layout():
    cfg = config_from_hf(_published("gemma-3-27b-it"))
    assert (cfg.arch, cfg.n_layers, cfg.head_dim, cfg.vocab_size) == ("gemma3", 62, 128, 262208)
    assert cfg.attn_scale == 168**-0.5 and cfg.rope_scaling.factor == 8.0 and cfg.local_rope_theta == 10000.0
    globals_ = [i for i, w in enumerate(cfg.layer_windows) if w is None]
    assert globals_ == list(range(5, 62, 6)) and set(cfg.layer_windows) == {1024, None}  # 5 local : 1 global
    assert cfg.layer_rope_index == tuple(int(w is not None) for w in cfg.layer_windows)


def test_gemma3_old_and_new_rope_spellings_read_the_same():
    old = {
        "model_type": "gemma3_text",
        "num_hidden_layers": 6,
        "rope_theta": 1e6,
        "rope_local_base_freq": 1e4,
        "rope_scaling": {"rope_type": "linear", "factor": 8.0},
    }
    new = {
        "model_type": "gemma3_text",
        "num_hidden_layers": 6,
        "rope_parameters": {
            "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
            "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
        },
    }
    assert config_from_hf(old) == config_from_hf(new)


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda h: h["text_config"].update(mystery=1), r"gemma3_text config has attributes .* \['mystery'\]"),
        (lambda h: h.update(audio_config={}), r"gemma3 \(multimodal\) config has attributes .* \['audio_config'\]"),
        (lambda h: h["text_config"].update(attn_logit_softcapping=50.0), "never applies"),
        (lambda h: h["text_config"].update(final_logit_softcapping=30.0), "Gemma3ForConditionalGeneration ignores"),
        (lambda h: h["text_config"].update(use_bidirectional_attention=True), "use_bidirectional_attention"),
        (lambda h: h["text_config"].update(rope_scaling={"rope_type": "yarn", "factor": 2.0}), "'yarn'"),
        (lambda h: h.pop("text_config"), "no text_config"),
    ],
)
def test_gemma3_config_errors_name_the_problem(edit, message):
    hf = _published("gemma-3-27b-it")
    edit(hf)
    with pytest.raises(ConfigError, match=message):
        config_from_hf(hf)


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda h: h.update(mystery=1), r"qwen3 config has attributes .* \['mystery'\]"),
        (lambda h: h.update(attention_bias=True), "attention_bias"),
        (lambda h: h.update(rope_scaling={"rope_type": "yarn", "factor": 4.0}), "'yarn' is not implemented"),
        (lambda h: h.update(hidden_act="gelu"), "hidden_act 'gelu'"),
        (lambda h: h.update(layer_types=["full_attention"]), "layer_types has 1 entries for 36 layers"),
    ],
)
def test_qwen3_config_errors_name_the_problem(edit, message):
    hf = _published("qwen3-8b")
    edit(hf)
    with pytest.raises(ConfigError, match=message):
        config_from_hf(hf)


# -------------------------------------------------------------------------------------------- converters


def _state(model) -> dict[str, np.ndarray]:
    return {k: v.detach().float().numpy() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    out = {}
    for name, conf in [
        ("qwen3", hf_tiny.qwen3_config(num_hidden_layers=2)),
        ("gemma3", hf_tiny.gemma3_config(num_hidden_layers=3)),
        ("gemma3_mm", hf_tiny.gemma3_multimodal_config(num_hidden_layers=3)),
    ]:
        model = hf_tiny.build(conf, seed=7)
        out[name] = (hf_tiny.save(model, tmp_path_factory.mktemp(name)), model)
    return out


def test_qk_norm_weights_map_to_our_layout(dirs):
    for name in ("qwen3", "gemma3"):
        directory, model = dirs[name]
        params, _ = hfc.load_hf_checkpoint(directory)
        attn = hf_tiny.text_layers(model)[1].self_attn
        np.testing.assert_array_equal(params["layers"]["q_norm"][1], attn.q_norm.weight.detach().numpy())
        np.testing.assert_array_equal(params["layers"]["k_norm"][1], attn.k_norm.weight.detach().numpy())
        assert params["layers"]["q_norm"].shape == (len(hf_tiny.text_layers(model)), model.config.head_dim)


@pytest.mark.parametrize("name", ["qwen3", "gemma3"])
def test_params_to_hf_inverts_hf_to_params_and_transformers_reloads_it(name, dirs, tmp_path):
    directory, model = dirs[name]
    params, hf_config = hfc.load_hf_checkpoint(directory)
    ref = _state(model)
    if hf_config.get("tie_word_embeddings"):
        ref.pop("lm_head.weight", None)
    state = hfc.params_to_hf(params, hf_config)
    assert state.keys() == ref.keys()
    for k in ref:
        np.testing.assert_array_equal(state[k], ref[k], err_msg=k)
    out = hfc.save_hf_checkpoint(params, hf_config, tmp_path / "out", max_shard_bytes=40_000)
    assert (out / st.INDEX_NAME).is_file()
    reloaded = type(model).from_pretrained(out, attn_implementation="eager")
    for k, v in _state(reloaded).items():
        np.testing.assert_array_equal(v, _state(model)[k], err_msg=k)


def _text_params_of_multimodal(model) -> dict[str, np.ndarray]:
    """The multimodal model's text tower as a Gemma3ForCausalLM state dict (transformers' own module names)."""
    out = {}
    for k, v in _state(model).items():
        if k.startswith("model.language_model."):
            out["model." + k[len("model.language_model.") :]] = v
    return out


def test_multimodal_text_tower_loads_like_the_causal_lm_and_writes_a_causal_lm(dirs, tmp_path):
    directory, model = dirs["gemma3_mm"]
    with st.open_checkpoint(directory) as ck:
        assert any(k.startswith("language_model.model.") for k in ck)  # save_pretrained's layout
        assert any(k.startswith("vision_tower.") for k in ck)
    params, hf_config = hfc.load_hf_checkpoint(directory)
    state = hfc.params_to_hf(params, hf_config)
    want = _text_params_of_multimodal(model)
    assert state.keys() == want.keys()
    for k in want:
        np.testing.assert_array_equal(state[k], want[k], err_msg=k)
    # written back: a text-only Gemma3ForCausalLM that transformers loads and that computes the same logits
    out = hfc.save_hf_checkpoint(params, hf_config, tmp_path / "text")
    written = json.loads((out / "config.json").read_text())
    assert written["model_type"] == "gemma3_text" and written["architectures"] == ["Gemma3ForCausalLM"]
    causal = Gemma3ForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    tokens = torch.as_tensor(hf_tiny.prompts(5, 2, 20, 2), dtype=torch.long)
    with torch.no_grad():
        np.testing.assert_array_equal(causal(tokens).logits.numpy(), model(tokens).logits.numpy())


def test_multimodal_checkpoint_in_transformers5_module_names_loads_the_same(dirs, tmp_path):
    directory, _ = dirs["gemma3_mm"]
    tensors = st.load_file(directory / "model.safetensors")
    renamed = {}
    for k, v in tensors.items():
        for old, new in [("language_model.model.", "model.language_model."), ("vision_tower.", "model.vision_tower.")]:
            if k.startswith(old):
                k = new + k[len(old) :]
                break
        renamed[k] = v
    (tmp_path / "config.json").write_text((directory / "config.json").read_text())
    st.save_file(renamed, tmp_path / "model.safetensors")
    a, _ = hfc.load_hf_checkpoint(directory)
    b, _ = hfc.load_hf_checkpoint(tmp_path)
    assert a.keys() == b.keys()
    for k in ("embed", "final_norm"):
        np.testing.assert_array_equal(a[k], b[k])
    for k in a["layers"]:
        np.testing.assert_array_equal(a["layers"][k], b["layers"][k], err_msg=k)


def test_multimodal_checkpoint_errors_name_text_tower_tensors(dirs, tmp_path):
    directory, _ = dirs["gemma3_mm"]
    tensors = st.load_file(directory / "model.safetensors")
    (tmp_path / "config.json").write_text((directory / "config.json").read_text())
    bad = dict(tensors)
    bad.pop("language_model.model.layers.1.self_attn.k_norm.weight")
    st.save_file(bad, tmp_path / "model.safetensors")
    with pytest.raises(hfc.ConversionError, match=r"missing tensors.*model\.layers\.1\.self_attn\.k_norm\.weight"):
        hfc.load_hf_checkpoint(tmp_path)
    bad = dict(tensors, **{"language_model.model.layers.0.self_attn.q_proj.bias": np.zeros(96, np.float32)})
    st.save_file(bad, tmp_path / "model.safetensors")
    with pytest.raises(hfc.ConversionError, match=r"unexpected tensors.*model\.layers\.0\.self_attn\.q_proj\.bias"):
        hfc.load_hf_checkpoint(tmp_path)


def test_load_model_of_local_folders(dirs):
    for name in ("qwen3", "gemma3", "gemma3_mm"):
        directory, model = dirs[name]
        m = load_model(directory)
        assert m.cfg == config_from_hf(directory) and m.cfg.arch == name[:6]
        assert m.tokenizer is None  # no tokenizer.json in these folders: pass token ids
        tokens = hf_tiny.prompts(3, 1, 12, model.config.get_text_config().bos_token_id)
        with torch.no_grad():
            want = model(torch.as_tensor(tokens, dtype=torch.long)).logits.numpy()
        np.testing.assert_allclose(np.asarray(forward(m.params, m.cfg, tokens)), want, atol=1e-4)


@pytest.mark.skipif(jax.device_count() < 8, reason="needs XLA_FLAGS=--xla_force_host_platform_device_count=8")
def test_sharded_loading_of_the_multimodal_text_tower_equals_host_loading(dirs):
    from jcircuits.scale import sharding as shd
    from jcircuits.scale.sharded_loading import load_model_sharded

    directory, _ = dirs["gemma3_mm"]
    want, cfg = load_params(directory)
    reads: list = []
    got, cfg2 = load_model_sharded(directory, shd.make_mesh(4, 2), reads=reads)
    assert cfg2 == cfg
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # only text-tower tensors are read (under the Gemma3ForCausalLM names TextTower maps to the file's own)
    text_keys = set(hfc.expected_shapes(hfc.Dims.from_hf(hfc.read_hf_config(directory))))
    assert reads and {name for name, _ in reads} <= text_keys


def test_memory_estimator_counts_the_qk_norm_weights():
    import tiny

    from jcircuits.scale.memory import estimate_attribution

    cfg = tiny.tiny_config("qwen3")
    ts = tiny.tiny_transcoders(cfg)
    with_norms = estimate_attribution(cfg, ts.cfg, n_tokens=12, mesh=(1, 1))
    without = estimate_attribution(cfg.replace(qk_norm=False), ts.cfg, n_tokens=12, mesh=(1, 1))
    assert with_norms.device["params"] - without.device["params"] == 2 * cfg.n_layers * cfg.head_dim * 4
    half = estimate_attribution(cfg, ts.cfg, n_tokens=12, mesh=(1, 1), dtype=jnp.bfloat16)
    assert half.device["params"] * 2 == with_norms.device["params"]


def test_cli_attribute_traces_the_multimodal_text_tower_like_the_api(dirs, tmp_path):
    """``jcircuits attribute --model`` on a ``Gemma3ForConditionalGeneration`` folder: exit 0, and the graph
    equals the library's on the same loaded model and transcoders."""
    import tiny

    from jcircuits.attribution import attribute
    from jcircuits.cli import main
    from jcircuits.graph import Graph
    from jcircuits.transcoders.io import load_transcoders, transcoder_set_to_numpy
    from jcircuits_converters.transcoders import write_plt_files

    directory, _ = dirs["gemma3_mm"]
    cfg = config_from_hf(directory)
    write_plt_files(transcoder_set_to_numpy(tiny.tiny_transcoders(cfg, skip=True)), tmp_path / "tc")
    out = tmp_path / "graph.safetensors"
    tokens = [2, 17, 42, 5, 63, 8, 29, 77]
    args = ["attribute", "--model", str(directory), "--transcoders", str(tmp_path / "tc")]
    assert main(args + ["--tokens", ",".join(map(str, tokens)), "--batch-size", "16", "-q", "-o", str(out)]) == 0
    got = Graph.load(out)
    want = attribute(load_model(directory), load_transcoders(tmp_path / "tc"), np.asarray(tokens), batch_size=16)
    np.testing.assert_array_equal(got.selected_features, want.selected_features)
    np.testing.assert_array_equal(got.logit_token_ids, want.logit_token_ids)
    a_max = np.abs(want.adjacency_matrix).max()
    assert a_max > 0
    np.testing.assert_allclose(got.adjacency_matrix, want.adjacency_matrix, atol=1e-6 * a_max, rtol=0)


def test_cli_traces_google_gemma_3_4b_it_from_the_hub_cache_offline_as_a_chat(dirs, tmp_path, monkeypatch):
    """``--model google/gemma-3-4b-it`` (a multimodal IT checkpoint, here a tiny one laid out as huggingface_hub
    caches it) resolves offline, and ``--chat`` traces the prompt as one user turn of its chat template: the
    graph's tokens are ``encode_chat``'s, with one BOS."""
    import shutil

    import tiny

    from jcircuits.cli import main
    from jcircuits.graph import Graph
    from jcircuits.models.tokenizer import Tokenizer
    from jcircuits.transcoders.io import transcoder_set_to_numpy
    from jcircuits_converters.transcoders import write_plt_files

    directory, _ = dirs["gemma3_mm"]
    repo = tmp_path / "hub" / "models--google--gemma-3-4b-it"
    snap = repo / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(directory, snap)
    hf_tiny.chat_tokenizer_folder(snap, template=hf_tiny.GEMMA_LIKE)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(snap.name)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    write_plt_files(transcoder_set_to_numpy(tiny.tiny_transcoders(config_from_hf(directory))), tmp_path / "tc")
    out = tmp_path / "graph.safetensors"
    argv = ["attribute", "--model", "google/gemma-3-4b-it", "--transcoders", str(tmp_path / "tc"), "--chat",
            "--prompt", "the capital of texas is", "--batch-size", "16", "-q", "-o", str(out)]
    assert main(argv) == 0
    want = Tokenizer.from_file(snap).encode_chat("the capital of texas is")
    got = np.asarray(Graph.load(out).input_tokens)
    np.testing.assert_array_equal(got, want)
    assert int((got == Tokenizer.from_file(snap).bos_id).sum()) == 1
