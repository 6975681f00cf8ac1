"""The local graph viewer: a small HTTP server (`server`) and its static page (``static/``)."""

from jcircuits.viewer.server import DEFAULT_PORT, make_server, serve

__all__ = ["make_server", "serve", "DEFAULT_PORT"]
