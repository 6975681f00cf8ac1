"""``jcircuits attribute``: compute and save the attribution graph of one prompt.

With no ``--model`` it traces the built-in default (see ``jcircuits.demo``) and says so. With ``--model PATH|REPO
--transcoders PATH|REPO`` it loads a Hugging Face Gemma-2/Llama-3 checkpoint and a circuit-tracer transcoder set
(local paths or the hub, offline mode respected).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

__all__ = ["register", "load_model_and_transcoders", "parse_tokens", "add_model_arguments"]


def parse_tokens(s: str):
    import numpy as np

    try:
        ids = [int(x) for x in s.replace(" ", "").split(",") if x]
    except ValueError:
        raise SystemExit(f"--tokens must be comma-separated integers, got {s!r}") from None
    if not ids:
        raise SystemExit("--tokens is empty")
    return np.asarray(ids, np.int32)


def load_model_and_transcoders(args):
    from jcircuits.replacement import Model

    if args.model is None:
        from jcircuits.demo import DEMO_NOTICE, default_model, default_transcoders

        if args.transcoders is not None:
            raise SystemExit("--transcoders needs --model (the demo model comes with its own transcoders)")
        print(DEMO_NOTICE, file=sys.stderr)
        model = default_model()
        return model, default_transcoders(model)
    if args.transcoders is None:
        raise SystemExit("--model needs --transcoders (a circuit-tracer config.yaml, directory or hub repo)")
    import jax.numpy as jnp

    from jcircuits.loading import load_model, resolve_model_dir
    from jcircuits.tokenizer import Tokenizer
    from jcircuits.transcoders.io import load_transcoders

    dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
    if getattr(args, "mesh", None):  # each device's shards read straight from the files, no whole-model host copy
        from jcircuits.plan import mesh_from_args
        from jcircuits.sharded_loading import load_for_mesh

        return load_for_mesh(args.model, args.transcoders, mesh_from_args(args), dtype=dtype)
    model_dir = resolve_model_dir(args.model)
    params, cfg = load_model(model_dir, dtype=dtype)
    tok = Tokenizer.from_file(model_dir) if (Path(model_dir) / "tokenizer.json").is_file() else None
    model = Model(params=params, cfg=cfg, tokenizer=tok, name=str(args.model))
    return model, load_transcoders(args.transcoders, dtype=dtype)


def cmd_attribute(args) -> int:
    import jax.numpy as jnp

    from jcircuits.attribution import attribute

    if (args.prompt is None) == (args.tokens is None):
        raise SystemExit("give exactly one of --prompt TEXT or --tokens 2,15,7,…")
    if (args.slug or args.serve) and not args.graph_dir:
        raise SystemExit("--slug and --serve need --graph-dir DIR (where the graph JSON is written)")
    from jcircuits.plan import mesh_from_args, preflight

    code = preflight(args)  # memory estimate first: --dry-run stops here, and so does a run that cannot fit
    if code is not None:
        return code
    t0 = time.perf_counter()
    model, transcoders = load_model_and_transcoders(args)
    load_s = time.perf_counter() - t0
    prompt = args.prompt if args.prompt is not None else parse_tokens(args.tokens)
    if isinstance(prompt, str) and model.tokenizer is None:
        raise SystemExit("this model directory has no tokenizer.json: pass --tokens instead of --prompt")
    graph = attribute(
        model,
        transcoders,
        prompt,
        max_n_logits=args.max_n_logits,
        desired_logit_prob=args.desired_logit_prob,
        batch_size=args.batch_size,
        max_feature_nodes=args.max_feature_nodes,
        dtype=jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32,
        verbose=not args.quiet,
        mesh=mesh_from_args(args),  # --mesh DATAxMODEL: rows over data, weights over model
    )
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    if model.tokenizer is not None:  # token strings for pictures and the viewer, kept in the graph file
        graph.settings["token_strings"] = [model.tokenizer.decode([int(t)]) for t in graph.input_tokens]
    graph.save(out)
    tm = graph.settings["timings"]
    top = ", ".join(
        f"{lab!r} p={p:.3f}" for lab, p in zip(graph.logit_labels, graph.logit_probabilities, strict=True)
    )
    print(f"prompt: {graph.input_string!r} ({len(graph.input_tokens)} tokens)")
    print(f"targets: {top}")
    print(
        f"attributed: {graph.settings['n_active']} active features, {len(graph.selected_features)} selected, "
        f"{graph.adjacency_matrix.shape[0]} nodes | load {load_s:.2f}s, precompute {tm['precompute_s']:.2f}s, "
        f"logit rows {tm['logit_rows_s']:.2f}s, feature rows {tm['feature_rows_s']:.2f}s "
        f"(compile {tm['compile_s']:.2f}s), {tm['rows_per_s']:.0f} rows/s | wrote {out}"
    )
    if args.graph_dir:
        from jcircuits.export import export_graph_json

        slug = args.slug or out.stem
        result = export_graph_json(graph, slug, args.graph_dir, tokenizer=model.tokenizer)
        print(result.summary())
        if args.serve:
            from jcircuits.viewer.server import DEFAULT_PORT, serve

            serve(args.graph_dir, DEFAULT_PORT, slug=slug)
    return 0


def add_model_arguments(a: argparse.ArgumentParser) -> None:
    """The ``--model/--transcoders/--prompt/--tokens/--dtype`` arguments every model-running command shares."""
    a.add_argument("--model", help="HF model directory, org/repo or hf://org/repo?revision=… (default: demo)")
    a.add_argument("--transcoders", help="circuit-tracer config.yaml, transcoder directory or hub repo")
    a.add_argument("--prompt", help="prompt text (a special start token is prepended if missing)")
    a.add_argument("--tokens", help="comma-separated token ids, used as given")
    a.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")


def register(sub) -> None:
    a = sub.add_parser("attribute", help="compute the attribution graph of one prompt")
    add_model_arguments(a)
    a.add_argument("--max-n-logits", type=int, default=10)
    a.add_argument("--desired-logit-prob", type=float, default=0.95)
    a.add_argument("--batch-size", type=int, default=256)
    a.add_argument("--max-feature-nodes", type=int, default=None)
    a.add_argument(
        "-o", "--output", default="graph.safetensors", help="where to write the graph (safetensors)"
    )
    a.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    a.add_argument("--slug", help="name of the graph JSON in --graph-dir (default: the output file's stem)")
    a.add_argument("--graph-dir", help="also write the pruned graph JSON + graph-metadata.json here")
    a.add_argument("--serve", action="store_true", help="then serve the viewer on 127.0.0.1:8041")
    from jcircuits.plan import add_scale_arguments

    add_scale_arguments(a)  # --mesh, --dry-run, --device-memory, --host-memory, --l0
    a.set_defaults(func=cmd_attribute)
