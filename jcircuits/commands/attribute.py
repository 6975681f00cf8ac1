"""``jcircuits attribute``: compute and save the attribution graph of one prompt.

With no ``--model`` it traces the built-in default (``jcircuits.default``) and says so. With ``--model PATH|REPO
--transcoders PATH|REPO`` it loads a Hugging Face Gemma-2/Gemma-3/Llama-3/Qwen3 checkpoint and a circuit-tracer transcoder set
(local paths or the hub, offline mode respected).
"""

from __future__ import annotations

import argparse
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
    tolerance,
)
from jcircuits.commands.serve import add_features_argument

__all__ = ["register"]


def run_settings(args, prompt: str | None = None):
    """The typed ``RunSettings`` of an ``attribute`` command line (what the preflight plans); ``prompt`` stands
    in for ``--prompt`` (``--prompts-file`` plans for its longest prompt)."""
    from jcircuits.scale.memory import parse_bytes
    from jcircuits.scale.plan import RunSettings
    from jcircuits.scale.sharding import parse_mesh

    return RunSettings(
        model=args.model,
        transcoders=args.transcoders,
        prompt=args.prompt if prompt is None else prompt,
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


def position_list(text: str) -> list[int]:
    """argparse type: ``N`` or ``N,M,…`` prompt positions (negative counts from the end)."""
    try:
        return [int(p) for p in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a position or a comma list of positions (e.g. 5 or 3,-1), got {text!r}"
        ) from None


def _attribute_options(args, nodes) -> dict:
    """``attribute``'s keyword arguments from the command line (``--prompts-file`` passes the same ones)."""
    import jax.numpy as jnp

    return dict(
        max_n_logits=args.max_n_logits,
        desired_logit_prob=args.desired_logit_prob,
        batch_size=args.batch_size,
        max_feature_nodes=args.max_feature_nodes,
        dtype=jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32,
        mesh=mesh_of(args.mesh),  # --mesh DATAxMODEL: rows over data, weights over model
        active_features=nodes,
        target_positions=args.target_position,
        adjacency=args.adjacency,
        edge_tolerance=args.edge_tolerance,
        top_k_edges=args.top_k_edges,
    )


def cmd_attribute(args) -> int:
    from jcircuits.attribution import attribute

    if args.prompts_file is not None:
        return _attribute_prompts_file(args)
    check_prompt_arguments(args.prompt, args.tokens, args.chat)
    if args.split is not None:
        raise UsageError("--split is for --prompts-file (it chooses what --mesh's DATA axis splits over many prompts)")
    if (args.slug or args.serve) and not args.graph_dir:
        raise UsageError("--slug and --serve need --graph-dir DIR (where the graph JSON is written)")
    if args.adjacency == "dense" and (args.edge_tolerance is not None or args.top_k_edges is not None):
        raise UsageError("--edge-tolerance / --top-k-edges sparsify rows: use --adjacency sparse (or auto)")
    out = output_file(args.output or "graph.safetensors")  # outputs are checked before the work, not after it
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
    graph = attribute(model, transcoders, prompt, verbose=not args.quiet, **_attribute_options(args, nodes))
    out.parent.mkdir(parents=True, exist_ok=True)
    _save_with_token_strings(graph, model, out)
    tm = graph.settings["timings"]
    last = graph.n_pos - 1
    top = ", ".join(
        f"{lab!r}{'' if pos == last else f' at {pos}'} p={p:.3f}"
        for lab, p, pos in zip(graph.logit_labels, graph.logit_probabilities, graph.logit_positions, strict=True)
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
    how = {
        "float32": "everything float32",
        "mixed bfloat16": "float32 forward, node set and selection; rows from bfloat16 matmul inputs summed in float32",
    }[prec["mode"]]
    print(
        f"precision: {prec['mode']} ({how}), weights stored {prec['weights']}, transcoders {prec['transcoders']} | "
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


def _save_with_token_strings(graph, model, out: Path) -> None:
    if model.tokenizer is not None:  # token strings for pictures and the viewer, kept in the graph file
        graph.settings["token_strings"] = [model.tokenizer.decode([int(t)]) for t in graph.input_tokens]
    graph.save(out)


def prompt_slugs(prompts: list[str]) -> list[str]:
    """One file-name slug per prompt: its words in lower case joined by ``-`` (at most 48 characters), ``-2``,
    ``-3``, … on repeats, ``prompt-N`` when nothing is left."""
    slugs, seen = [], {}
    for i, text in enumerate(prompts):
        words = "".join(c if c.isascii() and c.isalnum() else " " for c in text.lower()).split()
        base = "-".join(words)[:48].strip("-") or f"prompt-{i}"
        seen[base] = seen.get(base, 0) + 1
        slugs.append(base if seen[base] == 1 else f"{base}-{seen[base]}")
    return slugs


def _read_prompts(path: str) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"--prompts-file {path}: no such file (one prompt per line)")
    try:
        prompts = [line.strip() for line in p.read_text(encoding="utf-8").splitlines()]
    except UnicodeDecodeError as e:
        raise UsageError(f"--prompts-file {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    prompts = [q for q in prompts if q]
    if not prompts:
        raise UsageError(f"--prompts-file {path} holds no prompt (one prompt per line; blank lines are skipped)")
    return prompts


def _attribute_prompts_file(args) -> int:
    """``--prompts-file FILE --graph-dir DIR``: one graph per line of FILE (``attribute_batch``), each written as
    ``DIR/<slug>.safetensors`` and ``DIR/<slug>.json``, listed in ``DIR/graph-metadata.json`` for the viewer."""
    from jcircuits.attribution import attribute_batch
    from jcircuits.scale.plan import preflight
    from jcircuits.view.export import export_graph_json

    clash = [f for f, v in (("--prompt", args.prompt), ("--tokens", args.tokens), ("--slug", args.slug),
                            ("-o", args.output), ("--active-features", args.active_features)) if v is not None]
    if clash or args.serve:
        raise UsageError(
            f"--prompts-file names every graph itself; drop {', '.join(clash + ['--serve'] * args.serve)} "
            "(serve the results with jcircuits serve --graph-dir DIR)"
        )
    if not args.graph_dir:
        raise UsageError("--prompts-file needs --graph-dir DIR (one graph per prompt is written there)")
    if args.split is not None and not args.mesh:
        raise UsageError("--split chooses what the mesh's DATA axis splits: add --mesh DATAxMODEL, or drop --split")
    prompts = _read_prompts(args.prompts_file)
    out_dir = output_dir(args.graph_dir, "--graph-dir")
    code = preflight(run_settings(args, prompt=max(prompts, key=len)))  # plans for the longest prompt
    if code is not None:
        return code
    t0 = time.perf_counter()
    model, transcoders = load_model_and_transcoders(args.model, args.transcoders, dtype=args.dtype, mesh=args.mesh)
    if model.tokenizer is None:
        raise UsageError("this model directory has no tokenizer.json: --prompts-file needs one to read text")
    load_s = time.perf_counter() - t0
    texts = [prompt_of(model, q, None, args.chat) for q in prompts]  # --chat formats every line as a chat turn
    t1 = time.perf_counter()
    options = _attribute_options(args, None)
    graphs = attribute_batch(model, transcoders, texts, verbose=not args.quiet, split=args.split or "prompts", **options)
    run_s = time.perf_counter() - t1
    for slug, graph in zip(prompt_slugs(prompts), graphs, strict=True):
        out_dir.mkdir(parents=True, exist_ok=True)
        _save_with_token_strings(graph, model, out_dir / f"{slug}.safetensors")
        result = export_graph_json(graph, slug, out_dir, tokenizer=model.tokenizer)
        if not args.quiet:
            print(result.summary())
    print(
        f"attributed {len(graphs)} prompts in {run_s:.2f}s ({len(graphs) / max(run_s, 1e-9):.2f} graphs/s; load "
        f"{load_s:.2f}s) | wrote {out_dir}/<slug>.safetensors + .json, index {out_dir}/graph-metadata.json"
    )
    if not args.quiet:
        print(f"next:\n  viewer:   jcircuits serve --graph-dir {out_dir}", file=sys.stderr)
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
        "--target-position",
        type=position_list,
        metavar="N[,M…]",
        help="read the targets at these prompt positions (negative counts from the end, e.g. --target-position=-2,-1; "
        "default: the last)",
    )
    a.add_argument(
        "--active-features",
        metavar="GRAPH.safetensors",
        help="use this graph's node set (its active features, each at its pre-activation) instead of the one the "
        "transcoders' activation picks: compares graphs across dtypes, machines or tools node for node",
    )
    a.add_argument(
        "--adjacency",
        choices=("auto", "dense", "sparse"),
        default="auto",
        help="store rows densely or as their exact non-zeros (a sparse graph file); auto: sparse once the dense "
        "rows and matrix would pass 1 GiB (default: %(default)s)",
    )
    a.add_argument(
        "--edge-tolerance",
        type=tolerance,
        help="sparsify each row as it arrives: drop its weakest edges while they add up to at most this fraction "
        "of the row's total |weight| (recorded per row in the graph; implies a sparse graph)",
    )
    a.add_argument(
        "--top-k-edges",
        type=positive_int,
        help="sparsify each row as it arrives: keep its K strongest edges (recorded; implies a sparse graph)",
    )
    a.add_argument(
        "-o", "--output", default=None, help="where to write the graph (default: graph.safetensors)"
    )
    a.add_argument(
        "--prompts-file",
        metavar="FILE",
        help="one prompt per line: a graph per prompt in --graph-dir (named by its slug, listed for the viewer)",
    )
    a.add_argument(
        "--split",
        choices=["prompts", "rows"],
        default=None,
        help="with --prompts-file and --mesh: what DATA splits — whole prompts, one a data slice at a time "
        "(default), or each prompt's batches of rows",
    )
    a.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    a.add_argument("--slug", help="name of the graph JSON in --graph-dir (default: the output file's stem)")
    a.add_argument("--graph-dir", help="also write the pruned graph JSON + graph-metadata.json here")
    a.add_argument("--serve", action="store_true", help="then serve the viewer on 127.0.0.1:8041")
    add_features_argument(a)  # the dashboards --serve shows
    add_scale_arguments(a)  # --mesh, --dry-run, --device-memory, --host-memory, --l0
    a.set_defaults(func=cmd_attribute)
