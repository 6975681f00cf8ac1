"""Transcoder file formats: bitwise round trips, config.yaml resolution (relative paths, hf:// offline), lazy
decoders that read only active rows, and the validation errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from tiny import tiny_config, tiny_model, tiny_transcoders

from jcircuits.replacement import replace
from jcircuits.transcoders.io import (
    load_transcoders,
    save_transcoders,
    transcoder_set_from_numpy,
    transcoder_set_to_numpy,
)
from jcircuits_converters import transcoders as ct
from jcircuits_converters.safetensors_io import SafeFile, load_file, save_file

TOKENS = np.array([1, 5, 17, 33, 2, 60, 8, 41, 77, 12])
KEYS = ("W_enc", "b_enc", "b_dec", "threshold", "W_skip")


def _bits_equal(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _same(x: dict, y: dict) -> None:
    assert x["kind"] == y["kind"]
    for k in KEYS:
        assert _bits_equal(x.get(k), y.get(k)), k
    dx, dy = ct.dense_decoders(x["W_dec"], x["kind"]), ct.dense_decoders(y["W_dec"], y["kind"])
    assert len(dx) == len(dy)
    for a, b in zip(dx, dy, strict=True):
        assert _bits_equal(a, b)


def _set(kind="plt", activation="jumprelu", skip=False, **kw) -> dict:
    ts = tiny_transcoders(tiny_config(), kind=kind, activation=activation, skip=skip, **kw)
    return transcoder_set_to_numpy(ts)


# ------------------------------------------------------------------------------------------------ round trips


@pytest.mark.parametrize("skip", [False, True])
@pytest.mark.parametrize("activation", ["jumprelu", "relu"])
def test_plt_roundtrip(tmp_path, skip, activation):
    tc = _set("plt", activation, skip)
    paths = ct.write_plt_files(tc, tmp_path)
    assert [p.name for p in paths] == ["layer_0.safetensors", "layer_1.safetensors", "layer_2.safetensors"]
    with SafeFile(paths[0]) as f:  # circuit-tracer layout: W_enc [F, D], W_skip applied as x @ W_skip.T
        assert f.shape("W_enc") == (96, 32) and f.shape("W_dec") == (96, 32)
        assert ("activation_function.threshold" in f) == (activation == "jumprelu")
        assert _bits_equal(f.get("W_enc"), tc["W_enc"][0].T)
        if skip:
            assert _bits_equal(f.get("W_skip"), tc["W_skip"][0].T)
    _same(ct.read_plt_files(paths), tc)
    _same(ct.read_plt_files(paths, lazy_decoder=True), tc)


@pytest.mark.parametrize("skip", [False, True])
def test_clt_roundtrip(tmp_path, skip):
    tc = _set("clt", "jumprelu", skip)
    ct.write_clt_dir(tc, tmp_path)
    with SafeFile(tmp_path / "W_dec_1.safetensors") as f:
        assert f.shape("W_dec_1") == (96, 2, 32)
    with SafeFile(tmp_path / "W_enc_2.safetensors") as f:
        assert set(f) == {"W_enc_2", "b_enc_2", "b_dec_2", "threshold_2"} | ({"W_skip_2"} if skip else set())
    _same(ct.read_clt_dir(tmp_path), tc)
    _same(ct.read_clt_dir(tmp_path, lazy_decoder=True), tc)


def test_gemmascope_npz_roundtrip(tmp_path):
    tc = _set("plt", "jumprelu")
    paths = ct.write_gemmascope_npz(tc, tmp_path)
    with np.load(paths[1]) as z:
        assert z["W_enc"].shape == (32, 96) and z["W_dec"].shape == (96, 32)
    _same(ct.read_gemmascope_npz(paths), tc)
    _same(ct.read_files(paths), tc)


@pytest.mark.parametrize("kind", ["plt", "clt"])
def test_gemmascope2_roundtrip(tmp_path, kind):
    tc = _set(kind, "jumprelu", skip=True)
    paths = ct.write_gemmascope2_files(tc, tmp_path)
    with SafeFile(paths[1]) as f:
        assert f.shape("w_enc") == (32, 96)
        assert f.shape("w_dec") == ((96, 32) if kind == "plt" else (96, 3, 32))
        assert _bits_equal(f.get("affine_skip_connection"), tc["W_skip"][1])  # x @ W form, as ours
    for lazy in (False, True):
        back = ct.read_files(paths, lazy_decoder=lazy)
        _same(back, tc)


def test_bf16_files_roundtrip_bitwise(tmp_path):
    tc = _set("clt", "jumprelu")
    ct.write_clt_dir(tc, tmp_path / "a", dtype="BF16")
    back = ct.read_clt_dir(tmp_path / "a")  # bf16 → float32 exactly
    assert back["W_enc"].dtype == np.float32
    ct.write_clt_dir(back, tmp_path / "b", dtype="BF16")
    for p in sorted((tmp_path / "a").iterdir()):
        assert p.read_bytes() == (tmp_path / "b" / p.name).read_bytes(), p.name
    lazy = ct.read_clt_dir(tmp_path / "a", lazy_decoder=True)
    feats = np.array([5, 1, 5, 90])
    rows = lazy["W_dec"].rows(1, feats)
    assert rows.dtype == np.float32 and _bits_equal(rows, back["W_dec"][1][feats])
    assert lazy["W_dec"].rows_read == 3 and lazy["W_dec"].bytes_read == 3 * 2 * 32 * 2


@pytest.mark.parametrize(
    "kind,activation,skip,fmt",
    [
        ("plt", "jumprelu", True, "circuit-tracer"),
        ("plt", "relu", False, "circuit-tracer"),
        ("clt", "jumprelu", True, "circuit-tracer"),
        ("clt", "relu", False, "circuit-tracer"),
        ("plt", "jumprelu", True, "gemmascope-2"),
        ("clt", "jumprelu", False, "gemmascope-2"),
        ("plt", "jumprelu", False, "gemmascope"),
        ("plt", "topk", False, "circuit-tracer"),
        ("clt", "topk", True, "circuit-tracer"),
    ],
)
def test_save_load_transcoders(tmp_path, kind, activation, skip, fmt):
    ts = tiny_transcoders(
        tiny_config(),
        kind=kind,
        activation=activation,
        skip=skip,
        input_hook="hook_resid_mid",
        output_hook="hook_mlp_out",
        top_k=5 if activation == "topk" else None,
    )
    cfg_path = save_transcoders(ts, tmp_path, format=fmt)
    conf = yaml.safe_load(cfg_path.read_text())
    assert conf["model_kind"] == ("transcoder_set" if kind == "plt" else "cross_layer_transcoder")
    assert conf["feature_input_hook"] == "hook_resid_mid" and conf["feature_output_hook"] == "hook_mlp_out"
    for src in (tmp_path, cfg_path):
        for lazy in (False, True):
            back = load_transcoders(src, lazy_decoder=lazy)
            assert back.cfg == ts.cfg
            _same(transcoder_set_to_numpy(back), transcoder_set_to_numpy(ts))
            assert (type(back.decoders).__name__ == "LazyDecoders") == lazy


# ---------------------------------------------------------------------------------------------- config.yaml


def test_config_relative_paths_and_plain_dirs(tmp_path):
    ts = tiny_transcoders(tiny_config(), kind="plt", skip=True)
    paths = ct.write_plt_files(transcoder_set_to_numpy(ts), tmp_path / "files")
    (tmp_path / "cfg").mkdir()
    conf = {
        "model_kind": "transcoder_set",
        "feature_input_hook": "mlp.hook_in",
        "feature_output_hook": "mlp.hook_out",
        "scan": "my-scan",
        "transcoders": [f"../files/{p.name}" for p in paths[:2]] + [str(paths[2].resolve())],
    }
    (tmp_path / "cfg" / "config.yaml").write_text(yaml.safe_dump(conf))
    back = load_transcoders(tmp_path / "cfg" / "config.yaml", n_layers=3)
    assert back.cfg.scan == "my-scan" and back.cfg.skip
    _same(transcoder_set_to_numpy(back), transcoder_set_to_numpy(ts))
    # a bare directory of layer files, hooks from kwargs
    bare = load_transcoders(tmp_path / "files", input_hook="ln2.hook_normalized", output_hook="hook_mlp_out")
    assert bare.cfg.input_hook == "ln2.hook_normalized" and bare.cfg.output_hook == "hook_mlp_out"
    # a list of files
    _same(transcoder_set_to_numpy(load_transcoders([str(p) for p in paths])), transcoder_set_to_numpy(ts))


def _fake_hub_repo(cache: Path, repo_id: str, commit: str, files: dict[str, Path | str]) -> None:
    """A Hugging Face cache entry as huggingface_hub lays it out (refs/main → snapshots/<commit>/...)."""
    root = cache / ("models--" + repo_id.replace("/", "--"))
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(commit)
    for rel, src in files.items():
        dst = root / "snapshots" / commit / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(src, Path):
            shutil.copyfile(src, dst)
        else:
            dst.write_text(src)


def test_hf_uris_offline_from_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    c1, c2 = "a" * 40, "b" * 40
    plt = tiny_transcoders(tiny_config(), kind="plt")
    clt = tiny_transcoders(tiny_config(), kind="clt", skip=True)
    files = ct.write_plt_files(transcoder_set_to_numpy(plt), tmp_path / "plt")
    # repo 1: the weights; repo 2: a config.yaml listing hf:// URIs into repo 1 (one with ?revision=)
    _fake_hub_repo(cache, "org/weights", c1, {f"tc/{p.name}": p for p in files})
    uris = [f"hf://org/weights/tc/{p.name}" for p in files]
    uris[1] += f"?revision={c1}"
    conf = {
        "model_kind": "transcoder_set",
        "feature_input_hook": "mlp.hook_in",
        "feature_output_hook": "mlp.hook_out",
        "transcoders": uris,
    }
    _fake_hub_repo(cache, "org/set", c2, {"sub/config.yaml": yaml.safe_dump(conf)})
    for ref in (
        "hf://org/set/sub",
        f"hf://org/set/sub?revision={c2}",
        "org/set/sub",
        "hf://org/set/sub/config.yaml",
    ):
        back = load_transcoders(ref)
        _same(transcoder_set_to_numpy(back), transcoder_set_to_numpy(plt))
    assert back.cfg.scan == "org/set//sub"
    # a CLT repo in circuit-tracer's layout (config.yaml next to W_enc_i / W_dec_i), no transcoders list
    save_transcoders(clt, tmp_path / "clt")
    _fake_hub_repo(cache, "org/clt", c1, {p.name: p for p in (tmp_path / "clt").iterdir()})
    back = load_transcoders("hf://org/clt")
    assert back.cfg.kind == "clt" and back.cfg.skip and back.cfg.scan == "org/clt"
    _same(transcoder_set_to_numpy(back), transcoder_set_to_numpy(clt))
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE"):
        load_transcoders("hf://org/absent")


# -------------------------------------------------------------------------------------------- lazy decoders


@pytest.mark.parametrize("kind", ["plt", "clt"])
def test_lazy_decoders_read_only_active_rows(tmp_path, kind):
    model = tiny_model()
    tc = transcoder_set_to_numpy(tiny_transcoders(model.cfg, kind=kind, skip=True, n_features=512))
    tc["b_enc"] = tc["b_enc"] - {"plt": 2.0, "clt": 3.0}[kind]  # sparser: a few percent of features active
    ts = transcoder_set_from_numpy(tc)
    save_transcoders(ts, tmp_path)
    lazy = load_transcoders(tmp_path, lazy_decoder=True, n_layers=model.cfg.n_layers)
    dense = load_transcoders(tmp_path, lazy_decoder=False)
    r_lazy, r_dense, r_mem = (
        replace(model, lazy, TOKENS),
        replace(model, dense, TOKENS),
        replace(model, ts, TOKENS),
    )
    for a, b in ((r_lazy, r_dense), (r_lazy, r_mem)):
        np.testing.assert_array_equal(a.active_features, b.active_features)
        np.testing.assert_array_equal(np.asarray(a.reconstruction), np.asarray(b.reconstruction))
        np.testing.assert_array_equal(np.asarray(a.errors), np.asarray(b.errors))
    dec = lazy.decoders
    unique_pairs = {(int(l), int(f)) for l, _, f in r_lazy.active_features}
    assert 0 < r_lazy.n_active and dec.rows_read == len(unique_pairs)
    assert dec.bytes_read < 0.1 * dec.nbytes, (dec.bytes_read, dec.nbytes)
    L, D = model.cfg.n_layers, model.cfg.d_model
    per_row = [D * 4 if kind == "plt" else (L - l) * D * 4 for l in range(L)]
    assert dec.bytes_read == sum(per_row[l] for l, _ in unique_pairs)


# ---------------------------------------------------------------------------------------------------- errors


def _rewrite(path: Path, edit) -> None:
    d = load_file(path)
    edit(d)
    save_file(d, path)


def test_missing_layer_files(tmp_path):
    tc = _set("plt")
    paths = ct.write_plt_files(tc, tmp_path / "plt")
    with pytest.raises(ValueError, match=r"missing layer file for layer 3: .*layer_3\.safetensors"):
        load_transcoders(tmp_path / "plt", n_layers=4)
    paths[1].unlink()
    with pytest.raises(ValueError, match=r"missing layer file for layer 1: .*layer_1\.safetensors"):
        load_transcoders(tmp_path / "plt")
    ct.write_clt_dir(_set("clt"), tmp_path / "clt")
    (tmp_path / "clt" / "W_dec_2.safetensors").unlink()
    with pytest.raises(ValueError, match=r"missing decoder file for layer 2: .*W_dec_2\.safetensors"):
        load_transcoders(tmp_path / "clt")
    conf = {
        "model_kind": "transcoder_set",
        "feature_input_hook": "mlp.hook_in",
        "feature_output_hook": "mlp.hook_out",
        "transcoders": ["plt/layer_0.safetensors", "plt/nope.safetensors"],
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(conf))
    with pytest.raises(ValueError, match=r"missing layer file for layer 1: .*nope\.safetensors"):
        load_transcoders(tmp_path / "config.yaml")
    conf["model_kind"] = "sae"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(conf))
    with pytest.raises(ValueError, match="unknown model_kind 'sae'"):
        load_transcoders(tmp_path / "config.yaml")


def test_d_model_mismatch(tmp_path):
    paths = ct.write_plt_files(_set("plt"), tmp_path)
    tc = _set("plt")
    small = {
        "kind": "plt",
        "W_enc": tc["W_enc"][:, :16],
        "b_enc": tc["b_enc"],
        "b_dec": tc["b_dec"][:, :16],
        "W_dec": tc["W_dec"][:, :, :16],
        "threshold": tc["threshold"],
        "W_skip": None,
    }
    ct.write_plt_files(small, tmp_path / "small")
    shutil.copyfile(tmp_path / "small" / "layer_2.safetensors", paths[2])
    with pytest.raises(ValueError, match=r"layer_2\.safetensors: d_model 16 differs from 32 in .*layer_0"):
        ct.read_plt_files(paths)
    # and a transcoder that does not fit the model
    from jcircuits.transcoders import check_compatible

    with pytest.raises(ValueError, match="d_model 32 != model d_model 48"):
        check_compatible(tiny_config(d_model=48, head_dim=12), load_transcoders(paths[:2]).cfg)


def test_threshold_wrong_shape(tmp_path):
    paths = ct.write_plt_files(_set("plt"), tmp_path / "plt")
    _rewrite(paths[1], lambda d: d.update({"activation_function.threshold": np.zeros((1, 96), np.float32)}))
    with pytest.raises(
        ValueError,
        match=r"layer_1\.safetensors: tensor 'activation_function\.threshold' has "
        r"shape \[1, 96\], expected \[96\]",
    ):
        load_transcoders(tmp_path / "plt")
    ct.write_clt_dir(_set("clt"), tmp_path / "clt")
    _rewrite(
        tmp_path / "clt" / "W_enc_0.safetensors",
        lambda d: d.update({"threshold_0": np.zeros(95, np.float32)}),
    )
    with pytest.raises(ValueError, match=r"W_enc_0\.safetensors: tensor 'threshold_0' has shape \[95\]"):
        load_transcoders(tmp_path / "clt")


def test_non_finite_weights(tmp_path):
    paths = ct.write_plt_files(_set("plt"), tmp_path)

    def poison(key, row):
        def edit(d):
            d[key] = d[key].copy()
            d[key][row] = np.nan

        return edit

    _rewrite(paths[0], poison("W_dec", 7))
    with pytest.raises(ValueError, match=r"layer_0\.safetensors: tensor 'W_dec' contains NaN/Inf"):
        load_transcoders(tmp_path, lazy_decoder=False)
    lazy = load_transcoders(tmp_path, lazy_decoder=True)  # lazy: found when the row is read
    lazy.decoders.rows(0, np.array([1, 2]))
    with pytest.raises(ValueError, match=r"layer_0\.safetensors: tensor 'W_dec' has NaN/Inf in rows \[7\]"):
        lazy.decoders.rows(0, np.array([1, 7]))
    _rewrite(paths[2], poison("b_enc", 3))
    with pytest.raises(ValueError, match=r"layer_2\.safetensors: tensor 'b_enc' contains NaN/Inf"):
        load_transcoders(tmp_path)


def test_unknown_keys(tmp_path):
    paths = ct.write_plt_files(_set("plt"), tmp_path / "plt")
    _rewrite(paths[0], lambda d: d.update({"log_thresholds": np.zeros(96, np.float32)}))
    with pytest.raises(ValueError, match=r"layer_0\.safetensors: unknown tensor\(s\) \['log_thresholds'\]"):
        load_transcoders(tmp_path / "plt")
    ct.write_clt_dir(_set("clt"), tmp_path / "clt")
    _rewrite(tmp_path / "clt" / "W_dec_1.safetensors", lambda d: d.update({"extra": np.zeros(3, np.float32)}))
    with pytest.raises(ValueError, match=r"W_dec_1\.safetensors: unknown tensor\(s\) \['extra'\]"):
        load_transcoders(tmp_path / "clt")
    p = ct.write_gemmascope2_files(_set("plt"), tmp_path / "gs2")
    _rewrite(p[0], lambda d: d.pop("threshold"))
    with pytest.raises(ValueError, match=r"layer_0\.safetensors: missing tensor\(s\) \['threshold'\]"):
        load_transcoders(p)


# ------------------------------------------------------------------------------- circuit-tracer reads our files

_CT_CHECK = """
import sys, numpy as np, torch
from circuit_tracer.transcoder.single_layer_transcoder import load_transcoder_set, load_gemma_scope_2_transcoder
from circuit_tracer.transcoder.cross_layer_transcoder import load_clt
d = sys.argv[1]; o = np.load(d + "/ours.npz"); x = torch.tensor(o["x"]); cpu = torch.device("cpu")
ts = load_transcoder_set({i: f"{d}/plt/layer_{i}.safetensors" for i in range(3)}, scan="s", device=cpu,
    feature_input_hook="mlp.hook_in", feature_output_hook="mlp.hook_out", lazy_encoder=False, lazy_decoder=True)
gs2 = [load_gemma_scope_2_transcoder(f"{d}/gs2/layer_{i}.safetensors", i, device=cpu) for i in range(3)]
clt = load_clt(d + "/clt", device=cpu, dtype=torch.float32, lazy_decoder=True)
out = {}
for name, enc, skip in (("plt", lambda l: ts.encode_layer(x[l], l), lambda l: ts.compute_skip(l, x[l])),
                        ("gs2", lambda l: gs2[l].encode(x[l]), lambda l: gs2[l].compute_skip(x[l])),
                        ("clt", lambda l: clt.encode_layer(x[l], l), None)):
    out[name + "_acts"] = torch.stack([enc(l) for l in range(3)]).detach().numpy()
    if skip:
        out[name + "_skip"] = torch.stack([skip(l) for l in range(3)]).detach().numpy()
out["plt_dec"] = ts._get_decoder_vectors(1, torch.tensor([3, 7])).detach().numpy()
out["clt_dec"] = clt._get_decoder_vectors(1, torch.tensor([3, 7])).detach().numpy()
np.savez(d + "/ref.npz", **out)
"""


@pytest.mark.ref
def test_circuit_tracer_reads_our_files(tmp_path):
    """circuit-tracer's own loaders on our written files give our encoder activations, skips and decoder rows."""
    import os
    import subprocess

    import jax.numpy as jnp

    from jcircuits.transcoders.core import encode_layer

    root = Path(__file__).resolve().parents[2]
    py = Path(os.environ.get("JCIRCUITS_REF_VENV", root / ".venv-ref")) / "bin" / "python"
    if not py.is_file():
        pytest.skip("no circuit-tracer reference env (.venv-ref or JCIRCUITS_REF_VENV)")
    x = np.random.default_rng(0).normal(size=(3, 5, 32)).astype(np.float32)
    want = {"x": x}
    for kind, fmt, name in (
        ("plt", "circuit-tracer", "plt"),
        ("plt", "gemmascope-2", "gs2"),
        ("clt", "circuit-tracer", "clt"),
    ):
        ts = tiny_transcoders(tiny_config(), kind=kind, skip=kind == "plt")
        save_transcoders(ts, tmp_path / name, format=fmt)
        tc = transcoder_set_to_numpy(ts)
        want[name + "_acts"] = np.stack(
            [np.asarray(encode_layer(ts.cfg, ts.params, l, jnp.asarray(x[l]))) for l in range(3)]
        )
        if tc["W_skip"] is not None:
            want[name + "_skip"] = np.einsum("ltd,lde->lte", x, tc["W_skip"])
        want[name + "_dec"] = ts.decoders.rows(1, np.array([3, 7]))
    np.savez(tmp_path / "ours.npz", x=x)
    subprocess.run([str(py), "-c", _CT_CHECK, str(tmp_path)], check=True, capture_output=True, timeout=300)
    with np.load(tmp_path / "ref.npz") as ref:
        for k in ref.files:
            np.testing.assert_allclose(ref[k], want[k], rtol=1e-5, atol=1e-5, err_msg=k)
        assert {"plt_acts", "plt_skip", "gs2_skip", "clt_acts", "clt_dec"} <= set(ref.files)


# ------------------------------------------------------------------------------- circuit-tracer's preset names


def test_circuit_tracer_preset_names_and_listed_repos_resolve_from_the_hub_cache(
    tmp_path, monkeypatch, capsys
):
    from jcircuits.cli import main
    from jcircuits.transcoders.io import TRANSCODER_PRESETS, resolve_preset

    # circuit-tracer 0.5.0 (utils/hf_utils.py): "gemma" and "llama" stand for these repositories
    assert {k: v[0] for k, v in TRANSCODER_PRESETS.items()} == {
        "gemma": "mwhanna/gemma-scope-transcoders",
        "llama": "mntss/transcoder-Llama-3.2-1B",
    }
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"'mntss/transcoder-Llama-3\.2-1B'.*HF_HUB_OFFLINE is set"):
        load_transcoders("llama")  # not in the cache: the error names the repository
    plt = tiny_transcoders(tiny_config(), kind="plt")
    files = ct.write_plt_files(transcoder_set_to_numpy(plt), tmp_path / "plt")
    conf = {
        "model_kind": "transcoder_set",
        "feature_input_hook": "mlp.hook_in",
        "feature_output_hook": "mlp.hook_out",
    }
    repos = [  # the presets' repositories and some that circuit-tracer's README lists, named as they are
        "mwhanna/gemma-scope-transcoders", "mntss/transcoder-Llama-3.2-1B", "mntss/gemma-scope-transcoders",
        "mwhanna/qwen3-4b-transcoders",
    ]  # fmt: skip
    for k, repo in enumerate(repos):
        layer_files = {p.name: p for p in files}
        _fake_hub_repo(cache, repo, f"{k + 1}" * 40, {"config.yaml": yaml.safe_dump(conf), **layer_files})
    for name in ("gemma", "llama", *repos[2:]):
        back = load_transcoders(name)
        assert back.cfg.scan == resolve_preset(name)  # the repository it was read from
        _same(transcoder_set_to_numpy(back), transcoder_set_to_numpy(plt))
    assert back.cfg.scan == "mwhanna/qwen3-4b-transcoders" and resolve_preset("llama") == repos[1]
    # a local directory of that name is what it says
    save_transcoders(tiny_transcoders(tiny_config(), kind="clt"), tmp_path / "gemma")
    assert resolve_preset("gemma") == "gemma" and load_transcoders("gemma").cfg.kind == "clt"
    # on the command line, a preset without --model names the model it was trained on
    assert (
        main(["attribute", "--transcoders", "llama", "--prompt", "hi", "-o", str(tmp_path / "g.safetensors")])
        == 2
    )
    err = capsys.readouterr().err
    assert "--transcoders llama needs --model" in err and "--model meta-llama/Llama-3.2-1B" in err
