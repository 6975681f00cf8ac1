"""Planning a run before it starts: the mesh from ``--mesh``, the memory estimate, and the dry-run report.

``jcircuits attribute`` turns its arguments into a ``RunSettings`` and calls ``preflight(settings)`` before it
loads anything. That reads only configs (the HF ``config.json`` and the
transcoder files' headers; no weights), estimates peak device and host memory (``jcircuits.scale.memory``) for the
prompt length, batch size, dtype, ``max_feature_nodes`` and mesh, and

* with ``--dry-run`` prints the mesh, the estimate and the sharding of every weight (shapes from
  ``jax.eval_shape``), then exits 0, or 2 when the run would not fit;
* otherwise refuses (exit code 2) a run whose estimate exceeds the available memory, naming the setting to change
  (batch size, dtype, ``max_feature_nodes``, mesh size), and lets a run that fits go ahead.

``tpu/dryrun.py`` prints the same report for the TPU configurations without any device.
"""

from __future__ import annotations

import dataclasses
import sys
import warnings
from pathlib import Path
from typing import Any

import jax

from jcircuits.common.arrays import array_axes, array_shapes
from jcircuits.models.config import ModelConfig
from jcircuits.models.transformer import param_axes, param_shapes
from jcircuits.scale.memory import (
    MemoryEstimate,
    device_capacity,
    estimate_attribution,
    host_capacity,
    human,
)
from jcircuits.scale.sharding import describe, format_table, mesh_shape
from jcircuits.transcoders.core import TranscoderConfig, transcoder_specs

__all__ = ["RunSettings", "PlanError", "preflight", "dry_run_report", "read_transcoder_config"]


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """What a planned attribution run is: where the model and transcoders come from (``model=None``: the embedded
    default), the prompt (text, or ``n_tokens`` ids), the engine settings, the mesh shape, and the memory the
    estimate may assume (``None``: detected)."""

    model: str | None = None
    transcoders: str | None = None
    prompt: str | None = None
    chat: bool = False  # the prompt is one user turn of the tokenizer's chat template
    n_tokens: int | None = None
    dtype: str = "float32"
    batch_size: int = 256
    max_feature_nodes: int | None = None
    max_n_logits: int = 10
    mesh: tuple[int, int] | None = None
    dry_run: bool = False
    device_memory: int | None = None
    host_memory: int | None = None
    l0: float | None = None

    @property
    def mesh_text(self) -> str:
        d, m = self.mesh or (1, 1)
        return f"{d}x{m}"


class PlanError(ValueError):
    """A run that cannot be planned as asked (the message names the setting to change)."""


def read_transcoder_config(path: str) -> TranscoderConfig:
    """The ``TranscoderConfig`` of a local transcoder directory or config.yaml from file headers only (no arrays
    read): circuit-tracer PLT/CLT directories and config.yaml files listing local PLT or GemmaScope files. Other
    layouts raise ``sharded_loading.ShardedLoadingUnsupported``."""
    from jcircuits.scale.sharded_loading import read_transcoder_config as from_headers

    return from_headers(path)


def _model_files(model: str) -> Path:
    """A directory holding the model's ``config.json`` (and ``tokenizer.json`` when there is one): the local
    directory itself, or for a Hub id only its small config and tokenizer files (never the weights)."""
    from jcircuits.models.loading import resolve_model_dir

    return resolve_model_dir(model, config_only=True)


def _configs(run: RunSettings) -> tuple[ModelConfig, TranscoderConfig, int | None] | None:
    """Model and transcoder configs of the run, and the prompt length when known; ``None`` when the transcoders
    are not local files (a real run then goes ahead without an estimate). With no model this describes the
    embedded default, the model ``attribute`` traces then."""
    from jcircuits.models.config import config_from_hf
    from jcircuits.scale.sharded_loading import ShardedLoadingUnsupported

    if run.model is None:
        from jcircuits.default import DEFAULT_DIR

        model_dir, transcoders = DEFAULT_DIR, str(DEFAULT_DIR / "transcoders")
    else:
        if run.transcoders is None:
            raise PlanError(
                "--model needs --transcoders (a circuit-tracer config.yaml, directory or hub repo)"
            )
        transcoders = run.transcoders
        p = Path(transcoders)
        if not p.exists():
            if run.dry_run:
                raise FileNotFoundError(
                    f"the memory estimate reads local transcoder files; {transcoders!r} is not a local path "
                    "(download it first, e.g. with huggingface-cli download)"
                )
            print(
                "jcircuits attribute: no memory estimate (transcoders are not local files)", file=sys.stderr
            )
            return None
        model_dir = None
    try:
        tcfg = read_transcoder_config(transcoders)
    except ShardedLoadingUnsupported as e:
        if run.dry_run:
            raise
        print(f"jcircuits attribute: no memory estimate ({e})", file=sys.stderr)
        return None
    model_dir = model_dir or _model_files(run.model)
    cfg = config_from_hf(model_dir)
    n_tokens = run.n_tokens
    if run.prompt is not None and (model_dir / "tokenizer.json").is_file():
        from jcircuits.models.tokenizer import Tokenizer

        with warnings.catch_warnings():  # unknown words: the run itself says so, once
            warnings.simplefilter("ignore")
            tk = Tokenizer.from_file(model_dir)
            n_tokens = len(tk.encode_chat(run.prompt) if run.chat else tk.encode(run.prompt))
    return cfg, tcfg, n_tokens


def dry_run_report(
    cfg: ModelConfig,
    tcfg: TranscoderConfig,
    est: MemoryEstimate,
    mesh: Any,
    dtype: str,
    devices: str | None = None,
) -> str:
    """The mesh, the estimate, and a table of every array's shape, ``PartitionSpec`` and bytes per device: the
    weights (``jax.eval_shape`` of ``param_shapes``), the transcoders' encoders, and the largest arrays of the
    prompt's frozen linear model (sizes from the estimate's settings)."""
    import jax.numpy as jnp

    d, m = mesh_shape(mesh)["data"], mesh_shape(mesh)["model"]
    dt = jnp.dtype(dtype)
    params = jax.eval_shape(lambda: param_shapes(cfg, dt))
    enc = jax.eval_shape(lambda: array_shapes(transcoder_specs(tcfg), dt))
    L, T, K, D, H = cfg.n_layers, est.settings["n_tokens"], est.settings["k_pad"], cfg.d_model, cfg.n_heads
    s = lambda *shape: jax.ShapeDtypeStruct(shape, dt)  # noqa: E731
    ctx_shapes = dict(
        decoders=s(L, T, K, D),
        pattern=s(L, H, T, T),
        errors=s(L, T, D),
        rows=s(est.settings["batch_size"], D),
    )
    ctx_axes = dict(
        decoders=("layers", "positions", "sources", "embed"),
        pattern=("layers", "q_heads", "positions", "positions"),
        errors=("layers", "positions", "embed"),
        rows=("batch", "embed"),
    )
    groups = {
        "params": (params, param_axes(cfg)),
        "transcoders": (enc, array_axes(transcoder_specs(tcfg))),
        "context": (ctx_shapes, ctx_axes),
    }
    rows = describe(groups, (d, m))
    if devices is None:
        devices = f"{jax.device_count()} {jax.devices()[0].platform} devices visible"
    return "\n".join(
        [
            f"mesh: data={d} x model={m} = {d * m} devices ({devices}); rules: jcircuits.scale.sharding.RULES",
            est.report(),
            "shardings (per device: what one device holds):",
            format_table(rows),
        ]
    )


def _sharded_loading(run: RunSettings) -> bool:
    """Whether ``attribute --mesh`` will load this model and transcoders shard by shard (``load_for_mesh``)."""
    if run.mesh is None or run.model is None:
        return False
    from jcircuits.scale.sharded_loading import sharded_transcoders_unsupported

    return sharded_transcoders_unsupported(run.transcoders) is None


def preflight(run: RunSettings) -> int | None:
    """Estimate memory for ``run``. Returns an exit code to stop with (0 after a dry run that fits, 2 when it
    cannot fit) or ``None`` to go ahead."""
    if run.n_tokens is None and run.prompt is None:
        return None  # the command reports the missing prompt
    found = _configs(run)
    if found is None:
        return None
    cfg, tcfg, n_tokens = found
    if n_tokens is None:
        return None  # no tokenizer to measure the prompt: the run itself reports that
    mesh = run.mesh or (1, 1)
    if mesh[0] * mesh[1] > jax.device_count() and not run.dry_run:
        raise PlanError(
            f"--mesh {run.mesh_text} needs {mesh[0] * mesh[1]} devices but {jax.device_count()} are visible; "
            "change --mesh"
        )
    est = estimate_attribution(
        cfg,
        tcfg,
        n_tokens=n_tokens,
        batch_size=run.batch_size,
        max_feature_nodes=run.max_feature_nodes,
        max_n_logits=run.max_n_logits,
        dtype=run.dtype,
        mesh=mesh,
        l0=run.l0,
        sharded_loading=_sharded_loading(run),
    )
    dev_cap, dev_src = device_capacity(run.device_memory, n_devices=mesh[0] * mesh[1])
    host_cap = run.host_memory if run.host_memory is not None else host_capacity()
    problems = est.problems(dev_cap, host_cap)
    if run.dry_run:
        print(dry_run_report(cfg, tcfg, est, mesh, run.dtype))
        cap = "unknown" if dev_cap is None else f"{human(dev_cap)} ({dev_src})"
        print(f"available per device: {cap}; host: {'unknown' if host_cap is None else human(host_cap)}")
    for p in problems:
        print(f"jcircuits attribute: will not fit: {p}", file=sys.stderr)
    if problems:
        return 2
    return 0 if run.dry_run else None
