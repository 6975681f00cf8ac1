"""``jcircuits share GRAPH -o graph.html``: one self-contained HTML file of a graph (the viewer, the graph with its
labels and supernodes, and the dashboards of the features it shows) that opens from disk, read-only."""

from __future__ import annotations

__all__ = ["register"]


def cmd_share(args) -> int:
    import sys
    from pathlib import Path

    from jcircuits.commands._common import output_file
    from jcircuits.commands.serve import feature_stores
    from jcircuits.default import default_features
    from jcircuits.view.export import VIEW_KEEP_THRESHOLD
    from jcircuits.view.render import load_document
    from jcircuits.view.share import write_share_html

    out = output_file(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    # a .safetensors graph keeps nodes above the opening view, for the shared viewer's node slider
    keep = max(VIEW_KEEP_THRESHOLD, args.node_threshold)
    doc = load_document(args.graph, args.node_threshold, args.edge_threshold, keep_threshold=keep)
    if Path(args.graph).suffix != ".json":
        doc["metadata"]["slug"] = Path(args.graph).stem
    # the default model's dashboards too: a store is used only for graphs of its transcoder set
    stores = feature_stores(args.features, model="given") + [default_features()]
    path, n, note = write_share_html(doc, out, stores)
    size = path.stat().st_size
    print(f"wrote {path}: {len(doc['nodes'])} nodes, {len(doc['links'])} links, {n} feature dashboards, "
          f"{size / 1e6:.2f} MB; open it in a browser (file://{path.resolve()})")  # fmt: skip
    if note:
        print(f"jcircuits share: note: the file has no feature dashboards: {note}", file=sys.stderr)
    return 0


def register(sub) -> None:
    from jcircuits.commands.serve import add_features_argument

    a = sub.add_parser(
        "share", help="write one self-contained HTML file of a graph, to open without a server"
    )
    a.add_argument(
        "graph", help="a graph JSON (.json, with its labels and supernodes) or a graph (.safetensors)"
    )
    a.add_argument("-o", "--output", required=True, help="the HTML file to write, e.g. graph.html")
    a.add_argument(
        "--node-threshold",
        type=float,
        default=0.8,
        help="the view it opens at (.safetensors input only: pruned there, nodes kept up to 0.95 for the node "
        "slider; default: %(default)s)",
    )
    a.add_argument(
        "--edge-threshold",
        type=float,
        default=0.98,
        help="pruning (.safetensors input only; default: %(default)s)",
    )
    add_features_argument(a)
    a.set_defaults(func=cmd_share)
