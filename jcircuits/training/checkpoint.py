"""Orbax checkpoints of a training state, with resume.

A training state is any pytree of arrays (params, optax state, step counters). ``save`` writes step ``k`` under
``directory/k`` through an ``orbax.checkpoint.CheckpointManager`` (keeping the newest ``max_to_keep``);
``restore_latest`` reads the newest one back into the structure (and shardings) of a template state, so a resumed
run continues from exactly the saved arrays.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax

__all__ = ["Checkpointer"]


class Checkpointer:
    """Save/restore a training-state pytree every few steps under ``directory``."""

    def __init__(self, directory: str | Path, *, max_to_keep: int = 2):
        import orbax.checkpoint as ocp

        self.directory = Path(directory).absolute()
        self._ocp = ocp
        self._mgr = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
        )

    def save(self, step: int, state: Any) -> None:
        """Write ``state`` as step ``step`` and wait until it is on disk (so a crash right after keeps it)."""
        self._mgr.save(step, args=self._ocp.args.StandardSave(state), force=True)
        self._mgr.wait_until_finished()

    def latest_step(self) -> int | None:
        return self._mgr.latest_step()

    def restore_latest(self, template: Any) -> tuple[int, Any] | None:
        """``(step, state)`` of the newest checkpoint, shaped like ``template``; ``None`` when there is none."""
        step = self._mgr.latest_step()
        if step is None:
            return None
        abstract = jax.tree_util.tree_map(
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=getattr(a, "sharding", None)), template
        )
        return step, self._mgr.restore(step, args=self._ocp.args.StandardRestore(abstract))

    def close(self) -> None:
        self._mgr.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
