"""Sharded loading: every process reads only the slices of the checkpoint its own devices hold.

``load_model_sharded(path, mesh)`` and ``load_transcoders_sharded(path, mesh)`` build each array with
``jax.make_array_from_callback``: JAX asks every process for the shards of its addressable devices only, and the
callback answers with a sliced read of the safetensors files (``safe_open(...).get_slice``, through
``jcircuits_converters.safetensors_io``). The HF→ours transforms of ``jcircuits_converters.hf`` are transposes
and reshapes; ``read_slice`` maps a shard of ours back to the box of the file it comes from and reads only that:
no host ever holds a whole tensor, let alone the whole checkpoint (host memory peaks at one shard of one tensor
per layer). bf16 is converted to float32 exactly after slicing.

Each loader takes ``reads`` (a list): every read appends ``(tensor name, shape read)`` — the tests use it to check
that shards, not whole tensors, were read. Transcoder decoders stay on disk (``LazyDecoders``): attribution reads
only the rows of active features.
"""

from __future__ import annotations

import functools
import os
import sys
import zipfile
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding

from jcircuits.common.arrays import ArrayInfo
from jcircuits.models.config import ModelConfig, config_from_hf
from jcircuits.models.loading import resolve_model_dir
from jcircuits.models.transformer import LayerParams, Params, param_axes
from jcircuits.scale.sharding import spec_for
from jcircuits.transcoders import TranscoderSet
from jcircuits.transcoders.core import TranscoderConfig, Transcoders, transcoder_specs
from jcircuits.transcoders.layout import CONFIG_NAME, TranscoderLayout, local_entry, resolve_layout
from jcircuits_converters import hf as hf_conv
from jcircuits_converters.safetensors_io import SafeFile, open_checkpoint
from jcircuits_converters.transcoders import (
    GS_KEYS,
    LazyDecoders,
    RowSource,
    TranscoderFormatError,
)

__all__ = [
    "load_model_sharded",
    "load_transcoders_sharded",
    "load_for_mesh",
    "read_slice",
    "read_transcoder_config",
    "sharded_transcoders_unsupported",
    "ShardedLoadingUnsupported",
]


def read_slice(ckpt: Any, name: str, index: tuple, *, transform=None, dtype: Any = np.float32) -> np.ndarray:
    """``transform(tensor)[index]`` of one checkpoint tensor, reading only the file's slice that holds it.

    ``ckpt`` is an open ``SafeFile``/``ShardedCheckpoint`` (or ``_NpzTensors``); ``transform`` a view-producing
    map (transpose, reshape) from the file's layout to ours. It is applied to each file axis's coordinates
    (broadcast, so nothing tensor-sized is allocated) to find the box of the file the shard comes from; that
    box is read and the shard's elements picked from it. Returns a new array in ``dtype`` (bf16 exactly).
    """
    part = ckpt.get_slice(name)
    if transform is None:
        return hf_conv.check_finite(name, np.asarray(part[index]).astype(dtype))
    shape = tuple(ckpt.shape(name))
    coords = []
    for k, n in enumerate(shape):
        axis = np.arange(n).reshape([n if j == k else 1 for j in range(len(shape))])
        coords.append(transform(np.broadcast_to(axis, shape))[index])
    if coords[0].size == 0:
        return np.zeros(coords[0].shape, dtype)
    box = tuple(slice(int(c.min()), int(c.max()) + 1) for c in coords)
    block = np.asarray(part[box])
    return hf_conv.check_finite(name, block[tuple(c - b.start for c, b in zip(coords, box, strict=True))].astype(dtype))


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


def load_model_sharded(
    path_or_repo: str | os.PathLike,
    mesh: Mesh,
    *,
    dtype: Any = jnp.float32,
    revision: str | None = None,
    reads: list | None = None,
) -> tuple[Params, ModelConfig]:
    """Load an HF Gemma-2/Gemma-3/Llama-3/Qwen3 checkpoint straight into ``Params`` laid out on ``mesh``
    (``param_axes`` + ``RULES``). Each process reads only the slices its devices hold. Returns ``(params, cfg)``; the values equal
    ``loading.load_model``'s exactly."""
    model_dir = resolve_model_dir(path_or_repo, revision=revision)
    cfg = config_from_hf(model_dir)
    hf_config = hf_conv.read_hf_config(model_dir)
    dims = hf_conv.Dims.from_hf(hf_config)
    axes = param_axes(cfg)
    # memory maps; kept open by the callbacks' closures until loading ends (a multimodal Gemma-3: its text tower)
    ck = hf_conv.text_view(open_checkpoint(model_dir), hf_config)
    hf_conv.check_checkpoint(ck, dims)  # the checks (and messages) of host loading, before anything is read
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


class ShardedLoadingUnsupported(TranscoderFormatError):
    """A transcoder layout that sharded loading does not read (Hub references, GemmaScope-2 files, compressed
    ``.npz``): load it with ``transcoders.io.load_transcoders`` and place it with ``sharding.shard_transcoders``."""


class _NpzTensors:
    """A GemmaScope ``params.npz`` seen through the ``SafeFile`` methods ``read_slice`` uses: every member is
    memory-mapped at its offset inside the zip (``RowSource.npz``), so slicing reads only the slice. ``np.load``
    cannot do this: it ignores ``mmap_mode`` for ``.npz`` and reads a member whole."""

    def __init__(self, path: Path):
        self.path = Path(path)
        with zipfile.ZipFile(self.path) as z:
            names = [n.removesuffix(".npy") for n in z.namelist()]
        unknown = sorted(set(names) - GS_KEYS)
        if unknown:
            raise TranscoderFormatError(
                f"{path}: unknown tensors {unknown}; GemmaScope holds {sorted(GS_KEYS)}"
            )
        self._src: dict[str, RowSource] = {}
        for n in names:
            src = RowSource.npz(self.path, n)
            if src is None:
                raise ShardedLoadingUnsupported(
                    f"{path}: member {n!r} is compressed, Fortran-ordered or not a little-endian float array; "
                    "sharded loading memory-maps uncompressed members (np.savez, as GemmaScope ships them)"
                )
            self._src[n] = src

    def __contains__(self, name: object) -> bool:
        return name in self._src

    def shape(self, name: str) -> tuple[int, ...]:
        return self._src[name].shape

    def dtype_name(self, name: str) -> str:
        return self._src[name].st_dtype

    def get_slice(self, name: str) -> np.ndarray:
        return self._src[name].array()

    def row_source(self, name: str) -> RowSource:
        return self._src[name]

    def close(self) -> None:
        self._src = {}  # the memory maps close when the last view of them goes


def _key(fmt: str, field: str, l: int) -> str | None:
    """The file's name for ``field`` of layer ``l`` in format ``fmt`` (``None``: the format has no such tensor)."""
    if fmt == "clt":
        return {"threshold": f"threshold_{l}", "skip": f"W_skip_{l}"}.get(field, f"{field}_{l}")
    if fmt == "gemmascope":
        return None if field == "skip" else field
    return {"threshold": "activation_function.threshold", "skip": "W_skip"}.get(field, field)


def _local_entry(entry: str, base: Path) -> Path:
    if entry.startswith("hf://"):
        raise ShardedLoadingUnsupported(f"{base}: lists Hub files (hf://); sharded loading reads local files")
    return local_entry(entry, base)


def _layout(path: Path, n_layers: int | None = None) -> TranscoderLayout:
    """The ``TranscoderLayout`` of a local transcoder source, when sharded loading reads it."""
    lay = resolve_layout(path, n_layers=n_layers, resolve_entry=_local_entry)
    where = path / CONFIG_NAME if path.is_dir() else path
    if lay.listed and lay.kind == "clt":
        raise ShardedLoadingUnsupported(f"{where}: a CLT listed per layer (GemmaScope-2 files)")
    if lay.fmt not in ("plt", "clt", "gemmascope"):
        raise ShardedLoadingUnsupported(f"{where}: lists {lay.fmt} files")
    return lay


def _open(lay: TranscoderLayout) -> list[Any]:
    return [_NpzTensors(p) if lay.fmt == "gemmascope" else SafeFile(p) for p in lay.files]


def sharded_transcoders_unsupported(path: str | os.PathLike) -> str | None:
    """Why ``load_transcoders_sharded`` cannot read ``path`` (not a local path, a layout it does not read), or
    ``None`` when it can. Reads only config.yaml and file headers."""
    p = Path(path).expanduser()
    if not p.exists():
        return f"{path} is not a local path"
    try:
        lay = _layout(p)
        for f in _open(lay):
            f.close()
    except ShardedLoadingUnsupported as e:
        return str(e)
    return None


def _header_config(lay: TranscoderLayout, files: list[Any], where: Any) -> TranscoderConfig:
    """Check every layer file's shapes and names; the set's ``TranscoderConfig`` (from headers only)."""
    key, L = functools.partial(_key, lay.fmt), len(files)
    F, D = files[0].shape(key("b_enc", 0))[0], files[0].shape(key("b_dec", 0))[0]
    W_enc_shape = (D, F) if lay.fmt == "gemmascope" else (F, D)
    for l, f in enumerate(files):
        want = {"W_enc": W_enc_shape, "b_enc": (F,), "b_dec": (D,)}
        if lay.fmt != "clt":  # CLT decoders are in their own files (checked by the row reader's user)
            want["W_dec"] = (F, D)
        for field, shape in want.items():
            if key(field, l) not in f or f.shape(key(field, l)) != shape:
                got = f.shape(key(field, l)) if key(field, l) in f else "missing"
                raise TranscoderFormatError(f"{f.path}: {key(field, l)} should be {shape}, got {got}")
    has = {
        fld: [key(fld, l) is not None and key(fld, l) in f for l, f in enumerate(files)]
        for fld in ("threshold", "skip")
    }
    for fld, flags in has.items():
        if any(flags) and not all(flags):
            raise TranscoderFormatError(f"{where}: {fld} is present in some layer files but not in others")
    if lay.fmt == "gemmascope" and not all(has["threshold"]):
        raise TranscoderFormatError(f"{where}: GemmaScope files need 'threshold' (JumpReLU)")
    input_hook, output_hook = lay.hooks
    return TranscoderConfig(
        kind=lay.kind,
        n_layers=L,
        d_model=int(D),
        n_features=int(F),
        activation=lay.activation or ("jumprelu" if all(has["threshold"]) else "relu"),
        top_k=lay.top_k,
        input_hook=input_hook,
        output_hook=output_hook,
        skip=all(has["skip"]),
        scan=lay.scan_value,
    )


def read_transcoder_config(path: str | os.PathLike) -> TranscoderConfig:
    """The ``TranscoderConfig`` of a local transcoder directory or config.yaml from file headers only (no arrays
    read); every layout ``load_transcoders_sharded`` reads."""
    lay = _layout(Path(path).expanduser())
    files = _open(lay)
    try:
        return _header_config(lay, files, path)
    finally:
        for f in files:
            f.close()


def load_transcoders_sharded(
    path: str | os.PathLike,
    mesh: Mesh,
    *,
    dtype: Any = jnp.float32,
    n_layers: int | None = None,
    reads: list | None = None,
) -> TranscoderSet:
    """Load a local transcoder set with its encoders laid out on ``mesh`` (features over ``model``) and its
    decoders left on disk. Reads circuit-tracer directories (``layer_{i}.safetensors`` or
    ``W_enc_{i}``/``W_dec_{i}``, with or without ``config.yaml``) and config.yaml files listing local per-layer
    files (circuit-tracer PLT ``.safetensors`` or GemmaScope ``params.npz``, uncompressed); other layouts raise
    ``ShardedLoadingUnsupported``. Values equal ``transcoders.io.load_transcoders``'s."""
    lay = _layout(Path(path).expanduser(), n_layers)
    L = lay.n_layers
    files = _open(lay)
    try:
        tcfg = _header_config(lay, files, path)
        D, F = tcfg.d_model, tcfg.n_features
        specs = transcoder_specs(tcfg)
        # circuit-tracer stores W_enc [F, D] (ours [D, F]; GemmaScope's is ours already); a PLT's W_skip is
        # applied as x @ W.T (ours x @ W)
        transforms = {
            "W_enc": None if lay.fmt == "gemmascope" else np.transpose,
            "skip": np.transpose if lay.fmt == "plt" else None,
        }

        def build(field: str, spec: ArrayInfo | None):
            if spec is None:
                return None
            sharding = NamedSharding(mesh, spec_for(spec.axes, spec.shape, mesh))

            def read_layer(l, index):
                part = read_slice(files[l], _key(lay.fmt, field, l), index, transform=transforms.get(field))
                if reads is not None:
                    reads.append((_key(lay.fmt, field, l), part.shape))
                return part

            return _stacked(spec.shape, sharding, read_layer, dtype)

        params = Transcoders(
            W_enc=build("W_enc", specs.W_enc),
            b_enc=build("b_enc", specs.b_enc),
            b_dec=build("b_dec", specs.b_dec),
            threshold=build("threshold", specs.threshold),
            W_skip=build("skip", specs.W_skip),
        )
        if lay.fmt == "gemmascope":
            sources = [f.row_source("W_dec") for f in files]
        elif lay.fmt == "plt":
            sources = [RowSource.safetensors(p, "W_dec") for p in lay.files]
        else:
            sources = [RowSource.safetensors(p, f"W_dec_{i}") for i, p in enumerate(lay.decoder_files)]
            for i, s in enumerate(sources):
                if s.shape != (F, L - i, D):
                    raise TranscoderFormatError(
                        f"{s.path}: W_dec_{i} should be {(F, L - i, D)}, got {s.shape}"
                    )
    finally:
        for f in files:
            f.close()
    return TranscoderSet(tcfg, params, LazyDecoders(lay.kind, sources))


# ---------------------------------------------------------------------------------------------------- the CLI


def load_for_mesh(
    model: str | os.PathLike, transcoders: str | os.PathLike, mesh: Mesh, *, dtype: Any = jnp.float32
) -> tuple[Any, TranscoderSet]:
    """``(replacement.Model, TranscoderSet)`` laid out on ``mesh`` for ``jcircuits attribute --mesh``: the model
    by ``load_model_sharded`` (local directories and cached Hub snapshots), the transcoders by
    ``load_transcoders_sharded`` when it reads their layout, else — with a one-line notice on stderr — by
    ``load_transcoders`` on the host and ``shard_transcoders``."""
    from jcircuits.models import Model
    from jcircuits.models.tokenizer import Tokenizer
    from jcircuits.scale.sharding import shard_transcoders
    from jcircuits.transcoders.io import load_transcoders

    model_dir = resolve_model_dir(model)
    params, cfg = load_model_sharded(model_dir, mesh, dtype=dtype)
    tok = Tokenizer.from_file(model_dir) if (Path(model_dir) / "tokenizer.json").is_file() else None
    m = Model(params=params, cfg=cfg, tokenizer=tok, name=str(model))
    why = sharded_transcoders_unsupported(transcoders)
    if why is None:
        return m, load_transcoders_sharded(transcoders, mesh, dtype=dtype, n_layers=cfg.n_layers)
    print(f"jcircuits: loading the transcoders on the host, then sharding them ({why})", file=sys.stderr)
    ts = load_transcoders(transcoders, dtype=dtype, n_layers=cfg.n_layers)
    return m, TranscoderSet(ts.cfg, shard_transcoders(ts.params, ts.cfg, mesh), ts.decoders)
