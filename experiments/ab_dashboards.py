"""Two versions of ``jcircuits/features/build.py`` timed alternately on the medium case: the dashboards pass
(forward + encoders + statistics; no finish) over the same corpus, each run a fresh process.

    .venv/bin/python experiments/ab_dashboards.py --old REV [--rounds 2] [--n-seq 320]

``REV``'s ``build.py`` (``git show REV:jcircuits/features/build.py``) runs against the rest of the working tree,
so the two sides differ only in the statistics code. Prints tok/s of each run and the ratio of the medians.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]


def worker(build_py: str, case: str, n_seq: int) -> None:
    os.environ["JCIRCUITS_CACHE_DIR"] = ""
    import bench_attribution as ba
    import bench_features as bf

    from jcircuits.models import Model
    from jcircuits.models.loading import load_params

    spec = importlib.util.spec_from_file_location("build_under_test", build_py)
    fb = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = fb
    spec.loader.exec_module(fb)
    params, cfg = load_params(Path(case) / "model")
    model = Model(params, cfg, tokenizer=None, name="bench")
    tcs = ba.load_transcoders(Path(case) / "transcoders", cfg)
    tokens = bf.corpus(n_seq, 64, cfg.vocab_size)
    fb._finish = lambda *a, **k: None  # the pass only
    kw = dict(n_top=16, n_per_quantile=2, context=16, batch_size=16, progress=False, resume=False)
    with tempfile.TemporaryDirectory() as td:
        fb.build_dashboards(model, tcs, tokens[:16], out_dir=Path(td) / "warm", **kw)  # compiles
        t = time.perf_counter()
        fb.build_dashboards(model, tcs, tokens, out_dir=Path(td) / "run", save_every_s=1e9, **kw)
        print(tokens.size / (time.perf_counter() - t))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", help="git revision of the other build.py (required)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--n-seq", type=int, default=320, help="sequences of 64 tokens (16 a batch)")
    ap.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker[0], args.worker[1], args.n_seq)
        return 0
    if not args.old:
        ap.error("--old REV is required")
    import bench_attribution as ba

    with tempfile.TemporaryDirectory(prefix="ab_dashboards_") as td:
        old = Path(td) / "build_old.py"
        old.write_text(subprocess.run(["git", "show", f"{args.old}:jcircuits/features/build.py"], cwd=ROOT,
                                      check=True, capture_output=True, text=True).stdout)
        ba.build_case(ba.MEDIUM, Path(td) / "case")
        sides = {"old": str(old), "new": str(ROOT / "jcircuits/features/build.py")}
        got: dict[str, list[float]] = {k: [] for k in sides}
        for _ in range(args.rounds):
            for k, path in sides.items():
                out = subprocess.run([sys.executable, __file__, "--worker", path, str(Path(td) / "case"),
                                      "--n-seq", str(args.n_seq)], check=True, capture_output=True, text=True)
                got[k].append(float(out.stdout.strip().splitlines()[-1]))
                print(f"{k} ({args.old if k == 'old' else 'working tree'}): {got[k][-1]:.0f} tok/s", flush=True)
    med = {k: statistics.median(v) for k, v in got.items()}
    print(f"median: old {med['old']:.0f} tok/s, new {med['new']:.0f} tok/s, new/old {med['new'] / med['old']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
