"""``--help`` is fast (no JAX import to build the parser) and every option says what it is and its default."""

from __future__ import annotations

import argparse
import subprocess
import sys

from jcircuits.cli import build_parser


def test_building_the_parser_does_not_import_jax():
    code = "import sys; from jcircuits.cli import build_parser; build_parser(); print('jax' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_option_has_help_and_shows_a_non_trivial_default():
    missing, no_default = [], []
    for name, sub in _subparsers(build_parser()).items():
        for a in sub._actions:
            if isinstance(a, argparse._HelpAction) or not a.option_strings:
                continue
            flag = f"{name} {a.option_strings[-1]}"
            if not a.help:
                missing.append(flag)
            elif a.default not in (None, False, argparse.SUPPRESS) and "default" not in a.help:
                no_default.append(flag)
    assert not missing, f"options without help: {missing}"
    assert not no_default, f"options whose help does not show the default: {no_default}"
