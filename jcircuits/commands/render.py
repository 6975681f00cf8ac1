"""``jcircuits render``: a static picture (SVG or PNG) of a pruned graph, laid out as in the viewer."""

from __future__ import annotations

__all__ = ["register"]


def cmd_render(args) -> int:
    from jcircuits.view.render import render

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
    )
    print(f"wrote {out}")
    return 0


def register(sub) -> None:
    a = sub.add_parser("render", help="draw a pruned graph to an SVG or PNG file")
    a.add_argument("graph", help="a graph (.safetensors from `jcircuits attribute`) or a graph JSON (.json)")
    a.add_argument("-o", "--output", required=True, help="picture file: .svg or .png")
    a.add_argument("--node-threshold", type=float, default=0.8, help="pruning (.safetensors input only)")
    a.add_argument("--edge-threshold", type=float, default=0.98, help="pruning (.safetensors input only)")
    a.add_argument("--tokenizer", help="tokenizer.json or model directory, for token strings")
    a.add_argument("--width", type=int, default=1200)
    a.add_argument("--height", type=int, default=700)
    a.set_defaults(func=cmd_render)
