"""Transcoder file formats ↔ our plain layout (numpy + safetensors only; no JAX, no torch, no jcircuits).

Our layout (a plain ``dict``; letters L layers, D model, F features):

* ``kind``: ``"plt"`` | ``"clt"``
* ``W_enc [L, D, F]``, ``b_enc [L, F]``, ``b_dec [L, D]``, ``threshold [L, F]`` or ``None`` (JumpReLU),
  ``W_skip [L, D, D]`` or ``None`` applied as ``x @ W_skip[l]``;
* ``W_dec``: PLT ``[L, F, D]`` array, CLT list of ``[F, L-l, D]`` arrays, or (``lazy_decoder=True``) a
  ``LazyDecoders`` that memory-maps the decoder tensor of each file and reads only requested rows.

Formats (what each file holds, and the map onto ours):

* **circuit-tracer PLT** ``layer_{i}.safetensors``: ``W_enc [F, D]`` (ours = ``.T``), ``W_dec [F, D]``,
  ``b_enc [F]``, ``b_dec [D]``, optional ``activation_function.threshold [F]`` and ``W_skip [D, D]`` which it
  applies as ``x @ W_skip.T`` (ours = ``.T``).
* **circuit-tracer CLT** directory: ``W_enc_{i}.safetensors`` with ``W_enc_{i} [F, D]`` (ours = ``.T``),
  ``b_enc_{i} [F]``, ``b_dec_{i} [D]``, optional ``threshold_{i} [F]``; ``W_dec_{i}.safetensors`` with
  ``W_dec_{i} [F, L-i, D]``. circuit-tracer 0.5.0 stores no skip for this format (its loader never reads one);
  we write/read an optional ``W_skip_{i} [D, D]`` in the encoder file, in ``x @ W`` form — circuit-tracer ignores it.
* **GemmaScope** ``.npz``: ``W_enc [D, F]`` (ours as is), ``W_dec [F, D]``, ``b_enc``, ``b_dec``, ``threshold``.
* **GemmaScope-2** ``.safetensors``: ``w_enc [D, F]``, ``w_dec [F, D]`` (PLT) or ``[F, L, D]`` (CLT: entries
  ``j < i`` unused), ``b_enc``, ``b_dec``, ``threshold``, optional ``affine_skip_connection [D, D]`` which is
  ``x @ W`` form in both cases (circuit-tracer transposes it for PLT, whose own ``W_skip`` is ``x @ W.T``).

Every reader checks shapes across files, unknown tensor names and non-finite values, and raises
``TranscoderFormatError`` naming the file and tensor. Writers take ``dtype`` (``"F32"``, ``"BF16"``, …; default:
the arrays' own dtype), so read ∘ write is the identity bit for bit.
"""

from __future__ import annotations

import re
import struct
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .safetensors_io import SafeFile, save_file

__all__ = [
    "TranscoderFormatError",
    "LazyDecoders",
    "RowSource",
    "sniff_format",
    "read_plt_files",
    "write_plt_files",
    "read_clt_dir",
    "write_clt_dir",
    "read_gemmascope_npz",
    "write_gemmascope_npz",
    "read_gemmascope2_files",
    "write_gemmascope2_files",
    "read_files",
    "dense_decoders",
]

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle")
PLT_KEYS = {"W_enc", "W_dec", "b_enc", "b_dec", "activation_function.threshold", "W_skip"}
GS_KEYS = {"W_enc", "W_dec", "b_enc", "b_dec", "threshold"}
GS2_KEYS = {"w_enc", "w_dec", "b_enc", "b_dec", "threshold", "affine_skip_connection"}


class TranscoderFormatError(ValueError):
    """A transcoder file that is missing, malformed or inconsistent with the others of its set."""


# ------------------------------------------------------------------------------------------- lazy decoders


class RowSource:
    """One tensor in one file (a safetensors entry, or an uncompressed ``.npz`` member memory-mapped at its byte
    ``offset``; ``st_dtype``: safetensors dtype name). ``read(rows)`` copies only those rows (float32);
    ``array()`` is an ``.npz`` member whole as a read-only memory map, which callers slice without reading the
    rest of the file."""

    def __init__(self, path: Path, name: str, shape, st_dtype: str, offset: int | None, col_start: int = 0):
        dt = {"F32": "<f4", "F16": "<f2", "BF16": "<u2", "F64": "<f8"}.get(st_dtype)
        if dt is None:
            raise TranscoderFormatError(f"{path}: decoder {name!r} has non-float dtype {st_dtype}")
        self.path, self.name, self.shape, self.st_dtype = Path(path), name, tuple(shape), st_dtype
        self.col_start, self.dtype, self.offset = col_start, np.dtype(dt), offset
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        self._map: np.memmap | None = None
        self._file: SafeFile | None = None

    @classmethod
    def safetensors(cls, path: Path, name: str, col_start: int = 0) -> RowSource:
        with SafeFile(path) as f:
            if name not in f:
                raise TranscoderFormatError(f"{path}: missing decoder tensor {name!r}")
            return cls(path, name, f.shape(name), f.dtype_name(name), None, col_start)

    @classmethod
    def npz(cls, path: Path, name: str) -> RowSource | None:
        """The ``.npy`` member ``name`` of an uncompressed ``.npz`` (``None`` if compressed or Fortran-ordered)."""
        with zipfile.ZipFile(path) as z:
            info = z.getinfo(name + ".npy")
        if info.compress_type != zipfile.ZIP_STORED:
            return None
        with open(path, "rb") as f:
            f.seek(info.header_offset)
            local = f.read(30)
            if local[:4] != b"PK\x03\x04":
                return None
            n_name, n_extra = struct.unpack("<HH", local[26:30])
            f.seek(info.header_offset + 30 + n_name + n_extra)
            fmt = np.lib.format
            version = fmt.read_magic(f)
            readers = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}
            if version not in readers:
                return None
            shape, fortran, dtype = readers[version](f)
            offset = f.tell()
        names = {np.dtype("<f4"): "F32", np.dtype("<f2"): "F16", np.dtype("<f8"): "F64"}
        if fortran or dtype not in names:
            return None
        return cls(path, name, shape, names[dtype], offset)

    def array(self) -> np.memmap:
        """An ``.npz`` member in its stored layout, memory-mapped read-only."""
        if self._map is None:
            self._map = np.memmap(self.path, dtype=self.dtype, mode="r", offset=self.offset, shape=self.shape)
        return self._map

    def read(self, feats: np.ndarray) -> np.ndarray:
        """Rows ``feats`` (sorted, distinct) as float32; from safetensors one sliced read per run of rows."""
        if self.offset is not None:
            raw = np.asarray(self.array()[feats])  # fancy indexing on a memmap touches only those rows
        else:
            if self._file is None:
                self._file = SafeFile(self.path)
            part = self._file.get_slice(self.name)
            runs = np.split(feats, np.flatnonzero(np.diff(feats) != 1) + 1) if len(feats) else []
            blocks = [part[int(r[0]) : int(r[-1]) + 1] for r in runs]
            raw = np.concatenate(blocks) if blocks else np.zeros((0, *self.shape[1:]), np.float32)
        out = raw.astype(np.float32)
        if self.col_start:
            out = out[:, self.col_start :]
        return np.ascontiguousarray(out)


class LazyDecoders:
    """A ``DecoderStore`` over decoder tensors left on disk: ``rows(l, feats)`` reads only those rows.

    PLT rows are ``[n, D]``; CLT rows ``[n, L-l, D]``; always float32 (bf16 converted exactly). ``rows_read`` and
    ``bytes_read`` count the distinct rows fetched from the files (duplicates in one call are read once).
    """

    def __init__(self, kind: str, sources: Sequence[RowSource], *, check_finite: bool = True):
        self.kind = kind
        self._sources = list(sources)
        self.check_finite = check_finite
        self.rows_read = 0
        self.bytes_read = 0

    @property
    def n_layers(self) -> int:
        return len(self._sources)

    @property
    def nbytes(self) -> int:
        """Total bytes of every decoder tensor (what a dense load would read)."""
        return sum(s.row_bytes * s.shape[0] for s in self._sources)

    def rows(self, layer: int, feats: np.ndarray) -> np.ndarray:
        src = self._sources[layer]
        feats = np.asarray(feats, dtype=np.int64).reshape(-1)
        if feats.size and (feats.min() < 0 or feats.max() >= src.shape[0]):
            raise IndexError(f"feature index out of range [0, {src.shape[0]}) for layer {layer} ({src.path})")
        uniq, inverse = np.unique(feats, return_inverse=True)
        out = src.read(uniq)
        self.rows_read += int(uniq.size)
        self.bytes_read += int(uniq.size) * src.row_bytes
        if self.check_finite and not np.isfinite(out).all():
            bad = uniq[~np.isfinite(out.reshape(len(uniq), -1)).all(axis=1)]
            raise TranscoderFormatError(
                f"{src.path}: tensor {src.name!r} has NaN/Inf in rows {bad[:8].tolist()}"
            )
        return out[inverse]

    def layer(self, l: int) -> np.ndarray:
        """The whole decoder of layer ``l`` (counted as read)."""
        return self.rows(l, np.arange(self._sources[l].shape[0]))


def dense_decoders(W_dec: Any, kind: str) -> np.ndarray | list[np.ndarray]:
    """Materialise ``W_dec`` (arrays or ``LazyDecoders``) as PLT ``[L, F, D]`` / CLT list of ``[F, L-l, D]``."""
    if isinstance(W_dec, LazyDecoders):
        layers = [W_dec.layer(l) for l in range(W_dec.n_layers)]
    else:
        layers = [np.asarray(w) for w in W_dec]
    return np.stack(layers) if kind == "plt" else layers


# ----------------------------------------------------------------------------------------------- checks


def _finite(where: Any, name: str, a: Any) -> np.ndarray:
    if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
        raise TranscoderFormatError(f"{where}: tensor {name!r} contains NaN/Inf values")
    return a


def _shape(where: Any, name: str, a_shape: Sequence[int], want: Sequence[int], what: str = "") -> None:
    if tuple(a_shape) != tuple(want):
        extra = f" ({what})" if what else ""
        raise TranscoderFormatError(
            f"{where}: tensor {name!r} has shape {list(a_shape)}, expected {list(want)}{extra}"
        )


def _unknown(where: Any, keys, allowed: set[str]) -> None:
    extra = sorted(set(keys) - allowed)
    if extra:
        raise TranscoderFormatError(f"{where}: unknown tensor(s) {extra}; expected only {sorted(allowed)}")


def _need(where: Any, keys, required: Sequence[str]) -> None:
    missing = [k for k in required if k not in keys]
    if missing:
        raise TranscoderFormatError(f"{where}: missing tensor(s) {missing}")


def _exists(paths: Sequence[str | Path], what: str = "layer") -> list[Path]:
    out = []
    for i, p in enumerate(paths):
        p = Path(p)
        if not p.is_file():
            raise TranscoderFormatError(f"missing {what} file for layer {i}: {p}")
        out.append(p)
    return out


class _Dims:
    """d_model / n_features fixed by the first file, checked against every later one."""

    def __init__(self):
        self.D: int | None = None
        self.F: int | None = None
        self.first: Any = None

    def check(self, where: Any, D: int, F: int) -> None:
        if self.D is None:
            self.D, self.F, self.first = D, F, where
            return
        if D != self.D:
            raise TranscoderFormatError(f"{where}: d_model {D} differs from {self.D} in {self.first}")
        if F != self.F:
            raise TranscoderFormatError(f"{where}: n_features {F} differs from {self.F} in {self.first}")


def _stack_opt(items: list[np.ndarray | None], name: str, paths: Sequence[Any]) -> np.ndarray | None:
    have = [x is not None for x in items]
    if not any(have):
        return None
    if not all(have):
        i = have.index(False) if have[0] else have.index(True)
        raise TranscoderFormatError(f"{paths[i]}: {name!r} is present in some layer files but not in others")
    return np.stack(items)


def _result(kind, W_enc, b_enc, b_dec, threshold, W_skip, W_dec, files) -> dict[str, Any]:
    return {
        "kind": kind,
        "W_enc": np.stack(W_enc),
        "b_enc": np.stack(b_enc),
        "b_dec": np.stack(b_dec),
        "threshold": _stack_opt(threshold, "threshold", files),
        "W_skip": _stack_opt(W_skip, "skip", files),
        "W_dec": W_dec,
        "files": [str(f) for f in files],
    }


# -------------------------------------------------------------------------------------- circuit-tracer PLT


def read_plt_files(paths: Sequence[str | Path], *, lazy_decoder: bool = False) -> dict[str, Any]:
    """circuit-tracer per-layer safetensors files (one per layer, in layer order) → our layout."""
    files, dims = _exists(paths), _Dims()
    W_enc, b_enc, b_dec, thr, skip, dec, srcs = [], [], [], [], [], [], []
    for p in files:
        with SafeFile(p) as f:
            _unknown(p, f, PLT_KEYS)
            _need(p, f, ["W_enc", "W_dec", "b_enc", "b_dec"])
            F, D = f.shape("b_enc")[0], f.shape("b_dec")[0]
            dims.check(p, D, F)
            _shape(p, "W_enc", f.shape("W_enc"), (F, D), "[n_features, d_model]")
            _shape(p, "W_dec", f.shape("W_dec"), (F, D), "[n_features, d_model]")
            W_enc.append(np.ascontiguousarray(_finite(p, "W_enc", f.get("W_enc")).T))
            b_enc.append(_finite(p, "b_enc", f.get("b_enc")))
            b_dec.append(_finite(p, "b_dec", f.get("b_dec")))
            t = "activation_function.threshold"
            if t in f:
                _shape(p, t, f.shape(t), (F,), "threshold must be [n_features]")
            thr.append(_finite(p, t, f.get(t)) if t in f else None)
            if "W_skip" in f:
                _shape(p, "W_skip", f.shape("W_skip"), (D, D))
            skip.append(
                np.ascontiguousarray(_finite(p, "W_skip", f.get("W_skip")).T) if "W_skip" in f else None
            )
            if lazy_decoder:
                srcs.append(RowSource.safetensors(p, "W_dec"))
            else:
                dec.append(_finite(p, "W_dec", f.get("W_dec")))
    W_dec = LazyDecoders("plt", srcs) if lazy_decoder else np.stack(dec)
    return _result("plt", W_enc, b_enc, b_dec, thr, skip, W_dec, files)


def write_plt_files(tc: Mapping[str, Any], out_dir: str | Path, *, dtype: str | None = None) -> list[Path]:
    """Our layout → ``out_dir/layer_{i}.safetensors`` (circuit-tracer PLT). Returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    W_dec = dense_decoders(tc["W_dec"], "plt")
    paths = []
    for l in range(len(tc["W_enc"])):
        d = {
            "W_enc": np.asarray(tc["W_enc"][l]).T,
            "W_dec": W_dec[l],
            "b_enc": tc["b_enc"][l],
            "b_dec": tc["b_dec"][l],
        }
        if tc.get("threshold") is not None:
            d["activation_function.threshold"] = tc["threshold"][l]
        if tc.get("W_skip") is not None:
            d["W_skip"] = np.asarray(tc["W_skip"][l]).T
        p = out_dir / f"layer_{l}.safetensors"
        save_file(d, p, dtype=dtype)
        paths.append(p)
    return paths


# -------------------------------------------------------------------------------------- circuit-tracer CLT

_ENC_RE = re.compile(r"^W_enc_(\d+)\.safetensors$")


def clt_layer_count(path: str | Path) -> int:
    idx = sorted(int(m.group(1)) for p in Path(path).iterdir() if (m := _ENC_RE.match(p.name)))
    if not idx:
        raise TranscoderFormatError(f"{path}: no W_enc_{{i}}.safetensors files (not a circuit-tracer CLT)")
    for i in range(idx[-1] + 1):
        if i not in idx:
            raise TranscoderFormatError(
                f"missing layer file for layer {i}: {Path(path) / f'W_enc_{i}.safetensors'}"
            )
    return idx[-1] + 1


def read_clt_dir(
    path: str | Path, *, lazy_decoder: bool = False, n_layers: int | None = None
) -> dict[str, Any]:
    """circuit-tracer CLT directory (``W_enc_{i}`` / ``W_dec_{i}`` files) → our layout."""
    path = Path(path)
    if not path.is_dir():
        raise TranscoderFormatError(f"CLT directory not found: {path}")
    L = clt_layer_count(path) if n_layers is None else n_layers
    enc = _exists([path / f"W_enc_{i}.safetensors" for i in range(L)])
    decf = _exists([path / f"W_dec_{i}.safetensors" for i in range(L)], "decoder")
    dims = _Dims()
    W_enc, b_enc, b_dec, thr, skip, dec, srcs = [], [], [], [], [], [], []
    for i, (p, q) in enumerate(zip(enc, decf, strict=True)):
        with SafeFile(p) as f:
            allowed = {f"W_enc_{i}", f"b_enc_{i}", f"b_dec_{i}", f"threshold_{i}", f"W_skip_{i}"}
            _unknown(p, f, allowed)
            _need(p, f, [f"W_enc_{i}", f"b_enc_{i}", f"b_dec_{i}"])
            F, D = f.shape(f"b_enc_{i}")[0], f.shape(f"b_dec_{i}")[0]
            dims.check(p, D, F)
            _shape(p, f"W_enc_{i}", f.shape(f"W_enc_{i}"), (F, D), "[n_features, d_model]")
            W_enc.append(np.ascontiguousarray(_finite(p, f"W_enc_{i}", f.get(f"W_enc_{i}")).T))
            b_enc.append(_finite(p, f"b_enc_{i}", f.get(f"b_enc_{i}")))
            b_dec.append(_finite(p, f"b_dec_{i}", f.get(f"b_dec_{i}")))
            t = f"threshold_{i}"
            if t in f:
                _shape(p, t, f.shape(t), (F,), "threshold must be [n_features]")
            thr.append(_finite(p, t, f.get(t)) if t in f else None)
            s = f"W_skip_{i}"
            if s in f:
                _shape(p, s, f.shape(s), (D, D))
            skip.append(_finite(p, s, f.get(s)) if s in f else None)
        with SafeFile(q) as f:
            _unknown(q, f, {f"W_dec_{i}"})
            _need(q, f, [f"W_dec_{i}"])
            _shape(
                q, f"W_dec_{i}", f.shape(f"W_dec_{i}"), (F, L - i, D), "[n_features, n_layers - i, d_model]"
            )
            if lazy_decoder:
                srcs.append(RowSource.safetensors(q, f"W_dec_{i}"))
            else:
                dec.append(_finite(q, f"W_dec_{i}", f.get(f"W_dec_{i}")))
    W_dec = LazyDecoders("clt", srcs) if lazy_decoder else dec
    return _result("clt", W_enc, b_enc, b_dec, thr, skip, W_dec, enc)


def write_clt_dir(tc: Mapping[str, Any], out_dir: str | Path, *, dtype: str | None = None) -> list[Path]:
    """Our CLT layout → ``out_dir/W_enc_{i}.safetensors`` + ``W_dec_{i}.safetensors``. Returns encoder paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    W_dec = dense_decoders(tc["W_dec"], "clt")
    paths = []
    for i in range(len(tc["W_enc"])):
        d = {
            f"W_enc_{i}": np.asarray(tc["W_enc"][i]).T,
            f"b_enc_{i}": tc["b_enc"][i],
            f"b_dec_{i}": tc["b_dec"][i],
        }
        if tc.get("threshold") is not None:
            d[f"threshold_{i}"] = tc["threshold"][i]
        if tc.get("W_skip") is not None:
            d[f"W_skip_{i}"] = tc["W_skip"][i]
        save_file(d, out_dir / f"W_enc_{i}.safetensors", dtype=dtype)
        save_file({f"W_dec_{i}": W_dec[i]}, out_dir / f"W_dec_{i}.safetensors", dtype=dtype)
        paths.append(out_dir / f"W_enc_{i}.safetensors")
    return paths


# ------------------------------------------------------------------------------------------------ GemmaScope


def read_gemmascope_npz(paths: Sequence[str | Path], *, lazy_decoder: bool = False) -> dict[str, Any]:
    """GemmaScope ``params.npz`` files (one per layer; JumpReLU) → our layout. Lazy decoders need uncompressed
    members (``np.savez``, as GemmaScope ships them); otherwise the decoder is read whole."""
    files, dims = _exists(paths), _Dims()
    W_enc, b_enc, b_dec, thr, dec, srcs = [], [], [], [], [], []
    for p in files:
        if not zipfile.is_zipfile(p):
            raise TranscoderFormatError(f"{p} is not a NumPy .npz archive (GemmaScope params.npz)")
        with np.load(p, allow_pickle=False) as z:
            _unknown(p, z.files, GS_KEYS)
            _need(p, z.files, sorted(GS_KEYS))
            F, D = z["b_enc"].shape[0], z["b_dec"].shape[0]
            dims.check(p, D, F)
            _shape(p, "W_enc", z["W_enc"].shape, (D, F), "[d_model, n_features]")
            _shape(p, "W_dec", z["W_dec"].shape, (F, D), "[n_features, d_model]")
            _shape(p, "threshold", z["threshold"].shape, (F,), "threshold must be [n_features]")
            W_enc.append(_finite(p, "W_enc", z["W_enc"]))
            b_enc.append(_finite(p, "b_enc", z["b_enc"]))
            b_dec.append(_finite(p, "b_dec", z["b_dec"]))
            thr.append(_finite(p, "threshold", z["threshold"]))
            src = RowSource.npz(p, "W_dec") if lazy_decoder else None
            if src is None:
                dec.append(_finite(p, "W_dec", z["W_dec"]))
            srcs.append(src)
    if lazy_decoder and all(s is not None for s in srcs):
        W_dec: Any = LazyDecoders("plt", srcs)
    else:
        W_dec = (
            np.stack([_finite(p, "W_dec", np.load(p, allow_pickle=False)["W_dec"]) for p in files])
            if lazy_decoder
            else np.stack(dec)
        )
    return _result("plt", W_enc, b_enc, b_dec, thr, [None] * len(files), W_dec, files)


def write_gemmascope_npz(tc: Mapping[str, Any], out_dir: str | Path) -> list[Path]:
    """Our PLT JumpReLU layout → ``out_dir/layer_{i}/params.npz`` (GemmaScope)."""
    if tc.get("threshold") is None or tc.get("W_skip") is not None or tc["kind"] != "plt":
        raise TranscoderFormatError("GemmaScope npz holds per-layer JumpReLU transcoders without skip only")
    W_dec = dense_decoders(tc["W_dec"], "plt")
    paths = []
    for l in range(len(tc["W_enc"])):
        p = Path(out_dir) / f"layer_{l}" / "params.npz"
        p.parent.mkdir(parents=True, exist_ok=True)
        np.savez(
            p,
            W_enc=np.asarray(tc["W_enc"][l]),
            W_dec=W_dec[l],
            b_enc=np.asarray(tc["b_enc"][l]),
            b_dec=np.asarray(tc["b_dec"][l]),
            threshold=np.asarray(tc["threshold"][l]),
        )
        paths.append(p)
    return paths


# ---------------------------------------------------------------------------------------------- GemmaScope-2


def read_gemmascope2_files(paths: Sequence[str | Path], *, lazy_decoder: bool = False) -> dict[str, Any]:
    """GemmaScope-2 safetensors files (one per layer) → our layout; PLT if ``w_dec`` is ``[F, D]``, CLT if
    ``[F, L, D]`` (layer ``i`` keeps ``w_dec[:, i:]``)."""
    files, dims = _exists(paths), _Dims()
    L = len(files)
    kind = None
    W_enc, b_enc, b_dec, thr, skip, dec, srcs = [], [], [], [], [], [], []
    for i, p in enumerate(files):
        with SafeFile(p) as f:
            _unknown(p, f, GS2_KEYS)
            _need(p, f, ["w_enc", "w_dec", "b_enc", "b_dec", "threshold"])
            F, D = f.shape("b_enc")[0], f.shape("b_dec")[0]
            dims.check(p, D, F)
            _shape(p, "w_enc", f.shape("w_enc"), (D, F), "[d_model, n_features]")
            k = "plt" if len(f.shape("w_dec")) == 2 else "clt"
            if kind is None:
                kind = k
            elif k != kind:
                raise TranscoderFormatError(
                    f"{p}: 'w_dec' is {k.upper()}-shaped but layer 0 is {kind.upper()}"
                )
            want = (F, D) if kind == "plt" else (F, L, D)
            _shape(
                p,
                "w_dec",
                f.shape("w_dec"),
                want,
                "[n_features, d_model]" if kind == "plt" else "[n_features, n_layers, d_model]",
            )
            _shape(p, "threshold", f.shape("threshold"), (F,), "threshold must be [n_features]")
            W_enc.append(_finite(p, "w_enc", f.get("w_enc")))
            b_enc.append(_finite(p, "b_enc", f.get("b_enc")))
            b_dec.append(_finite(p, "b_dec", f.get("b_dec")))
            thr.append(_finite(p, "threshold", f.get("threshold")))
            a = "affine_skip_connection"
            if a in f:
                _shape(p, a, f.shape(a), (D, D))
            skip.append(_finite(p, a, f.get(a)) if a in f else None)
            if lazy_decoder:
                srcs.append(RowSource.safetensors(p, "w_dec", col_start=i if kind == "clt" else 0))
            else:
                w = _finite(p, "w_dec", f.get("w_dec"))
                dec.append(np.ascontiguousarray(w[:, i:]) if kind == "clt" else w)
    if lazy_decoder:
        W_dec: Any = LazyDecoders(kind, srcs)
    else:
        W_dec = np.stack(dec) if kind == "plt" else dec
    out = _result(kind, W_enc, b_enc, b_dec, thr, skip, W_dec, files)
    return out


def write_gemmascope2_files(
    tc: Mapping[str, Any], out_dir: str | Path, *, dtype: str | None = None
) -> list[Path]:
    """Our JumpReLU layout → ``out_dir/layer_{i}.safetensors`` (GemmaScope-2; CLT rows padded with zeros)."""
    if tc.get("threshold") is None:
        raise TranscoderFormatError("GemmaScope-2 files hold JumpReLU transcoders only (no threshold given)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    W_dec = dense_decoders(tc["W_dec"], tc["kind"])
    L = len(tc["W_enc"])
    paths = []
    for i in range(L):
        w = W_dec[i]
        if tc["kind"] == "clt":
            full = np.zeros((w.shape[0], L, w.shape[2]), w.dtype)
            full[:, i:] = w
            w = full
        d = {
            "w_enc": tc["W_enc"][i],
            "w_dec": w,
            "b_enc": tc["b_enc"][i],
            "b_dec": tc["b_dec"][i],
            "threshold": tc["threshold"][i],
        }
        if tc.get("W_skip") is not None:
            d["affine_skip_connection"] = tc["W_skip"][i]
        p = out_dir / f"layer_{i}.safetensors"
        save_file(d, p, dtype=dtype)
        paths.append(p)
    return paths


# ----------------------------------------------------------------------------------------------- dispatching


def sniff_format(path: str | Path) -> str:
    """``"gemmascope"`` (npz), ``"gemmascope2"`` (``w_enc``), ``"plt"`` (``W_enc``) or ``"clt"`` (a directory
    of ``W_enc_{i}`` files) for one path."""
    p = Path(path)
    if p.is_dir():
        clt_layer_count(p)
        return "clt"
    if not p.is_file():
        raise TranscoderFormatError(f"missing layer file: {p}")
    if p.suffix in PICKLE_SUFFIXES:
        raise TranscoderFormatError(
            f"{p} is a PyTorch pickle file, and pickles are never read: save the transcoder as safetensors "
            "(circuit-tracer's layer_{i}.safetensors with W_enc, W_dec, b_enc, b_dec; `jcircuits convert FILE -o "
            "OUT.safetensors` does it once, with torch) and pass those files or a config.yaml listing them"
        )
    if p.suffix not in (".safetensors", ".npz"):
        raise TranscoderFormatError(
            f"{p} is not a transcoder file: expected a config.yaml, a directory of layer_{{i}}.safetensors, "
            "circuit-tracer/GemmaScope-2 .safetensors layer files, or GemmaScope params.npz files"
        )
    if p.suffix == ".npz":
        return "gemmascope"
    with SafeFile(p) as f:
        if "w_enc" in f:
            return "gemmascope2"
        if "W_enc" in f:
            return "plt"
        raise TranscoderFormatError(f"{p}: neither 'W_enc' (circuit-tracer) nor 'w_enc' (GemmaScope-2) found")


def read_files(paths: Sequence[str | Path], *, lazy_decoder: bool = False) -> dict[str, Any]:
    """Per-layer files of any supported format (sniffed from the first; all must agree) → our layout."""
    if not paths:
        raise TranscoderFormatError("no transcoder files given")
    paths = _exists(paths)
    fmts = [sniff_format(p) for p in paths]
    for p, fm in zip(paths, fmts, strict=True):
        if fm != fmts[0] or fm == "clt":
            raise TranscoderFormatError(f"{p}: format {fm!r} but the set's first file is {fmts[0]!r}")
    if fmts[0] == "gemmascope":
        return read_gemmascope_npz(paths, lazy_decoder=lazy_decoder)
    if fmts[0] == "gemmascope2":
        return read_gemmascope2_files(paths, lazy_decoder=lazy_decoder)
    return read_plt_files(paths, lazy_decoder=lazy_decoder)
