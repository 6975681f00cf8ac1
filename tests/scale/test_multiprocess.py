"""Two processes x two CPU devices on localhost (``jax.distributed``, gloo collectives): a sharded forward pass, an
orbax checkpoint of sharded params and a sharded attribution equal the single-process results."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import tiny

from jcircuits.attribution import attribute
from jcircuits.models import forward
from jcircuits.scale.distributed import free_port, process_slice

WORKER = Path(__file__).parent / "mp_worker.py"
ROOT = Path(__file__).resolve().parents[2]


def _run_workers(out: Path, *extra: str, n: int = 2, timeout: int = 240) -> None:
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu", JCIRCUITS_CACHE_DIR="")
    env.pop("XLA_FLAGS", None)  # the worker sets its own device count
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(i), str(n), str(port), str(out), *extra],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(n)
    ]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=timeout)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for i, (p, log) in enumerate(zip(procs, logs, strict=True)):
        assert p.returncode == 0, f"process {i} exited {p.returncode}:\n{log[-4000:]}"


def test_process_slice_covers_every_item_once():
    parts = [process_slice(10, i, 3) for i in range(3)]
    assert [(s.start, s.stop) for s in parts] == [(0, 4), (4, 7), (7, 10)]


@pytest.mark.slow
def test_two_processes_shard_forward_checkpoint_and_attribution_like_one(tmp_path):
    _run_workers(tmp_path, "attribute")
    res = np.load(tmp_path / "result.npz")
    sys.path.insert(0, str(WORKER.parent))
    import mp_worker

    model = tiny.tiny_model("llama", vocab_size=128, n_heads=4, n_kv_heads=2, d_mlp=64)
    tokens = np.asarray([mp_worker.PROMPT, mp_worker.PROMPT[::-1]] * 2, np.int32)
    want = np.asarray(forward(model.params, model.cfg, tokens))
    np.testing.assert_allclose(res["logits"], want, rtol=0, atol=2e-5)
    assert bool(res["checkpoint_equal"])
    assert bool(res["zero_copy"])
    graph = attribute(model, tiny.tiny_transcoders(model.cfg), np.asarray(mp_worker.PROMPT), batch_size=8)
    np.testing.assert_array_equal(res["selected"], graph.selected_features)
    A = graph.adjacency_matrix
    np.testing.assert_allclose(res["adjacency"], A, rtol=0, atol=1e-6 * max(1.0, np.abs(A).max()))
    assert jax.process_count() == 1  # the test process itself never joined the workers
