"""Orbax checkpoints of a training state, with resume.

A training state is any pytree of arrays (params, optax state, step counters). ``save`` writes step ``k`` under
``directory/k`` through an ``orbax.checkpoint.CheckpointManager`` (keeping the newest ``max_to_keep``);
``restore_latest`` reads the newest one back into the structure (and shardings) of a template state, so a resumed
run continues from exactly the saved arrays; a newest checkpoint that does not restore (a crash or a full disk
while it was written) is moved aside as ``<step>.broken`` and the next older one is used.
"""

from __future__ import annotations

from collections.abc import Callable
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

    def restore_latest(
        self, template: Any, *, on_broken: Callable[[str], None] | None = None
    ) -> tuple[int, Any] | None:
        """``(step, state)`` of the newest checkpoint that restores, shaped like ``template``; ``None`` when there
        is none. A checkpoint that fails to restore (truncated or missing files) is renamed ``<step>.broken``
        (kept for inspection, ignored from then on), reported through ``on_broken`` in one line, and the next
        older one is tried."""
        abstract = jax.tree_util.tree_map(
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=getattr(a, "sharding", None)), template
        )
        for step in sorted(self._mgr.all_steps(), reverse=True):
            try:
                return step, self._mgr.restore(step, args=self._ocp.args.StandardRestore(abstract))
            except Exception as e:  # orbax/tensorstore raise plain Exception for unreadable data
                dest = self._move_aside(step)
                if on_broken is not None:
                    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                    on_broken(
                        f"checkpoint step {step} in {self.directory} does not restore ({first[:160]}); "
                        f"moved it to {dest.name} and trying an older one"
                    )
        return None

    def _move_aside(self, step: int) -> Path:
        src = self.directory / str(step)
        dest = self.directory / f"{step}.broken"
        k = 1
        while dest.exists():
            dest, k = self.directory / f"{step}.broken{k}", k + 1
        if src.exists():
            src.rename(dest)
        self._mgr.reload()
        return dest

    def close(self) -> None:
        self._mgr.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
