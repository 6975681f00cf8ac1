"""``attribute_batch`` and a loop of single ``attribute`` calls timed alternately in one warm process (no
process-to-process noise): bench_batch's 64 prompts on the embedded default.

    .venv/bin/python experiments/ab_batch.py [--n 64] [--reps 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_batch  # noqa: E402

import jcircuits  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    model = jcircuits.default_model()
    ts = jcircuits.default_transcoders(model)
    ps = bench_batch.prompts(args.n)
    jcircuits.attribute_batch(model, ts, ps, verbose=False)  # compile every shape first
    for _ in range(args.reps):
        t = time.perf_counter()
        for p in ps:
            jcircuits.attribute(model, ts, p, verbose=False)
        loop = time.perf_counter() - t
        t = time.perf_counter()
        jcircuits.attribute_batch(model, ts, ps, verbose=False)
        print(f"loop {loop:.2f} s | attribute_batch {time.perf_counter() - t:.2f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
