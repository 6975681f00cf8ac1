"""Where a local transcoder set's files are and what they hold: the one reader of circuit-tracer's
``config.yaml`` and of transcoder directories, for host loading (``transcoders.io``) and sharded loading
(``scale.sharded_loading``) alike.

``resolve_layout(src)`` takes a ``config.yaml``, a directory holding one, a directory of ``layer_{i}.safetensors``
or of CLT ``W_enc_{i}``/``W_dec_{i}`` files, one layer file or a list of them, and returns a ``TranscoderLayout``:
the kind, the config's hooks/scan/activation/top_k, the per-layer files and their format (as
``jcircuits_converters.transcoders.sniff_format`` names them). Only names and headers are read, no arrays.
``layout_from_config`` is the same for an already parsed config (the Hub path of ``io``: entries and directories
are resolved by the caller's functions).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from jcircuits.transcoders.core import DEFAULT_HOOKS
from jcircuits_converters.safetensors_io import SafeFile
from jcircuits_converters.transcoders import TranscoderFormatError, clt_layer_count, sniff_format

__all__ = [
    "CONFIG_NAME",
    "KINDS",
    "TranscoderLayout",
    "resolve_layout",
    "layout_from_config",
    "read_config",
    "local_entry",
]

CONFIG_NAME = "config.yaml"
KINDS = {"transcoder_set": "plt", "cross_layer_transcoder": "clt"}
_LAYER_RE = re.compile(r"^layer_(\d+)\.safetensors$")


@dataclasses.dataclass(frozen=True)
class TranscoderLayout:
    """A transcoder set on disk. ``fmt``: ``"plt"`` (circuit-tracer ``layer_{i}.safetensors``), ``"clt"``
    (a ``W_enc_{i}``/``W_dec_{i}`` directory; ``files`` the encoders, ``decoder_files`` the decoders),
    ``"gemmascope"`` (``params.npz`` per layer) or ``"gemmascope2"`` (GemmaScope-2 safetensors per layer).
    Hooks, scan, activation and top_k are the config's (``None``: not given); ``listed``: the files are a
    config's ``transcoders:`` list."""

    kind: str
    fmt: str
    files: tuple[Path, ...]
    base: Path
    decoder_files: tuple[Path, ...] | None = None
    input_hook: str | None = None
    output_hook: str | None = None
    scan: Any = None
    activation: str | None = None
    top_k: int | None = None
    listed: bool = False

    @property
    def n_layers(self) -> int:
        return len(self.files)

    @property
    def hooks(self) -> tuple[str, str]:
        """(input, output) hooks: the config's, else the kind's defaults."""
        d_in, d_out = DEFAULT_HOOKS[self.kind]
        return self.input_hook or d_in, self.output_hook or d_out

    @property
    def scan_value(self) -> Any:
        """``scan`` as ``TranscoderConfig`` holds it (a YAML list becomes a tuple)."""
        return tuple(self.scan) if isinstance(self.scan, list) else self.scan


def read_config(p: Path) -> dict:
    try:
        with open(p) as f:
            return yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise TranscoderFormatError(f"{p}: invalid YAML ({e})") from None


def local_entry(entry: str, base: Path) -> Path:
    """A ``transcoders:`` entry as a local path (relative ones against the config's directory)."""
    p = Path(entry).expanduser()
    return p if p.is_absolute() else base / p


def _present(paths: Sequence[Path], what: str = "layer") -> list[Path]:
    for i, p in enumerate(paths):
        if not p.is_file():
            raise TranscoderFormatError(f"missing {what} file for layer {i}: {p}")
    return list(paths)


def _sniff_all(paths: Sequence[Path]) -> str:
    """The one format of per-layer files (all must agree; a directory is no layer file)."""
    if not paths:
        raise TranscoderFormatError("no transcoder files given")
    fmts = [sniff_format(p) for p in _present(paths)]
    for p, fm in zip(paths, fmts, strict=True):
        if fm != fmts[0] or fm == "clt":
            raise TranscoderFormatError(f"{p}: format {fm!r} but the set's first file is {fmts[0]!r}")
    return fmts[0]


def _kind_of(fmt: str, first: Path) -> str:
    if fmt != "gemmascope2":
        return "plt"
    with SafeFile(first) as f:  # GemmaScope-2: a CLT's w_dec is [F, L, D]
        return "plt" if len(f.shape("w_dec")) == 2 else "clt"


def _layer_dir_paths(d: Path, n_layers: int | None) -> list[Path]:
    idx = [int(m.group(1)) for p in d.iterdir() if (m := _LAYER_RE.match(p.name))]
    if not idx and n_layers is None:
        raise TranscoderFormatError(f"{d}: no layer_{{i}}.safetensors files")
    n = n_layers if n_layers is not None else max(idx) + 1
    extra = sorted(i for i in idx if i >= n)
    if extra:
        raise TranscoderFormatError(f"{d}: has layer files {extra} beyond the expected {n} layers")
    return [d / f"layer_{i}.safetensors" for i in range(n)]


def _dir_layout(d: Path, kind: str, n_layers: int | None, meta: dict) -> TranscoderLayout:
    """The files of a circuit-tracer directory: ``layer_{i}.safetensors`` (PLT) or ``W_enc_{i}``/``W_dec_{i}``."""
    if kind == "clt":
        if not d.is_dir():
            raise TranscoderFormatError(f"CLT directory not found: {d}")
        L = clt_layer_count(d) if n_layers is None else n_layers
        enc = _present([d / f"W_enc_{i}.safetensors" for i in range(L)])
        dec = _present([d / f"W_dec_{i}.safetensors" for i in range(L)], "decoder")
        return TranscoderLayout("clt", "clt", tuple(enc), d, tuple(dec), **meta)
    files = _layer_dir_paths(d, n_layers)
    return TranscoderLayout("plt", _sniff_all(files), tuple(files), d, **meta)


def layout_from_config(
    conf: Any,
    base: Path,
    where: Any,
    *,
    n_layers: int | None = None,
    resolve_entry: Callable[[str, Path], Path] = local_entry,
    directory: Callable[[str], Path] | None = None,
) -> TranscoderLayout:
    """The layout a parsed circuit-tracer ``config.yaml`` describes. ``base``: the config's directory (relative
    entries resolve against it); ``resolve_entry(entry, base)`` turns a ``transcoders:`` entry into a local path;
    ``directory(kind)`` is the directory holding the files when the config lists none (default ``base``)."""
    if not isinstance(conf, dict) or "model_kind" not in conf:
        raise TranscoderFormatError(f"{where}: not a transcoder config (no 'model_kind')")
    mk = conf["model_kind"]
    if mk not in KINDS:
        raise TranscoderFormatError(f"{where}: unknown model_kind {mk!r}; expected one of {sorted(KINDS)}")
    kind = KINDS[mk]
    meta = dict(
        input_hook=conf.get("feature_input_hook"),
        output_hook=conf.get("feature_output_hook"),
        scan=conf.get("scan"),
        activation=conf.get("activation"),
        top_k=conf.get("top_k"),
    )
    entries = conf.get("transcoders")
    if entries is None:
        d = directory(kind) if directory is not None else base
        return _dir_layout(Path(d), kind, n_layers, meta)
    if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries) or not entries:
        raise TranscoderFormatError(f"{where}: 'transcoders' must be a non-empty list of paths/URIs")
    if n_layers is not None and len(entries) != n_layers:
        raise TranscoderFormatError(
            f"{where}: 'transcoders' lists {len(entries)} layer files, expected {n_layers} (one per layer)"
        )
    files = [resolve_entry(e, base) for e in entries]
    return TranscoderLayout(kind, _sniff_all(files), tuple(files), base, listed=True, **meta)


def resolve_layout(
    src: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    n_layers: int | None = None,
    resolve_entry: Callable[[str, Path], Path] = local_entry,
) -> TranscoderLayout:
    """The layout of a local transcoder source (see the module docstring). ``n_layers`` (the model's) makes a
    missing layer file an error naming it; ``resolve_entry`` is as in ``layout_from_config``."""
    if isinstance(src, (list, tuple)):
        files = [Path(p) for p in src]
        fmt = _sniff_all(files)
        return TranscoderLayout(_kind_of(fmt, files[0]), fmt, tuple(files), files[0].parent)
    p = Path(os.fspath(src)).expanduser()
    if p.is_file() and p.suffix in (".yaml", ".yml"):
        return layout_from_config(read_config(p), p.parent, p, n_layers=n_layers, resolve_entry=resolve_entry)
    if p.is_dir() and (p / CONFIG_NAME).is_file():
        where = p / CONFIG_NAME
        return layout_from_config(
            read_config(where), p, where, n_layers=n_layers, resolve_entry=resolve_entry
        )
    if p.is_dir():
        kind = "clt" if (p / "W_enc_0.safetensors").is_file() else "plt"
        return _dir_layout(p, kind, n_layers, {})
    if p.is_file():
        fmt = _sniff_all([p])
        return TranscoderLayout(_kind_of(fmt, p), fmt, (p,), p.parent)
    raise FileNotFoundError(
        f"transcoders not found: {os.fspath(src)!r} is no file, directory or Hub reference"
    )
