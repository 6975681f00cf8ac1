"""What the model-running commands share: their arguments, and turning those into typed values.

Nothing here is passed ``argparse`` objects beyond the command layer: each command converts its namespace with
these helpers and calls the library with explicit parameters.
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["add_model_arguments", "add_scale_arguments", "parse_tokens", "load_model_and_transcoders", "mesh_of"]


def parse_tokens(s: str):
    """``"2,15,7"`` → ``int32 [T]`` token ids (exit with a message on anything else)."""
    import numpy as np

    try:
        ids = [int(x) for x in s.replace(" ", "").split(",") if x]
    except ValueError:
        raise SystemExit(f"--tokens must be comma-separated integers, got {s!r}") from None
    if not ids:
        raise SystemExit("--tokens is empty")
    return np.asarray(ids, np.int32)


def add_model_arguments(a: argparse.ArgumentParser) -> None:
    """The ``--model/--transcoders/--prompt/--tokens/--dtype`` arguments every model-running command shares."""
    a.add_argument("--model", help="HF model directory, org/repo or hf://org/repo?revision=… (default: demo)")
    a.add_argument("--transcoders", help="circuit-tracer config.yaml, transcoder directory or hub repo")
    a.add_argument("--prompt", help="prompt text (a special start token is prepended if missing)")
    a.add_argument("--tokens", help="comma-separated token ids, used as given")
    a.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")


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


def mesh_of(text: str | None):
    """The ``Mesh`` named by ``--mesh DATAxMODEL`` (``None`` without it)."""
    if not text:
        return None
    from jcircuits.scale.sharding import make_mesh, parse_mesh

    return make_mesh(*parse_mesh(text))


def load_model_and_transcoders(
    model: str | None, transcoders: str | None, *, dtype: str = "float32", mesh: str | None = None
):
    """``(Model, TranscoderSet)`` named on the command line: the embedded default (with a notice) when ``model``
    is ``None``; with ``mesh``, loaded straight onto that mesh shard by shard."""
    if model is None:
        from jcircuits.default import DEFAULT_NOTICE, default_model, default_transcoders

        if transcoders is not None:
            raise SystemExit("--transcoders needs --model (the demo model comes with its own transcoders)")
        print(DEFAULT_NOTICE, file=sys.stderr)
        m = default_model()
        return m, default_transcoders(m)
    if transcoders is None:
        raise SystemExit("--model needs --transcoders (a circuit-tracer config.yaml, directory or hub repo)")
    import jax.numpy as jnp

    from jcircuits.models import load_model
    from jcircuits.transcoders import load_transcoders

    jdtype = jnp.bfloat16 if dtype == "bfloat16" else jnp.float32
    if mesh:  # each device's shards read straight from the files, no whole-model host copy
        from jcircuits.scale.sharded_loading import load_for_mesh

        return load_for_mesh(model, transcoders, mesh_of(mesh), dtype=jdtype)
    return load_model(model, dtype=jdtype), load_transcoders(transcoders, dtype=jdtype)
