"""Write circuit-tracer 0.5.0's graph JSON for a ``.pt`` graph (from jcircuits' ``Graph.to_circuit_tracer``).

Run with the reference virtualenv's python (torch + circuit-tracer):

    .venv-ref/bin/python tests/reference/export_ref.py GRAPH.pt OUT_DIR --run SLUG NODE_T EDGE_T [--run …]

It calls circuit-tracer's own ``create_graph_files`` (pruning, node/link construction, ``<slug>.json`` and
``graph-metadata.json``), nothing else. The graph's ``cfg.tokenizer_name`` must be a local directory that
``transformers.AutoTokenizer`` can load offline (``tokenizer.json`` + ``tokenizer_config.json``).
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from circuit_tracer.utils.create_graph_files import create_graph_files  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("graph", help="circuit-tracer .pt graph")
    ap.add_argument("out_dir")
    ap.add_argument(
        "--run",
        nargs=3,
        action="append",
        required=True,
        metavar=("SLUG", "NODE_T", "EDGE_T"),
        help="one export: slug, node threshold, edge threshold (repeat for more, in one process)",
    )
    args = ap.parse_args()
    for slug, node_t, edge_t in args.run:
        create_graph_files(
            args.graph, slug, args.out_dir, node_threshold=float(node_t), edge_threshold=float(edge_t)
        )


if __name__ == "__main__":
    main()
