"""Subcommands of the ``jcircuits`` command line, one module each with ``register(subparsers)``."""
