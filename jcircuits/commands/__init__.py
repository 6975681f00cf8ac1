"""Subcommands of the ``jcircuits`` command line, one module each with ``register(subparsers)`` (found by
``jcircuits.cli``; ``_common`` holds the arguments and parsing they share). Each turns its arguments into typed
values and calls the library; ``argparse`` never leaves this package."""
