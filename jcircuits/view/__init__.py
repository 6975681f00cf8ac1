"""Seeing graphs: the graph JSON of circuit-tracer / Neuronpedia (``export``), static pictures (``render``), and
the local viewer, a small HTTP server with its static page (``server``, ``static/``). Views know only graphs."""

from jcircuits.view.export import ExportResult, export_graph_json, graph_to_json, validate_graph_json
from jcircuits.view.render import GraphPicture, render, show_graph
from jcircuits.view.server import DEFAULT_PORT, make_server, serve

__all__ = [
    "ExportResult",
    "export_graph_json",
    "graph_to_json",
    "validate_graph_json",
    "GraphPicture",
    "render",
    "show_graph",
    "DEFAULT_PORT",
    "make_server",
    "serve",
]
