"""Sharding on fake CPU devices (``XLA_FLAGS=--xla_force_host_platform_device_count=8``): the rules table, meshes,
sharded loading (each shard read on its own), and sharded computations equal to the single-device ones."""

from __future__ import annotations

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tiny
from jax.sharding import AxisType, PartitionSpec

from jcircuits.attribution import attribute
from jcircuits.common.buckets import length_bucket
from jcircuits.models import config_from_hf, forward, init_params, param_axes
from jcircuits.models.loading import load_params, params_to_numpy
from jcircuits.scale import sharding as shd
from jcircuits.scale.memory import batch_bytes, estimate_attribution
from jcircuits.scale.plan import read_transcoder_config
from jcircuits.scale.sharded_loading import (
    ShardedLoadingUnsupported,
    load_for_mesh,
    load_model_sharded,
    load_transcoders_sharded,
)
from jcircuits.transcoders.io import load_transcoders, transcoder_set_to_numpy
from jcircuits_converters.hf import save_hf_checkpoint
from jcircuits_converters.transcoders import write_clt_dir, write_gemmascope_npz, write_plt_files

MESHES = [(8, 1), (4, 2), (2, 4)]
needs8 = pytest.mark.skipif(
    jax.device_count() < 8, reason="needs XLA_FLAGS=--xla_force_host_platform_device_count=8"
)


def _hf_config(arch: str) -> dict:
    """A tiny HF config.json for each architecture, sized so 2- and 4-way model axes divide heads/MLP/vocab."""
    common = dict(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        max_position_embeddings=64,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    if arch == "llama":
        return dict(common, model_type="llama", hidden_act="silu", tie_word_embeddings=False)
    if arch == "qwen3":  # QK-norm weights [L, head_dim] are replicated (head_dim has no mesh axis)
        return dict(common, model_type="qwen3", hidden_act="silu", tie_word_embeddings=False)
    if arch == "gemma3":
        return dict(
            common,
            model_type="gemma3_text",
            hidden_activation="gelu_pytorch_tanh",
            query_pre_attn_scalar=8,
            sliding_window=4,
            sliding_window_pattern=2,
            rope_local_base_freq=1000.0,
            rope_scaling={"rope_type": "linear", "factor": 2.0},
            tie_word_embeddings=True,
        )
    return dict(
        common,
        model_type="gemma2",
        hidden_activation="gelu_pytorch_tanh",
        query_pre_attn_scalar=8,
        sliding_window=4,
        final_logit_softcapping=30.0,
        attn_logit_softcapping=50.0,
        tie_word_embeddings=True,
    )


# ------------------------------------------------------------------------------------------------ the table


@pytest.mark.parametrize("arch", ["gemma2", "gemma3", "qwen3"])
def test_every_param_and_transcoder_axis_has_a_rule(arch):
    cfg = tiny.tiny_config(arch)
    names = set()
    for tree in (param_axes(cfg), shd.transcoder_axes(tiny.tiny_transcoders(cfg, skip=True).cfg)):
        for ax in jax.tree.leaves(tree, is_leaf=shd.is_axes):
            names.update(a for a in ax if a is not None)
    assert names <= set(shd.RULES), sorted(names - set(shd.RULES))


@pytest.mark.parametrize("arch", ["llama", "gemma2"])
def test_every_activation_and_linear_context_array_has_logical_axes(arch):
    from jcircuits.attribution import build_context
    from jcircuits.replacement import replace

    model = tiny.tiny_model(arch)
    tokens = jax.ShapeDtypeStruct((2, 7), jnp.int32)
    _, inter = jax.eval_shape(lambda p, t: forward(p, model.cfg, t, capture=True), model.params, tokens)
    ts = tiny.tiny_transcoders(model.cfg, kind="clt" if arch == "gemma2" else "plt", skip=True)
    _, ctx, _ = build_context(model, ts, replace(model, ts, np.asarray(PROMPT[:7])))
    mesh = {"data": 2, "model": 4}
    for tree, axes in ((inter, shd.intermediates_axes(inter)), (ctx, shd.context_axes(ctx, model.cfg))):
        flat = jax.tree.leaves(axes, is_leaf=shd.is_axes)
        arrays = jax.tree.leaves(tree)
        assert len(flat) == len(arrays)
        for ax, x in zip(flat, arrays, strict=True):
            shd.spec_for(ax, x.shape, mesh)  # one name per dimension, every name in the table


def test_spec_for_splits_by_rule_and_replicates_what_does_not_divide():
    mesh = {"data": 2, "model": 4}
    assert shd.spec_for(("layers", "embed", "q_heads", "head_dim"), (3, 32, 8, 8), mesh) == PartitionSpec(
        None, None, "model"
    )
    # 2 KV heads on a 4-way model axis: replicated, not an error
    assert shd.spec_for(("layers", "embed", "kv_heads", "head_dim"), (3, 32, 2, 8), mesh) == PartitionSpec()
    # a mesh axis is used once per array: the second 'model' dimension stays whole
    assert shd.spec_for(("q_heads", "mlp"), (8, 8), mesh) == PartitionSpec("model")
    assert shd.spec_for(("batch", "features"), (6, 8), mesh) == PartitionSpec("data", "model")
    with pytest.raises(KeyError, match="no rule"):
        shd.spec_for(("nonsense",), (4,), mesh)
    with pytest.raises(ValueError, match="do not match"):
        shd.spec_for(("embed",), (4, 4), mesh)
    assert shd.shard_bytes((8, 32), np.float32, PartitionSpec("model"), (2, 4)) == 2 * 32 * 4


@needs8
def test_make_mesh_is_auto_and_checks_sizes():
    mesh = shd.make_mesh(model=2)
    assert dict(mesh.shape) == {"data": 4, "model": 2}
    assert mesh.axis_types == (AxisType.Auto, AxisType.Auto)
    with pytest.raises(ValueError, match="data x model"):
        shd.make_mesh(3, 2)
    with pytest.raises(ValueError, match="divide"):
        shd.make_mesh(model=3)
    assert shd.parse_mesh("4x2") == (4, 2) and shd.parse_mesh("8") == (8, 1)
    with pytest.raises(ValueError, match="DATAxMODEL"):
        shd.parse_mesh("4by2")


# ------------------------------------------------------------------------------------------ sharded loading


@needs8
@pytest.mark.parametrize(
    "arch,dtype", [("llama", "F32"), ("gemma2", "BF16"), ("qwen3", "BF16"), ("gemma3", "F32")]
)
def test_sharded_model_loading_reads_only_shards_and_equals_plain_loading(tmp_path, arch, dtype):
    hf = _hf_config(arch)
    cfg = config_from_hf(hf)
    params = init_params(cfg, jax.random.key(3))
    save_hf_checkpoint(params_to_numpy(params), hf, tmp_path, dtype=dtype, max_shard_bytes=20_000)
    want, _ = load_params(tmp_path, dtype=jnp.float32)
    mesh = shd.make_mesh(2, 4)
    reads: list = []
    got, cfg2 = load_model_sharded(tmp_path, mesh, dtype=jnp.float32, reads=reads)
    assert cfg2 == cfg
    specs = shd.shardings(param_axes(cfg), got, mesh)
    for (path, a), b, s in zip(
        jax.tree_util.tree_flatten_with_path(got)[0],
        jax.tree.leaves(want),
        jax.tree.leaves(specs),
        strict=True,
    ):
        assert a.sharding == s, jax.tree_util.keystr(path)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=jax.tree_util.keystr(path))
    # every read is one shard of one layer: a model-sharded tensor is never read whole
    q_reads = [shape for name, shape in reads if name.endswith("q_proj.weight")]
    assert q_reads and all(shape == (32, 1, 8) for shape in q_reads), q_reads
    embed_reads = [shape for name, shape in reads if name == "model.embed_tokens.weight"]
    assert embed_reads and all(shape == (128 // 4, 32) for shape in embed_reads)
    if cfg.qk_norm:  # replicated: each layer's whole [head_dim] vector, read once for all devices
        norm_reads = [shape for name, shape in reads if name.endswith(("q_norm.weight", "k_norm.weight"))]
        assert len(norm_reads) == 2 * cfg.n_layers and all(shape == (8,) for shape in norm_reads)


@pytest.mark.parametrize("bad", ["unexpected tensor", "tied lm_head differs"])
def test_host_and_sharded_loading_refuse_the_same_bad_checkpoint_with_the_same_message(tmp_path, bad):
    from jcircuits_converters.hf import ConversionError
    from jcircuits_converters.safetensors_io import load_file, save_file

    hf = _hf_config("gemma2")  # tied
    params = init_params(config_from_hf(hf), jax.random.key(5))
    save_hf_checkpoint(params_to_numpy(params), hf, tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    if bad == "unexpected tensor":
        state["model.layers.0.self_attn.q_proj.bias"] = np.zeros(32, np.float32)
    else:
        state["lm_head.weight"] = state["model.embed_tokens.weight"] + 1
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ConversionError) as host:
        load_params(tmp_path)
    with pytest.raises(ConversionError) as sharded:
        load_model_sharded(tmp_path, shd.make_mesh(1, 1, devices=jax.devices()[:1]))
    assert str(host.value) == str(sharded.value)
    assert ("unexpected tensors" if bad == "unexpected tensor" else "lm_head.weight differs") in str(host.value)


@needs8
@pytest.mark.parametrize("kind", ["plt", "clt"])
def test_sharded_transcoder_loading_equals_plain_loading(tmp_path, kind):
    cfg = tiny.tiny_config("llama")
    ts = tiny.tiny_transcoders(cfg, kind=kind, skip=True)
    tc = transcoder_set_to_numpy(ts)
    (write_plt_files if kind == "plt" else write_clt_dir)(tc, tmp_path)
    want = load_transcoders(tmp_path)
    mesh = shd.make_mesh(4, 2)
    reads: list = []
    got = load_transcoders_sharded(tmp_path, mesh, reads=reads)
    assert got.cfg == want.cfg == read_transcoder_config(tmp_path)  # the dry run's config, from headers only
    for a, b in zip(jax.tree.leaves(got.params), jax.tree.leaves(want.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert got.params.W_enc.sharding.spec == PartitionSpec(None, None, "model")
    assert all(math.prod(s) == cfg.d_model * 96 // 2 for n, s in reads if n.startswith("W_enc"))
    feats = np.array([0, 5, 17])
    np.testing.assert_array_equal(got.decoders.rows(1, feats), want.decoders.rows(1, feats))


def _gemmascope_config(tc: dict, d, *, compressed: bool = False):
    """GemmaScope ``layer_{i}/params.npz`` files and a circuit-tracer config.yaml listing them (relative paths)."""
    paths = write_gemmascope_npz(tc, d)
    if compressed:  # same arrays, deflated members: nothing to memory-map
        for q in paths:
            with np.load(q) as z:
                arrays = {k: z[k] for k in z.files}
            np.savez_compressed(q, **arrays)
    lines = [f"  - {q.relative_to(d)}" for q in paths]
    conf = "model_kind: transcoder_set\nfeature_input_hook: mlp.hook_in\nfeature_output_hook: mlp.hook_out\n"
    (d / "config.yaml").write_text(conf + "transcoders:\n" + "\n".join(lines) + "\n")
    return d / "config.yaml"


@needs8
def test_sharded_gemmascope_npz_loading_reads_slices_and_equals_plain_loading(tmp_path):
    cfg = tiny.tiny_config("llama")
    tc = transcoder_set_to_numpy(tiny.tiny_transcoders(cfg))  # JumpReLU, no skip: what GemmaScope holds
    conf = _gemmascope_config(tc, tmp_path)
    want = load_transcoders(conf)
    reads: list = []
    got = load_transcoders_sharded(tmp_path, shd.make_mesh(4, 2), reads=reads, n_layers=cfg.n_layers)
    assert got.cfg == want.cfg == read_transcoder_config(conf) and got.cfg.activation == "jumprelu"
    for a, b in zip(jax.tree.leaves(got.params), jax.tree.leaves(want.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert got.params.W_enc.sharding.spec == PartitionSpec(None, None, "model")
    enc_reads = [s for n, s in reads if n == "W_enc"]
    assert enc_reads and all(s == (cfg.d_model, 96 // 2) for s in enc_reads), enc_reads  # half the features
    feats = np.array([0, 5, 17, 95])
    np.testing.assert_array_equal(got.decoders.rows(1, feats), want.decoders.rows(1, feats))
    # deflated members cannot be sliced on disk: a clear error the CLI turns into host loading
    _gemmascope_config(tc, tmp_path / "z", compressed=True)
    with pytest.raises(ShardedLoadingUnsupported, match="compressed"):
        load_transcoders_sharded(tmp_path / "z", shd.make_mesh(4, 2))


# -------------------------------------------------------------------------------------- sharded computation


@needs8
@pytest.mark.parametrize("arch", ["llama", "gemma2", "gemma3"])
def test_sharded_forward_equals_single_device_on_every_mesh(arch):
    model = tiny.tiny_model(arch, vocab_size=128, n_heads=4, n_kv_heads=2, d_mlp=64)
    tokens = np.asarray(jax.random.randint(jax.random.key(1), (8, 12), 0, 128), np.int32)
    want_logits, want_inter = forward(model.params, model.cfg, tokens, capture=True)
    for shape in MESHES if arch == "llama" else [(2, 4)]:  # every mesh once; the others' extras on one
        mesh = shd.make_mesh(*shape)
        params = shd.shard_params(model.params, model.cfg, mesh)
        toks = shd.put(tokens, jax.sharding.NamedSharding(mesh, PartitionSpec("data")))
        logits, inter = forward(params, model.cfg, toks, capture=True)
        np.testing.assert_allclose(np.asarray(logits), np.asarray(want_logits), rtol=0, atol=2e-5)
        np.testing.assert_allclose(
            np.asarray(inter.mlp_out), np.asarray(want_inter.mlp_out), rtol=0, atol=2e-5
        )


# ------------------------------------------------------------------------------------------ sharded attribution

PROMPT = np.asarray([1, 17, 42, 5, 63, 8, 29, 77, 3, 51, 12, 90], np.int32)


def _assert_same_graph(got, want):
    np.testing.assert_array_equal(got.selected_features, want.selected_features)
    np.testing.assert_array_equal(got.logit_token_ids, want.logit_token_ids)
    A, B = got.adjacency_matrix, want.adjacency_matrix
    assert A.shape == B.shape
    # float32 round-off of reordered sums (partial sums over heads/features are all-reduced across devices)
    np.testing.assert_allclose(A, B, rtol=0, atol=1e-6 * max(1.0, float(np.abs(B).max())))


@needs8
def test_sharded_attribution_equals_single_device_on_every_mesh():
    model = tiny.tiny_model("llama")
    ts = tiny.tiny_transcoders(model.cfg, skip=True)
    kw = dict(batch_size=12, max_feature_nodes=40, update_interval=2)  # selection rounds + odd batch sizes
    want = attribute(model, ts, PROMPT, **kw)
    for shape in MESHES:
        got = attribute(model, ts, PROMPT, mesh=shd.make_mesh(*shape), **kw)
        assert got.settings["batch_size"] == 12
        _assert_same_graph(got, want)


@needs8
def test_sharded_clt_attribution_equals_single_device():
    model = tiny.tiny_model("gemma2")
    ts = tiny.tiny_transcoders(model.cfg, kind="clt", input_hook="hook_resid_mid", output_hook="hook_mlp_out")
    want = attribute(model, ts, PROMPT[:8], batch_size=16)
    _assert_same_graph(attribute(model, ts, PROMPT[:8], batch_size=16, mesh=shd.make_mesh(2, 4)), want)


# ----------------------------------------------------------------------------------------- memory estimator


@pytest.mark.parametrize(
    "L,D,T,F,B,kind", [(3, 64, 24, 256, 32, "plt"), (4, 64, 48, 256, 128, "plt"), (3, 64, 24, 256, 32, "clt")]
)
def test_batch_estimate_brackets_xla_memory_analysis(L, D, T, F, B, kind):
    """The estimator's per-batch term vs XLA's compiled temp + output bytes of the row function, on CPU.
    Stated tolerance: never below the measurement (it must not under-promise), at most 1.5x above it."""
    from jcircuits.attribution import build_context, linear
    from jcircuits.replacement import replace

    model = tiny.tiny_model("llama", n_layers=L, d_model=D, d_mlp=2 * D, head_dim=D // 4)
    ts = tiny.tiny_transcoders(model.cfg, kind=kind, n_features=F)
    tokens = np.asarray(np.random.default_rng(0).integers(3, 97, T), np.int32)
    tokens[0] = 1
    rep = replace(model, ts, tokens)
    static, ctx, src_index = build_context(model, ts, rep)
    Tb = ctx.embeddings.shape[0]  # the engine may pad the prompt to a length bucket
    K = ctx.dec.shape[2] if ctx.dec is not None else max(d.shape[1] for d in ctx.dec_clt)
    z = np.zeros(B, np.int32)
    compiled = linear.rows_for_features.lower(
        static, ctx, z + 1, z, z, np.ones(B, bool), src_index(Tb), Tb, L
    ).compile()
    ma = compiled.memory_analysis()
    measured = ma.temp_size_in_bytes + ma.output_size_in_bytes
    est = batch_bytes(
        model.cfg, n_tokens=Tb, batch=B, k_pad=K, n_active=rep.n_active, itemsize=4, clt=kind == "clt"
    )
    assert measured <= est <= 1.5 * measured, (est, measured, est / measured)


def test_mixed_bfloat16_estimate_halves_the_stored_model_not_the_rows():
    """bfloat16 storage halves the weights and the frozen model; the replacement step adds one layer's float32
    upcast of the weights; a batch of rows costs its float32 bytes plus the bfloat16 copies of its matmul inputs."""
    model = tiny.tiny_model("llama")
    ts = tiny.tiny_transcoders(model.cfg)
    f32 = estimate_attribution(model.cfg, ts.cfg, n_tokens=24, l0=8)
    b16 = estimate_attribution(model.cfg, ts.cfg, n_tokens=24, l0=8, dtype="bfloat16")
    assert b16.device["params"] * 2 == f32.device["params"]
    assert b16.device["context"] < f32.device["context"]
    upcast = (f32.device["params"] + f32.device["transcoders"]) // model.cfg.n_layers  # one layer at a time
    assert b16.device["replacement"] == f32.device["replacement"] + upcast
    assert b16.device["intermediates"] == f32.device["intermediates"]  # the forward is float32 in both
    cfg = model.cfg
    casts = 256 * length_bucket(24) * (4 * cfg.d_model + 3 * cfg.n_heads * cfg.head_dim) * 2  # rows run padded
    assert b16.device["batch"] == f32.device["batch"] + casts


@needs8
def test_estimated_param_bytes_per_device_equal_the_placed_shards():
    model = tiny.tiny_model("gemma2", vocab_size=128, n_heads=4, n_kv_heads=2, d_mlp=64)
    ts = tiny.tiny_transcoders(model.cfg, skip=True)
    mesh = shd.make_mesh(2, 4)
    params = shd.shard_params(model.params, model.cfg, mesh)
    enc = shd.shard_transcoders(ts.params, ts.cfg, mesh)
    dev = jax.devices()[0]

    def on_device(tree):
        return sum(
            s.data.nbytes for x in jax.tree.leaves(tree) for s in x.addressable_shards if s.device == dev
        )

    est = estimate_attribution(model.cfg, ts.cfg, n_tokens=12, mesh=(2, 4))
    assert est.device["params"] == on_device(params)
    assert est.device["transcoders"] == on_device(enc)
    # bfloat16 halves the resident weights; the model axis splits weights, the data axis splits the batch
    half = estimate_attribution(model.cfg, ts.cfg, n_tokens=12, mesh=(2, 4), dtype="bfloat16")
    assert half.device["params"] * 2 == est.device["params"]
    assert (
        est.device["params"]
        < estimate_attribution(model.cfg, ts.cfg, n_tokens=12, mesh=(2, 1)).device["params"]
    )
    assert (
        estimate_attribution(model.cfg, ts.cfg, n_tokens=12, mesh=(8, 1)).device["batch"]
        < est.device["batch"]
    )


@pytest.fixture(scope="module")
def local_model_dir(tmp_path_factory):
    """A tiny HF checkpoint and a circuit-tracer transcoder directory (the CLI reads only their configs)."""
    d = tmp_path_factory.mktemp("cli")
    hf = _hf_config("llama")
    cfg = config_from_hf(hf)
    save_hf_checkpoint(params_to_numpy(init_params(cfg, jax.random.key(0))), hf, d / "model")
    write_plt_files(transcoder_set_to_numpy(tiny.tiny_transcoders(cfg, skip=True)), d / "tc")
    return d


def test_dry_run_prints_mesh_and_shardings_and_refuses_what_cannot_fit(local_model_dir, capsys):
    from jcircuits.cli import main

    d = local_model_dir
    run = [
        "attribute",
        "--model",
        str(d / "model"),
        "--transcoders",
        str(d / "tc"),
        "--tokens",
        "1,17,42,5,63,8",
    ]
    args = run + ["--dry-run", "--mesh", "2x4", "--max-feature-nodes", "64", "--l0", "16"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "mesh: data=2 x model=4" in out and "T=6" in out and "~160 active features" in out
    assert "params.layers.wq" in out and "P(None, None, 'model')" in out and "transcoders.W_skip" in out
    assert main(args + ["--device-memory", "400KiB"]) == 2  # the weights fit, a 256-row batch does not
    err = capsys.readouterr().err
    assert "will not fit" in err and "--batch-size" in err and "--dtype bfloat16" in err and "--mesh" in err
    assert main(args + ["--host-memory", "130KiB"]) == 2  # the model loads, the row matrix does not
    assert "--max-feature-nodes" in capsys.readouterr().err
    # without --dry-run a run that cannot fit is refused before anything is loaded
    assert main(run + ["--device-memory", "400KiB"]) == 2


@pytest.mark.parametrize(
    "name", ["gemma-2-9b", "llama-3.1-8b", "qwen3-8b", "qwen3-14b", "gemma-3-12b-it", "gemma-3-27b-it"]
)
def test_tpu_config_dry_runs_fit_and_a_long_prompt_is_refused(name, capsys):
    import importlib.util
    from pathlib import Path

    tpu = Path(__file__).resolve().parents[2] / "tpu"
    spec = importlib.util.spec_from_file_location("tpu_dryrun", tpu / "dryrun.py")
    dryrun = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dryrun)
    config = str(tpu / "configs" / f"{name}.yaml")
    assert dryrun.main([config]) == 0
    out = capsys.readouterr().out
    assert "fits: peak" in out and "transcoders.W_enc" in out and "P(None, None, 'model')" in out
    # tpu/README.md's dry-run table says what the dry run prints, on the config's own mesh and on any other row
    rows = _tpu_readme_rows(tpu / "README.md")[name]
    data, model = re.search(r"mesh: data=(\d+) x model=(\d+)", out).groups()
    assert f"{data}x{model}" == rows[0][0], "the first README row of a config is its own mesh"
    for k, (mesh, *figures) in enumerate(rows):
        if k:
            assert dryrun.main([config, "--mesh", mesh]) == 0
            out = capsys.readouterr().out
        assert _dry_run_figures(out) == tuple(figures), (name, mesh)
    assert dryrun.main([config, "--n-tokens", "1024"]) == 2
    assert "will not fit" in capsys.readouterr().err


def _tpu_readme_rows(readme) -> dict[str, list[tuple[str, ...]]]:
    """``{config name: [(mesh "DxM", params/chip, encoders/chip, peak/chip, host peak), …]}`` from the table."""
    row = re.compile(
        r"^\| `([\w.-]+)`: [^|]*\| (\d+)×(\d+) \| ([\d.]+) GiB \| ([\d.]+) GiB \| ([\d.]+) GiB of 16 \| ([\d.]+) GiB \|$"
    )
    out: dict[str, list[tuple[str, ...]]] = {}
    for line in readme.read_text(encoding="utf-8").splitlines():
        m = row.match(line)
        if m:
            name, d, m_, *figs = m.groups()
            out.setdefault(name, []).append((f"{d}x{m_}", *figs))
    return out


def _dry_run_figures(out: str) -> tuple[str, ...]:
    """(params, transcoders, peak per device; host peak to 0.1) as the dry run prints them, in GiB."""
    dev = re.search(r"per device: peak ([\d.]+) GiB = params ([\d.]+) GiB, transcoders ([\d.]+) GiB", out)
    host = re.search(r"host: +peak ([\d.]+) GiB", out)
    peak, params, enc = dev.groups()
    return params, enc, peak, f"{float(host.group(1)):.1f}"


@needs8
def test_cli_mesh_loads_shards_from_files_and_gives_the_unsharded_graph(
    local_model_dir, tmp_path, monkeypatch, capsys
):
    """``attribute --mesh 2x4`` reads each model tensor shard by shard (``load_model`` is never called, no read
    is a whole model-sharded tensor) and writes the graph a run without ``--mesh`` writes."""
    from jcircuits.cli import main
    from jcircuits.graph import Graph
    from jcircuits.models import loading
    from jcircuits.scale import sharded_loading

    d = local_model_dir
    run = ["attribute", "--model", str(d / "model"), "--transcoders", str(d / "tc")]
    run += ["--tokens", "1,17,42,5,63,8,29,77", "--batch-size", "16", "-q"]
    assert main(run + ["-o", str(tmp_path / "one.safetensors")]) == 0
    reads: list = []
    plain = sharded_loading.read_slice

    def logged(ckpt, name, index, **kw):
        part = plain(ckpt, name, index, **kw)
        reads.append((name, part.shape))
        return part

    def no_host_load(*a, **k):
        raise AssertionError("--mesh loaded the whole model on the host")

    monkeypatch.setattr(sharded_loading, "read_slice", logged)
    monkeypatch.setattr(loading, "load_params", no_host_load)
    assert main(run + ["--mesh", "2x4", "-o", str(tmp_path / "mesh.safetensors")]) == 0
    assert "on the host" not in capsys.readouterr().err  # local circuit-tracer files: no fallback notice
    q = [s for n, s in reads if n.endswith("q_proj.weight")]
    assert q and all(s == (32, 1, 8) for s in q), q  # [D, heads/4, head_dim]: a quarter of each layer's q
    assert all(s == (128 // 4, 32) for n, s in reads if n == "model.embed_tokens.weight")
    assert all(s == (32, 96 // 4) for n, s in reads if n == "W_enc")  # transcoders also read as shards
    _assert_same_graph(Graph.load(tmp_path / "mesh.safetensors"), Graph.load(tmp_path / "one.safetensors"))


@needs8
def test_mesh_loading_falls_back_to_host_loading_with_a_notice(local_model_dir, tmp_path, capsys):
    cfg = config_from_hf(local_model_dir / "model")
    tc = transcoder_set_to_numpy(tiny.tiny_transcoders(cfg))
    conf = _gemmascope_config(tc, tmp_path, compressed=True)
    mesh = shd.make_mesh(2, 4)
    model, ts = load_for_mesh(local_model_dir / "model", conf, mesh)
    assert "loading the transcoders on the host" in capsys.readouterr().err
    want = load_transcoders(conf)
    assert ts.cfg == want.cfg
    assert ts.params.W_enc.sharding.spec == PartitionSpec(None, None, "model")
    for a, b in zip(jax.tree.leaves(ts.params), jax.tree.leaves(want.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert model.params.layers.wq.sharding.spec == PartitionSpec(
        None, None, "model"
    )  # the model: sharded reads
