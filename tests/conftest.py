"""Session-wide fixtures shared by the test suite.

`ref_cases`: the directory of circuit-tracer reference cases (see tests/reference/README.md), and `loaded`:
``loaded(case) -> (model, transcoders, ref arrays, meta)`` for one case, read once per session.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAKE_CASES = ROOT / "tests" / "reference" / "make_cases.py"
DEFAULT_REF_DIR = ROOT / "tests" / "_artifacts" / "ref"
SETUP_HINT = (
    "run `bash tests/reference/setup_ref_env.sh` to create the circuit-tracer reference env (.venv-ref)"
)


def _ref_python() -> Path:
    venv = Path(os.environ.get("JCIRCUITS_REF_VENV", ROOT / ".venv-ref"))
    return venv / "bin" / "python"


def _script_hash() -> str:
    # must match make_cases.script_hash()
    return hashlib.sha256(MAKE_CASES.read_bytes()).hexdigest()[:16]


def _stamp_ok(out: Path) -> bool:
    try:
        stamp = json.loads((out / "STAMP").read_text())
    except (OSError, ValueError):
        return False
    return stamp.get("script_hash") == _script_hash() and bool(stamp.get("complete"))


@pytest.fixture(scope="session")
def ref_cases() -> Path:
    """Directory holding <case>/{model,transcoders,ref.npz,meta.json} made by circuit-tracer.

    JCIRCUITS_REF_DIR overrides the location (used as is, nothing is generated). Otherwise the cases are
    generated once into tests/_artifacts/ref with .venv-ref and reused while make_cases.py is unchanged.
    Without .venv-ref the dependent tests are skipped, or fail when JCIRCUITS_REQUIRE_REF=1.
    """
    override = os.environ.get("JCIRCUITS_REF_DIR")
    if override:
        path = Path(override)
        if not path.is_dir():
            pytest.fail(f"JCIRCUITS_REF_DIR={override} is not a directory")
        return path

    out = DEFAULT_REF_DIR
    if _stamp_ok(out):
        return out

    python = _ref_python()
    if not python.exists():
        msg = f"circuit-tracer reference cases unavailable: {SETUP_HINT}"
        if os.environ.get("JCIRCUITS_REQUIRE_REF") == "1":
            pytest.fail(msg)
        pytest.skip(msg)

    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "w") as lock:  # one generator at a time (pytest-xdist)
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _stamp_ok(out):
            _generate(python, out)
    return out


def _generate(python: Path, out: Path) -> None:
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    proc = subprocess.run(
        [str(python), str(MAKE_CASES), "--out", str(tmp)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    if proc.returncode != 0 or not _stamp_ok(tmp):
        shutil.rmtree(tmp, ignore_errors=True)
        pytest.fail(
            f"make_cases.py failed (exit {proc.returncode}); {SETUP_HINT} if the env is broken.\n"
            f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-8000:]}"
        )
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)


@pytest.fixture(scope="session")
def loaded(ref_cases):
    """``loaded(case)`` → ``(model, transcoders, ref.npz arrays, meta.json)`` of one reference case, cached."""
    import numpy as np

    from jcircuits.models import Model
    from jcircuits.models.loading import load_params
    from jcircuits.models.tokenizer import Tokenizer
    from jcircuits.transcoders.io import load_transcoders

    cache = {}

    def get(case):
        if case not in cache:
            d = ref_cases / case
            if not d.is_dir():
                pytest.fail(f"reference case {case} missing in {ref_cases}")
            params, cfg = load_params(d / "model")
            model = Model(params, cfg, Tokenizer.from_file(d / "model"), name=case)
            ts = load_transcoders(d / "transcoders" / "config.yaml", lazy_decoder=False)
            cache[case] = (model, ts, dict(np.load(d / "ref.npz")), json.loads((d / "meta.json").read_text()))
        return cache[case]

    return get


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_code_between_modules():
    """Drop jax's compiled executables after each test module: one process compiles hundreds of shapes over the
    suite, and late compiles have crashed inside XLA:CPU (see tests/run_all.sh) once enough had piled up."""
    yield
    import jax

    jax.clear_caches()
