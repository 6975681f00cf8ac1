"""The package layout: every package is installed, the layering contracts hold and would catch an upward import,
``import jcircuits`` is cheap and gives the public names, and the converters import without JAX."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).parent / "lint-imports"


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_package_of_the_tree_is_installed():
    tool = _pyproject()["tool"]["setuptools"]
    found = {
        ".".join(p.relative_to(ROOT).parent.parts) for p in (ROOT / "jcircuits").rglob("__init__.py")
    } | {"jcircuits_converters"}
    assert set(tool["packages"]) == found
    assert tool["package-dir"]["jcircuits_converters"] == "converters"


def _lint(root: Path) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [str(LINT), "--no-cache", "--config", str(root / "pyproject.toml")],
        cwd=root, env=env, capture_output=True, text=True, timeout=120,
    )


@pytest.fixture()
def tree_copy(tmp_path):
    shutil.copytree(ROOT / "jcircuits", tmp_path / "jcircuits", ignore=shutil.ignore_patterns("*.safetensors"))
    shutil.copytree(ROOT / "converters", tmp_path / "jcircuits_converters")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_layering_contracts_hold_and_catch_what_they_forbid(tree_copy):
    if not LINT.exists():
        pytest.skip("import-linter is not installed (pip install -e '.[test]')")
    ok = _lint(tree_copy)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "3 kept, 0 broken" in ok.stdout
    # yesterday's cycle: graphs importing their pictures (graph -> render -> export -> graph)
    container = tree_copy / "jcircuits" / "graph" / "container.py"
    container.write_text(container.read_text() + "\nfrom jcircuits.view.render import render  # noqa\n")
    # and argparse travelling below the commands, and a converter reaching into jcircuits
    plan = tree_copy / "jcircuits" / "scale" / "plan.py"
    plan.write_text(plan.read_text() + "\nimport argparse  # noqa\n")
    hf = tree_copy / "jcircuits_converters" / "hf.py"
    hf.write_text(hf.read_text() + "\nimport jcircuits.models  # noqa\n")
    bad = _lint(tree_copy)
    assert bad.returncode != 0
    assert "0 kept, 3 broken" in bad.stdout, bad.stdout
    assert "jcircuits.graph.container -> jcircuits.view.render" in bad.stdout


def test_import_jcircuits_is_lazy_and_gives_the_public_api():
    code = (
        "import sys, jcircuits; assert 'jax' not in sys.modules, 'import jcircuits pulled in jax';"
        "names = jcircuits.__all__; assert sorted(names) == sorted(jcircuits._PUBLIC);"
        "[getattr(jcircuits, n) for n in names]; print(len(names))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) >= 15


def test_converters_import_without_jax_or_torch():
    code = (
        "import sys; sys.modules['jax'] = None; sys.modules['torch'] = None; sys.modules['jcircuits'] = None;"
        "import jcircuits_converters.hf, jcircuits_converters.transcoders, jcircuits_converters.safetensors_io"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


def test_package_data_covers_every_file_of_the_embedded_default():
    from fnmatch import fnmatch

    globs = _pyproject()["tool"]["setuptools"]["package-data"]["jcircuits.default"]
    root = ROOT / "jcircuits" / "default"
    files = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]
    data = [f for f in files if not f.endswith((".py", ".pyc"))]
    assert "features/index.json.gz" in data and "features/layer_0.bin" in data
    assert [f for f in data if not any(fnmatch(f, g) for g in globs)] == []
