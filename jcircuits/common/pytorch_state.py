"""PyTorch state dicts (``pytorch_model.bin``, ``.pt``, ``.pth``) turned into safetensors, once, on request.

Every loading path refuses pickles (``sniff_format``, ``resolve_model_dir``); this module is the one place that
reads them, for ``jcircuits convert`` only. It reads with ``torch.load(weights_only=True)``: torch's restricted
unpickler, which rebuilds tensors, containers and plain values and refuses any other object before running it,
so a crafted file cannot execute code. torch is imported on first use (jcircuits does not depend on it).

- Nested dicts (and lists/tuples) are flattened with ``'.'`` keys (``{"a": {"b": t}}`` → ``"a.b"``); values that
  are not tensors (an epoch counter, a config dict's strings) are skipped and reported.
- safetensors refuses tensors that share memory (tied weights, views); those are cloned, others are written as
  they are (no extra copy).
- A sharded checkpoint (``pytorch_model.bin.index.json`` + ``pytorch_model-0000i-of-0000n.bin``) becomes
  ``model-0000i-of-0000n.safetensors`` + ``model.safetensors.index.json``, one shard in memory at a time.
- Given a directory, its other plain files (``config.json``, tokenizer files, …) are copied beside the output.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from jcircuits_converters.transcoders import PICKLE_SUFFIXES

__all__ = ["StateDictError", "ConvertResult", "convert_state_dict", "flatten_state_dict", "load_state_dict"]

PICKLE_INDEX = "pytorch_model.bin.index.json"
_SAFE_INDEX = "model.safetensors.index.json"
_METADATA = {"format": "pt"}  # what transformers' safetensors files carry


class StateDictError(ValueError):
    """A file ``convert_state_dict`` cannot (or must not) turn into safetensors."""


@dataclasses.dataclass(frozen=True)
class ConvertResult:
    """What `convert_state_dict` wrote: safetensors files, the index (sharded input), copied files, the number
    of tensors and bytes, and the keys of skipped non-tensor values."""

    files: tuple[Path, ...]
    index: Path | None
    copied: tuple[Path, ...]
    n_tensors: int
    n_bytes: int
    skipped: tuple[str, ...]


def _torch():
    try:
        import torch
    except ImportError:
        raise StateDictError(
            "reading a PyTorch state dict needs torch, which is not installed: `pip install torch` (the CPU "
            "build is enough; nothing else in jcircuits needs it), then run the conversion again"
        ) from None
    return torch


def load_state_dict(path: str | Path) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)``, with a one-line `StateDictError` when the
    restricted unpickler refuses the file (it holds Python objects other than tensors and containers)."""
    torch = _torch()
    import pickle

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise StateDictError(
            f"{path} holds Python objects other than tensors and containers, so torch.load(weights_only=True) "
            f"refused to unpickle it ({first[:200]}); a state dict never needs them, and unpickling them could "
            "run code: re-save it from trusted code as a plain dict of tensors"
        ) from None
    except (RuntimeError, EOFError, OSError) as e:
        raise StateDictError(
            f"{path} is not a readable PyTorch file: {str(e).strip().splitlines()[0][:200]}"
        ) from None


def flatten_state_dict(obj: Any) -> tuple[dict[str, Any], list[str]]:
    """``(tensors, skipped)``: every tensor of a nested dict/list/tuple under its ``'.'``-joined key, and the keys
    of values that are not tensors. Two paths flattening to one key are a `StateDictError`."""
    torch = _torch()
    out: dict[str, Any] = {}
    skipped: list[str] = []

    def walk(value: Any, key: str) -> None:
        if isinstance(value, torch.Tensor):
            if key in out:
                raise StateDictError(f"two entries flatten to the key {key!r}; rename one before converting")
            out[key] = value
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{key}.{k}" if key else str(k))
        elif isinstance(value, list | tuple):
            for i, v in enumerate(value):
                walk(v, f"{key}.{i}" if key else str(i))
        else:
            skipped.append(key or "<root>")

    walk(obj, "")
    return out, skipped


def _unshared(tensors: dict[str, Any]) -> dict[str, Any]:
    """The tensors, contiguous, with a private copy of each one that shares its storage with another or covers
    only part of it (safetensors' ``save_file`` refuses both)."""
    by_storage: dict[int, int] = {}
    for t in tensors.values():
        if t.device.type != "meta" and t.numel():
            ptr = t.untyped_storage().data_ptr()
            by_storage[ptr] = by_storage.get(ptr, 0) + 1
    out = {}
    for k, t in tensors.items():
        if t.is_sparse or t.layout != _torch().strided:
            raise StateDictError(
                f"tensor {k!r} is not a dense tensor ({t.layout}); safetensors stores dense ones"
            )
        t = t.detach()
        shared = t.numel() and (
            by_storage[t.untyped_storage().data_ptr()] > 1 or t.untyped_storage().nbytes() != t.nbytes
        )
        out[k] = t.clone().contiguous() if shared or not t.is_contiguous() else t
    return out


def _write(tensors: dict[str, Any], dst: Path) -> int:
    from safetensors.torch import save_file

    if dst.exists():
        raise FileExistsError(f"{dst} exists; remove it or choose another output")
    save_file(_unshared(tensors), str(dst), metadata=_METADATA)
    return sum(t.nbytes for t in tensors.values())


def _safe_name(name: str) -> str:
    """``pytorch_model-00001-of-00002.bin`` → ``model-00001-of-00002.safetensors``; ``x.pt`` → ``x.safetensors``."""
    stem = Path(name).stem
    return re.sub(r"^pytorch_model", "model", stem) + ".safetensors"


def _pickles(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix in PICKLE_SUFFIXES)


def convert_state_dict(src: str | Path, out: str | Path) -> ConvertResult:
    """Convert ``src`` into safetensors under ``out``.

    ``src``: a state-dict file (``out`` a ``.safetensors`` file name, or a directory that receives
    ``model.safetensors`` for ``pytorch_model.bin``, ``<stem>.safetensors`` otherwise); a sharded index
    ``*.bin.index.json`` (``out`` a directory: shards + ``model.safetensors.index.json``); or a directory holding
    either (its other plain files are copied into ``out``). Existing outputs are never overwritten."""
    src, out = Path(src), Path(out)
    if not src.exists():
        raise FileNotFoundError(f"no such file or directory: {src}")
    copied: list[Path] = []
    if src.is_dir():
        index = src / PICKLE_INDEX
        pickles = _pickles(src)
        if not index.is_file() and not pickles:
            raise StateDictError(
                f"{src} holds no PyTorch state dict ({PICKLE_INDEX} or *{', *'.join(PICKLE_SUFFIXES)} files)"
            )
        if out.suffix == ".safetensors":
            raise StateDictError(f"{src} is a directory, so -o must be a directory too, not {out.name}")
        out.mkdir(parents=True, exist_ok=True)
        if index.is_file():
            result = _convert_sharded(index, out)
        else:
            results = [_convert_file(p, out / _safe_name(p.name)) for p in pickles]
            result = ConvertResult(
                tuple(f for r in results for f in r.files), None, (), sum(r.n_tensors for r in results),
                sum(r.n_bytes for r in results), tuple(s for r in results for s in r.skipped),
            )  # fmt: skip
        if out.resolve() != src.resolve():
            for p in sorted(src.iterdir()):
                if p.is_file() and p.suffix not in PICKLE_SUFFIXES and p.name != PICKLE_INDEX:
                    if not (out / p.name).exists():
                        shutil.copy2(p, out / p.name)
                        copied.append(out / p.name)
        return dataclasses.replace(result, copied=tuple(copied))
    if src.name.endswith(".index.json"):
        if out.suffix == ".safetensors":
            raise StateDictError(f"{src} is a sharded checkpoint, so -o must be a directory, not {out.name}")
        out.mkdir(parents=True, exist_ok=True)
        return _convert_sharded(src, out)
    if src.suffix not in PICKLE_SUFFIXES:
        raise StateDictError(
            f"{src} is not a PyTorch state dict: expected a {'/'.join(PICKLE_SUFFIXES)} file, a "
            f"{PICKLE_INDEX} or a directory holding them"
        )
    if out.suffix != ".safetensors":
        out.mkdir(parents=True, exist_ok=True)
        out = out / ("model.safetensors" if src.name == "pytorch_model.bin" else _safe_name(src.name))
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
    return _convert_file(src, out)


def _convert_file(src: Path, dst: Path) -> ConvertResult:
    tensors, skipped = flatten_state_dict(load_state_dict(src))
    if not tensors:
        raise StateDictError(f"{src} holds no tensors (only {', '.join(skipped[:5]) or 'nothing'})")
    n_bytes = _write(tensors, dst)
    return ConvertResult((dst,), None, (), len(tensors), n_bytes, tuple(f"{src.name}: {k}" for k in skipped))


def _shards(index: Path) -> Iterator[tuple[str, set[str]]]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    except (ValueError, KeyError, TypeError) as e:
        raise StateDictError(f"{index} is not a checkpoint index (no 'weight_map' object): {e}") from None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise StateDictError(f"{index}: 'weight_map' must map tensor names to shard file names")
    by_shard: dict[str, set[str]] = {}
    for key, shard in weight_map.items():
        if "/" in shard or "\\" in shard or shard.startswith("."):
            raise StateDictError(f"{index}: shard name {shard!r} must be a file name beside the index")
        by_shard.setdefault(shard, set()).add(key)
    yield from sorted(by_shard.items())


def _convert_sharded(index: Path, out: Path) -> ConvertResult:
    files, skipped, weight_map = [], [], {}
    n_tensors = n_bytes = 0
    shards = list(_shards(index))
    names = [_safe_name(s) for s, _ in shards]
    if len(set(names)) != len(names):
        raise StateDictError(f"{index}: two shards would get the same safetensors name")
    for (shard, keys), name in zip(shards, names, strict=True):
        tensors, skip = flatten_state_dict(load_state_dict(index.parent / shard))
        if set(tensors) != keys:
            missing, extra = sorted(keys - set(tensors))[:5], sorted(set(tensors) - keys)[:5]
            raise StateDictError(
                f"{shard} does not hold what {index.name} says: missing {missing}, not listed {extra}"
            )
        n_bytes += _write(tensors, out / name)
        n_tensors += len(tensors)
        files.append(out / name)
        skipped += [f"{shard}: {k}" for k in skip]
        weight_map.update({k: name for k in tensors})
        del tensors
    dst = out / (
        _SAFE_INDEX
        if index.name == PICKLE_INDEX
        else index.name.replace(".bin.index.json", ".safetensors.index.json")
    )
    if dst.exists():
        raise FileExistsError(f"{dst} exists; remove it or choose another output")
    dst.write_text(
        json.dumps(
            {"metadata": {"total_size": n_bytes}, "weight_map": dict(sorted(weight_map.items()))}, indent=2
        ),
        encoding="utf-8",
    )
    return ConvertResult(tuple(files), dst, (), n_tensors, n_bytes, tuple(skipped))
