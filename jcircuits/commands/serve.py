"""``jcircuits serve``: the local graph viewer for the graph JSON files of one directory (127.0.0.1 only)."""

from __future__ import annotations

__all__ = ["register"]


def cmd_serve(args) -> int:
    import sys

    from jcircuits.view.server import serve

    try:
        serve(args.graph_dir, args.port, slug=args.graph)
    except OSError as e:  # no such directory, port in use, permission denied
        print(f"jcircuits serve: error: {e}", file=sys.stderr)
        return 2
    return 0


def register(sub) -> None:
    from jcircuits.commands._common import port_number
    from jcircuits.view import DEFAULT_PORT

    a = sub.add_parser("serve", help="serve the graph viewer for a directory of graph JSON files")
    a.add_argument(
        "--graph-dir", required=True, help="directory of <slug>.json graphs and graph-metadata.json"
    )
    a.add_argument(
        "--port", type=port_number, default=DEFAULT_PORT, help=f"port on 127.0.0.1 (default {DEFAULT_PORT})"
    )
    a.add_argument("--graph", help="slug of the graph to open first")
    a.set_defaults(func=cmd_serve)
