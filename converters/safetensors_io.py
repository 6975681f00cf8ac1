"""Reading and writing safetensors with numpy alone (no torch, no jax, no ``safetensors`` package).

The format: an 8-byte little-endian header length ``N``, ``N`` bytes of JSON mapping each tensor name to
``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets relative to the end of the header; an optional
``"__metadata__"`` entry maps strings to strings), then the raw little-endian tensor bytes.

Files are memory-mapped, so reading a tensor (or a row slice of it) touches only those bytes: a converter can
stream a 10 GB checkpoint tensor by tensor with one tensor's worth of transient memory. ``BF16`` tensors
become float32 exactly (bf16 is the top half of a float32, so the conversion is a 16-bit shift), or
``ml_dtypes.bfloat16`` on request. Sharded checkpoints (``model.safetensors.index.json`` with a
``weight_map``) are read through the same interface as a single file (``open_checkpoint``).
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "SafetensorsError",
    "SafeFile",
    "ShardedCheckpoint",
    "open_checkpoint",
    "read_header",
    "load_file",
    "save_file",
    "save_sharded",
    "bf16_bits_to_float32",
    "float32_to_bf16_bits",
    "INDEX_NAME",
    "SINGLE_NAME",
]

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
# The reference implementation's limit; guards against reading garbage lengths.
_MAX_HEADER = 100 * 1024 * 1024

# safetensors dtype name -> little-endian numpy dtype (BF16 is stored as its uint16 bit pattern)
_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"),
    "U32": np.dtype("<u4"),
    "U16": np.dtype("<u2"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_NAMES: dict[str, str] = {  # numpy dtype name -> safetensors name, for writing
    "float64": "F64",
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "int64": "I64",
    "int32": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint64": "U64",
    "uint32": "U32",
    "uint16": "U16",
    "uint8": "U8",
    "bool": "BOOL",
}


class SafetensorsError(ValueError):
    """A safetensors file that is malformed, truncated, or lacks a requested tensor."""


# ------------------------------------------------------------------------------------------------ bfloat16


def bf16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    """bf16 bit patterns (uint16) -> float32, exactly: the bits are the upper half of the float32."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def float32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bit patterns (uint16), rounding to nearest even; NaNs stay (quiet) NaNs."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = ((u + (np.uint32(0x7FFF) + ((u >> 16) & np.uint32(1)))) >> 16).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        rounded = np.where(nan, ((u >> 16) | np.uint32(0x40)).astype(np.uint16), rounded)
    return rounded


def _bf16_numpy_dtype():
    try:
        import ml_dtypes
    except ImportError as e:  # pragma: no cover - ml_dtypes ships with jax
        raise SafetensorsError("bf16='native' needs the ml_dtypes package") from e
    return np.dtype(ml_dtypes.bfloat16)


# ------------------------------------------------------------------------------------------------- reading


def read_header(path: str | Path) -> tuple[dict[str, Any], int]:
    """Parse a file's header. Returns ``(header, data_start)`` where ``header`` maps tensor names to their
    entries (``__metadata__`` included if present) and ``data_start`` is the byte offset of the tensor
    data."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"safetensors file not found: {path}")
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise SafetensorsError(
                f"{path}: truncated header ({size} bytes; a safetensors file starts with 8)"
            )
        (n,) = struct.unpack("<Q", raw)
        if n > _MAX_HEADER or 8 + n > size:
            raise SafetensorsError(
                f"{path}: truncated or corrupt header (declares {n} header bytes, file has {size - 8} after "
                "the length field)"
            )
        text = f.read(n)
    try:
        header = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SafetensorsError(f"{path}: header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path}: header is not a JSON object")
    data_start = 8 + n
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = _DTYPES[entry["dtype"]]
            begin, end = (int(v) for v in entry["data_offsets"])
            count = int(np.prod(entry["shape"], dtype=np.int64))
        except (KeyError, TypeError, ValueError) as e:
            raise SafetensorsError(f"{path}: bad header entry for {name!r}: {entry!r} ({e!r})") from None
        if end - begin != count * dtype.itemsize or begin < 0:
            raise SafetensorsError(
                f"{path}: tensor {name!r} has data_offsets {[begin, end]} for shape {entry['shape']} "
                f"{entry['dtype']} ({count * dtype.itemsize} bytes)"
            )
        if data_start + end > size:
            raise SafetensorsError(
                f"{path}: file is truncated: tensor {name!r} ends at byte {data_start + end}, file has {size}"
            )
    return header, data_start


class SafeFile(Mapping):
    """A memory-mapped safetensors file; a read-only ``Mapping`` from names to float32/int numpy arrays.

    ``get(name, rows=slice(a, b))`` reads only the selected rows (first axis). ``bf16`` selects how BF16
    tensors come back: ``"float32"`` (default, exact) or ``"native"`` (``ml_dtypes.bfloat16``) or ``"bits"``
    (uint16). Arrays are copies unless ``copy=False``, which returns read-only views into the map (valid while
    the file is open; use ``with SafeFile(p) as f:``).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        header, self._data_start = read_header(self.path)
        self.metadata: dict[str, str] = header.pop("__metadata__", None) or {}
        self._entries: dict[str, dict[str, Any]] = header
        self._file = None
        self._map = None

    # Mapping protocol
    def __getitem__(self, name: str) -> np.ndarray:
        return self.get(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __enter__(self) -> SafeFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:  # a view handed out with copy=False is still alive; the GC closes it later
                pass
            self._map = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def _entry(self, name: str) -> dict[str, Any]:
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(f"tensor {name!r} not found in {self.path}") from None

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(int(s) for s in self._entry(name)["shape"])

    def dtype_name(self, name: str) -> str:
        """The safetensors dtype string (``"F32"``, ``"BF16"``, …)."""
        return self._entry(name)["dtype"]

    def _buffer(self):
        if self._map is None:
            self._file = open(self.path, "rb")
            if self.path.stat().st_size == 0:  # pragma: no cover - read_header already rejects this
                raise SafetensorsError(f"{self.path}: empty file")
            self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        return self._map

    def get(
        self, name: str, *, rows: slice | None = None, bf16: str = "float32", copy: bool = True
    ) -> np.ndarray:
        """The tensor ``name`` (optionally only ``rows`` of its first axis) as a numpy array."""
        entry = self._entry(name)
        st_dtype = entry["dtype"]
        dtype = _DTYPES[st_dtype]
        shape = tuple(int(s) for s in entry["shape"])
        begin = self._data_start + int(entry["data_offsets"][0])
        if rows is not None:
            if not shape:
                raise SafetensorsError(f"{self.path}: cannot take rows of scalar tensor {name!r}")
            start, stop, step = rows.indices(shape[0])
            if step != 1:
                raise SafetensorsError("row slices must be contiguous (step 1)")
            row_items = int(np.prod(shape[1:], dtype=np.int64))
            stop = max(start, stop)
            begin += start * row_items * dtype.itemsize
            shape = (stop - start, *shape[1:])
        count = int(np.prod(shape, dtype=np.int64))
        if count == 0:
            arr = np.zeros(shape, dtype)
        else:
            arr = np.frombuffer(self._buffer(), dtype=dtype, count=count, offset=begin).reshape(shape)
        if st_dtype == "BF16":
            if bf16 == "float32":
                return bf16_bits_to_float32(arr)
            if bf16 == "native":
                arr = arr.view(_bf16_numpy_dtype())
            elif bf16 != "bits":
                raise ValueError(f"bf16 must be 'float32', 'native' or 'bits', got {bf16!r}")
        return np.array(arr) if copy else arr


class ShardedCheckpoint(Mapping):
    """Several safetensors files behind one ``Mapping`` (a ``model.safetensors.index.json`` ``weight_map``).
    Same ``get``/``shape``/``dtype_name`` interface as ``SafeFile``."""

    def __init__(self, files: Mapping[str, SafeFile], weight_map: Mapping[str, str], where: str):
        self._files = dict(files)
        self._map = dict(weight_map)
        self.where = where
        for name, fname in self._map.items():
            if name not in self._files[fname]:
                raise SafetensorsError(
                    f"{where}: weight_map puts {name!r} in {fname}, which does not contain it"
                )

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
        try:
            return self._files[self._map[name]]
        except KeyError:
            raise KeyError(f"tensor {name!r} not found in {self.where}") from None

    def shape(self, name: str) -> tuple[int, ...]:
        return self.file_of(name).shape(name)

    def dtype_name(self, name: str) -> str:
        return self.file_of(name).dtype_name(name)

    def get(self, name: str, **kwargs) -> np.ndarray:
        return self.file_of(name).get(name, **kwargs)


def open_checkpoint(path: str | Path) -> SafeFile | ShardedCheckpoint:
    """Open a checkpoint: a ``.safetensors`` file, an index ``.json``, or a directory holding
    ``model.safetensors.index.json``, ``model.safetensors``, or other ``*.safetensors`` files (merged; a
    tensor
    name appearing in two files is an error)."""
    path = Path(path)
    if path.is_dir():
        if (path / INDEX_NAME).is_file():
            return _open_index(path / INDEX_NAME)
        if (path / SINGLE_NAME).is_file():
            return SafeFile(path / SINGLE_NAME)
        files = sorted(path.glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"no {INDEX_NAME}, {SINGLE_NAME} or *.safetensors files in {path}")
        if len(files) == 1:
            return SafeFile(files[0])
        opened = {f.name: SafeFile(f) for f in files}
        weight_map: dict[str, str] = {}
        for fname, sf in opened.items():
            for name in sf:
                if name in weight_map:
                    raise SafetensorsError(f"tensor {name!r} appears in both {weight_map[name]} and {fname}")
                weight_map[name] = fname
        return ShardedCheckpoint(opened, weight_map, str(path))
    if path.suffix == ".json":
        return _open_index(path)
    return SafeFile(path)


def _open_index(index_path: Path) -> ShardedCheckpoint:
    if not index_path.is_file():
        raise FileNotFoundError(f"checkpoint index not found: {index_path}")
    with open(index_path) as f:
        index = json.load(f)
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict):
        raise SafetensorsError(f"{index_path}: no 'weight_map' object")
    files = {}
    for fname in sorted(set(weight_map.values())):
        shard = index_path.parent / fname
        if not shard.is_file():
            raise FileNotFoundError(f"{index_path} refers to shard {fname}, which is missing")
        files[fname] = SafeFile(shard)
    return ShardedCheckpoint(files, weight_map, str(index_path))


def load_file(path: str | Path, *, bf16: str = "float32") -> dict[str, np.ndarray]:
    """Every tensor of a file (or checkpoint directory) as an in-memory dict."""
    with open_checkpoint(path) as ck:
        return {name: ck.get(name, bf16=bf16) for name in ck}


# ------------------------------------------------------------------------------------------------- writing


def _prepare(name: str, arr: Any, dtype: str | None) -> tuple[str, np.ndarray]:
    """(safetensors dtype name, little-endian contiguous array of the bytes to write)."""
    a = np.asarray(arr)
    if dtype is not None and (np.issubdtype(a.dtype, np.floating) or a.dtype.name == "bfloat16"):
        target = dtype.upper()
        if target == "BF16":
            if a.dtype.name == "bfloat16":
                return "BF16", np.ascontiguousarray(a).view(np.uint16)
            return "BF16", float32_to_bf16_bits(a.astype(np.float32))
        if target not in ("F64", "F32", "F16"):
            raise ValueError(f"dtype must be one of F64, F32, F16, BF16; got {dtype!r}")
        a = a.astype(_DTYPES[target])
    name_ = _NAMES.get(a.dtype.name)
    if name_ is None:
        raise SafetensorsError(f"cannot write tensor {name!r} of dtype {a.dtype}")
    if name_ == "BF16":
        return "BF16", np.ascontiguousarray(a).view(np.uint16)
    return name_, np.ascontiguousarray(a, dtype=_DTYPES[name_])


def save_file(
    tensors: Mapping[str, Any],
    path: str | Path,
    *,
    metadata: Mapping[str, str] | None = None,
    dtype: str | None = None,
) -> None:
    """Write ``tensors`` (name -> array) to ``path``. Floating tensors are converted to ``dtype`` (``"F32"``,
    ``"F16"``, ``"BF16"`` — float32 rounded to nearest even — or ``"F64"``) when given; ``ml_dtypes.bfloat16``
    arrays are written as BF16. Tensors are written one at a time; the header is padded to 8 bytes."""
    names = sorted(tensors)
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    shapes = {}
    for name in names:
        a = tensors[name]
        st, shape = _dtype_and_shape(name, a, dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * _DTYPES[st].itemsize
        header[name] = {"dtype": st, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        shapes[name] = shape
        offset += nbytes
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for name in names:
            _, data = _prepare(name, tensors[name], dtype)
            f.write(data.tobytes())
    os.replace(tmp, path)


def _dtype_and_shape(name: str, a: Any, dtype: str | None) -> tuple[str, tuple[int, ...]]:
    arr = np.asarray(a) if not hasattr(a, "dtype") else a
    dt = np.dtype(arr.dtype)
    shape = tuple(int(s) for s in arr.shape)
    if dtype is not None and (np.issubdtype(dt, np.floating) or dt.name == "bfloat16"):
        return dtype.upper(), shape
    st = _NAMES.get(dt.name)
    if st is None:
        raise SafetensorsError(f"cannot write tensor {name!r} of dtype {dt}")
    return st, shape


def save_sharded(
    tensors: Mapping[str, Any],
    directory: str | Path,
    *,
    max_shard_bytes: int,
    prefix: str = "model",
    metadata: Mapping[str, str] | None = None,
    dtype: str | None = None,
) -> list[Path]:
    """Write ``tensors`` into ``directory`` as ``{prefix}-0000i-of-0000n.safetensors`` shards of at most
    ``max_shard_bytes`` each (a larger tensor gets a shard of its own) plus
    ``{prefix}.safetensors.index.json``.
    With a single shard, writes ``{prefix}.safetensors`` and no index. Returns the files written."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    groups: list[list[str]] = [[]]
    size = 0
    total = 0
    for name in sorted(tensors):
        st, shape = _dtype_and_shape(name, tensors[name], dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * _DTYPES[st].itemsize
        total += nbytes
        if groups[-1] and size + nbytes > max_shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += nbytes
    if len(groups) == 1:
        p = directory / f"{prefix}.safetensors"
        save_file(tensors, p, metadata=metadata, dtype=dtype)
        return [p]
    n = len(groups)
    written, weight_map = [], {}
    for i, group in enumerate(groups):
        fname = f"{prefix}-{i + 1:05d}-of-{n:05d}.safetensors"
        save_file({k: tensors[k] for k in group}, directory / fname, metadata=metadata, dtype=dtype)
        weight_map.update({k: fname for k in group})
        written.append(directory / fname)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    index_path = directory / f"{prefix}.safetensors.index.json"
    with open(index_path, "w") as f:
        json.dump(index, f, indent=2, sort_keys=True)
    written.append(index_path)
    return written
