"""jcircuits: JAX-native circuit tracing (attribution graphs over transcoder replacement models).

The names a user needs are here; each is imported on first use, so ``import jcircuits`` (and ``jcircuits
--help``) stays fast. Layers, bottom up: ``common`` → ``models`` → ``transcoders`` → ``features`` → ``default`` → ``scale`` →
``replacement`` → ``graph`` → ``attribution`` → ``intervention`` → ``view`` → ``training`` → ``commands`` →
``cli`` (enforced by import-linter; see ``docs/architecture.md``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_PUBLIC = {
    "Model": "jcircuits.models",
    "Tokenizer": "jcircuits.models",
    "load_model": "jcircuits.models",
    "TranscoderSet": "jcircuits.transcoders",
    "load_transcoders": "jcircuits.transcoders",
    "default_model": "jcircuits.default",
    "default_transcoders": "jcircuits.default",
    "default_features": "jcircuits.default",
    "FeatureStore": "jcircuits.features",
    "build_dashboards": "jcircuits.features",
    "attribute": "jcircuits.attribution",
    "attribute_batch": "jcircuits.attribution",
    "Graph": "jcircuits.graph",
    "prune_graph": "jcircuits.graph",
    "feature_intervention": "jcircuits.intervention",
    "generate": "jcircuits.intervention",
    "export_graph_json": "jcircuits.view",
    "show_graph": "jcircuits.view",
    "render": "jcircuits.view",
    "serve": "jcircuits.view",
}

__all__ = [
    "FeatureStore",
    "Graph",
    "Model",
    "Tokenizer",
    "TranscoderSet",
    "attribute",
    "attribute_batch",
    "build_dashboards",
    "default_features",
    "default_model",
    "default_transcoders",
    "export_graph_json",
    "feature_intervention",
    "generate",
    "load_model",
    "load_transcoders",
    "prune_graph",
    "render",
    "serve",
    "show_graph",
]

if TYPE_CHECKING:  # for readers and type checkers; at run time the names resolve lazily below
    from jcircuits.attribution import attribute, attribute_batch
    from jcircuits.default import default_features, default_model, default_transcoders
    from jcircuits.features import FeatureStore, build_dashboards
    from jcircuits.graph import Graph, prune_graph
    from jcircuits.intervention import feature_intervention, generate
    from jcircuits.models import Model, Tokenizer, load_model
    from jcircuits.transcoders import TranscoderSet, load_transcoders
    from jcircuits.view import export_graph_json, render, serve, show_graph


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'jcircuits' has no attribute {name!r}")
