"""Seeing graphs: the graph JSON of circuit-tracer / Neuronpedia (``export``), static pictures (``render``), the
local viewer, a small HTTP server with its static page (``server``, ``static/``) that also serves feature
dashboards and, given a model, steering (``steer``), and the one-file read-only HTML of a graph (``share``).

Names load on first use, so the command line can read ``DEFAULT_PORT`` without importing JAX."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

DEFAULT_PORT = 8041  # the viewer's port on 127.0.0.1
HOST = "127.0.0.1"  # the only address the viewer listens on

_NAMES = {
    "ExportResult": "export",
    "export_graph_json": "export",
    "graph_to_json": "export",
    "validate_graph_json": "export",
    "GraphPicture": "render",
    "render": "render",
    "show_graph": "render",
    "make_server": "server",
    "serve": "server",
    "share_html": "share",
    "write_share_html": "share",
    "Steerer": "steer",
}
__all__ = [
    "DEFAULT_PORT",
    "HOST",
    "ExportResult",
    "export_graph_json",
    "graph_to_json",
    "validate_graph_json",
    "GraphPicture",
    "render",
    "show_graph",
    "make_server",
    "serve",
    "share_html",
    "write_share_html",
    "Steerer",
]

if TYPE_CHECKING:
    from jcircuits.view.export import ExportResult, export_graph_json, graph_to_json, validate_graph_json
    from jcircuits.view.render import GraphPicture, render, show_graph
    from jcircuits.view.server import make_server, serve
    from jcircuits.view.share import share_html, write_share_html
    from jcircuits.view.steer import Steerer


def __getattr__(name: str) -> Any:
    if name in _NAMES:
        value = getattr(importlib.import_module(f"jcircuits.view.{_NAMES[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'jcircuits.view' has no attribute {name!r}")
