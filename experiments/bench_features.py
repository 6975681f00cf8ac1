"""Feature-dashboard speed and memory: ``jcircuits.features.build_dashboards`` vs the usual PyTorch loop, CPU.

    .venv/bin/python experiments/bench_features.py [--small] [--seq-len 64] [--batch 16] [--batches 2]
                                                   [--scale 10] [--out experiments/results/bench_features_cpu.md]

The case is ``bench_attribution.py``'s medium one (imported, not copied): a seeded random Llama-3-architecture
model (8 layers, d_model 512, 8 heads / 4 KV heads, d_mlp 2048, vocab 2048) with per-layer JumpReLU transcoders of
8192 features reading ``mlp.hook_in``. The corpus is seeded random token ids ``[n_sequences, seq_len]`` with BOS
first; both sides read the same ids. Each run is a fresh process (so its peak RSS is its own), at 1x and at
``--scale`` x the tokens:

- **ours**: ``build_dashboards`` (16 top examples, a 64-bucket sample of occurrences, 64-bin histograms; 4 quantile
  bands x 2 examples and 16-token contexts in the records), after a one-batch warm-up in the same process
  (compilation is reported apart).
  *pass* is the jitted loop over the corpus (forward + every layer's encoder + running top-k, sample, counts,
  extremes, histogram; its state saved at the end); *finish* is what follows (one more forward over the sequences
  the kept examples come from, the records, the index and labels written); it does not grow with the corpus,
  so only the larger run does it.
- **torch**: ``transformers``' ``LlamaForCausalLM`` base model under ``torch.inference_mode()``, forward
  pre-hooks on every layer's MLP capturing its input, the JumpReLU encoder as a matmul, and a running per-feature
  top-16 (values and positions, ``torch.topk`` over ``[running | batch]``) with active counts and maxima: the
  loop people write today. It keeps less than ours (no sample, histogram, contexts or records), so the *pass*
  comparison flatters it, if anything.

The two sides' per-feature maxima are compared on a sample of features (same tokens, same numbers up to float32).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for p in (str(ROOT), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

import bench_attribution as ba  # noqa: E402  (the medium case's builder and transcoder loader)

N_TOP = 16
SAMPLE = 256  # features per layer whose maxima are compared


def corpus(n_seq: int, seq_len: int, V: int, bos: int = 2, seed: int = 7) -> np.ndarray:
    """Seeded random ids ``[n_seq, seq_len]``, BOS first, no specials after it (so no pads)."""
    ids = np.random.default_rng(seed).integers(len(ba.SPECIALS), V, (n_seq, seq_len)).astype(np.int32)
    ids[:, 0] = bos
    return ids


def sample_features(F: int) -> np.ndarray:
    return np.random.default_rng(0).choice(F, SAMPLE, replace=False)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# ================================================================================================ workers
def worker_ours(case_dir: Path, n_seq: int, seq_len: int, batch: int, out_json: Path, finish: bool) -> None:
    import jax

    import jcircuits.features.build as fb
    from jcircuits.models import Model
    from jcircuits.models.loading import load_params

    compile_s = [0.0]

    def on_duration(event, duration, **_):
        if "backend_compile" in event:
            compile_s[0] += duration

    jax.monitoring.register_event_duration_secs_listener(on_duration)
    params, cfg = load_params(case_dir / "model")
    model = Model(params, cfg, tokenizer=None, name="bench")
    tcs = ba.load_transcoders(case_dir / "transcoders", cfg)
    tokens = corpus(n_seq, seq_len, cfg.vocab_size)
    tmp = Path(tempfile.mkdtemp(prefix="bench_features_"))

    marks, orig_finish = {}, fb._finish
    kept = {}

    def pass_only(model, transcoders, tokens, valid_all, st, *a, **k):
        marks["pass_end"], marks["pass_rss"] = time.perf_counter(), peak_rss_mb()
        kept["amax"] = st["amax"]

    def timed_finish(*a, **k):
        marks["pass_end"], marks["pass_rss"] = time.perf_counter(), peak_rss_mb()
        kept["amax"] = a[4]["amax"]
        return orig_finish(*a, **k)

    settings = dict(n_top=N_TOP, n_per_quantile=2, context=16, batch_size=batch, progress=False, resume=False)
    fb._finish = pass_only  # warm-up: one batch of the same shapes compiles the step
    t = time.perf_counter()
    fb.build_dashboards(model, tcs, tokens[:batch], out_dir=tmp / "warm", **settings)
    warm_s = time.perf_counter() - t
    warm_compile = compile_s[0]

    fb._finish = timed_finish if finish else pass_only
    t0 = time.perf_counter()
    fb.build_dashboards(model, tcs, tokens, out_dir=tmp / "run", save_every_s=1e9, **settings)
    t1 = time.perf_counter()
    feats = sample_features(tcs.cfg.n_features)
    amax = np.maximum(kept["amax"][:, feats], 0.0).tolist()
    out = dict(
        side="ours", tokens=int(tokens.size), pass_s=marks["pass_end"] - t0, finish_s=t1 - marks["pass_end"],
        total_s=t1 - t0, finish=finish, warmup_s=warm_s, compile_s=warm_compile, later_compile_s=compile_s[0] - warm_compile,
        peak_rss_mb=marks["pass_rss"], peak_rss_finish_mb=peak_rss_mb(), amax=amax,
        bytes_written=sum(p.stat().st_size for p in (tmp / "run").iterdir()) if finish else 0,
    )
    out.update(floor(model, tcs, tokens[:batch]))
    out_json.write_text(json.dumps(out))


def floor(model, tcs, tokens_BS, repeats: int = 5) -> dict:
    """The part of a batch no statistics can remove: the same jitted forward pass and every layer's encoder over
    one batch (the activations reduced to a sum, so nothing else is computed), best of ``repeats``; with its
    matmul FLOPs (projections, MLP and encoders; attention scores are small at this length)."""
    import jax
    import jax.numpy as jnp

    from jcircuits.models import forward_fn
    from jcircuits.transcoders.core import encode_layer

    cfg, tcfg = model.cfg, tcs.cfg
    B, S = tokens_BS.shape

    @jax.jit
    def fwd_encode(params, tc, tokens):
        _, inter, _ = forward_fn(params, cfg, tokens, capture=True)
        x = inter.hook(tcfg.input_hook)
        return jax.lax.map(lambda l: encode_layer(tcfg, tc, l, x[l].reshape(B * S, -1)).sum(0), jnp.arange(cfg.n_layers))

    toks = jnp.asarray(tokens_BS)
    jax.block_until_ready(fwd_encode(model.params, tcs.params, toks))
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fwd_encode(model.params, tcs.params, toks))
        best = min(best, time.perf_counter() - t)
    D, E = cfg.d_model, cfg.head_dim
    per_layer = D * E * (cfg.n_heads * 2 + cfg.n_kv_heads * 2) + 3 * D * cfg.d_mlp + D * tcfg.n_features
    return dict(floor_s=best, floor_tokens=int(B * S), gflop_per_token=2 * cfg.n_layers * per_layer / 1e9)


def worker_torch(case_dir: Path, n_seq: int, seq_len: int, batch: int, out_json: Path, finish: bool) -> None:
    import torch
    from safetensors.torch import load_file
    from transformers import LlamaForCausalLM

    t = time.perf_counter()
    model = LlamaForCausalLM.from_pretrained(case_dir / "model", torch_dtype=torch.float32).eval()
    meta = __import__("yaml").safe_load((case_dir / "transcoders" / "config.yaml").read_text())
    enc = [load_file(case_dir / "transcoders" / n) for n in meta["transcoders"]]
    W = [e["W_enc"].T.contiguous() for e in enc]  # [D, F]
    b = [e["b_enc"] for e in enc]
    thr = [e["activation_function.threshold"] for e in enc]
    load_s = time.perf_counter() - t
    L, F = len(enc), W[0].shape[1]
    tokens = torch.from_numpy(corpus(n_seq, seq_len, model.config.vocab_size).astype(np.int64))

    captured: dict[int, torch.Tensor] = {}
    layers = model.model.layers
    for l, layer in enumerate(layers):
        layer.mlp.register_forward_pre_hook(lambda mod, args, l=l: captured.__setitem__(l, args[0]))
    top_v = torch.full((L, F, N_TOP), -float("inf"))
    top_i = torch.full((L, F, N_TOP), -1, dtype=torch.int64)
    count = torch.zeros((L, F), dtype=torch.int64)
    amax = torch.full((L, F), -float("inf"))
    t0 = time.perf_counter()
    with torch.inference_mode():
        for lo in range(0, n_seq, batch):
            ids = tokens[lo : lo + batch]
            B, S = ids.shape
            model.model(input_ids=ids)  # the base model: the hooks catch every MLP input; no unembedding
            gidx = (torch.arange(lo, lo + B)[:, None] * S + torch.arange(S)[None, :])[:, 1:].reshape(-1)
            for l in range(L):
                x = captured[l][:, 1:].reshape(-1, W[l].shape[0])  # position 0 (BOS) excluded, as ours
                pre = x @ W[l] + b[l]
                a = pre * (pre > thr[l])
                aT = torch.where(a > 0, a, -float("inf")).T  # [F, P]
                v, pos = torch.topk(torch.cat([top_v[l], aT], 1), N_TOP, dim=1)
                top_i[l] = torch.gather(torch.cat([top_i[l], gidx.expand(F, -1)], 1), 1, pos)
                top_v[l] = v
                count[l] += (a > 0).sum(0)
                amax[l] = torch.maximum(amax[l], a.max(0).values)
            captured.clear()
    pass_s = time.perf_counter() - t0
    feats = torch.from_numpy(sample_features(F))
    out = dict(side="torch", tokens=int(tokens.numel()), pass_s=pass_s, total_s=pass_s, load_s=load_s,
               peak_rss_mb=peak_rss_mb(), amax=amax[:, feats].tolist(), threads=torch.get_num_threads())
    out_json.write_text(json.dumps(out))


# ================================================================================================== main
def run_worker(side: str, case_dir: Path, n_seq: int, args, tmp: Path, finish: bool) -> dict:
    out = tmp / f"{side}_{n_seq}.json"
    cmd = [sys.executable, __file__, "--worker", side, str(case_dir), str(n_seq), str(out),
           "--seq-len", str(args.seq_len), "--batch", str(args.batch), *(["--finish"] if finish else [])]
    env = dict(os.environ, JCIRCUITS_CACHE_DIR="")  # cold compiles, reported apart
    load0 = os.getloadavg()[0]
    subprocess.run(cmd, check=True, env=env)
    return dict(json.loads(out.read_text()), load=(load0, os.getloadavg()[0]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="bench_attribution's small case (a smoke test)")
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16, help="sequences per batch, both sides")
    ap.add_argument("--batches", type=int, default=2, help="batches of the 1x corpus")
    ap.add_argument("--scale", type=int, default=10, help="the larger corpus is this many times the 1x one")
    ap.add_argument("--out", default=None, help="markdown output (default: print only)")
    ap.add_argument("--finish", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--worker", nargs=4, metavar=("SIDE", "CASE", "N_SEQ", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        side, case, n, out = args.worker
        fn = worker_ours if side == "ours" else worker_torch
        fn(Path(case), int(n), args.seq_len, args.batch, Path(out), args.finish)
        return 0

    spec = ba.SMALL if args.small else ba.MEDIUM
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_features_case_") as td:
        tmp = Path(td)
        ba.build_case(spec, tmp / "case")
        sizes = [args.batches * args.batch, args.scale * args.batches * args.batch]
        res = {}
        for n in sizes:
            for side in ("ours", "torch"):
                r = run_worker(side, tmp / "case", n, args, tmp, finish=n == sizes[-1])
                res[(side, n)] = r
                print(f"{side:5s} {r['tokens']:7d} tokens: pass {r['pass_s']:.1f}s "
                      f"({r['tokens'] / r['pass_s']:.0f} tok/s), total {r['total_s']:.1f}s, "
                      f"peak RSS {r['peak_rss_mb']:.0f} MB", file=sys.stderr)
    wall = time.perf_counter() - t_all

    def diff(n):
        a, b = np.asarray(res[("ours", n)]["amax"]), np.asarray(res[("torch", n)]["amax"])
        both = np.isfinite(b) & (b > 0)
        agree_dead = bool(np.all(a[~both] == 0))
        rel = float(np.max(np.abs(a[both] - b[both]) / np.abs(b[both]))) if both.any() else 0.0
        return rel, int(both.sum()), agree_dead

    given = sys.argv[1:] if argv is None else argv
    cmd = " ".join([".venv/bin/python experiments/bench_features.py", *given])
    lines = [
        f"# Feature dashboards: jcircuits vs the PyTorch loop ({spec['name']} case, CPU, float32)",
        "",
        f"Made by `{cmd}` ({wall:.0f} s in all, on {os.cpu_count()} CPU cores, "
        f"{platform.machine()}, Python {platform.python_version()}).",
        "",
        f"Case: bench_attribution's {spec['name']} one: {spec['L']} layers, d_model {spec['D']}, d_mlp "
        f"{spec['F_mlp']}, vocab {spec['V']}, {spec['F']}-feature JumpReLU transcoders per layer; corpus of seeded "
        f"random ids, {args.seq_len} tokens a sequence, {args.batch} sequences a batch, both sides on the same ids.",
        "",
        "| corpus | tokens | ours pass tok/s | torch pass tok/s | ours / torch | ours total tok/s (with finish) "
        "| ours peak RSS | torch peak RSS |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for k, n in enumerate(sizes):
        o, t = res[("ours", n)], res[("torch", n)]
        ro, rt = o["tokens"] / o["pass_s"], t["tokens"] / t["pass_s"]
        lines.append(
            f"| {'1x' if k == 0 else f'{args.scale}x'} | {o['tokens']} | {ro:.0f} | {rt:.0f} | {ro / rt:.2f}x | "
            f"{o['tokens'] / o['total_s']:.0f}{'' if o['finish'] else ' (no finish)'} | "
            f"{o['peak_rss_mb']:.0f} MB | {t['peak_rss_mb']:.0f} MB |"
        )
    big = res[("ours", sizes[-1])]
    small_o = res[("ours", sizes[0])]
    rel, n_cmp, dead_ok = diff(sizes[-1])
    fl = big["floor_s"] / big["floor_tokens"]  # seconds a token of forward + encoders alone
    gf = big["gflop_per_token"]
    t_torch = res[("torch", sizes[-1])]["pass_s"] / res[("torch", sizes[-1])]["tokens"]
    t_ours = big["pass_s"] / big["tokens"]
    lines += [
        "",
        "Floor (the same process, after its run): the jitted forward pass and the 8 encoders alone over one batch, "
        f"no statistics: {1 / fl:.0f} tok/s ({big['floor_s'] * 1e3:.0f} ms a batch of {big['floor_tokens']} tokens; "
        f"{gf:.3f} GFLOP a token of matmuls, {gf / fl:.0f} GFLOP/s). The statistics add "
        f"{(t_ours - fl) * big['floor_tokens'] * 1e3:.0f} ms a batch ({(t_ours / fl - 1) * 100:.0f} % over the floor); "
        f"with free statistics the pass would be {t_torch / fl:.2f}x the torch loop's ({args.scale}x corpus).",
        "",
        f"- ours, {sizes[-1] * args.seq_len} tokens: pass {big['pass_s']:.1f} s, finish {big['finish_s']:.1f} s "
        f"(its cost grows with the features and examples kept, not with the corpus, so the 1x run skips it; "
        f"settings: 16 top examples, 4 bands x 2, 16-token contexts); compilation {big['compile_s']:.1f} s in "
        f"the one-batch warm-up ({big['warmup_s']:.1f} s in all), {big['later_compile_s']:.1f} s more in the "
        f"timed run (the window function); {big['bytes_written'] / 1e6:.1f} MB of records written; the 1x pass "
        f"{small_o['pass_s']:.1f} s.",
        f"- torch: {res[('torch', sizes[-1])].get('threads')} threads, model load "
        f"{res[('torch', sizes[-1])]['load_s']:.1f} s (not timed).",
        f"- agreement: per-feature maxima of {n_cmp} active sampled features ({SAMPLE} per layer) differ by at "
        f"most {rel:.1e} (relative); features inactive in torch are inactive in ours: {dead_ok}.",
        "- peak RSS is each fresh process's `ru_maxrss` (model, transcoders, runtime and the run) at the end of "
        "the pass; going from 1x to the larger corpus it should stay flat: the running statistics have a fixed "
        f"size. With the finish, ours peaks at {big['peak_rss_finish_mb']:.0f} MB.",
        "- machine load (1-minute load average at the start and end of each run; 2 means both cores busy with "
        "other work): " + "; ".join(
            f"{side} {n * args.seq_len} tokens {res[(side, n)]['load'][0]:.1f} -> {res[(side, n)]['load'][1]:.1f}"
            for n in sizes for side in ("ours", "torch")
        ) + ".",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
