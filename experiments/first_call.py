"""The README's main job, timed as a newcomer meets it: a fresh process with an empty compilation cache (cold),
then fresh processes that find the cache filled (warm), and the Python API's first call in a fresh process.

    .venv/bin/python experiments/first_call.py [--out experiments/results/first_call_cpu.md]

Each run is a new process (imports, model load, compilation and attribution included), on the embedded default.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "the capital of the state containing dallas is"
PY_SNIPPET = (
    "import jcircuits; m = jcircuits.default_model(); "
    f"g = jcircuits.attribute(m, jcircuits.default_transcoders(m), {PROMPT!r}, verbose=False); print(g.n_nodes)"
)


def _timed(cmd: list[str], cwd: Path, cache: Path) -> float:
    env = dict(os.environ, JCIRCUITS_CACHE_DIR=str(cache), HF_HUB_OFFLINE="1")
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=env, check=True, capture_output=True)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "experiments" / "results" / "first_call_cpu.md"))
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    exe = Path(sys.executable).parent / "jcircuits"
    cli = [str(exe), "attribute", "--prompt", PROMPT, "-o", "graph.safetensors", "-q"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for i in range(args.repeat):
            cache = tmp / f"cache{i}"
            cold = _timed(cli, tmp, cache)
            warm = _timed(cli, tmp, cache)
            api_cold = _timed([sys.executable, "-c", PY_SNIPPET], tmp, tmp / f"api{i}")
            api_warm = _timed([sys.executable, "-c", PY_SNIPPET], tmp, tmp / f"api{i}")
            rows.append((cold, warm, api_cold, api_warm))
            print(f"run {i}: CLI cold {cold:.1f} s, warm {warm:.1f} s; Python cold {api_cold:.1f} s, warm {api_warm:.1f} s")
    load = os.getloadavg()
    lines = [
        "# First call of the README's main job, CPU",
        "",
        f"Command: `{Path(sys.executable).name} experiments/first_call.py` (each number a fresh process: imports, "
        "model load, compilation and attribution of the README prompt on the embedded default).  ",
        f"Machine: {os.cpu_count()} cores; load average at the end {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f}.",
        "",
        "| run | CLI, empty cache (s) | CLI, cache filled (s) | Python API, empty cache (s) | Python API, cache filled (s) |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {i} | {a:.1f} | {b:.1f} | {c:.1f} | {d:.1f} |" for i, (a, b, c, d) in enumerate(rows)]
    best = [min(r[k] for r in rows) for k in range(4)]
    lines += [f"| best | {best[0]:.1f} | {best[1]:.1f} | {best[2]:.1f} | {best[3]:.1f} |", ""]
    lines.append("Target (issue 15): the cold first call ≤ 10 s on this 2-core machine, compile included.")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
