"""Command line: ``jcircuits <command> …``.

Each subcommand lives in its own module under ``jcircuits.commands`` and exposes ``register(subparsers)``;
modules are discovered in name order, so adding a command never edits this file.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

__all__ = ["main", "build_parser"]

# what bad input raises (ConfigError, TranscoderError, PlanError and UsageError are ValueErrors)
_EXPECTED = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, FileExistsError, PermissionError)


def build_parser() -> argparse.ArgumentParser:
    import jcircuits.commands as commands

    p = argparse.ArgumentParser(prog="jcircuits", description="JAX-native circuit tracing")
    sub = p.add_subparsers(dest="command", required=True)
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"jcircuits.commands.{info.name}").register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from jcircuits.common.runtime import use_compilation_cache

    use_compilation_cache()  # persistent XLA cache ($JCIRCUITS_CACHE_DIR; empty turns it off)
    try:
        return args.func(args)
    except _EXPECTED as e:  # bad input: one line naming the problem; anything else keeps its traceback
        print(f"jcircuits {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
