"""``jcircuits render``: a static picture (SVG or PNG) of a pruned graph, laid out as in the viewer."""

from __future__ import annotations

__all__ = ["register"]


def cmd_render(args) -> int:
    from jcircuits.commands._common import output_file
    from jcircuits.view.render import render

    output_file(args.output)

    tokenizer = None
    if args.tokenizer:
        from jcircuits.models.tokenizer import Tokenizer

        tokenizer = Tokenizer.from_file(args.tokenizer)
    out = render(
        args.graph,
        args.output,
        args.node_threshold,
        args.edge_threshold,
        tokenizer=tokenizer,
        width=args.width,
        height=args.height,
        features=_store_for(args),
    )
    print(f"wrote {out}")
    return 0


def _store_for(args):
    """The dashboards whose automatic labels the picture draws: of --features or the default model's, when made
    for the graph's transcoders (None otherwise)."""
    from jcircuits.commands.serve import feature_stores
    from jcircuits.default import default_features
    from jcircuits.view.render import load_document
    from jcircuits.view.server import pick_store

    scan = load_document(args.graph, args.node_threshold, args.edge_threshold)["metadata"].get("scan")
    try:
        return pick_store(feature_stores(args.features, model="given") + [default_features()], scan)
    except LookupError:
        return None


def _pixels(text: str) -> int:
    import argparse

    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of pixels, got {text!r}") from None
    if not 100 <= n <= 10_000:
        raise argparse.ArgumentTypeError(f"pictures are 100 to 10000 pixels on a side, got {n}")
    return n


def register(sub) -> None:
    from jcircuits.commands.serve import add_features_argument

    a = sub.add_parser("render", help="draw a pruned graph to an SVG or PNG file")
    a.add_argument("graph", help="a graph (.safetensors from `jcircuits attribute`) or a graph JSON (.json)")
    a.add_argument("-o", "--output", required=True, help="picture file: .svg or .png")
    a.add_argument("--node-threshold", type=float, default=0.8, help="pruning (.safetensors input only; default: %(default)s)")
    a.add_argument("--edge-threshold", type=float, default=0.98, help="pruning (.safetensors input only; default: %(default)s)")
    a.add_argument("--tokenizer", help="tokenizer.json or model directory, for token strings")
    a.add_argument("--width", type=_pixels, default=1200, help="picture width in pixels (default: %(default)s)")
    a.add_argument("--height", type=_pixels, default=700, help="picture height in pixels (default: %(default)s)")
    add_features_argument(a)  # automatic labels beside nodes
    a.set_defaults(func=cmd_render)
