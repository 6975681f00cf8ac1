"""One description per array: ``ArrayInfo`` (shape, logical axes, dtype, initialiser) as the leaves of a params
pytree, and what is derived from such a tree — abstract arrays (``array_shapes``), logical axes (``array_axes``,
which ``jcircuits.scale.sharding`` maps to a mesh), random values (``array_init``) and byte counts."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

__all__ = ["ArrayInfo", "is_array_info", "array_shapes", "array_axes", "array_init", "array_leaves"]


@dataclasses.dataclass(frozen=True)
class ArrayInfo:
    """One array of a pytree: its ``shape``, one logical axis name per dimension (``None``: never sharded),
    its ``dtype`` (``None``: the caller's) and ``init(key, shape, dtype, scale)`` when it has one."""

    shape: tuple[int, ...]
    axes: tuple[str | None, ...]
    init: Callable[..., jax.Array] | None = None
    dtype: Any = None

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(int(n) for n in self.shape))
        object.__setattr__(self, "axes", tuple(self.axes))
        if len(self.shape) != len(self.axes):
            raise ValueError(f"shape {self.shape} and axes {self.axes} differ in length")

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def nbytes(self, dtype: Any = None) -> int:
        return math.prod(self.shape) * np.dtype(self.dtype or dtype).itemsize

    def struct(self, dtype: Any = None) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct(self.shape, self.dtype or dtype)


def is_array_info(x: Any) -> bool:
    return isinstance(x, ArrayInfo)


def array_leaves(specs: Any) -> list[ArrayInfo]:
    """The ``ArrayInfo`` leaves of ``specs`` in pytree order (``None`` fields are empty)."""
    return jax.tree.leaves(specs, is_leaf=is_array_info)


def array_shapes(specs: Any, dtype: Any) -> Any:
    """``specs`` with ``jax.ShapeDtypeStruct`` leaves (``dtype`` where a leaf names none)."""
    return jax.tree.map(lambda a: a.struct(dtype), specs, is_leaf=is_array_info)


def array_axes(specs: Any) -> Any:
    """``specs`` with each leaf's logical axes (a tuple of names) in its place."""
    return jax.tree.map(lambda a: a.axes, specs, is_leaf=is_array_info)


def array_init(specs: Any, key: jax.Array, dtype: Any, scale: float = 1.0) -> Any:
    """Random values of ``specs``: one key per leaf (``jax.random.split`` in pytree order), ``init`` each."""
    leaves, treedef = jax.tree.flatten(specs, is_leaf=is_array_info)
    keys = jax.random.split(key, len(leaves))
    out = []
    for a, k in zip(leaves, keys, strict=True):
        if a.init is None:
            raise ValueError(f"array {a.shape} {a.axes} has no initialiser")
        out.append(a.init(k, a.shape, a.dtype or dtype, scale))
    return jax.tree.unflatten(treedef, out)
