"""Safetensors checkpoints through the ``safetensors`` package, plus what it does not do: a sharded checkpoint
(``model.safetensors.index.json`` with a ``weight_map``, or several ``*.safetensors`` files) opened as one
mapping, sharded writing with an index, float dtype conversion on writing, and BF16 read as exact float32.

``safetensors`` is imported on first use, so importing the converters stays light.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .files import apply_mode

__all__ = ["SafetensorsError", "SafeFile", "ShardedCheckpoint", "open_checkpoint", "load_file", "save_file",
           "save_sharded", "INDEX_NAME", "SINGLE_NAME"]  # fmt: skip

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
# the package's header errors, in words that say what is wrong with the file
_WHY = {"header too small": "truncated header", "invalid header length": "truncated or corrupt header",
        "header too large": "truncated or corrupt header", "incomplete metadata": "file is truncated"}  # fmt: skip


class SafetensorsError(ValueError):
    """A safetensors file that is malformed or truncated."""


class SafeFile(Mapping):
    """One safetensors file as a read-only ``Mapping`` from names to numpy arrays (BF16 as exact float32, or
    ``ml_dtypes.bfloat16`` with ``bf16="native"``). ``get_slice(name)[a:b, …]`` reads only the slice."""

    def __init__(self, path: str | Path):
        from safetensors import SafetensorError, safe_open

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"safetensors file not found: {self.path}")
        try:
            self._f = safe_open(os.fspath(self.path), framework="numpy")
        except SafetensorError as e:
            why = next((w for k, w in _WHY.items() if k in str(e)), "unreadable")
            raise SafetensorsError(f"{self.path}: {why} ({e})") from None
        self.metadata: dict[str, str] = self._f.metadata() or {}
        self._names = list(self._f.keys())
        self._known = set(self._names)

    def __getitem__(self, name: str) -> np.ndarray:
        return self.get(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, name: object) -> bool:
        return name in self._known

    def __enter__(self) -> SafeFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._f = None

    def get_slice(self, name: str):
        if name not in self._known:
            raise KeyError(f"tensor {name!r} not found in {self.path}")
        return self._f.get_slice(name)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.get_slice(name).get_shape())

    def dtype_name(self, name: str) -> str:
        """The safetensors dtype string (``"F32"``, ``"BF16"``, …)."""
        return self.get_slice(name).get_dtype()

    def get(self, name: str, *, rows: slice | None = None, bf16: str = "float32") -> np.ndarray:
        """The tensor ``name`` (optionally only ``rows`` of its first axis) as a numpy array."""
        part = self.get_slice(name)  # a KeyError naming the file for an unknown name
        if rows is not None:  # clipped to the tensor like a numpy slice (the package's slices do not clip)
            rows = slice(*rows.indices(part.get_shape()[0]))
        a = part[rows] if rows is not None else self._f.get_tensor(name)
        return a.astype(np.float32) if bf16 == "float32" and a.dtype.name == "bfloat16" else a


class ShardedCheckpoint(Mapping):
    """Several ``SafeFile``s behind one ``Mapping`` (a ``weight_map``), with the same methods."""

    def __init__(self, files: Mapping[str, SafeFile], weight_map: Mapping[str, str], where: str):
        self._files, self._map, self.where = dict(files), dict(weight_map), where
        for name, fname in self._map.items():
            if name not in self._files[fname]:
                raise SafetensorsError(f"{where}: weight_map puts {name!r} in {fname}, which does not contain it")

    def __getitem__(self, name: str) -> np.ndarray:
        return self.get(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._map)

    def __len__(self) -> int:
        return len(self._map)

    def __contains__(self, name: object) -> bool:
        return name in self._map

    def __enter__(self) -> ShardedCheckpoint:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for f in self._files.values():
            f.close()

    def file_of(self, name: str) -> SafeFile:
        if name not in self._map:
            raise KeyError(f"tensor {name!r} not found in {self.where}")
        return self._files[self._map[name]]

    def get_slice(self, name: str):
        return self.file_of(name).get_slice(name)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.file_of(name).shape(name)

    def dtype_name(self, name: str) -> str:
        return self.file_of(name).dtype_name(name)

    def get(self, name: str, **kwargs) -> np.ndarray:
        return self.file_of(name).get(name, **kwargs)


def open_checkpoint(path: str | Path) -> SafeFile | ShardedCheckpoint:
    """A ``.safetensors`` file, an index ``.json``, or a directory holding ``model.safetensors.index.json``,
    ``model.safetensors``, or other ``*.safetensors`` files (merged; a name in two files is an error)."""
    path = Path(path)
    if path.suffix == ".json" or (path.is_dir() and (path / INDEX_NAME).is_file()):
        index_path = path if path.suffix == ".json" else path / INDEX_NAME
        if not index_path.is_file():
            raise FileNotFoundError(f"checkpoint index not found: {index_path}")
        weight_map = json.loads(index_path.read_text()).get("weight_map")
        if not isinstance(weight_map, dict):
            raise SafetensorsError(f"{index_path}: no 'weight_map' object")
        for fname in set(weight_map.values()):
            if not (index_path.parent / fname).is_file():
                raise FileNotFoundError(f"{index_path} refers to shard {fname}, which is missing")
        files = {f: SafeFile(index_path.parent / f) for f in sorted(set(weight_map.values()))}
        return ShardedCheckpoint(files, weight_map, str(index_path))
    if not path.is_dir():
        return SafeFile(path)
    found = [path / SINGLE_NAME] if (path / SINGLE_NAME).is_file() else sorted(path.glob("*.safetensors"))
    if not found:
        pickled = sorted(p.name for p in path.glob("*") if p.suffix in (".bin", ".pt", ".pth"))
        hint = (
            f"; it holds PyTorch pickles ({', '.join(pickled[:3])}), which are never unpickled: convert them once "
            f"with `jcircuits convert {path} -o OUT_DIR` (needs torch)"
            if pickled
            else ""
        )
        raise FileNotFoundError(f"no {INDEX_NAME}, {SINGLE_NAME} or *.safetensors files in {path}{hint}")
    if len(found) == 1:
        return SafeFile(found[0])
    opened, weight_map = {f.name: SafeFile(f) for f in found}, {}
    for fname, sf in opened.items():
        for name in sf:
            if name in weight_map:
                raise SafetensorsError(f"tensor {name!r} appears in both {weight_map[name]} and {fname}")
            weight_map[name] = fname
    return ShardedCheckpoint(opened, weight_map, str(path))


def load_file(path: str | Path, *, bf16: str = "float32") -> dict[str, np.ndarray]:
    """Every tensor of a file (or checkpoint directory) as an in-memory dict."""
    with open_checkpoint(path) as ck:
        return {name: ck.get(name, bf16=bf16) for name in ck}


def _prepared(tensors: Mapping[str, Any], dtype: str | None) -> dict[str, np.ndarray]:
    """Contiguous arrays, floating ones converted to ``dtype`` (F64/F32/F16/BF16, BF16 rounded to nearest even)."""
    import ml_dtypes

    targets = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16}
    if dtype is not None and dtype.upper() not in targets:
        raise ValueError(f"dtype must be one of F64, F32, F16, BF16; got {dtype!r}")
    out = {}
    for name in sorted(tensors):
        a = np.asarray(tensors[name])
        if dtype is not None and (np.issubdtype(a.dtype, np.floating) or a.dtype.name == "bfloat16"):
            a = a.astype(targets[dtype.upper()], copy=False)
        out[name] = np.asarray(a, order="C")  # (not ascontiguousarray: it makes a scalar 1-d)
    return out


def save_file(tensors: Mapping[str, Any], path: str | Path, *, metadata: Mapping[str, str] | None = None,
              dtype: str | None = None) -> None:  # fmt: skip
    """Write ``tensors`` (name -> array) to ``path`` (atomically), floating ones converted to ``dtype``."""
    from safetensors.numpy import save_file as write

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    meta = {str(k): str(v) for k, v in metadata.items()} if metadata else None
    write(_prepared(tensors, dtype), os.fspath(tmp), metadata=meta)
    apply_mode(tmp, path)  # the package writes 0600; outputs get what open() would give them
    os.replace(tmp, path)


def save_sharded(tensors: Mapping[str, Any], directory: str | Path, *, max_shard_bytes: int, prefix: str = "model",
                 metadata: Mapping[str, str] | None = None, dtype: str | None = None) -> list[Path]:  # fmt: skip
    """``{prefix}-0000i-of-0000n.safetensors`` shards of at most ``max_shard_bytes`` (a larger tensor gets a shard
    of its own) plus ``{prefix}.safetensors.index.json``; one shard is written as ``{prefix}.safetensors`` with
    no index. Returns the files written."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = _prepared(tensors, dtype)
    groups: list[list[str]] = [[]]
    size = 0
    for name, a in arrays.items():
        if groups[-1] and size + a.nbytes > max_shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += a.nbytes
    if len(groups) == 1:
        save_file(arrays, directory / f"{prefix}.safetensors", metadata=metadata)
        return [directory / f"{prefix}.safetensors"]
    written, weight_map = [], {}
    for i, group in enumerate(groups):
        written.append(directory / f"{prefix}-{i + 1:05d}-of-{len(groups):05d}.safetensors")
        save_file({k: arrays[k] for k in group}, written[-1], metadata=metadata)
        weight_map.update({k: written[-1].name for k in group})
    index = {"metadata": {"total_size": sum(a.nbytes for a in arrays.values())}, "weight_map": weight_map}
    written.append(directory / f"{prefix}.safetensors.index.json")
    written[-1].write_text(json.dumps(index, indent=2, sort_keys=True))
    return written
