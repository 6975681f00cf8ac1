"""Run one attribution on every worker of a TPU slice (``tpu/launch.sh run`` starts this on all hosts).

    python tpu/run.py CONFIG.yaml --transcoders DIR --prompt TEXT --out DIR [--model DIR] [--single-process]

Every host: joins ``jax.distributed`` (Cloud TPU metadata gives the coordinator), checks the memory estimate
against the chips' ``memory_stats``, loads the model and the transcoders' encoders *sharded over its own chips*
(each host reads only the slices its chips hold; ``jcircuits.scale.sharded_loading``), runs the replacement step locally
and the adjacency rows on the global ``data x model`` mesh of the config, and process 0 writes
``graph.safetensors`` and the viewer JSON to ``--out``. The same program runs on CPU with
``--single-process`` (used by the tests' code paths; on a laptop use ``jcircuits attribute --mesh``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument(
        "--transcoders", required=True, help="local circuit-tracer transcoder directory on every worker"
    )
    ap.add_argument("--prompt", required=True)
    ap.add_argument(
        "--out", required=True, help="output directory (on worker 0; launch.sh collect copies it)"
    )
    ap.add_argument("--model", help="override the config's model (HF repo or a local directory)")
    ap.add_argument("--single-process", action="store_true", help="skip jax.distributed (one host)")
    args = ap.parse_args(argv)
    conf = yaml.safe_load(Path(args.config).read_text())
    run = conf["run"]

    from jcircuits.scale import distributed

    if not args.single_process:
        distributed.initialize()  # Cloud TPU: coordinator, process count and id come from the TPU metadata
    import jax
    import jax.numpy as jnp

    from jcircuits.attribution import attribute
    from jcircuits.models import Model
    from jcircuits.models.loading import resolve_model_dir
    from jcircuits.models.tokenizer import Tokenizer
    from jcircuits.scale.memory import device_capacity, estimate_attribution, host_capacity, human
    from jcircuits.scale.sharded_loading import load_model_sharded, load_transcoders_sharded
    from jcircuits.scale.sharding import make_mesh, parse_mesh

    data, model_axis = parse_mesh(conf["mesh"])
    mesh = make_mesh(data, model_axis)  # global: every chip of the slice
    local = make_mesh(1, jax.local_device_count(), devices=jax.local_devices())  # this host's chips
    dtype = jnp.bfloat16 if run["dtype"] == "bfloat16" else jnp.float32
    model_dir = resolve_model_dir(args.model or conf["model"])
    tok = Tokenizer.from_file(model_dir)
    t0 = time.perf_counter()
    params, cfg = load_model_sharded(model_dir, local, dtype=dtype)
    transcoders = load_transcoders_sharded(args.transcoders, local, dtype=dtype, n_layers=cfg.n_layers)
    load_s = time.perf_counter() - t0
    n_tokens = len(tok.encode(args.prompt))
    est = estimate_attribution(
        cfg,
        transcoders.cfg,
        n_tokens=n_tokens,
        batch_size=run["batch_size"],
        max_feature_nodes=run.get("max_feature_nodes"),
        dtype=run["dtype"],
        mesh=mesh,
        l0=run.get("l0"),
        sharded_loading=True,
    )
    problems = est.problems(device_capacity()[0], host_capacity())
    if distributed.is_coordinator():
        print(est.report(), flush=True)
    if problems:
        for p in problems:
            print(f"process {jax.process_index()}: will not fit: {p}", file=sys.stderr)
        return 2
    model = Model(params=params, cfg=cfg, tokenizer=tok, name=str(args.model or conf["model"]))
    graph = attribute(
        model,
        transcoders,
        args.prompt,
        batch_size=run["batch_size"],
        max_feature_nodes=run.get("max_feature_nodes"),
        dtype=dtype,
        mesh=mesh,
        verbose=distributed.is_coordinator(),
    )
    if distributed.is_coordinator():
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        graph.save(out / "graph.safetensors")
        from jcircuits.view.export import export_graph_json

        export_graph_json(graph, "graph", out, tokenizer=tok)
        tm = graph.settings["timings"]
        print(
            f"load {load_s:.1f}s, rows {tm['logit_rows_s'] + tm['feature_rows_s']:.1f}s "
            f"({tm['rows_per_s']:.0f} rows/s, compile {tm['compile_s']:.1f}s), "
            f"peak estimate {human(est.device_peak)} per chip; wrote {out}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
