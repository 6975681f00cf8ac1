"""The one pytree convention used across the package: frozen dataclasses whose fields are all arrays."""

from __future__ import annotations

import dataclasses

import jax

__all__ = ["pytree_dataclass"]


def pytree_dataclass(cls):
    """A frozen dataclass registered as a pytree whose fields are all data (``None`` fields are empty)."""
    cls = dataclasses.dataclass(frozen=True)(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    return jax.tree_util.register_dataclass(cls, data_fields=names, meta_fields=[])
