"""The README is a test: every fenced ``bash`` command and ``python`` block runs as written, in a fresh
directory, with the test environment's ``.venv/bin`` standing in for the reader's ``.venv/bin``.

Install steps (``python3 -m venv``, ``pip install``) are what ``tests/run_all.sh`` itself does before this runs,
and ``bash tests/run_all.sh`` is the command running this test, so those two are not re-run. ``serve`` runs until
its viewer answers, then is stopped. A command that needs a Hub model must end, offline, with its clear one-line
error (exit 2, naming HF_HUB_OFFLINE). The intervention example must move the answer as the README says.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def _blocks(lang: str) -> list[str]:
    return [body for kind, body in FENCE.findall((ROOT / "README.md").read_text()) if kind == lang]


def _commands() -> list[str]:
    out = []
    for body in _blocks("bash"):
        for line in body.replace("\\\n", " ").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                out.append(line)
    return out


def _env(tmp: Path) -> dict:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp / "hf_home"), JCIRCUITS_CACHE_DIR=str(tmp / "xla_cache"))
    env.pop("HF_HUB_CACHE", None)
    return env


def _as_run_here(cmd: str) -> str:
    return re.sub(r"(^|\s|&&\s*)\.venv/bin/", lambda m: f"{m.group(1)}{BIN}/", cmd)


def _serve(cmd: str, cwd: Path, env: dict) -> None:
    proc = subprocess.Popen(
        cmd, shell=True, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(
                    "http://127.0.0.1:8041/graphs/graph-metadata.json", timeout=2
                ) as r:
                    assert b"dallas" in r.read()
                    return
            except OSError:
                assert proc.poll() is None, proc.stdout.read().decode()
                assert time.time() < deadline, "the viewer did not answer within 60 s"
                time.sleep(0.3)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the shell and the server it started
        proc.wait(10)


def test_the_readme_has_the_two_set_up_commands():
    cmds = _commands()
    assert cmds[0].startswith(
        "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/jcircuits attribute"
    )
    assert cmds[1] == "bash tests/run_all.sh"


@pytest.mark.slow
def test_every_readme_command_works_as_written(tmp_path):
    env = _env(tmp_path)
    ran = []
    for cmd in _commands():
        if cmd == "bash tests/run_all.sh":
            continue  # the command that is running this test
        steps = [s.strip() for s in cmd.split("&&")]
        steps = [s for s in steps if not s.startswith("python3 -m venv") and "pip install" not in s]
        cmd = _as_run_here(" && ".join(steps))
        if " serve " in f" {cmd} ":
            _serve(cmd, tmp_path, env)
            ran.append("serve")
            continue
        res = subprocess.run(
            cmd, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
        )
        if "--model google/" in cmd:
            assert res.returncode == 2, res.stdout + res.stderr
            assert "HF_HUB_OFFLINE" in res.stderr and "Traceback" not in res.stderr, res.stderr
        else:
            assert res.returncode == 0, f"{cmd}\n{res.stdout}\n{res.stderr}"
        if " intervene " in cmd:  # the README's claim: sacramento (1.00) -> austin (0.55)
            before, after = re.search(r"^\s+1\s+'(\w+)' ([\d.]+)\s+'(\w+)' ([\d.]+)", res.stdout, re.M).group(
                1, 3
            )
            assert (before, after) == ("sacramento", "austin"), res.stdout
        ran.append(cmd.split()[1] if len(cmd.split()) > 1 else cmd)
    assert (tmp_path / "graph.safetensors").is_file() and (tmp_path / "graph.svg").is_file()
    assert (tmp_path / "graphs" / "dallas.json").is_file()
    assert ran.count("serve") == 1 and len(ran) >= 6, ran


@pytest.mark.slow
@pytest.mark.parametrize("i", range(len(_blocks("python"))))
def test_every_readme_python_block_runs(i, tmp_path):
    code = _blocks("python")[i]
    res = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr
