"""Run-time defaults the library and the command line share: the persistent XLA compilation cache, and whether
to show progress.

**Compilation cache.** XLA compiles one program per static shape; the first call of a process pays for it
(seconds), later processes can load it from disk. ``use_compilation_cache()`` points JAX at
``$JCIRCUITS_CACHE_DIR`` (default ``~/.cache/jcircuits/xla``); ``JCIRCUITS_CACHE_DIR=`` (empty) turns it off.
``attribute``, ``feature_intervention`` and ``generate`` call it, as the command line does, so the Python API is
as fast on its first call as the CLI. A cache directory the user already gave JAX is left alone.

**Progress.** ``show_progress(None)`` is true in a terminal or a notebook, false when output goes to a file.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

__all__ = ["use_compilation_cache", "show_progress", "CACHE_ENV"]

CACHE_ENV = "JCIRCUITS_CACHE_DIR"
_done = False


def use_compilation_cache() -> str | None:
    """Enable the persistent compilation cache once per process; returns the directory in use (``None``: off)."""
    global _done
    import jax

    current = jax.config.jax_compilation_cache_dir
    if _done or current:
        _done = True
        return current or None
    _done = True
    d = os.environ.get(CACHE_ENV, str(Path.home() / ".cache" / "jcircuits" / "xla"))
    if not d:
        return None
    jax.config.update("jax_compilation_cache_dir", d)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    return d


def show_progress(verbose: bool | None) -> bool:
    """``verbose`` itself when given; else whether progress bars would be seen (a terminal or a notebook)."""
    if verbose is not None:
        return bool(verbose)
    if "ipykernel" in sys.modules:
        return True
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False
