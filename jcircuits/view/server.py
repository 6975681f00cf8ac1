"""The local viewer's HTTP server: the viewer's static files, the graphs of one directory, and annotation saves.

Binds 127.0.0.1 only (the viewer is for the person at this machine; saves write files). Routes:

- ``GET /`` and ``GET /static/<file>``: the viewer (``jcircuits/view/static``).
- ``GET /graphs/<name>.json``: a file of the graph directory, e.g. ``graph-metadata.json`` (an empty index
  ``{"graphs": []}`` when there is none) or ``<slug>.json``; gzip-encoded above 1 MB when the client accepts it
  (as circuit-tracer's server does). Only ``.json`` files directly under the directory; anything that resolves
  outside it (``..``, ``%2e%2e``, ``%2f``, backslashes, symlinks out) is refused with 403, a hidden name with 404.
- ``GET /features/info.json``: which feature dashboards this server has (``{"stores": [{"scan", "n_layers",
  "source"}]}``, empty without ``--features``).
- ``GET /features/<layer>/<index>.json[?scan=NAME]``: one feature's dashboard, read by byte range from a
  `jcircuits.features.FeatureStore`: ``{"layer", "index", "record", "label", "label_source"}`` (the record in
  circuit-tracer's feature model; the label a person's from ``labels.json`` or else the automatic one, computed
  from the record when the store ships none). ``scan`` picks the store whose dashboards were made for that
  transcoder set (the graph's ``metadata.scan``); with one store it is the default.
- ``POST /features/labels.json``: ``{"scan": NAME, "features": [[layer, index], …]}`` → ``{"labels":
  {"layer/index": text}, "kind": "plt" | "clt" | null}`` for the features that have a stored label (people's or
  automatic) and the transcoders' kind as the store records it (the graph JSON does not say); at most
  ``MAX_LABEL_REQUEST`` features a request. The viewer draws them beside nodes.
- ``GET /steer/info.json`` and ``POST /steer.json``: steering with the server's model, when it has one
  (`jcircuits.view.steer.Steerer`: body ``{"tokens", "scan", "edits": [{"layer", "position", "feature", "value" |
  "multiplier", "from_position"}], "generate", "top_k"}``, answer the top next tokens and a greedy continuation
  before and after; a 400 names a bad request, a 404 says the server has no model).
- ``POST /trace.json``: ``{"prompt", "slug"}`` → attribute the prompt on the server's model and write
  ``<slug>.json`` into the graph directory (a 409 when the slug is taken: a trace never overwrites).
- ``POST /graphs/<slug>.json``: save annotations, body ``{"qParams": {...}, "clerps": {node_id: label}}``
  (both optional). The server merges them into the file on disk, checks the result is still a graph
  (`jcircuits.view.export.validate_graph_json`) and replaces the file atomically under a lock; anything malformed
  gets a 400 with a JSON ``{"error": …}`` and the file is left untouched. Nodes and links are never taken from
  the client, so a save cannot lose or reorder them.

Every error is a JSON ``{"error": message}`` with a 4xx/5xx status; one bad request never stops the server.
"""

from __future__ import annotations

import fcntl
import gzip
import json
import logging
import os
import threading
import urllib.parse
from collections.abc import Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from jcircuits.features.format import FeatureStore
from jcircuits.features.labels import auto_label
from jcircuits.view import DEFAULT_PORT, HOST
from jcircuits.view.export import (
    INDEX_NAME,
    scan_name,
    validate_graph_json,
    validate_qparams,
    write_json_atomic,
)

__all__ = ["make_server", "serve", "pick_store", "STATIC_DIR", "DEFAULT_PORT", "HOST"]

STATIC_DIR = Path(__file__).resolve().parent / "static"
GZIP_ABOVE = 1024**2  # bytes, as circuit-tracer's local server
MAX_SAVE_BYTES = 64 * 1024**2
MAX_LABEL_CHARS = 1_000  # a node label (clerp) or supernode name
MAX_SUPERNODES = 1_000
MAX_QPARAMS_BYTES = 1024**2  # qParams as stored: labels and supernodes cannot grow a graph file without bound
MAX_LABEL_REQUEST = 20_000  # features whose labels one request may ask for (a 5k-node graph needs < 5k)
MAX_CONNECTIONS = 32  # requests served at once; more get a 503 at once instead of waiting
REQUEST_TIMEOUT_S = 10.0  # a client that sends nothing for this long is disconnected
_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".txt": "text/plain",
}
log = logging.getLogger("jcircuits.view")


class _HTTPError(Exception):
    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class _GraphServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # listen backlog: bursts of simultaneous saves are queued, not reset

    def __init__(self, address, graph_dir: Path, features: list[FeatureStore] = (), steer=None):
        self.graph_dir = graph_dir
        self.features = list(features)
        self.steer = steer  # a jcircuits.view.steer.Steerer, or None
        self.save_lock = threading.Lock()
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(address, _Handler)

    def process_request(self, request, client_address):
        """One thread per connection, at most ``MAX_CONNECTIONS`` at once: past that the connection gets a 503
        straight away, so slow clients cannot starve the others."""
        if not self.slots.acquire(blocking=False):
            try:
                body = json.dumps({"error": "server busy: too many connections; retry"}).encode()
                request.sendall(
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n"
                    + f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.server_address[1]}/"


def _resolve_in(base: Path, raw: str) -> Path:
    """The file ``raw`` (an already percent-decoded relative URL path) names inside ``base``, or _HTTPError.

    Decoding happens once, before this check, so ``%2e%2e`` / ``%2f`` arrive here as ``..`` / ``/`` and are
    refused; a doubly encoded ``%252e`` arrives as the literal name ``%2e``, which names no file."""
    if "\\" in raw or "\x00" in raw:
        raise _HTTPError(HTTPStatus.FORBIDDEN, "forbidden path")
    parts = raw.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise _HTTPError(HTTPStatus.FORBIDDEN, "forbidden path")
    if len(parts) != 1:
        raise _HTTPError(HTTPStatus.FORBIDDEN, "only files directly in the graph directory are served")
    if parts[0].startswith("."):
        raise _HTTPError(HTTPStatus.NOT_FOUND, "not found")
    path = (base / parts[0]).resolve()
    if not path.is_relative_to(base):  # e.g. a symlink pointing out of the directory
        raise _HTTPError(HTTPStatus.FORBIDDEN, "forbidden path")
    return path


class _Handler(BaseHTTPRequestHandler):
    server: _GraphServer
    server_version = "jcircuits-viewer"
    protocol_version = "HTTP/1.1"
    timeout = REQUEST_TIMEOUT_S  # socket timeout: an idle or short-bodied connection does not hold a thread

    def log_message(self, fmt, *args):  # route the default stderr access log through logging
        log.info("%s %s", self.address_string(), fmt % args)

    # ---- plumbing
    def _send(self, status: HTTPStatus, body: bytes, content_type: str, *, gzip_ok: bool = False) -> None:
        encoded = False
        if gzip_ok and len(body) > GZIP_ABOVE and "gzip" in self.headers.get("Accept-Encoding", ""):
            body, encoded = gzip.compress(body, compresslevel=3), True
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        if encoded:
            self.send_header("Content-Encoding", "gzip")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status: HTTPStatus, message: str) -> None:
        self._send(status, json.dumps({"error": message}).encode(), "application/json")

    def _route(self) -> tuple[str, str]:
        split = urllib.parse.urlsplit(self.path)
        path = split.path
        for prefix in ("/static/", "/graphs/", "/features/", "/steer/"):
            if path.startswith(prefix):
                return prefix.strip("/"), urllib.parse.unquote(path[len(prefix) :], errors="strict")
        return "", urllib.parse.unquote(path)

    def _guard(self, fn) -> None:
        try:
            fn()
        except _HTTPError as e:
            self._error(e.status, e.message)
        except UnicodeDecodeError:
            self._error(HTTPStatus.BAD_REQUEST, "malformed URL encoding")
        except (TimeoutError, ConnectionError):  # the client went quiet or away mid-request: drop it
            self.close_connection = True
        except Exception as e:  # keep serving; report what happened
            log.exception("request failed")
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"{type(e).__name__}: {e}")

    # ---- GET
    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._guard(self._get)

    def do_HEAD(self) -> None:  # noqa: N802
        self._guard(self._get)

    def _get(self) -> None:
        kind, rest = self._route()
        if kind == "" and rest in ("/", "/index.html"):
            kind, rest = "static", "index.html"
        if kind == "static":
            path = _resolve_in(STATIC_DIR, rest)
            if not path.is_file():
                raise _HTTPError(HTTPStatus.NOT_FOUND, f"no static file {rest!r}")
            ctype = _CONTENT_TYPES.get(path.suffix, "application/octet-stream")
            self._send(HTTPStatus.OK, path.read_bytes(), ctype)
            return
        if kind == "graphs":
            path = _resolve_in(self.server.graph_dir, rest)
            if path.suffix != ".json":
                raise _HTTPError(HTTPStatus.FORBIDDEN, "only .json graph files are served")
            if not path.is_file():
                if path.name == INDEX_NAME:
                    self._send(HTTPStatus.OK, b'{"graphs": []}', "application/json")
                    return
                raise _HTTPError(HTTPStatus.NOT_FOUND, f"no graph file {rest!r} in the graph directory")
            self._send(HTTPStatus.OK, path.read_bytes(), "application/json", gzip_ok=True)
            return
        if kind == "features":
            self._send_json(self._feature_get(rest))
            return
        if kind == "steer" and rest == "info.json":
            st = self.server.steer
            self._send_json(st.info() if st is not None else {"available": False})
            return
        raise _HTTPError(HTTPStatus.NOT_FOUND, f"no route {self.path!r}")

    def _send_json(self, obj: Any) -> None:
        self._send(HTTPStatus.OK, json.dumps(obj).encode(), "application/json", gzip_ok=True)

    def _query(self) -> dict[str, str]:
        return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query))

    # ---- feature dashboards
    def _feature_get(self, rest: str) -> dict:
        if rest == "info.json":
            return {"stores": [_store_info(s) for s in self.server.features]}
        parts = rest.removesuffix(".json").split("/")
        if not rest.endswith(".json") or len(parts) != 2 or not all(p.isdigit() for p in parts):
            raise _HTTPError(HTTPStatus.NOT_FOUND, "feature dashboards are at /features/<layer>/<index>.json")
        store = _pick_store(self.server.features, self._query().get("scan"))
        layer, index = int(parts[0]), int(parts[1])
        try:
            record = store.feature(layer, index)
        except ValueError as e:
            raise _HTTPError(HTTPStatus.NOT_FOUND, str(e)) from None
        label = store.label(layer, index) or {"label": auto_label(record), "label_source": "auto"}
        return {"layer": layer, "index": index, "record": record, **label}

    def _feature_labels(self, patch: Any) -> dict:
        if not isinstance(patch, dict) or not isinstance(patch.get("features"), list):
            raise _HTTPError(
                HTTPStatus.BAD_REQUEST, 'a label request is {"scan": NAME, "features": [[layer, index], …]}'
            )
        feats = patch["features"]
        if len(feats) > MAX_LABEL_REQUEST:
            raise _HTTPError(HTTPStatus.BAD_REQUEST, f"at most {MAX_LABEL_REQUEST} features a request")
        if not all(isinstance(f, list) and len(f) == 2 and all(type(x) is int for x in f) for f in feats):
            raise _HTTPError(HTTPStatus.BAD_REQUEST, "features must be [layer, index] pairs of integers")
        scan = patch.get("scan")
        store = _pick_store(self.server.features, scan if isinstance(scan, str) else None)
        labels = {}
        for layer, index in feats:
            lab = store.label(layer, index)
            if lab and lab.get("label"):
                labels[f"{layer}/{index}"] = lab["label"]
        return {"labels": labels, "kind": store.meta.get("kind")}

    # ---- POST (save annotations)
    def do_POST(self) -> None:  # noqa: N802
        self._guard(self._post)

    def _post(self) -> None:
        kind, rest = self._route()
        if kind == "features" and rest == "labels.json":
            self._send_json(self._feature_labels(_parse_json(self._body())))
            return
        if kind == "" and rest in ("/trace.json", "/steer.json"):
            self._send_json(self._with_model(rest.strip("/").removesuffix(".json")))
            return
        if kind != "graphs":
            raise _HTTPError(HTTPStatus.NOT_FOUND, "saves go to /graphs/<slug>.json")
        path = _resolve_in(self.server.graph_dir, rest)
        if path.suffix != ".json" or path.name == INDEX_NAME:
            raise _HTTPError(HTTPStatus.FORBIDDEN, "only <slug>.json graph files can be saved")
        patch = _parse_json(self._body())
        _check_patch(patch)
        with self.server.save_lock, _dir_lock(self.server.graph_dir):
            if not path.is_file():
                raise _HTTPError(HTTPStatus.NOT_FOUND, f"no graph file {rest!r} to save into")
            try:
                doc = json.loads(path.read_text(encoding="utf-8"))
                validate_graph_json(doc)
            except (UnicodeDecodeError, ValueError) as e:
                raise _HTTPError(
                    HTTPStatus.CONFLICT, f"{rest} on disk is not a valid graph ({e}); not saving into it"
                ) from None
            try:
                merged = _merge(doc, patch)
                validate_graph_json(merged)
            except ValueError as e:
                raise _HTTPError(HTTPStatus.BAD_REQUEST, str(e)) from None
            n = write_json_atomic(path, merged)
        self._send(HTTPStatus.OK, json.dumps({"saved": rest, "bytes": n}).encode(), "application/json")

    def _with_model(self, what: str) -> dict:
        """Answer a steer or trace request with the server's model: 404 without one, 409 for a taken graph name,
        400 for anything else the request gets wrong."""
        steer = self.server.steer
        if steer is None:
            raise _HTTPError(
                HTTPStatus.NOT_FOUND,
                f"this server has no model to {what} with (serve with --model and --transcoders)",
            )
        request = _parse_json(self._body())
        try:
            return steer.trace(request, self.server.graph_dir) if what == "trace" else steer.steer(request)
        except FileExistsError as e:
            raise _HTTPError(HTTPStatus.CONFLICT, str(e)) from None
        except (ValueError, TypeError) as e:
            raise _HTTPError(HTTPStatus.BAD_REQUEST, str(e)) from None

    def _body(self) -> bytes:
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise _HTTPError(HTTPStatus.LENGTH_REQUIRED, "Content-Length required") from None
        if length < 0:
            raise _HTTPError(HTTPStatus.BAD_REQUEST, "negative Content-Length")
        if length > MAX_SAVE_BYTES:
            raise _HTTPError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body over {MAX_SAVE_BYTES} bytes")
        body = self.rfile.read(length)
        if len(body) != length:
            raise _HTTPError(HTTPStatus.BAD_REQUEST, f"body ended after {len(body)} of {length} bytes")
        return body


def _store_info(store: FeatureStore) -> dict:
    return {
        "scan": scan_name(store.meta["scan"]) if store.meta.get("scan") else None,
        "kind": store.meta.get("kind"),
        "n_layers": store.n_layers,
        "source": str(store.root),
    }


def pick_store(stores: list[FeatureStore], scan: str | None) -> FeatureStore:
    """The store made for transcoder set ``scan`` (the graph's ``metadata.scan``; names compared as
    ``export.scan_name`` writes them, so a graph JSON's Neuronpedia-safe name finds its store). Failing that, a store that
    records no transcoder set (circuit-tracer's folders do not) stands in when it is the only such store, as
    does the only store when the graph names none (``"local"``): dashboards of another set are never shown.
    LookupError says what is missing."""
    if not stores:
        raise LookupError("no feature dashboards were given (--features DIR)")
    named = [s for s in stores if scan and s.meta.get("scan") and scan_name(s.meta["scan"]) == scan_name(scan)]
    if named:
        return named[0]
    anonymous = [s for s in stores if not s.meta.get("scan")]
    if len(anonymous) == 1:
        return anonymous[0]
    if len(stores) == 1 and scan in (None, "", "local"):
        return stores[0]
    have = [_store_info(s)["scan"] for s in stores]
    raise LookupError(
        f"no feature dashboards for transcoders {scan!r} (have {have}); give them with --features DIR"
    )


def _pick_store(stores: list[FeatureStore], scan: str | None) -> FeatureStore:
    try:
        return pick_store(stores, scan)
    except LookupError as e:
        raise _HTTPError(HTTPStatus.NOT_FOUND, str(e)) from None


class _dir_lock:  # noqa: N801 (used like a function)
    """An exclusive flock on the graph directory: saves from two servers on one directory serialise too."""

    def __init__(self, directory: Path):
        self.directory = directory

    def __enter__(self):
        self.fd = os.open(self.directory, os.O_RDONLY)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc):
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _parse_json(body: bytes) -> Any:
    """The save's JSON, or a 400: not UTF-8, not JSON, NaN/Infinity (not JSON numbers), or nested too deep."""
    try:
        return json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as e:
        raise _HTTPError(HTTPStatus.BAD_REQUEST, f"body is not JSON: {e}") from None
    except RecursionError:
        raise _HTTPError(HTTPStatus.BAD_REQUEST, "body is nested too deeply") from None


def _check_sizes(patch: dict) -> None:
    """Labels and supernodes are bounded, so repeated saves cannot grow a graph file without bound."""
    long = [k for k, v in patch.get("clerps", {}).items() if len(v) > MAX_LABEL_CHARS]
    if long:
        raise _HTTPError(HTTPStatus.BAD_REQUEST, f"labels over {MAX_LABEL_CHARS} characters: {long[:3]}")
    q = patch.get("qParams")
    if q is None:
        return
    if len(q["supernodes"]) > MAX_SUPERNODES:
        raise _HTTPError(HTTPStatus.BAD_REQUEST, f"more than {MAX_SUPERNODES} supernodes")
    if any(len(g[0]) > MAX_LABEL_CHARS for g in q["supernodes"]):
        raise _HTTPError(HTTPStatus.BAD_REQUEST, f"a supernode name is over {MAX_LABEL_CHARS} characters")
    if len(json.dumps(q)) > MAX_QPARAMS_BYTES:
        raise _HTTPError(HTTPStatus.BAD_REQUEST, f"qParams over {MAX_QPARAMS_BYTES} bytes")


def _check_patch(patch: Any) -> None:
    if not isinstance(patch, dict):
        raise _HTTPError(HTTPStatus.BAD_REQUEST, 'a save must be a JSON object {"qParams": …, "clerps": …}')
    unknown = sorted(set(patch) - {"qParams", "clerps"})
    if unknown:
        raise _HTTPError(HTTPStatus.BAD_REQUEST, f"unknown save field(s) {unknown}; allowed: qParams, clerps")
    try:
        if "qParams" in patch:
            validate_qparams(patch["qParams"])
    except ValueError as e:
        raise _HTTPError(HTTPStatus.BAD_REQUEST, str(e)) from None
    clerps = patch.get("clerps", {})
    if not isinstance(clerps, dict) or not all(isinstance(v, str) for v in clerps.values()):
        raise _HTTPError(HTTPStatus.BAD_REQUEST, "clerps must be an object {node_id: label string}")
    _check_sizes(patch)


def _merge(doc: dict, patch: dict) -> dict:
    """``doc`` with the patch's qParams and node labels; node ids must exist (ValueError names one that does
    not)."""
    ids = {n["node_id"]: i for i, n in enumerate(doc["nodes"])}
    clerps = patch.get("clerps", {})
    missing = [k for k in clerps if k not in ids]
    if missing:
        raise ValueError(f"clerps name node ids not in this graph: {missing[:5]}")
    if "qParams" in patch:
        q = patch["qParams"]
        unknown = [x for x in q["pinnedIds"] + [x for g in q["supernodes"] for x in g[1:]] if x not in ids]
        if unknown:
            raise ValueError(f"qParams names node ids not in this graph: {unknown[:5]}")
    nodes = list(doc["nodes"])
    for node_id, label in clerps.items():
        nodes[ids[node_id]] = {**nodes[ids[node_id]], "clerp": label}
    merged = {**doc, "nodes": nodes}
    if "qParams" in patch:
        merged["qParams"] = patch["qParams"]
    return merged


def make_server(
    graph_dir: str | os.PathLike,
    port: int = DEFAULT_PORT,
    *,
    features: Sequence[FeatureStore] = (),
    steer=None,
) -> _GraphServer:
    """A ready (not yet serving) server on 127.0.0.1:``port`` (0 = any free port) for ``graph_dir``, serving the
    dashboards of ``features`` (one `FeatureStore` per transcoder set) and, with ``steer`` (a
    `jcircuits.view.steer.Steerer`), steering with its model; call ``serve_forever()`` (in a thread for
    notebooks/tests) and ``shutdown()``/``server_close()`` to stop."""
    base = Path(graph_dir).expanduser()
    if not base.is_dir():
        raise FileNotFoundError(f"graph directory {base} does not exist (export a graph into it first)")
    try:
        return _GraphServer((HOST, int(port)), base.resolve(), features, steer)
    except OSError as e:
        raise OSError(f"cannot listen on {HOST}:{port}: {e.strerror or e}; try another --port") from e


def serve(
    graph_dir: str | os.PathLike,
    port: int = DEFAULT_PORT,
    *,
    slug: str | None = None,
    features: Sequence[FeatureStore] = (),
    steer=None,
) -> None:
    """Serve ``graph_dir`` (and the dashboards of ``features``) until Ctrl-C, printing the viewer's URL
    (``?graph=<slug>`` opens that graph)."""
    httpd = make_server(graph_dir, port, features=features, steer=steer)
    url = httpd.url + (f"?graph={urllib.parse.quote(slug)}" if slug else "")
    print(f"jcircuits viewer: {url}  (graphs from {httpd.graph_dir}; Ctrl-C stops)", flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()
