"""Logical axis names → a ``(data, model)`` device mesh: one rules table for every weight and activation.

Every array the package puts on devices is described by a tuple of *logical* axis names, one per dimension
(``param_axes(cfg)`` for the model, ``transcoder_axes(cfg)`` for a transcoder set, ``context_axes`` for the frozen
linear model of one prompt). ``RULES`` maps each logical name to a mesh axis (or ``None``: replicated). Changing how
a model is split is editing this one table; code never names mesh axes directly.

Attribution computes adjacency rows for a batch of target nodes: the batch (``"batch"``) is split over ``data``,
the model (heads, MLP width, vocabulary, transcoder features, padded source slots) over ``model``. On a TPU pod
slice ``data × model`` is the number of chips; ``model`` is usually the chips of one host (so the all-reduces of
the model axis stay on the fast intra-host links) and ``data`` the number of hosts.

Two relaxations keep one table valid for every model and mesh: a dimension that the mesh axis does not divide
evenly is replicated instead (a tiny test model's 2 KV heads on a 4-way model axis), and a mesh axis already used
by an earlier dimension of the same array is not used again. ``spec_for`` reports both, and the dry runs print
the resulting ``PartitionSpec`` of every array so nothing is silent.

Meshes are built with ``jax.make_mesh(..., axis_types=(AxisType.Auto,) * 2)``: XLA's sharding propagation
decides the layout of intermediates from the inputs' shardings, so the model code has no sharding annotations.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from jcircuits.common.arrays import array_axes
from jcircuits.models.config import ModelConfig
from jcircuits.models.transformer import Params, param_axes
from jcircuits.transcoders.core import TranscoderConfig, Transcoders, transcoder_specs

__all__ = [
    "human",
    "DATA",
    "MODEL",
    "RULES",
    "make_mesh",
    "parse_mesh",
    "mesh_shape",
    "data_slices",
    "spec_for",
    "shardings",
    "transcoder_axes",
    "context_axes",
    "intermediates_axes",
    "place_context",
    "put",
    "shard_tree",
    "shard_params",
    "shard_transcoders",
    "shard_bytes",
    "describe",
    "format_table",
    "is_axes",
]

DATA, MODEL = "data", "model"

# The one table. Logical axis name -> mesh axis (None: replicated).
RULES: dict[str, str | None] = {
    # attribution
    "batch": DATA,  # target rows computed together (adjacency rows)
    "sources": MODEL,  # padded source slots per (layer, position) in the decoder stack
    "positions": None,  # prompt positions (attention mixes them; splitting them would gather every layer)
    # model weights and activations
    "layers": None,  # scanned; splitting it would serialise the scan across devices
    "embed": None,  # d_model: every block reads the whole residual stream
    "embed_out": None,  # the output side of a [D, D] skip matrix
    "vocab": MODEL,
    "q_heads": MODEL,
    "kv_heads": MODEL,
    "head_dim": None,
    "mlp": MODEL,
    # transcoders
    "features": MODEL,
    "layers_out": None,  # CLT decoder target layers
}


def is_axes(x: Any) -> bool:
    """A leaf of an axes tree: a tuple of logical names (``None`` entries allowed)."""
    return isinstance(x, tuple) and all(a is None or isinstance(a, str) for a in x)


# ------------------------------------------------------------------------------------------------- meshes


def parse_mesh(text: str) -> tuple[int, int]:
    """``"4x2"`` → ``(data=4, model=2)``. A single number ``"8"`` means ``8x1``."""
    parts = text.lower().replace("×", "x").split("x")
    try:
        sizes = tuple(int(p) for p in parts)
    except ValueError:
        raise ValueError(f"mesh must look like DATAxMODEL (e.g. 4x2), got {text!r}") from None
    if len(sizes) == 1:
        sizes = (sizes[0], 1)
    if len(sizes) != 2 or min(sizes) < 1:
        raise ValueError(f"mesh must look like DATAxMODEL with positive sizes (e.g. 4x2), got {text!r}")
    return sizes  # type: ignore[return-value]


def make_mesh(data: int | None = None, model: int = 1, *, devices: Sequence[Any] | None = None) -> Mesh:
    """A ``(data, model)`` mesh over ``devices`` (default: all global devices) with ``AxisType.Auto`` axes.

    ``data=None`` takes every device not used by ``model``. Devices are ordered by ``jax.make_mesh`` so that the
    ``model`` axis (the innermost) stays on one host / the fastest links.
    """
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    if model < 1 or n % model:
        raise ValueError(f"model axis {model} must divide the {n} devices; choose a divisor of {n}")
    data = n // model if data is None else data
    if data * model != n:
        raise ValueError(
            f"mesh {data}x{model} needs {data * model} devices but {n} are available; set --mesh so that "
            f"data x model = {n} (or pass that many devices)"
        )
    return jax.make_mesh((data, model), (DATA, MODEL), axis_types=(AxisType.Auto,) * 2, devices=devices)


def mesh_shape(mesh: Mesh | Mapping[str, int] | tuple[int, int]) -> dict[str, int]:
    """``{"data": d, "model": m}`` of a mesh, a mapping or a ``(data, model)`` pair (for estimates without
    devices)."""
    if isinstance(mesh, Mesh):
        return dict(mesh.shape)
    if isinstance(mesh, Mapping):
        return {DATA: int(mesh.get(DATA, 1)), MODEL: int(mesh.get(MODEL, 1))}
    d, m = mesh
    return {DATA: int(d), MODEL: int(m)}


def data_slices(mesh: Mesh) -> list[Mesh]:
    """The ``data`` rows of ``mesh``, each a ``(1, model)`` mesh of its own devices (for work split by prompt:
    each slice runs whole prompts, its ``model`` axis still sharding the weights). Every device must belong to
    this process: with several processes, give each its own prompts and a mesh of its local devices."""
    mine = {d.id for d in jax.local_devices()}
    if any(d.id not in mine for d in mesh.devices.flat):
        raise ValueError(
            "splitting prompts over the data axis needs a mesh of this process's own devices; with several "
            "processes give each its share of the prompts (jcircuits.scale.distributed.process_slice) and a mesh "
            "of jax.local_devices(), or split rows instead"
        )
    ax = mesh.axis_names.index(DATA)
    return [
        Mesh(np.take(mesh.devices, [i], axis=ax), mesh.axis_names, axis_types=mesh.axis_types)
        for i in range(mesh.shape[DATA])
    ]


# ------------------------------------------------------------------------------------------------- specs


def spec_for(
    axes: Sequence[str | None],
    shape: Sequence[int] | None,
    mesh: Mesh | Mapping[str, int] | tuple[int, int],
    rules: Mapping[str, str | None] = RULES,
) -> PartitionSpec:
    """The ``PartitionSpec`` of an array with logical ``axes`` (and ``shape``, for the divisibility check).

    A logical name missing from ``rules`` is an error (add it to the table). A dimension the mesh axis does not
    divide, or a mesh axis already used by an earlier dimension, is replicated.
    """
    sizes = mesh_shape(mesh)
    if shape is not None and len(shape) != len(axes):
        raise ValueError(f"logical axes {tuple(axes)} do not match an array of shape {tuple(shape)}")
    used: set[str] = set()
    out: list[str | None] = []
    for i, name in enumerate(axes):
        if name is None:
            out.append(None)
            continue
        if name not in rules:
            raise KeyError(f"logical axis {name!r} has no rule; add it to jcircuits.scale.sharding.RULES")
        target = rules[name]
        ok = (
            target is not None
            and target not in used
            and sizes.get(target, 1) > 1
            and (shape is None or shape[i] % sizes[target] == 0)
        )
        out.append(target if ok else None)
        if ok:
            used.add(target)
    while out and out[-1] is None:  # canonical form: P('data') rather than P('data', None)
        out.pop()
    return PartitionSpec(*out)


def shardings(axes_tree: Any, shapes_tree: Any, mesh: Mesh, rules: Mapping[str, str | None] = RULES) -> Any:
    """A tree of ``NamedSharding`` (the structure of ``axes_tree``) for arrays/``ShapeDtypeStruct`` in
    ``shapes_tree``."""
    return jax.tree.map(
        lambda ax, x: NamedSharding(mesh, spec_for(ax, np.shape(x), mesh, rules)),
        axes_tree,
        shapes_tree,
        is_leaf=is_axes,
    )


def shard_bytes(shape: Sequence[int], dtype: Any, spec: PartitionSpec, mesh) -> int:
    """Bytes one device holds of an array of ``shape``/``dtype`` laid out by ``spec`` on ``mesh`` (a mesh, or a
    ``(data, model)`` pair)."""
    sizes = mesh_shape(mesh)
    n = 1
    for i, d in enumerate(shape):
        ax = spec[i] if i < len(spec) else None
        parts = math.prod(sizes[a] for a in ((ax,) if isinstance(ax, str) else (ax or ())))
        n *= -(-int(d) // parts)
    return n * np.dtype(dtype).itemsize


# --------------------------------------------------------------------------------------------- transcoders


def transcoder_axes(cfg: TranscoderConfig) -> Transcoders:
    """Logical axes of a transcoder set's device arrays (same tree as ``Transcoders``; from ``transcoder_specs``)."""
    return array_axes(transcoder_specs(cfg))


def intermediates_axes(inter: Any) -> Any:
    """Logical axes of the activations one forward pass captures (``models.transformer.Intermediates``, same tree;
    fields matched by name). Leading ``L``, then the prompt batch, positions and the residual width."""
    per_layer = ("layers", "batch", "positions", "embed")
    scale = ("layers", "batch", "positions", None)
    return dataclasses.replace(
        inter,
        resid=per_layer,
        resid_mid=per_layer,
        attn_out=per_layer,
        attn_pattern=("layers", "batch", "q_heads", "positions", "positions"),
        ln1_scale=scale,
        ln2_scale=scale,
        mlp_in=per_layer,
        mlp_out_raw=per_layer,
        mlp_out=per_layer,
        final_scale=("batch", "positions", None),
        final_normed=("batch", "positions", "embed"),
        post_attn_scale=None if inter.post_attn_scale is None else scale,
        post_mlp_scale=None if inter.post_mlp_scale is None else scale,
    )


def _qk_axes(qk: Any, cfg: ModelConfig) -> Any:
    """Logical axes of ``attribution.linear.QKContext`` (what defines the patterns of a long prompt)."""
    lay = param_axes(cfg).layers
    return dataclasses.replace(
        qk,
        attn_in=("layers", "positions", "embed"),
        wq=lay.wq,
        wk=lay.wk,
        q_norm=None if qk.q_norm is None else lay.q_norm,
        k_norm=None if qk.k_norm is None else lay.k_norm,
    )


def context_axes(ctx: Any, cfg: ModelConfig) -> Any:
    """Logical axes of the frozen linear model of one prompt (``attribution.linear.LinearContext``, matched by
    field name so this module needs no import from ``attribution``): weights as ``param_axes``, attention
    patterns by head, decoder vectors of active sources padded by (layer, position) split over ``sources``."""
    per_pos = ("layers", "positions", None)  # [L, T, 1] frozen norm scales
    dec_clt = getattr(ctx, "dec_clt", None)
    return dataclasses.replace(
        ctx,
        layers=param_axes(cfg).layers,
        ln1_scale=per_pos,
        pattern=None if ctx.pattern is None else ("layers", "q_heads", "positions", "positions"),
        qk=None if getattr(ctx, "qk", None) is None else _qk_axes(ctx.qk, cfg),
        ln2_scale=per_pos,
        errors=("layers", "positions", "embed"),
        embeddings=("positions", "embed"),
        W_enc=("layers", "embed", "features"),
        final_norm=("embed",),
        final_scale=("positions", None),
        post_attn_scale=None if ctx.post_attn_scale is None else per_pos,
        post_mlp_scale=None if ctx.post_mlp_scale is None else per_pos,
        W_skip=None if ctx.W_skip is None else ("layers", "embed", "embed_out"),
        dec=None if ctx.dec is None else ("layers", "positions", "sources", "embed"),
        dec_rows=None if getattr(ctx, "dec_rows", None) is None else ("layers", None, "embed"),
        dec_idx=None if getattr(ctx, "dec_idx", None) is None else ("layers", "positions", "sources"),
        dec_val=None if getattr(ctx, "dec_val", None) is None else ("layers", "positions", "sources"),
        dec_clt=None
        if dec_clt is None
        else tuple(("positions", "sources", "layers_out", "embed") for _ in dec_clt),
    )


# --------------------------------------------------------------------------------------------- placement


def put(x: Any, sharding: NamedSharding) -> jax.Array:
    """Place ``x`` (numpy, a process-local ``jax.Array``, or a global array) with ``sharding``.

    Works with several processes: each process supplies only the shards of its own devices, sliced from its
    local value (which must be the same on every process), so host memory holds one shard at a time; a local
    array whose shards already match the global layout is wrapped without a copy. An array already laid out
    this way is returned as is.
    """
    if isinstance(x, jax.Array) and x.sharding == sharding:
        return x
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return jax.jit(lambda a: a, out_shardings=sharding)(x)  # reshard between global layouts
    if jax.process_count() == 1:
        return jax.device_put(x, sharding)
    if isinstance(x, jax.Array):
        # A process-local array already split over this process's devices exactly as the global layout wants
        # (e.g. weights loaded on a host-local mesh whose model axis is the global one): reuse its buffers.
        want = sharding.addressable_devices_indices_map(x.shape)
        have = {s.device: _norm(s.index, x.shape) for s in x.addressable_shards}
        if all(have.get(dev) == _norm(idx, x.shape) for dev, idx in want.items()):
            shards = {s.device: s.data for s in x.addressable_shards}
            return jax.make_array_from_single_device_arrays(x.shape, sharding, [shards[d] for d in want])
    return jax.make_array_from_callback(np.shape(x), sharding, lambda idx: np.asarray(x[idx]))


def _norm(index: tuple, shape: Sequence[int]) -> tuple:
    """A shard index as explicit ``(start, stop)`` pairs, so equal regions compare equal."""
    return tuple(s.indices(n)[:2] for s, n in zip(index, shape, strict=True))


def shard_tree(tree: Any, axes_tree: Any, mesh: Mesh, rules: Mapping[str, str | None] = RULES) -> Any:
    """Place every leaf of ``tree`` according to its logical axes (``axes_tree`` has the same structure, with
    tuples of names as leaves)."""
    sh = shardings(axes_tree, tree, mesh, rules)
    return jax.tree.map(lambda s, x: put(x, s), sh, tree)


def place_context(ctx: Any, cfg: ModelConfig, src_index: Callable[[int], Any], mesh: Mesh):
    """Lay out one prompt's frozen linear model for sharded attribution. Returns ``(ctx, src_index, batch)``:
    the context on ``mesh`` (``context_axes``), a column map replicated on the mesh (cached per prefix length),
    and ``batch(x)`` which pads a host batch ``[B, ...]`` to a multiple of the data axis and splits it over
    ``data``."""
    ctx = shard_tree(ctx, context_axes(ctx, cfg), mesh)
    replicated, split = NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec(DATA))
    d = mesh.shape[DATA]
    cache: dict[int, jax.Array] = {}

    def index(n_pos: int) -> jax.Array:
        if n_pos not in cache:
            cache[n_pos] = put(np.asarray(src_index(n_pos)), replicated)
        return cache[n_pos]

    def batch(x: Any) -> jax.Array:
        x = np.asarray(x)
        pad = -x.shape[0] % d
        if pad:
            x = np.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1))
        return put(x, split)

    return ctx, index, batch


def shard_params(params: Params, cfg: ModelConfig, mesh: Mesh) -> Params:
    """Model params laid out on ``mesh`` (heads, MLP width and vocabulary over ``model``)."""
    return shard_tree(params, param_axes(cfg), mesh)


def shard_transcoders(tc: Transcoders, cfg: TranscoderConfig, mesh: Mesh) -> Transcoders:
    """Transcoder encoder arrays laid out on ``mesh`` (features over ``model``)."""
    return shard_tree(tc, transcoder_axes(cfg), mesh)


# ------------------------------------------------------------------------------------------------ reports


def describe(
    named: Mapping[str, tuple[Any, Any]],
    mesh: Mesh | tuple[int, int],
    rules: Mapping[str, str | None] = RULES,
    dtype_of: Callable[[Any], Any] | None = None,
) -> list[dict[str, Any]]:
    """One row per array: ``named`` maps a group name to ``(shapes_tree, axes_tree)`` (shapes from
    ``jax.eval_shape``). Rows hold path, shape, dtype, logical axes, ``PartitionSpec`` and bytes per device."""
    rows = []
    for group, (shapes, axes) in named.items():
        flat_axes = jax.tree_util.tree_flatten_with_path(axes, is_leaf=is_axes)[0]
        flat_shapes = jax.tree_util.tree_leaves(shapes)
        if len(flat_axes) != len(flat_shapes):
            raise ValueError(
                f"{group}: axes tree has {len(flat_axes)} leaves, shapes tree {len(flat_shapes)}"
            )
        for (path, ax), s in zip(flat_axes, flat_shapes, strict=True):
            dt = dtype_of(s) if dtype_of else s.dtype
            spec = spec_for(ax, s.shape, mesh, rules)
            rows.append(
                dict(
                    name=group + jax.tree_util.keystr(path),
                    shape=tuple(s.shape),
                    dtype=str(np.dtype(dt)),
                    axes=ax,
                    spec=spec,
                    bytes_per_device=shard_bytes(s.shape, dt, spec, mesh),
                    bytes_total=math.prod(s.shape) * np.dtype(dt).itemsize,
                )
            )
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """A fixed-width text table of ``describe`` rows."""
    lines = [f"{'array':44s} {'shape':24s} {'dtype':9s} {'sharding':30s} {'per device':>11s}"]
    for r in rows:
        spec = "P(" + ", ".join(repr(a) if a else "None" for a in r["spec"]) + ")"
        lines.append(
            f"{r['name'][:44]:44s} {str(r['shape'])[:24]:24s} {r['dtype']:9s} {spec[:30]:30s} "
            f"{human(r['bytes_per_device']):>11s}"
        )
    return "\n".join(lines)


def human(n: float) -> str:
    """Bytes as ``12.3 GiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"
