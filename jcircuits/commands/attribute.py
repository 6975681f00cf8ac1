"""``jcircuits attribute``: compute and save the attribution graph of one prompt.

With no ``--model`` it traces the built-in default (``jcircuits.default``) and says so. With ``--model PATH|REPO
--transcoders PATH|REPO`` it loads a Hugging Face Gemma-2/Gemma-3/Llama-3/Qwen3 checkpoint and a circuit-tracer transcoder set
(local paths or the hub, offline mode respected).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from jcircuits.commands._common import (
    UsageError,
    add_model_arguments,
    add_scale_arguments,
    check_prompt_arguments,
    load_model_and_transcoders,
    mesh_of,
    output_dir,
    output_file,
    parse_tokens,
    positive_int,
    probability,
    prompt_of,
)
from jcircuits.commands.serve import add_features_argument

__all__ = ["register"]


def run_settings(args):
    """The typed ``RunSettings`` of an ``attribute`` command line (what the preflight plans)."""
    from jcircuits.scale.memory import parse_bytes
    from jcircuits.scale.plan import RunSettings
    from jcircuits.scale.sharding import parse_mesh

    return RunSettings(
        model=args.model,
        transcoders=args.transcoders,
        prompt=args.prompt,
        chat=args.chat,
        n_tokens=len(parse_tokens(args.tokens)) if args.tokens is not None else None,
        dtype=args.dtype,
        batch_size=args.batch_size,
        max_feature_nodes=args.max_feature_nodes,
        max_n_logits=args.max_n_logits,
        mesh=parse_mesh(args.mesh) if args.mesh else None,
        dry_run=args.dry_run,
        device_memory=parse_bytes(args.device_memory) if args.device_memory else None,
        host_memory=parse_bytes(args.host_memory) if args.host_memory else None,
        l0=args.l0,
    )


def cmd_attribute(args) -> int:
    import jax.numpy as jnp

    from jcircuits.attribution import attribute

    check_prompt_arguments(args.prompt, args.tokens, args.chat)
    if (args.slug or args.serve) and not args.graph_dir:
        raise UsageError("--slug and --serve need --graph-dir DIR (where the graph JSON is written)")
    out = output_file(args.output)  # outputs are checked before the work, not after it
    nodes = _node_set_of(args.active_features)
    if args.graph_dir:
        from jcircuits.view.export import check_slug

        output_dir(args.graph_dir, "--graph-dir")
        check_slug(args.slug or out.stem)
    from jcircuits.scale.plan import preflight

    code = preflight(run_settings(args))  # memory estimate first: --dry-run stops here, and so does a run that cannot fit
    if code is not None:
        return code
    t0 = time.perf_counter()
    model, transcoders = load_model_and_transcoders(args.model, args.transcoders, dtype=args.dtype, mesh=args.mesh)
    load_s = time.perf_counter() - t0
    prompt = prompt_of(model, args.prompt, args.tokens, args.chat)
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
        mesh=mesh_of(args.mesh),  # --mesh DATAxMODEL: rows over data, weights over model
        active_features=nodes,
    )
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
    ro, prec = graph.settings["round_off"], graph.settings["precision"]
    given = f"node set from {args.active_features}; " if nodes is not None else ""
    print(
        f"precision: rows {prec['compute']}, weights {prec['weights']}, transcoders {prec['transcoders']} | "
        f"{given}{ro['n']} features decided by round-off (pre-activation within {ro['margin']:g}·max(1,|θ|) "
        "of its threshold; graph.settings['round_off'])"
    )
    if args.graph_dir:
        from jcircuits.view.export import export_graph_json

        slug = args.slug or out.stem
        result = export_graph_json(graph, slug, args.graph_dir, tokenizer=model.tokenizer)
        print(result.summary())
        if args.serve:
            from jcircuits.commands.serve import feature_stores
            from jcircuits.view import DEFAULT_PORT
            from jcircuits.view.server import serve

            stores = feature_stores(args.features, model=args.model, transcoders=args.transcoders)
            if not stores:
                print("viewer: no feature dashboards found for these transcoders; add --features DIR", file=sys.stderr)
            from jcircuits.view.steer import Steerer

            serve(args.graph_dir, DEFAULT_PORT, slug=slug, features=stores, steer=Steerer(model, transcoders))
    if not args.quiet:
        print(_next_steps(args, out, slug=args.slug or out.stem), file=sys.stderr)
    return 0


def _node_set_of(path: str | None):
    """The graph file named by ``--active-features`` (its node set is used), read before the model loads."""
    if path is None:
        return None
    from jcircuits.graph import Graph

    p = Path(path)
    if not p.is_file():
        raise UsageError(f"--active-features: {path} is not a graph file (a .safetensors written by attribute)")
    try:
        return Graph.load(p)
    except ValueError as e:  # a wrong file says so here, not deep inside the run
        raise UsageError(f"--active-features: cannot read {path} as a graph: {e}") from e


def _next_steps(args, out: Path, slug: str) -> str:
    """What a person can do with the graph just written (commands that work as printed)."""
    model = "" if args.model is None else f" --model {args.model} --transcoders {args.transcoders}"
    lines = ["next:", f"  picture:  jcircuits render {out} -o {out.with_suffix('.svg')}"]
    if args.graph_dir:
        lines.append(f"  viewer:   jcircuits serve --graph-dir {args.graph_dir} --graph {slug}")
    else:
        lines.append(f"  viewer:   jcircuits attribute{model} ... --graph-dir graphs --serve")
    lines.append(f"  edit:     jcircuits intervene{model} --prompt ... --set LAYER:POS:FEATURE=VALUE")
    lines.append(f"  python:   jcircuits.Graph.load({str(out)!r})")
    return "\n".join(lines)


def register(sub) -> None:
    a = sub.add_parser("attribute", help="compute the attribution graph of one prompt")
    add_model_arguments(a)
    a.add_argument(
        "--max-n-logits", type=positive_int, default=10, help="most logit targets (default: %(default)s)"
    )
    a.add_argument(
        "--desired-logit-prob",
        type=probability,
        default=0.95,
        help="logit targets: the top tokens until their probabilities add up to this (default: %(default)s)",
    )
    a.add_argument(
        "--batch-size", type=positive_int, default=256, help="adjacency rows per device batch (default: %(default)s)"
    )
    a.add_argument(
        "--max-feature-nodes",
        type=positive_int,
        default=None,
        help="most feature rows, chosen by influence (default: every active feature)",
    )
    a.add_argument(
        "--active-features",
        metavar="GRAPH.safetensors",
        help="use this graph's node set (its active features, each at its pre-activation) instead of the one the "
        "transcoders' activation picks: compares graphs across dtypes, machines or tools node for node",
    )
    a.add_argument(
        "-o", "--output", default="graph.safetensors", help="where to write the graph (default: %(default)s)"
    )
    a.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    a.add_argument("--slug", help="name of the graph JSON in --graph-dir (default: the output file's stem)")
    a.add_argument("--graph-dir", help="also write the pruned graph JSON + graph-metadata.json here")
    a.add_argument("--serve", action="store_true", help="then serve the viewer on 127.0.0.1:8041")
    add_features_argument(a)  # the dashboards --serve shows
    add_scale_arguments(a)  # --mesh, --dry-run, --device-memory, --host-memory, --l0
    a.set_defaults(func=cmd_attribute)
