"""``attribute_batch`` against a Python loop of single ``attribute`` calls: 64 prompts of mixed length on the
embedded default, side by side, cold (a fresh process with an empty compilation cache) and warm (the same
process, a second pass). A third mode, ``split``, runs ``attribute_batch`` with the prompts split over the data
axis of a ``--split-devices``x1 mesh of host devices (``XLA_FLAGS=--xla_force_host_platform_device_count``; the
prompts run a data slice at a time, side by side).

    .venv/bin/python experiments/bench_batch.py [--n 64] [--split-devices 2] [--out experiments/results/batch_cpu.md]

Each mode runs in its own fresh process; both passes check that every graph equals the loop's bit for bit.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def prompts(n: int) -> list[str]:
    """``n`` documents of the default model's own corpus, up to 45 tokens long (several length buckets)."""
    from jcircuits.training.corpus import make_world, sample_documents

    world = make_world(0)
    out = []
    seed = 0
    while len(out) < n:
        doc = sample_documents(world, 1, seq_len=6 + (len(out) * 7) % 40, seed=seed)[0]
        seed += 1
        if len(doc) > 1:  # the first sentence drawn may not fit: draw again
            out.append(" ".join(w for w in doc if w != "<bos>"))
    return out


def worker(mode: str, n: int, digest_path: str) -> None:
    import jax

    import jcircuits
    from jcircuits.common.buckets import length_bucket
    from jcircuits.scale.sharding import make_mesh

    model = jcircuits.default_model()
    ts = jcircuits.default_transcoders(model)
    ps = prompts(n)
    times, digests = [], []
    for _ in range(3):  # cold, then warm twice (a split's slice compiles a shape the first time it meets it)
        t0 = time.perf_counter()
        if mode == "batch":
            graphs = jcircuits.attribute_batch(model, ts, ps, verbose=False)
        elif mode == "split":
            mesh = make_mesh(jax.device_count(), 1)
            graphs = jcircuits.attribute_batch(model, ts, ps, verbose=False, mesh=mesh, split="prompts")
        else:
            graphs = [jcircuits.attribute(model, ts, p, verbose=False) for p in ps]
        times.append(time.perf_counter() - t0)
        digests.append([hashlib.sha1(g.adjacency_matrix.tobytes()).hexdigest() for g in graphs])
    lengths = [g.n_pos for g in graphs]
    compile_s = [g.settings["timings"]["compile_s"] for g in graphs]
    Path(digest_path).write_text(json.dumps({
        "times": times, "digests": digests, "lengths": lengths,
        "buckets": sorted({length_bucket(t) for t in lengths}), "nodes": [g.n_nodes for g in graphs],
        "compile_warm": sum(compile_s),
    }))


def run(mode: str, n: int, tmp: Path, devices: int) -> dict:
    out = tmp / f"{mode}.json"
    env = dict(os.environ, JCIRCUITS_CACHE_DIR=str(tmp / f"cache-{mode}"), HF_HUB_OFFLINE="1", PYTHONHASHSEED="0")
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices if mode == 'split' else 1}"
    subprocess.run([sys.executable, __file__, "--worker", mode, "--n", str(n), "--digest", str(out)],
                   env=env, check=True)
    return json.loads(out.read_text())


MODES = ("loop", "batch", "split")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--out", default=str(ROOT / "experiments" / "results" / "batch_cpu.md"))
    ap.add_argument("--split-devices", type=int, default=2, help="host devices (data slices) of the split mode")
    ap.add_argument("--worker", choices=MODES)
    ap.add_argument("--digest")
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.n, args.digest)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        res = {m: run(m, args.n, Path(tmp), args.split_devices) for m in MODES}
    ref = res["loop"]["digests"][0]
    equal = all(res[m]["digests"][k] == ref for m in MODES for k in (0, 1, 2))
    lens = res["loop"]["lengths"]
    load = os.getloadavg()
    rows = []
    for m in MODES:
        cold, warm, third = res[m]["times"]
        name = f"split over {args.split_devices} host devices" if m == "split" else m
        rows.append(f"| {name} | {cold:.2f} | {args.n / cold:.2f} | {warm:.2f} | {args.n / warm:.2f} | {third:.2f} | "
                    f"{args.n / third:.2f} |")
    lines = [
        "# attribute_batch vs a loop of single attribute calls, CPU",
        "",
        f"Command: `.venv/bin/python experiments/bench_batch.py --n {args.n} --split-devices {args.split_devices}` "
        f"(embedded default model; {args.n} "
        f"prompts of its corpus, {min(lens)}–{max(lens)} tokens, median {int(np.median(lens))}, length buckets "
        f"{res['loop']['buckets']}; graphs of {min(res['loop']['nodes'])}–{max(res['loop']['nodes'])} nodes, every "
        "active feature a row). Each mode runs in a fresh process with an empty compilation cache: *cold* is its "
        "first pass over the prompts (compilation included), *warm* its second and third passes in the same process.  ",
        f"Machine: {os.cpu_count()} cores, shared; load average at the end {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f}.",
        "",
        "| mode | cold (s) | cold graphs/s | 2nd pass (s) | 2nd graphs/s | 3rd pass (s) | 3rd graphs/s |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"Graphs of every mode equal the loop's bit for bit, cold and warm: **{equal}**.",
    ]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if equal else 1


if __name__ == "__main__":
    sys.exit(main())
