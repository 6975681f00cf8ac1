"""Planning a run before it starts: the mesh from ``--mesh``, the memory estimate, and the dry-run report.

``jcircuits attribute`` calls ``preflight(args)`` first. It reads only configs (the HF ``config.json`` and the
transcoder files' headers; no weights), estimates peak device and host memory (``jcircuits.memory``) for the
prompt length, batch size, dtype, ``max_feature_nodes`` and mesh, and

* with ``--dry-run`` prints the mesh, the estimate and the sharding of every weight (shapes from
  ``jax.eval_shape``), then exits 0, or 2 when the run would not fit;
* otherwise refuses (exit code 2) a run whose estimate exceeds the available memory, naming the setting to change
  (batch size, dtype, ``max_feature_nodes``, mesh size), and lets a run that fits go ahead.

``tpu/dryrun.py`` prints the same report for the TPU configurations without any device.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import jax

from jcircuits.memory import (
    MemoryEstimate,
    device_capacity,
    estimate_attribution,
    host_capacity,
    human,
    parse_bytes,
)
from jcircuits.models.config import ModelConfig
from jcircuits.models.transformer import param_axes, param_shapes
from jcircuits.sharding import describe, format_table, mesh_shape, parse_mesh, transcoder_axes
from jcircuits.transcoders.core import TranscoderConfig

__all__ = ["add_scale_arguments", "preflight", "dry_run_report", "read_transcoder_config", "mesh_from_args"]


def add_scale_arguments(a: argparse.ArgumentParser) -> None:
    """``--mesh``, ``--dry-run``, ``--device-memory``, ``--host-memory``, ``--l0``."""
    a.add_argument(
        "--mesh",
        help="shard over a DATAxMODEL device mesh, e.g. 4x2 (default: one device). DATA splits the batch of rows, "
        "MODEL the weights",
    )
    a.add_argument(
        "--dry-run",
        action="store_true",
        help="print the mesh, the memory estimate and every array's sharding, then exit (2 if it cannot fit)",
    )
    a.add_argument(
        "--device-memory", help="memory per device for the estimate, e.g. 16GiB (default: detected)"
    )
    a.add_argument("--host-memory", help="host memory for the estimate, e.g. 64GiB (default: available RAM)")
    a.add_argument(
        "--l0",
        type=float,
        default=None,
        help="expected active features per layer and position, for the estimate (default 64; a previous graph's "
        "n_active / (layers x (tokens-1)) is exact)",
    )


def mesh_from_args(args) -> Any:
    """The ``Mesh`` named by ``--mesh`` (``None`` without it)."""
    if not getattr(args, "mesh", None):
        return None
    from jcircuits.sharding import make_mesh

    d, m = parse_mesh(args.mesh)
    return make_mesh(d, m)


def read_transcoder_config(path: str) -> TranscoderConfig:
    """The ``TranscoderConfig`` of a local transcoder directory or config.yaml from file headers only (no arrays
    read): circuit-tracer PLT/CLT directories and config.yaml files listing local PLT or GemmaScope files. Other
    layouts raise ``sharded_loading.ShardedLoadingUnsupported``."""
    from jcircuits.sharded_loading import read_transcoder_config as from_headers

    return from_headers(path)


def _model_files(model: str) -> Path:
    """A directory holding the model's ``config.json`` (and ``tokenizer.json`` when there is one): the local
    directory itself, or for a Hub id only those two small files (never the weights) from the Hub or its cache."""
    p = Path(model).expanduser()
    if p.is_dir():
        return p
    import os

    import huggingface_hub

    from jcircuits.loading import _hub_cache_dir, _truthy

    repo = model.removeprefix("hf://").split("?")[0]
    offline = _truthy(os.environ.get("HF_HUB_OFFLINE"))
    try:
        got = huggingface_hub.snapshot_download(
            repo,
            allow_patterns=[
                "config.json",
                "tokenizer.json",
                "tokenizer_config.json",
                "special_tokens_map.json",
            ],
            cache_dir=_hub_cache_dir(),
            local_files_only=offline,
        )
    except Exception as e:  # not cached while offline, unknown repo, no network
        why = "HF_HUB_OFFLINE is set and it is not cached" if offline else f"{type(e).__name__}: {e}"
        raise FileNotFoundError(
            f"cannot read {repo!r}'s config.json for the estimate ({why}); pass a local model directory"
        ) from None
    return Path(got)


def _configs(args) -> tuple[ModelConfig, TranscoderConfig, int | None] | None:
    """Model and transcoder configs named by the CLI arguments, and the prompt length when known; ``None`` when
    the transcoders are not local files (a real run then goes ahead without an estimate)."""
    from jcircuits.commands.attribute import parse_tokens

    n_tokens = len(parse_tokens(args.tokens)) if args.tokens is not None else None
    if args.model is None:
        from jcircuits.demo import demo_model, demo_transcoders

        model = demo_model()
        ts = demo_transcoders(model)
        if args.prompt is not None and model.tokenizer is not None:
            n_tokens = len(model.tokenizer.encode(args.prompt))
        return model.cfg, ts.cfg, n_tokens
    from jcircuits.models.config import config_from_hf

    if args.transcoders is None:
        raise SystemExit("--model needs --transcoders (a circuit-tracer config.yaml, directory or hub repo)")
    p = Path(args.transcoders)
    if not p.exists():
        if args.dry_run:
            raise FileNotFoundError(
                f"the memory estimate reads local transcoder files; {args.transcoders!r} is not a local path "
                "(download it first, e.g. with huggingface-cli download)"
            )
        print("jcircuits attribute: no memory estimate (transcoders are not local files)", file=sys.stderr)
        return None
    from jcircuits.sharded_loading import ShardedLoadingUnsupported

    try:
        tcfg = read_transcoder_config(str(p))
    except ShardedLoadingUnsupported as e:
        if args.dry_run:
            raise
        print(f"jcircuits attribute: no memory estimate ({e})", file=sys.stderr)
        return None
    model_dir = _model_files(args.model)
    cfg = config_from_hf(model_dir)
    if args.prompt is not None and (model_dir / "tokenizer.json").is_file():
        from jcircuits.tokenizer import Tokenizer

        n_tokens = len(Tokenizer.from_file(model_dir).encode(args.prompt))
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
    enc = jax.eval_shape(lambda: _transcoder_shapes(tcfg, dt))
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
        "transcoders": (enc, transcoder_axes(tcfg)),
        "context": (ctx_shapes, ctx_axes),
    }
    rows = describe(groups, (d, m))
    if devices is None:
        devices = f"{jax.device_count()} {jax.devices()[0].platform} devices visible"
    return "\n".join(
        [
            f"mesh: data={d} x model={m} = {d * m} devices ({devices}); rules: jcircuits.sharding.RULES",
            est.report(),
            "shardings (per device: what one device holds):",
            format_table(rows),
        ]
    )


def _transcoder_shapes(tcfg: TranscoderConfig, dtype):
    from jcircuits.transcoders.core import Transcoders

    L, D, F = tcfg.n_layers, tcfg.d_model, tcfg.n_features
    s = lambda *shape: jax.ShapeDtypeStruct(shape, dtype)  # noqa: E731
    return Transcoders(
        W_enc=s(L, D, F),
        b_enc=s(L, F),
        b_dec=s(L, D),
        threshold=s(L, F) if tcfg.activation == "jumprelu" else None,
        W_skip=s(L, D, D) if tcfg.skip else None,
    )


def _sharded_loading(args) -> bool:
    """Whether ``attribute --mesh`` will load this model and transcoders shard by shard (``load_for_mesh``)."""
    if not getattr(args, "mesh", None) or args.model is None:
        return False
    from jcircuits.sharded_loading import sharded_transcoders_unsupported

    return sharded_transcoders_unsupported(args.transcoders) is None


def preflight(args) -> int | None:
    """Estimate memory for the run ``args`` describes. Returns an exit code to stop with (0 after a dry run that
    fits, 2 when it cannot fit) or ``None`` to go ahead."""
    if args.tokens is None and args.prompt is None:
        return None  # cmd_attribute reports the missing prompt
    found = _configs(args)
    if found is None:
        return None
    cfg, tcfg, n_tokens = found
    if n_tokens is None:
        return None  # no tokenizer to measure the prompt: the run itself reports that
    mesh = parse_mesh(args.mesh) if getattr(args, "mesh", None) else (1, 1)
    if mesh[0] * mesh[1] > jax.device_count() and not args.dry_run:
        raise SystemExit(
            f"--mesh {args.mesh} needs {mesh[0] * mesh[1]} devices but {jax.device_count()} are visible; "
            "change --mesh"
        )
    est = estimate_attribution(
        cfg,
        tcfg,
        n_tokens=n_tokens,
        batch_size=args.batch_size,
        max_feature_nodes=args.max_feature_nodes,
        max_n_logits=args.max_n_logits,
        dtype=args.dtype,
        mesh=mesh,
        l0=getattr(args, "l0", None),
        sharded_loading=_sharded_loading(args),
    )
    dev_override = parse_bytes(args.device_memory) if getattr(args, "device_memory", None) else None
    dev_cap, dev_src = device_capacity(dev_override, n_devices=mesh[0] * mesh[1])
    host_cap = parse_bytes(args.host_memory) if getattr(args, "host_memory", None) else host_capacity()
    problems = est.problems(dev_cap, host_cap)
    if args.dry_run:
        print(dry_run_report(cfg, tcfg, est, mesh, args.dtype))
        cap = "unknown" if dev_cap is None else f"{human(dev_cap)} ({dev_src})"
        print(f"available per device: {cap}; host: {'unknown' if host_cap is None else human(host_cap)}")
    for p in problems:
        print(f"jcircuits attribute: will not fit: {p}", file=sys.stderr)
    if problems:
        return 2
    return 0 if args.dry_run else None
