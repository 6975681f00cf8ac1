"""Long prompts: the medium case at growing prompt length, jcircuits vs circuit-tracer 0.5.0, CPU float32.

    .venv/bin/python experiments/bench_long.py [--lengths 48,256,1024,2048,4096] [--ref-lengths 48,256,1024]
        [--ref-timeout 1200] [--ref-python PY] [--workdir DIR] [--out experiments/results/long_prompts_cpu.md]
        [--ours-kw JSON]

Circuit-tracer results already in ``--workdir/results.json`` are reused at lengths not in ``--ref-lengths`` (marked
``*``) and compared with the new graphs.

The case is ``bench_attribution.py``'s medium one (8 layers, d_model 512, 8 heads / 4 KV, d_mlp 2048, vocab 2048,
8192-feature JumpReLU PLTs calibrated so ~532 features are active per token, max_feature_nodes 2048, batch 256)
at prompt length T: seeded ids after a BOS, transcoders calibrated on that prompt. Each side runs once per length
in a fresh process under ``/usr/bin/time`` (wall seconds and peak resident memory of the process, compilation
included: a first call, which is what a user with one long prompt pays). Ours also saves the graph
(``Graph.save``) and reports its file size, row phases (rows/s, compilation excluded) and layout. circuit-tracer
runs only at ``--ref-lengths`` and is stopped after ``--ref-timeout`` seconds; where both finish, the graphs are
compared on their common selected features (max |difference| relative to the largest edge).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_attribution", ROOT / "experiments/bench_attribution.py")
BA = importlib.util.module_from_spec(_spec)
sys.modules["bench_attribution"] = BA
_spec.loader.exec_module(BA)


def case_for(T: int) -> dict:
    s = dict(BA.MEDIUM, name=f"medium_T{T}", T=T)
    s["n_active"] = int(round(BA.MEDIUM["n_active"] * (T - 1) / (BA.MEDIUM["T"] - 1)))  # same density per token
    return s


def worker_ours(case_dir: Path, out_json: Path, kw: dict) -> None:
    import jcircuits.attribution.engine as engine
    from jcircuits.models import Model
    from jcircuits.models.loading import load_params

    os.environ["JCIRCUITS_CACHE_DIR"] = ""  # cold: no persistent compilation cache
    case = json.loads((case_dir / "case.json").read_text())
    params, cfg = load_params(case_dir / "model")
    model = Model(params, cfg, tokenizer=None, name="bench")
    tcs = BA.load_transcoders(case_dir / "transcoders", cfg)
    toks = np.asarray(case["tokens"], np.int32)
    t = time.perf_counter()
    g = engine.attribute(model, tcs, toks, max_feature_nodes=case["max_feature_nodes"],
                         batch_size=case["batch_size"], update_interval=case["update_interval"], verbose=False, **kw)
    wall = time.perf_counter() - t
    path = case_dir / "ours.safetensors"
    g.save(path)
    # the estimator's prediction for this run, given the run's own number of active features and slot width
    from jcircuits.common.buckets import size_bucket
    from jcircuits.scale.memory import estimate_attribution

    act = g.active_features
    L, T = cfg.n_layers, len(toks)
    K = size_bucket(int(np.bincount(act[:, 0] * T + act[:, 1], minlength=L * T).max()))
    est = estimate_attribution(cfg, tcs.cfg, n_tokens=T, batch_size=case["batch_size"],
                               max_feature_nodes=case["max_feature_nodes"], n_active=len(act), k_pad=K)
    info = dict(wall_s=wall, timings=g.settings["timings"], layout=g.settings["adjacency"],
                n_active=int(g.settings["n_active"]), n_selected=len(g.selected_features),
                graph_bytes=path.stat().st_size, estimate_gib=est.single_memory_peak / 2**30,
                estimate=est.settings)
    out_json.write_text(json.dumps(info))


def timed(cmd, env, timeout):
    """Run ``cmd`` under /usr/bin/time: (status, wall s, peak RSS GB, stdout tail)."""
    tf = Path(f"/tmp/bench_long_time_{os.getpid()}.txt")
    t = time.perf_counter()
    try:
        r = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", str(tf), *cmd], capture_output=True, text=True,
                           env=env, timeout=timeout)
        status = "ok" if r.returncode == 0 else f"exit {r.returncode}"
        tail = (r.stdout + r.stderr)[-3000:]
    except subprocess.TimeoutExpired:
        status, tail = f"stopped after {timeout} s", ""
    wall = time.perf_counter() - t
    rss = None
    if tf.exists():
        txt = tf.read_text().strip().splitlines()
        if txt and txt[-1].strip().isdigit():
            rss = int(txt[-1]) / 2**20  # KiB -> GiB
        tf.unlink()
    return status, wall, rss, tail


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", default="48,256,1024,2048,4096")
    ap.add_argument("--ref-lengths", default="48,256,1024")
    ap.add_argument("--ref-timeout", type=int, default=1200)
    ap.add_argument("--ref-python", default=str(ROOT / ".venv-ref/bin/python"))
    ap.add_argument("--workdir", default="/tmp/bench_long")
    ap.add_argument("--out", default=None)
    ap.add_argument("--ours-kw", default="{}", help="extra attribute() keywords as JSON")
    ap.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker_ours(Path(args.worker[0]), Path(args.worker[1]), json.loads(args.worker[2]))
        return 0
    lengths = [int(x) for x in args.lengths.split(",")]
    ref_lengths = {int(x) for x in args.ref_lengths.split(",") if x}
    work = Path(args.workdir)
    prior = {}  # circuit-tracer results of an earlier run in this workdir (they do not depend on our code)
    if (work / "results.json").exists():
        prior = {r["T"]: r for r in json.loads((work / "results.json").read_text()) if "ref_status" in r}
    rows = []
    for T in lengths:
        s = case_for(T)
        case_dir = work / s["name"]
        if not (case_dir / "case.json").exists():
            print(f"building T={T} …", flush=True)
            BA.build_case(s, case_dir)
            case = json.loads((case_dir / "case.json").read_text())
            case["ref_reps"] = 1
            (case_dir / "case.json").write_text(json.dumps(case))
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(case_dir),
               str(case_dir / "ours.json"), args.ours_kw]
        st, wall, rss, tail = timed(cmd, env, 3600)
        row = dict(T=T, ours_status=st, ours_wall=wall, ours_rss=rss)
        if st == "ok":
            row.update(json.loads((case_dir / "ours.json").read_text()))
        else:
            print(tail)
        print(f"T={T} ours: {st} {wall:.1f} s, peak RSS {rss} GiB", flush=True)
        if T in ref_lengths:
            renv = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
            rcmd = [args.ref_python, str(ROOT / "experiments/bench_ref_runner.py"), str(case_dir),
                    str(case_dir / "ref.npz")]
            st, wall, rss, tail = timed(rcmd, renv, args.ref_timeout)
            row.update(ref_status=st, ref_wall=wall, ref_rss=rss)
            if st == "ok":
                ref = dict(np.load(case_dir / "ref.npz"))
                row["ref_attr_s"] = json.loads(str(ref["meta"]))["times"][-1]
            else:
                print(tail)
            print(f"T={T} circuit-tracer: {st} {wall:.1f} s, peak RSS {rss} GiB", flush=True)
        elif T in prior:  # reuse: same case, same circuit-tracer; compared with this run's graph below
            row.update({k: v for k, v in prior[T].items() if k.startswith("ref_")}, ref_reused=True)
            print(f"T={T} circuit-tracer: {row['ref_status']} (reused from an earlier run)", flush=True)
        if row.get("ref_status") == "ok" and row["ours_status"] == "ok":
            from jcircuits.graph import Graph

            ref = dict(np.load(case_dir / "ref.npz"))
            g = Graph.load(case_dir / "ours.safetensors")
            ours = dict(active_features=g.active_features, selected_features=g.selected_features,
                        adjacency_matrix=g.dense_adjacency(), logit_token_ids=g.logit_token_ids)
            row["agreement"] = BA.agreement(ours, ref)
        rows.append(row)
        (work / "results.json").write_text(json.dumps(rows, indent=1))
    if args.out:
        write_table(rows, args, argv)
    return 0


def write_table(rows, args, argv):
    facts = BA.machine_facts()
    cmd = "python experiments/bench_long.py " + " ".join(argv if argv is not None else sys.argv[1:])
    L = ["# Long prompts: the medium case at growing T, CPU float32\n",
         f"Command: `{cmd.strip()}`  ",
         f"Machine: {facts['cpu']}, {facts['cores']} cores. Each entry is one fresh process (a first call: "
         "compilation included; no persistent cache) under `/usr/bin/time`: wall seconds of the whole process "
         "(loading, attribution, saving) and its peak resident memory.\n",
         "| T | n active | ours wall (s) | ours attribute (s) | rows/s | ours peak RSS (GiB) | estimated (GiB) "
         "| layout | graph file (MB) | CT wall (s) | CT attribute (s) | CT peak RSS (GiB) | rel. max diff "
         "| selected overlap |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    if any(r.get("ref_reused") for r in rows):
        L.insert(3, "`*`: circuit-tracer's run reused from an earlier invocation in the same work directory (same case "
                    "files; its result does not depend on our code); the comparison is against this run's graph.\n")
    f = lambda x, nd=1: "–" if x is None else f"{x:.{nd}f}"  # noqa: E731
    for r in rows:
        ok = r["ours_status"] == "ok"
        ag = r.get("agreement") or {}
        ct = r.get("ref_status")
        ct_wall = f(r.get("ref_wall")) if ct == "ok" else (ct or "not run")
        if r.get("ref_reused"):
            ct_wall += "*"
        L.append(
            f"| {r['T']} | {r.get('n_active', '–')} | {f(r['ours_wall']) if ok else r['ours_status']} "
            f"| {f(r.get('wall_s'))} | {f(r.get('timings', {}).get('rows_per_s'), 0)} | {f(r['ours_rss'], 2)} "
            f"| {f(r.get('estimate_gib'), 2)} | {r.get('layout', '–')} | {f(r['graph_bytes'] / 1e6) if ok else '–'} | {ct_wall} "
            f"| {f(r.get('ref_attr_s'))} | {f(r.get('ref_rss'), 2)} "
            f"| {format(ag['rel_diff'], '.1e') if 'rel_diff' in ag else '–'} "
            f"| {(str(ag['n_sel_common']) + '/' + str(ag['n_sel_ref'])) if ag else '–'} |")
    Path(args.out).write_text("\n".join(L) + "\n")
    print("\n".join(L))


if __name__ == "__main__":
    sys.exit(main())
