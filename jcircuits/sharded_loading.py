"""Sharded loading: every process reads only the slices of the checkpoint its own devices hold.

``load_model_sharded(path, mesh)`` and ``load_transcoders_sharded(path, mesh)`` build each array with
``jax.make_array_from_callback``: JAX asks every process for the shards of its addressable devices only, and the
callback answers with a sliced read from the memory-mapped safetensors files (``converters.safetensors_io``). The
HF→ours transforms of ``converters.hf`` are transposes and reshapes, which numpy applies to the memory map as views,
so indexing the transformed view copies exactly the shard's elements: no host ever holds a whole tensor, let alone
the whole checkpoint (host memory peaks at one shard of one tensor per layer). bf16 checkpoints are sliced as raw
bits and converted after slicing.

Each loader takes ``reads`` (a list): every read appends ``(tensor name, shape read)`` — the tests use it to check
that shards, not whole tensors, were read. Transcoder decoders stay on disk (``LazyDecoders``): attribution reads
only the rows of active features.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import yaml
from jax.sharding import Mesh, NamedSharding

from converters import hf as hf_conv
from converters.safetensors_io import SafeFile, bf16_bits_to_float32, open_checkpoint
from converters.transcoders import LazyDecoders, TranscoderFormatError
from converters.transcoders import _RowSource as RowSource  # the lazy decoder's row reader (one per file)
from jcircuits.loading import resolve_model_dir
from jcircuits.models.config import ModelConfig, config_from_hf
from jcircuits.models.transformer import LayerParams, Params, param_axes
from jcircuits.replacement import TranscoderSet
from jcircuits.sharding import spec_for, transcoder_axes
from jcircuits.transcoders.core import TranscoderConfig, Transcoders

__all__ = ["load_model_sharded", "load_transcoders_sharded", "read_slice"]

_KINDS = {"transcoder_set": "plt", "cross_layer_transcoder": "clt"}
_DEFAULT_HOOKS = {"plt": ("mlp.hook_in", "mlp.hook_out"), "clt": ("hook_resid_mid", "hook_mlp_out")}


def read_slice(ckpt: Any, name: str, index: tuple, *, transform=None, dtype: Any = np.float32) -> np.ndarray:
    """``transform(tensor)[index]`` of one checkpoint tensor, reading only the selected elements.

    ``ckpt`` is an open ``SafeFile``/``ShardedCheckpoint``; ``transform`` a view-producing map (transpose,
    reshape) from the file's layout to ours. Returns a new array in ``dtype`` (bf16 converted exactly).
    """
    is_bf16 = ckpt.dtype_name(name) == "BF16"
    view = ckpt.get(name, copy=False, bf16="bits" if is_bf16 else "float32")
    if transform is not None:
        view = transform(view)
    part = np.array(view[index])  # the only copy: the shard's own elements
    if is_bf16:
        part = bf16_bits_to_float32(part)
    return part.astype(dtype, copy=False)


def _np_dtype(dtype: Any) -> np.dtype:
    return np.dtype(jnp.dtype(dtype))


def _stacked(shape, sharding, read_layer, dtype) -> jax.Array:
    """A ``[L, ...]`` array whose layer ``l`` is ``read_layer(l, index_without_layer)``."""
    np_dtype = _np_dtype(dtype)

    def callback(index):
        layers = range(*index[0].indices(shape[0]))
        return np.stack([read_layer(l, index[1:]) for l in layers]).astype(np_dtype, copy=False)

    return jax.make_array_from_callback(tuple(shape), sharding, callback)


def _single(shape, sharding, read, dtype) -> jax.Array:
    np_dtype = _np_dtype(dtype)
    return jax.make_array_from_callback(
        tuple(shape), sharding, lambda i: read(i).astype(np_dtype, copy=False)
    )


def _check_checkpoint(ck: Any, dims: hf_conv.Dims, where: str) -> None:
    expected = hf_conv.expected_shapes(dims)
    present = set(ck)
    missing = sorted(set(expected) - present)
    if missing:
        raise hf_conv.ConversionError(f"{where}: missing tensors for {dims.arch}: {missing}")
    bad = [
        f"{k}: expected {tuple(s)}, got {tuple(ck.shape(k))}"
        for k, s in expected.items()
        if tuple(ck.shape(k)) != tuple(s)
    ]
    if bad:
        raise hf_conv.ConversionError(
            f"{where}: tensors with the wrong shape for this config: " + "; ".join(bad)
        )


def load_model_sharded(
    path_or_repo: str | os.PathLike,
    mesh: Mesh,
    *,
    dtype: Any = jnp.float32,
    revision: str | None = None,
    reads: list | None = None,
) -> tuple[Params, ModelConfig]:
    """Load an HF Gemma-2/Llama-3 checkpoint straight into ``Params`` laid out on ``mesh`` (``param_axes`` +
    ``RULES``). Each process reads only the slices its devices hold. Returns ``(params, cfg)``; the values equal
    ``loading.load_model``'s exactly."""
    model_dir = resolve_model_dir(path_or_repo, revision=revision)
    cfg = config_from_hf(model_dir)
    dims = hf_conv.Dims.from_hf(hf_conv.read_hf_config(model_dir))
    axes = param_axes(cfg)
    ck = open_checkpoint(model_dir)  # memory maps; kept open by the callbacks' closures until loading ends
    _check_checkpoint(ck, dims, str(model_dir))
    out: dict[str, Any] = {}
    layer_out: dict[str, Any] = {}
    try:
        for rule in hf_conv.RULES[dims.arch]:
            if rule.path == ("unembed",) and dims.tied:
                continue
            field = rule.path[-1]
            ax = getattr(axes.layers, field) if rule.per_layer else getattr(axes, field)
            one = rule.to_ours(np.empty(rule.hf_shape(dims), np.uint8), dims).shape
            shape = ((dims.n_layers,) if rule.per_layer else ()) + tuple(one)
            sharding = NamedSharding(mesh, spec_for(ax, shape, mesh))
            transform = lambda w, r=rule: r.to_ours(w, dims)  # noqa: E731

            def read(key, index, transform=transform):
                part = read_slice(ck, key, index, transform=transform, dtype=np.float32)
                if reads is not None:
                    reads.append((key, part.shape))
                return part

            if rule.per_layer:
                layer_out[field] = _stacked(
                    shape, sharding, lambda l, idx, rule=rule, read=read: read(rule.key(l), idx), dtype
                )
            else:
                out[field] = _single(
                    shape, sharding, lambda idx, rule=rule, read=read: read(rule.key(), idx), dtype
                )
    finally:
        ck.close()
    layers = LayerParams(**{k: layer_out.get(k) for k in LayerParams.__dataclass_fields__})
    params = Params(
        embed=out["embed"], layers=layers, final_norm=out["final_norm"], unembed=out.get("unembed")
    )
    return params, cfg


# ---------------------------------------------------------------------------------------------- transcoders


def _layout(path: Path) -> tuple[str, list[Path], list[Path] | None, dict]:
    """(kind, encoder files, CLT decoder files or None, config.yaml dict) of a local transcoder directory."""
    conf: dict = {}
    if path.is_file() and path.suffix in (".yaml", ".yml"):
        conf, path = yaml.safe_load(path.read_text()) or {}, path.parent
    elif (path / "config.yaml").is_file():
        conf = yaml.safe_load((path / "config.yaml").read_text()) or {}
    if not path.is_dir():
        raise FileNotFoundError(f"transcoder directory not found: {path}")
    if conf.get("transcoders") is not None:
        raise TranscoderFormatError(
            f"{path}: config.yaml lists per-layer files (GemmaScope / GemmaScope-2 layout); sharded loading reads "
            "circuit-tracer layer_{i}.safetensors or W_enc_{i}/W_dec_{i} directories — use "
            "jcircuits.transcoders.io.load_transcoders and then sharding.shard_transcoders"
        )
    kind = _KINDS.get(conf.get("model_kind", ""), None)
    if kind is None:
        kind = "clt" if (path / "W_enc_0.safetensors").is_file() else "plt"
    if kind == "plt":
        files = sorted(path.glob("layer_*.safetensors"), key=lambda p: int(p.stem.split("_")[1]))
        if not files:
            raise TranscoderFormatError(f"{path}: no layer_{{i}}.safetensors files")
        return kind, files, None, conf
    n = len(list(path.glob("W_enc_*.safetensors")))
    enc = [path / f"W_enc_{i}.safetensors" for i in range(n)]
    dec = [path / f"W_dec_{i}.safetensors" for i in range(n)]
    for p in enc + dec:
        if not p.is_file():
            raise TranscoderFormatError(f"missing transcoder file {p}")
    return kind, enc, dec, conf


def load_transcoders_sharded(
    path: str | os.PathLike,
    mesh: Mesh,
    *,
    dtype: Any = jnp.float32,
    n_layers: int | None = None,
    reads: list | None = None,
) -> TranscoderSet:
    """Load a local circuit-tracer transcoder directory (``layer_{i}.safetensors`` or ``W_enc_{i}``/``W_dec_{i}``,
    with or without ``config.yaml``) with its encoders laid out on ``mesh`` (features over ``model``) and its
    decoders left on disk. Values equal ``transcoders.io.load_transcoders``'s."""
    kind, enc_files, dec_files, conf = _layout(Path(path))
    L = len(enc_files)
    if n_layers is not None and L != n_layers:
        raise TranscoderFormatError(f"{path}: transcoder set covers {L} layers, expected {n_layers}")
    names = (
        dict(
            W_enc="W_enc",
            b_enc="b_enc",
            b_dec="b_dec",
            threshold="activation_function.threshold",
            skip="W_skip",
        )
        if kind == "plt"
        else None
    )

    def key(field: str, l: int) -> str:
        if names is not None:
            return names[field]
        return {"threshold": f"threshold_{l}", "skip": f"W_skip_{l}"}.get(field, f"{field}_{l}")

    files = [SafeFile(p) for p in enc_files]
    try:
        F, D = files[0].shape(key("b_enc", 0))[0], files[0].shape(key("b_dec", 0))[0]
        for l, f in enumerate(files):
            for field, want in (("W_enc", (F, D)), ("b_enc", (F,)), ("b_dec", (D,))):
                if key(field, l) not in f or f.shape(key(field, l)) != want:
                    got = f.shape(key(field, l)) if key(field, l) in f else "missing"
                    raise TranscoderFormatError(f"{f.path}: {key(field, l)} should be {want}, got {got}")
        has = {fld: [key(fld, l) in f for l, f in enumerate(files)] for fld in ("threshold", "skip")}
        for fld, flags in has.items():
            if any(flags) and not all(flags):
                raise TranscoderFormatError(f"{path}: {fld} is present in some layer files but not in others")
        activation = conf.get("activation") or ("jumprelu" if all(has["threshold"]) else "relu")
        d_in, d_out = _DEFAULT_HOOKS[kind]
        scan = conf.get("scan")
        tcfg = TranscoderConfig(
            kind=kind,
            n_layers=L,
            d_model=int(D),
            n_features=int(F),
            activation=activation,
            top_k=conf.get("top_k"),
            input_hook=conf.get("feature_input_hook") or d_in,
            output_hook=conf.get("feature_output_hook") or d_out,
            skip=all(has["skip"]),
            scan=tuple(scan) if isinstance(scan, list) else scan,
        )
        axes = transcoder_axes(tcfg)
        # circuit-tracer stores W_enc [F, D] (ours [D, F]); a PLT's W_skip is applied as x @ W.T (ours x @ W)
        transforms = {"W_enc": np.transpose, "skip": np.transpose if kind == "plt" else None}
        shapes = dict(W_enc=(L, D, F), b_enc=(L, F), b_dec=(L, D), threshold=(L, F), skip=(L, D, D))

        def build(field: str, ax):
            sharding = NamedSharding(mesh, spec_for(ax, shapes[field], mesh))

            def read_layer(l, index):
                part = read_slice(files[l], key(field, l), index, transform=transforms.get(field))
                if reads is not None:
                    reads.append((key(field, l), part.shape))
                return part

            return _stacked(shapes[field], sharding, read_layer, dtype)

        params = Transcoders(
            W_enc=build("W_enc", axes.W_enc),
            b_enc=build("b_enc", axes.b_enc),
            b_dec=build("b_dec", axes.b_dec),
            threshold=build("threshold", axes.threshold) if axes.threshold is not None else None,
            W_skip=build("skip", axes.W_skip) if axes.W_skip is not None else None,
        )
    finally:
        for f in files:
            f.close()
    if kind == "plt":
        sources = [RowSource.safetensors(p, "W_dec") for p in enc_files]
    else:
        sources = [RowSource.safetensors(p, f"W_dec_{i}") for i, p in enumerate(dec_files)]
    return TranscoderSet(tcfg, params, LazyDecoders(kind, sources))
