"""Loading and saving transcoder sets: circuit-tracer ``config.yaml``, layer files, CLT directories, GemmaScope.

``load_transcoders(src)`` accepts

* a circuit-tracer ``config.yaml`` (or a directory holding one; circuit-tracer's cache layout), local or on the
  Hub as ``hf://org/repo[/subfolder][?revision=…]`` or ``org/repo[/subfolder][@revision]``. Keys:
  ``model_kind: transcoder_set | cross_layer_transcoder``, ``feature_input_hook``, ``feature_output_hook``,
  ``scan``, and optionally ``transcoders:`` — one entry per layer, a local path (relative paths resolve against
  the yaml's directory) or an ``hf://`` URI. Without ``transcoders:`` the files sit next to the yaml
  (``layer_{i}.safetensors`` for a set, ``W_enc_{i}``/``W_dec_{i}`` for a CLT). A CLT *with* a ``transcoders``
  list is GemmaScope-2 per-layer files, as in circuit-tracer. Our extensions: ``activation: topk`` + ``top_k``.
* a directory of ``layer_{i}.safetensors`` or of ``W_enc_{i}``/``W_dec_{i}`` files (hooks from the kwargs);
* a list of per-layer files (circuit-tracer PLT, GemmaScope ``.npz`` or GemmaScope-2 safetensors; sniffed);
* circuit-tracer's preset names ``gemma`` and ``llama``, which stand for Hub repositories (`TRANSCODER_PRESETS`).

Hub files go through ``huggingface_hub`` with ``local_files_only`` when ``HF_HUB_OFFLINE`` is set (cache from
``HF_HUB_CACHE``/``HF_HOME`` read at call time). The format work itself is ``jcircuits_converters.transcoders``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
import yaml

from jcircuits.common import hub
from jcircuits.transcoders.core import (
    DEFAULT_HOOKS,
    DenseDecoders,
    TranscoderConfig,
    TranscoderError,
    Transcoders,
)
from jcircuits.transcoders.layout import (
    CONFIG_NAME,
    TranscoderLayout,
    layout_from_config,
    local_entry,
    read_config,
    resolve_layout,
)
from jcircuits.transcoders.transcoder_set import TranscoderSet
from jcircuits_converters.transcoders import (
    LazyDecoders,
    TranscoderFormatError,
    dense_decoders,
    read_clt_dir,
    read_files,
    write_clt_dir,
    write_gemmascope2_files,
    write_gemmascope_npz,
    write_plt_files,
)

__all__ = [
    "load_transcoders",
    "save_transcoders",
    "transcoder_set_from_numpy",
    "transcoder_set_to_numpy",
    "TRANSCODER_PRESETS",
    "resolve_preset",
]

# circuit-tracer's preset names and the Hub repositories they stand for (circuit-tracer 0.5.0,
# circuit_tracer/utils/hf_utils.py `load_transcoder_from_hub`, its "legacy references"), with the model each set
# was trained on (its CLI's `--model` default for the preset). Other repositories (mntss/clt-gemma-2-2b-426k,
# mwhanna/qwen3-4b-transcoders, …) are named as they are: `org/repo[/subfolder][@revision]`.
TRANSCODER_PRESETS: dict[str, tuple[str, str]] = {
    "gemma": ("mwhanna/gemma-scope-transcoders", "google/gemma-2-2b"),
    "llama": ("mntss/transcoder-Llama-3.2-1B", "meta-llama/Llama-3.2-1B"),
}


def resolve_preset(source: str) -> str:
    """The Hub repository a circuit-tracer preset name (``"gemma"``, ``"llama"``) stands for; any other string,
    and a preset name that is also an existing local path, unchanged."""
    if source in TRANSCODER_PRESETS and not Path(source).exists():
        return TRANSCODER_PRESETS[source][0]
    return source


def _resolve_entry(entry: str, base: Path) -> Path:
    if entry.startswith("hf://"):
        repo_id, path, rev = hub.parse_hf_uri(entry)
        if path is None:
            raise TranscoderError(f"transcoder entry {entry!r} names a repository, not a file")
        return hub.hub_file(repo_id, path, rev)
    return local_entry(entry, base)


# ------------------------------------------------------------------------------------------------- loading


def transcoder_set_from_numpy(
    tc: dict[str, Any],
    *,
    input_hook: str | None = None,
    output_hook: str | None = None,
    scan: Any = None,
    activation: str | None = None,
    top_k: int | None = None,
    dtype: Any = jnp.float32,
) -> TranscoderSet:
    """Our plain numpy layout (``jcircuits_converters.transcoders``) → ``TranscoderSet`` (encoders on device)."""
    kind = tc["kind"]
    L, D, F = tc["W_enc"].shape
    d_in, d_out = DEFAULT_HOOKS[kind]
    if activation is None:
        activation = "jumprelu" if tc.get("threshold") is not None else "relu"
    if activation == "jumprelu" and tc.get("threshold") is None:
        raise TranscoderError("activation 'jumprelu' needs thresholds, and the files have none")
    cfg = TranscoderConfig(
        kind=kind,
        n_layers=int(L),
        d_model=int(D),
        n_features=int(F),
        activation=activation,
        top_k=top_k,
        input_hook=input_hook or d_in,
        output_hook=output_hook or d_out,
        skip=tc.get("W_skip") is not None,
        scan=tuple(scan) if isinstance(scan, list) else scan,
    )
    j = lambda a: None if a is None else jnp.asarray(a, dtype)  # noqa: E731
    thr = tc.get("threshold") if activation == "jumprelu" else None
    params = Transcoders(j(tc["W_enc"]), j(tc["b_enc"]), j(tc["b_dec"]), j(thr), j(tc.get("W_skip")))
    W_dec = tc["W_dec"]
    if isinstance(W_dec, LazyDecoders):
        decoders: Any = W_dec
    elif kind == "plt":
        decoders = DenseDecoders("plt", np.asarray(W_dec, np.float32))
    else:
        decoders = DenseDecoders("clt", [np.asarray(w, np.float32) for w in W_dec])
    return TranscoderSet(cfg, params, decoders)


def _check_layers(tc: dict[str, Any], n_layers: int | None, where: Any) -> None:
    L = tc["W_enc"].shape[0]
    if n_layers is not None and L != n_layers:
        raise TranscoderFormatError(f"{where}: transcoder set covers {L} layers, expected {n_layers}")


def _read(lay: TranscoderLayout, lazy: bool) -> dict[str, Any]:
    """The arrays of ``lay`` in our numpy layout (decoders lazy when asked)."""
    if lay.fmt == "clt":
        return read_clt_dir(lay.base, lazy_decoder=lazy, n_layers=lay.n_layers)
    return read_files(list(lay.files), lazy_decoder=lazy)


def _hub_layout(s: str, ref: Any, n_layers: int | None) -> TranscoderLayout:
    """The layout of a Hub reference: its config.yaml, listed files and directories fetched through ``hub``."""
    repo_id, sub, rev = ref.repo_id, ref.path, ref.revision
    if sub is not None and sub.endswith((".yaml", ".yml")):
        cfg_path, sub = hub.hub_file(repo_id, sub, rev), (str(Path(sub).parent) if "/" in sub else None)
    else:
        cfg_path = hub.hub_file(repo_id, f"{sub}/{CONFIG_NAME}" if sub else CONFIG_NAME, rev)

    def directory(kind: str) -> Path:
        pattern = "W_*.safetensors" if kind == "clt" else "layer_*.safetensors"
        return hub.hub_snapshot(repo_id, [pattern], rev, sub)

    lay = layout_from_config(
        read_config(cfg_path),
        cfg_path.parent,
        s,
        n_layers=n_layers,
        resolve_entry=_resolve_entry,
        directory=directory,
    )
    if lay.scan is None:
        info = repo_id if sub is None else f"{repo_id}//{sub}"
        lay = dataclasses.replace(lay, scan=f"{info}@{rev}" if rev else info)
    return lay


def load_transcoders(
    path_or_uri: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    lazy_decoder: bool = True,
    dtype: Any = jnp.float32,
    n_layers: int | None = None,
    input_hook: str | None = None,
    output_hook: str | None = None,
    scan: str | None = None,
) -> TranscoderSet:
    """Load a transcoder set (see the module docstring for what ``path_or_uri`` may be).

    ``lazy_decoder`` leaves decoders on disk (``LazyDecoders``, rows read on demand); ``n_layers`` (the model's)
    makes a missing layer file an error naming it. Hooks/scan given here override the config's.
    """
    if isinstance(path_or_uri, (list, tuple)):
        lay, where = resolve_layout(path_or_uri), "transcoder files"
    else:
        s = resolve_preset(os.fspath(path_or_uri))
        p = Path(s).expanduser()
        ref = hub.parse_ref(s) if s.startswith("hf://") or not p.exists() else None
        if ref is not None:
            lay, where = _hub_layout(s, ref, n_layers), s
        else:
            lay, where = resolve_layout(p, n_layers=n_layers, resolve_entry=_resolve_entry), p
    tc = _read(lay, lazy_decoder)
    if lay.listed and tc["kind"] != lay.kind:
        mk = "transcoder_set" if lay.kind == "plt" else "cross_layer_transcoder"
        raise TranscoderFormatError(
            f"{where}: model_kind {mk!r} but the listed files hold a {tc['kind'].upper()}"
        )
    _check_layers(tc, n_layers, where)
    return transcoder_set_from_numpy(
        tc,
        input_hook=input_hook or lay.input_hook,
        output_hook=output_hook or lay.output_hook,
        scan=scan if scan is not None else lay.scan,
        activation=lay.activation,
        top_k=lay.top_k,
        dtype=dtype,
    )


# -------------------------------------------------------------------------------------------------- saving


def transcoder_set_to_numpy(ts: TranscoderSet) -> dict[str, Any]:
    """``TranscoderSet`` → our plain numpy layout (decoders materialised; float32 unless stored otherwise)."""
    n = lambda a: None if a is None else np.asarray(a)  # noqa: E731
    dec = ts.decoders
    if isinstance(dec, DenseDecoders):
        W_dec = dense_decoders(dec.W_dec, ts.cfg.kind)
    elif isinstance(dec, LazyDecoders):
        W_dec = dense_decoders(dec, ts.cfg.kind)
    else:
        rows = [dec.rows(l, np.arange(ts.cfg.n_features)) for l in range(ts.cfg.n_layers)]
        W_dec = np.stack(rows) if ts.cfg.kind == "plt" else rows
    p = ts.params
    return {
        "kind": ts.cfg.kind,
        "W_enc": n(p.W_enc),
        "b_enc": n(p.b_enc),
        "b_dec": n(p.b_dec),
        "threshold": n(p.threshold),
        "W_skip": n(p.W_skip),
        "W_dec": W_dec,
    }


def save_transcoders(
    ts: TranscoderSet, out_dir: str | os.PathLike, *, format: str = "circuit-tracer", dtype: str | None = None
) -> Path:
    """Write ``ts`` as files + ``config.yaml`` into ``out_dir``; returns the config path.

    ``format``: ``"circuit-tracer"`` (``layer_{i}.safetensors`` or ``W_enc_{i}``/``W_dec_{i}``; circuit-tracer's
    cache layout, so its ``load_transcoders_from_cache`` reads it too), ``"gemmascope-2"`` (safetensors, JumpReLU)
    or ``"gemmascope"`` (npz, per-layer JumpReLU without skip). ``dtype`` e.g. ``"BF16"`` (default: as stored).
    A CLT's skip is written as ``W_skip_{i}`` in the encoder files (circuit-tracer ignores it).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg, tc = ts.cfg, transcoder_set_to_numpy(ts)
    conf: dict[str, Any] = {
        "model_kind": "transcoder_set" if cfg.kind == "plt" else "cross_layer_transcoder",
        "feature_input_hook": cfg.input_hook,
        "feature_output_hook": cfg.output_hook,
    }
    if cfg.scan is not None:
        conf["scan"] = list(cfg.scan) if isinstance(cfg.scan, tuple) else cfg.scan
    if cfg.activation == "topk":
        conf.update(activation="topk", top_k=int(cfg.top_k))
    if format == "circuit-tracer":
        (write_plt_files if cfg.kind == "plt" else write_clt_dir)(tc, out, dtype=dtype)
    elif format == "gemmascope-2":
        paths = write_gemmascope2_files(tc, out, dtype=dtype)
        conf["transcoders"] = [p.name for p in paths]
    elif format == "gemmascope":
        if dtype is not None:
            np_dtype = {"F32": np.float32, "F16": np.float16, "F64": np.float64}.get(dtype.upper())
            if np_dtype is None:
                raise ValueError(f"GemmaScope npz files hold F32/F16/F64 arrays, not {dtype!r}")
            tc = {k: (v.astype(np_dtype) if isinstance(v, np.ndarray) else v) for k, v in tc.items()}
        paths = write_gemmascope_npz(tc, out)
        conf["transcoders"] = [str(p.relative_to(out)) for p in paths]
    else:
        raise ValueError(
            f"unknown format {format!r}; expected 'circuit-tracer', 'gemmascope-2' or 'gemmascope'"
        )
    with open(out / CONFIG_NAME, "w") as f:
        yaml.safe_dump(conf, f, sort_keys=False)
    return out / CONFIG_NAME
