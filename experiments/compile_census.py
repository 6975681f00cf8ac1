"""What the first ``attribute_batch`` over prompts of mixed lengths compiles: XLA compilations per jitted
function, their count and seconds, in a fresh process with the persistent compilation cache off.

    .venv/bin/python experiments/compile_census.py [--n 16]

The prompts are ``bench_batch.py``'s (the default model's own corpus, lengths 6 to 45 tokens).
"""

from __future__ import annotations

import argparse
import collections
import logging
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=16)
    args = ap.parse_args()
    os.environ["JCIRCUITS_CACHE_DIR"] = ""
    import jax
    from bench_batch import prompts

    import jcircuits

    count: collections.Counter = collections.Counter()
    secs: collections.Counter = collections.Counter()

    class Census(logging.Handler):  # jax_log_compiles: "Finished XLA compilation of jit(f) in X sec"
        def emit(self, record):
            m = record.getMessage()
            if m.startswith("Finished XLA compilation of "):
                name = m.split()[4]
                count[name] += 1
                secs[name] += float(m.split()[-2])

    jax.config.update("jax_log_compiles", True)
    log = logging.getLogger("jax")
    log.addHandler(Census())
    log.propagate = False
    model = jcircuits.default_model()
    tcs = jcircuits.default_transcoders(model)
    ps = prompts(args.n)
    t = time.perf_counter()
    graphs = jcircuits.attribute_batch(model, tcs, ps, verbose=False)
    wall = time.perf_counter() - t
    lengths = sorted({g.n_pos for g in graphs})
    print(f"{len(ps)} prompts, {len(lengths)} lengths {lengths}: {wall:.1f} s, "
          f"compilation {sum(secs.values()):.1f} s in {sum(count.values())} programs")
    print("| function | programs | seconds |\n|---|---|---|")
    for name, s in secs.most_common(12):
        print(f"| {name} | {count[name]} | {s:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
