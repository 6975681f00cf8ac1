"""bfloat16 against float32 on the same weights: node set, selected features, edge error by edge magnitude, speed.

    .venv/bin/python experiments/bf16_precision.py [--cases tiny,medium] [--out experiments/results/bf16_cpu.md]
                                                   [--append] [--label TEXT]

Cases are built as ``bench_attribution.py`` builds them (Llama-3 architecture, JumpReLU PLTs reading
``mlp.hook_in``): ``medium`` = 8 layers, d_model 512, 8192 features, 48 tokens, ``max_feature_nodes`` 2048;
``tiny`` = bench_attribution's ``--small`` case (4 layers, d_model 128, 1024 features, 24 tokens, 256 rows).
Every weight is first rounded to bfloat16 ("a bfloat16 checkpoint"), so that loading it in float32 is exact and
the float32 run is the reference for the *same model*: any difference is the computation's, not the weights'.

For each case: ``attribute(dtype=float32)`` on the float32 copy, and ``attribute(dtype=bfloat16)`` on the
bfloat16-stored weights, each called twice (the second call is the warm time). Reported: active features of each,
whether the node sets are equal, how many selected features differ, and the error of every edge between nodes
both graphs have (features matched by (layer, position, feature), errors by (layer, position), tokens by position,
logits by token id), as relative error ``|bf16 − f32| / |f32|`` per edge, binned by deciles of ``|f32 edge|``.
``graph.settings["precision"]["mode"]`` names the mode that ran (before mixed precision existed, the same call ran
pure bfloat16; ``--label`` names such a run).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "experiments"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))


def _bf16_checkpoint(case_dir: Path):
    """``(model_f32, ts_f32, model_bf16, ts_bf16, tokens, case)``: the case's weights rounded to bfloat16, held once
    as float32 (exact) and once as bfloat16."""
    import dataclasses
    import json

    import jax
    import jax.numpy as jnp
    import ml_dtypes
    from bench_attribution import load_transcoders

    from jcircuits.models import Model
    from jcircuits.models.loading import load_params
    from jcircuits.models.tokenizer import Tokenizer
    from jcircuits.transcoders import TranscoderSet
    from jcircuits.transcoders.core import DenseDecoders

    case = json.loads((case_dir / "case.json").read_text())
    params, cfg = load_params(case_dir / "model")
    ts = load_transcoders(case_dir / "transcoders", cfg)
    tok = Tokenizer.from_file(case_dir / "model")
    p16 = jax.tree.map(lambda a: a.astype(jnp.bfloat16), params)
    e16 = jax.tree.map(lambda a: a.astype(jnp.bfloat16), ts.params)
    dec16 = np.asarray(ts.decoders.W_dec).astype(ml_dtypes.bfloat16)
    up = lambda t: jax.tree.map(lambda a: a.astype(jnp.float32), t)  # noqa: E731
    m32 = Model(up(p16), cfg, tok, name="f32")
    m16 = Model(p16, cfg, tok, name="bf16")
    t32 = TranscoderSet(ts.cfg, up(e16), DenseDecoders("plt", dec16.astype(np.float32)))
    t16 = dataclasses.replace(ts, params=e16, decoders=DenseDecoders("plt", dec16))
    return m32, t32, m16, t16, np.asarray(case["tokens"], np.int32), case


def _keys(g) -> list[tuple]:
    """Every node of ``g`` as a key both graphs share: its identity, not its index."""
    L, T = g.n_layers, len(g.input_tokens)
    feats = [("f", *map(int, g.active_features[i])) for i in g.selected_features]
    errs = [("e", l, t) for l in range(L) for t in range(T)]
    toks = [("t", t) for t in range(T)]
    return feats + errs + toks + [("y", int(i)) for i in g.logit_token_ids]


def _shared_edges(a, b):
    """``(edges of a, edges of b)`` between the nodes both graphs have (same order)."""
    ka, kb = _keys(a), _keys(b)
    ib = {k: i for i, k in enumerate(kb)}
    shared = [(i, ib[k]) for i, k in enumerate(ka) if k in ib]
    ia = np.array([i for i, _ in shared])
    jb = np.array([j for _, j in shared])
    return a.adjacency_matrix[np.ix_(ia, ia)], b.adjacency_matrix[np.ix_(jb, jb)]


def _decile_table(ref: np.ndarray, other: np.ndarray) -> list[str]:
    """Markdown rows: per decile of |ref edge| (nonzero ref edges), max and median relative error."""
    mag = np.abs(ref)
    nz = mag > 0
    r = np.abs(other[nz] - ref[nz]) / mag[nz]
    m = mag[nz]
    edges = np.quantile(m, np.linspace(0, 1, 11))
    rows = []
    for d in range(10):
        sel = (m >= edges[d]) & ((m < edges[d + 1]) if d < 9 else (m <= edges[d + 1]))
        rows.append(
            f"| {d + 1} | {edges[d]:.2e} – {edges[d + 1]:.2e} | {int(sel.sum()):,} | {np.max(r[sel]):.2e} | "
            f"{np.median(r[sel]):.2e} |"
        )
    return rows


def _timed_attribute(model, ts, tokens, case, dtype):
    from jcircuits.attribution import attribute

    kw = dict(
        max_feature_nodes=case["max_feature_nodes"],
        batch_size=case["batch_size"],
        update_interval=case["update_interval"],
        dtype=dtype,
        verbose=False,
    )
    t0 = time.perf_counter()
    attribute(model, ts, tokens, **kw)
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    g = attribute(model, ts, tokens, **kw)
    return g, cold, time.perf_counter() - t0


def run_case(spec: dict, label: str | None) -> list[str]:
    import jax.numpy as jnp
    from bench_attribution import build_case

    with tempfile.TemporaryDirectory() as tmp:
        build_case(spec, Path(tmp))
        m32, t32, m16, t16, tokens, case = _bf16_checkpoint(Path(tmp))
    a, cold_a, warm_a = _timed_attribute(m32, t32, tokens, case, jnp.float32)
    b, cold_b, warm_b = _timed_attribute(m16, t16, tokens, case, jnp.bfloat16)
    mode = b.settings["precision"].get("mode", label or "bfloat16")
    same_nodes = np.array_equal(a.active_features, b.active_features)
    fa = {tuple(a.active_features[i]) for i in a.selected_features}
    fb = {tuple(b.active_features[i]) for i in b.selected_features}
    na = {tuple(r) for r in a.active_features}
    nb = {tuple(r) for r in b.active_features}
    ea, eb = _shared_edges(a, b)
    err_max = np.abs(eb - ea).max() / np.abs(ea).max()
    return [
        f"### {spec['name']} case: float32 vs {mode}",
        "",
        f"- active features: float32 {len(na):,}, {mode} {len(nb):,}; node sets equal: **{same_nodes}** "
        f"({len(na - nb)} only in float32, {len(nb - na)} only in {mode})",
        f"- selected features ({len(fa):,} rows): {len(fa - fb)} of float32's are not selected by {mode}",
        f"- shared nodes {ea.shape[0]:,}; largest edge error / largest edge: {err_max:.2e}",
        f"- warm time: float32 {warm_a:.2f} s, {mode} {warm_b:.2f} s (cold {cold_a:.2f} s / {cold_b:.2f} s; "
        f"machine load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)",
        f"- `settings['precision']`: `{b.settings['precision']}`",
        "",
        "| decile of abs(f32 edge) | range | edges | max rel. error | median rel. error |",
        "|---|---|---|---|---|",
        *_decile_table(ea, eb),
        "",
    ]


def main(argv=None) -> int:
    from bench_attribution import MEDIUM, SMALL

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="tiny,medium")
    ap.add_argument("--out", default=str(ROOT / "experiments" / "results" / "bf16_cpu.md"))
    ap.add_argument("--append", action="store_true", help="add to --out instead of replacing it")
    ap.add_argument("--label", help="name of the bfloat16 mode when the graph does not record one")
    args = ap.parse_args(argv)
    specs = {"tiny": dict(SMALL, name="tiny"), "medium": MEDIUM}
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    cmd = "XLA_FLAGS= .venv/bin/python experiments/bf16_precision.py " + " ".join(argv or sys.argv[1:])
    lines = [f"## commit {commit}: `{cmd.strip()}`", "", f"CPU: {os.cpu_count()} cores (shared machine).", ""]
    for name in args.cases.split(","):
        lines += run_case(specs[name], args.label)
        print("\n".join(lines[-22:]), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(lines) + "\n"
    if args.append and out.exists():
        text = out.read_text() + "\n" + text
    out.write_text(text)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
