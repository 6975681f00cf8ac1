"""Several processes, one computation: ``jax.distributed`` start-up, process-local data, host gathers, checkpoints.

On a TPU pod slice every host runs the same program (``tpu/launch.sh run`` starts it on all workers); after
``initialize()`` each process sees every device of the slice in ``jax.devices()`` and its own in
``jax.local_devices()``. Arrays on a mesh that spans processes are *global*: each process holds only the shards of
its local devices. The helpers here are the few places that differ from a single process:

* ``initialize`` — ``jax.distributed.initialize`` from arguments, ``JCIRCUITS_COORDINATOR`` /
  ``JCIRCUITS_NUM_PROCESSES`` / ``JCIRCUITS_PROCESS_ID``, or (no arguments, on Cloud TPU) the TPU metadata;
* ``process_slice`` — this process's share of ``n`` items (e.g. prompts of a batch job);
* ``to_host`` — a global array as numpy on every process (an all-gather across processes when needed);
* ``save_checkpoint`` / ``restore_checkpoint`` — orbax checkpoints where each process writes and reads only its own
  shards (the directory must be shared between hosts, e.g. a GCS bucket or NFS).

CPU processes exchange data through gloo (``jax_cpu_collectives_implementation``, already the default in
jax 0.10; set here explicitly so an older default cannot turn collectives into errors).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import jax
import numpy as np

__all__ = [
    "initialize",
    "free_port",
    "process_slice",
    "to_host",
    "is_coordinator",
    "save_checkpoint",
    "restore_checkpoint",
]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (for a local coordinator)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    local_device_ids: Any = None,
    timeout_s: int = 300,
) -> None:
    """Join the multi-process computation (call once, before any other JAX call).

    Arguments fall back to ``JCIRCUITS_COORDINATOR`` (``host:port``), ``JCIRCUITS_NUM_PROCESSES`` and
    ``JCIRCUITS_PROCESS_ID``; with none of them set, JAX detects the cluster itself (Cloud TPU, SLURM, …).
    """
    env = os.environ
    coordinator = coordinator or env.get("JCIRCUITS_COORDINATOR")
    if num_processes is None and env.get("JCIRCUITS_NUM_PROCESSES"):
        num_processes = int(env["JCIRCUITS_NUM_PROCESSES"])
    if process_id is None and env.get("JCIRCUITS_PROCESS_ID"):
        process_id = int(env["JCIRCUITS_PROCESS_ID"])
    given = [coordinator is not None, num_processes is not None, process_id is not None]
    if any(given) and not all(given):
        raise ValueError(
            "give all of coordinator, num_processes and process_id (or JCIRCUITS_COORDINATOR, "
            "JCIRCUITS_NUM_PROCESSES, JCIRCUITS_PROCESS_ID), or none of them to auto-detect a TPU/SLURM cluster"
        )
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator,
        num_processes=num_processes,
        process_id=process_id,
        local_device_ids=local_device_ids,
        initialization_timeout=timeout_s,
    )


def is_coordinator() -> bool:
    """True on process 0 (the one that writes shared outputs)."""
    return jax.process_index() == 0


def process_slice(n: int, process_index: int | None = None, process_count: int | None = None) -> slice:
    """This process's contiguous share of ``n`` items; shares differ in size by at most one."""
    i = jax.process_index() if process_index is None else process_index
    p = jax.process_count() if process_count is None else process_count
    base, extra = divmod(n, p)
    start = i * base + min(i, extra)
    return slice(start, start + base + (1 if i < extra else 0))


def to_host(x: Any) -> np.ndarray:
    """``x`` as a numpy array on every process: directly when this process holds all of it (single process, or
    replicated), otherwise gathered from all processes in order."""
    if not isinstance(x, jax.Array) or x.is_fully_addressable or x.is_fully_replicated:
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def save_checkpoint(path: str | os.PathLike, tree: Any) -> Path:
    """Save a pytree of (possibly global) arrays with orbax; every process must call it, each writes its shards."""
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(path, tree, force=True)
    return path


def restore_checkpoint(path: str | os.PathLike, like: Any) -> Any:
    """Restore what ``save_checkpoint`` wrote into the layout of ``like`` (arrays or ``ShapeDtypeStruct`` with
    shardings): each process reads only its shards."""
    import orbax.checkpoint as ocp

    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), like)
    with ocp.StandardCheckpointer() as ckptr:
        return ckptr.restore(Path(path).absolute(), target)
