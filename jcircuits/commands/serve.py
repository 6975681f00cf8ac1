"""``jcircuits serve``: the local graph viewer for the graph JSON files of one directory (127.0.0.1 only), with
the feature dashboards of the transcoders traced (``--features DIR``, repeatable; the default model's always) and,
with ``--model PATH|REPO --transcoders PATH|REPO`` (or ``--model default``), steering: the viewer edits pinned
features and shows the top next tokens and a continuation before and after."""

from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["register", "feature_stores", "add_features_argument"]


def feature_stores(features: list[str] | None, *, model: str | None = None, transcoders: str | None = None):
    """The `FeatureStore` s the viewer serves: each ``--features`` folder (ours, circuit-tracer's, or a hub
    repo's ``features/``), else those found beside the transcoders traced: the embedded default's when no
    ``--model`` was given, a local transcoder folder's ``features/`` when it has one. A hub transcoder repo is
    not searched (its ``features/`` can be gigabytes): name it with ``--features``."""
    from jcircuits.features.format import INDEX_NAME, FeatureStore

    if features:
        return [FeatureStore(f) for f in features]
    if model is None:
        from jcircuits.default import default_features

        return [default_features()]
    if transcoders is not None:
        base = Path(transcoders)
        base = base.parent if base.is_file() else base
        if (base / "features" / INDEX_NAME).is_file():
            return [FeatureStore(base / "features")]
    return []


def add_features_argument(parser) -> None:
    parser.add_argument(
        "--features",
        action="append",
        metavar="DIR|REPO",
        help="feature dashboards to show in the viewer: a folder holding index.json.gz (jcircuits features "
        "build, or circuit-tracer's) or a hub repo with a features/ folder; repeat for several transcoder sets "
        "(default: the default model's, or a local --transcoders folder's features/)",
    )


def cmd_serve(args) -> int:
    from jcircuits.commands._common import UsageError
    from jcircuits.default import default_features
    from jcircuits.view.server import serve

    # the default model's dashboards too: the viewer uses a store only for graphs of its transcoder set
    stores = feature_stores(args.features, model="given") + [default_features()]
    steer = None
    if args.model is not None:
        from jcircuits.commands._common import load_model_and_transcoders
        from jcircuits.view.steer import Steerer

        default = args.model == "default"
        if default and args.transcoders is not None:
            raise UsageError("--model default comes with its own transcoders; drop --transcoders")
        if not default and args.transcoders is None:
            raise UsageError("--model needs --transcoders (the transcoder set its graphs were traced with)")
        model, transcoders = load_model_and_transcoders(
            None if default else args.model, args.transcoders, dtype=args.dtype
        )
        steer = Steerer(model, transcoders)
        if not default:
            stores = feature_stores(args.features, model=args.model, transcoders=args.transcoders) + stores
    elif args.transcoders is not None:
        raise UsageError("--transcoders needs --model (steering runs the model)")
    try:
        serve(args.graph_dir, args.port, slug=args.graph, features=stores, steer=steer)
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
    add_features_argument(a)
    a.add_argument(
        "--model",
        help="steer with this model: an HF model directory, org/repo, or 'default' for the embedded default model",
    )
    a.add_argument("--transcoders", help="the model's circuit-tracer transcoders (config.yaml, directory or hub repo)")
    a.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        default="float32",
        help="how the steering model's weights are stored; steered forwards compute in it, traced graphs keep a "
        "float32 forward and rows (default: %(default)s)",
    )
    a.set_defaults(func=cmd_serve)
