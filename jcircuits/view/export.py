"""Graph JSON in the circuit-tracer / Neuronpedia schema, and the ``graph-metadata.json`` index beside it.

The document is ``{"metadata", "qParams", "nodes", "links"}`` with the fields circuit-tracer's frontend models
define (``circuit_tracer/frontend/graph_models.py``; see ``docs/algorithm.md``). Node ids, in node order:

- feature ``"{layer}_{feature}_{pos}"`` (``feature`` field = Cantor pairing of (layer, feature), ``jsNodeId``
  ``"{layer}_{feature}-0"``, type ``"cross layer transcoder"``, ``activation`` = its activation);
- error ``"{layer}_-1_{pos}"`` (``feature`` -1, ``jsNodeId`` ``"{layer}_-1-{pos}"``, type ``"mlp reconstruction
  error"``) — the ids of circuit-tracer after its fix; 0.5.0 wrote ``"0_{layer}_{pos}"`` / ``"{layer}_{pos}-0"``,
  which collide with feature ids;
- token ``"E_{token id}_{pos}"`` (``layer`` ``"E"``, ``feature`` = pos, type ``"embedding"``);
- logit ``"{L+1}_{token id}_{pos}"`` at its target position (``graph.logit_positions``; ``T-1`` by default;
  type ``"logit"``, ``token_prob``, ``is_target_logit`` on the first, clerp ``Output "tok" (p=0.123)``, or
  ``Output "tok" at 5 "is" (p=0.123)`` for a target read before the last position, no ``influence``).

``influence`` is the node's cumulative influence fraction at its rank (`prune_graph`'s ``cumulative_scores``).
``metadata.node_threshold`` is the view the viewer opens at; `export_graph_json` keeps nodes up to
``keep_threshold`` (default `VIEW_KEEP_THRESHOLD`, 0.95) so that moving the viewer's node slider above it adds
nodes (`shown_at_threshold` is the slider's rule; `view_document` the opening view). ``keep_threshold=None``
prunes at ``node_threshold`` itself, which is circuit-tracer's ``create_graph_files``.
Links are the kept edges ``{source, target, weight}`` in row-major (target, source) order; nodes that no kept
link touches are dropped, except tokens and logits. Large graphs are capped (``max_nodes``, ``max_links``:
the most influential nodes, then the highest-scoring edges are kept) and the counts are reported in the
returned `ExportResult`. Files are plain JSON (readable by circuit-tracer's and Neuronpedia's viewers); the
local server gzips responses above 1 MB on the wire, as circuit-tracer's server does.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jcircuits.graph import Graph, compute_edge_influence, prune_graph
from jcircuits_converters.files import apply_mode

__all__ = [
    "ExportResult",
    "graph_to_json",
    "export_graph_json",
    "add_graph_metadata",
    "validate_graph_json",
    "validate_qparams",
    "write_json_atomic",
    "write_text_atomic",
    "token_strings",
    "cantor_pairing",
    "DEFAULT_MAX_NODES",
    "DEFAULT_MAX_LINKS",
    "VIEW_KEEP_THRESHOLD",
    "shown_at_threshold",
    "view_document",
]

DEFAULT_MAX_NODES = 5_000
DEFAULT_MAX_LINKS = 100_000
# export_graph_json keeps nodes up to this cumulative influence (within the caps), above the default view
VIEW_KEEP_THRESHOLD = 0.95
SCHEMA_VERSION = 1
INDEX_NAME = "graph-metadata.json"
_FEATURE, _ERROR, _EMBED, _LOGIT = "cross layer transcoder", "mlp reconstruction error", "embedding", "logit"
# One lock per process for index/graph writes; `write_json_atomic` makes each write all-or-nothing on disk.
_WRITE_LOCK = threading.Lock()


def cantor_pairing(x: int, y: int) -> int:
    """A unique non-negative integer for a pair of non-negative integers (the schema's feature id)."""
    return (x + y) * (x + y + 1) // 2 + y


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """What `export_graph_json` wrote: the graph file, its size, and node/link counts before and after caps."""

    path: Path
    index_path: Path
    n_nodes: int
    n_links: int
    n_nodes_pruned: int  # after pruning and dropping unconnected nodes, before the cap
    n_links_pruned: int
    n_bytes: int

    @property
    def capped(self) -> bool:
        return self.n_nodes < self.n_nodes_pruned or self.n_links < self.n_links_pruned

    def summary(self) -> str:
        cap = (
            f" (capped from {self.n_nodes_pruned} nodes / {self.n_links_pruned} links)" if self.capped else ""
        )
        return (
            f"wrote {self.path}: {self.n_nodes} nodes, {self.n_links} links{cap}, {self.n_bytes / 1e6:.2f} MB"
        )


def token_strings(graph: Graph, tokenizer=None) -> list[str]:
    """One display string per prompt position: ``tokenizer.decode([id])`` when a tokenizer (anything with
    ``decode(list[int]) -> str``) is given, else ``graph.settings["token_strings"]`` when the graph recorded
    them (``jcircuits attribute`` does), else ``"#<id>"``."""
    ids = np.asarray(graph.input_tokens).tolist()
    if tokenizer is not None:
        return [tokenizer.decode([int(i)]) for i in ids]
    stored = graph.settings.get("token_strings") if isinstance(graph.settings, dict) else None
    if isinstance(stored, list) and len(stored) == len(ids) and all(isinstance(s, str) for s in stored):
        return list(stored)
    return [f"#{i}" for i in ids]


def scan_name(scan: str | None) -> str:
    """A transcoder set's name as the graph JSON carries it: Neuronpedia's upload takes only ``[a-zA-Z0-9_.-]`` in a
    scan, so every other run of characters (the ``/`` and ``@`` of a hub set named ``org/repo@revision``) becomes
    one ``-``; no name gives ``"local"``. Dashboards are matched to graphs by this name (``view.server``)."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", str(scan)).strip("-") if scan else ""
    return name or "local"


def _scan_fields(scan: str | list[str] | None) -> tuple[str, list[str]]:
    if isinstance(scan, list | tuple):
        names = [str(s) for s in scan]
        # circuit-tracer names a list of transcoders with Python's hash(), which changes per process; a content
        # hash keeps the name stable across runs.
        return "custom-" + hashlib.sha256("-".join(names).encode()).hexdigest()[:16], names
    return scan_name(scan), []


def _kept_edges(graph: Graph, pr, node_mask: np.ndarray, keep_zero_weight_links: bool):
    """The kept edges between kept nodes as ``(targets, sources, entries)`` in row-major order; ``entries``
    indexes a sparse graph's stored entries (None for a dense graph)."""
    if not graph.is_sparse:
        mask = np.asarray(pr.edge_mask) & node_mask[:, None] & node_mask[None, :]
        if not keep_zero_weight_links:
            mask &= np.asarray(graph.adjacency_matrix) != 0
        t, s = np.nonzero(mask)
        return t, s, None
    if keep_zero_weight_links:
        raise ValueError(
            "keep_zero_weight_links: a sparse graph stores no zero-weight entries; pass graph.to_dense() instead"
        )
    A = graph.adjacency_matrix
    rows = A.row_ids()
    entries = np.flatnonzero(pr.edge_mask.data & node_mask[rows] & node_mask[A.indices] & (A.data != 0))
    return rows[entries], A.indices[entries], entries


def _edge_weights(graph: Graph, t: np.ndarray, s: np.ndarray, entries) -> np.ndarray:
    """The adjacency's weights at the edges ``(t, s)`` (float64)."""
    if entries is None:
        return np.asarray(graph.adjacency_matrix)[t, s].astype(np.float64)
    return graph.adjacency_matrix.data[entries].astype(np.float64)


def _edge_scores(graph: Graph, node_mask: np.ndarray, t, s, entries) -> np.ndarray:
    """`compute_edge_influence` of the adjacency restricted to the kept nodes, at the edges ``(t, s)``."""
    if entries is None:
        keep = node_mask[:, None] & node_mask[None, :]
        pruned = np.where(keep, np.asarray(graph.adjacency_matrix), 0.0)
        return np.asarray(compute_edge_influence(pruned, graph.logit_weights()))[t, s]
    A = graph.adjacency_matrix
    pruned = A.with_data(np.where(node_mask[A.row_ids()] & node_mask[A.indices], A.data, np.float32(0)))
    return compute_edge_influence(pruned, np.asarray(graph.logit_weights())).data[entries]


def _cap(graph: Graph, node_mask, edges, cumulative, max_nodes, max_links):
    """Apply the node and link caps to the pruned node mask (numpy bool [N]) and kept edges ``(t, s, entries)``."""
    t, s, entries = edges
    n = node_mask.shape[0]
    always = np.zeros(n, bool)
    always[graph.token_slice] = True
    always[graph.logit_slice] = True
    if max_nodes is not None and node_mask.sum() > max_nodes:
        budget = max(max_nodes - int(always.sum()), 0)
        candidates = np.flatnonzero(node_mask & ~always)
        # lowest cumulative fraction = highest influence rank; ties by node index (stable sort)
        keep = candidates[np.argsort(cumulative[candidates], kind="stable")[:budget]]
        node_mask = always.copy()
        node_mask[keep] = True
        on = node_mask[t] & node_mask[s]
        t, s, entries = t[on], s[on], None if entries is None else entries[on]
    if max_links is not None and len(t) > max_links:
        scores = _edge_scores(graph, node_mask, t, s, entries)
        order = np.sort(np.lexsort((s, t, -scores))[:max_links])  # best scores; ties in node order
        t, s, entries = t[order], s[order], None if entries is None else entries[order]
    return node_mask, (t, s, entries)


def graph_to_json(
    graph: Graph,
    slug: str,
    node_threshold: float = 0.8,
    edge_threshold: float = 0.98,
    *,
    tokenizer=None,
    scan: str | Sequence[str] | None = None,
    max_nodes: int | None = DEFAULT_MAX_NODES,
    max_links: int | None = DEFAULT_MAX_LINKS,
    keep_zero_weight_links: bool = False,
    keep_threshold: float | None = None,
) -> tuple[dict[str, Any], tuple[int, int]]:
    """The pruned graph as a schema dict, and the (nodes, links) counts before the caps.

    Prunes with `prune_graph(graph, node_threshold, edge_threshold)`, builds one node per kept node (types and
    ids in the module docstring) and one link per kept edge, weight = ``adjacency_matrix[target, source]``.
    ``scan`` overrides ``graph.scan`` (a list names a custom transcoder set, as in circuit-tracer).

    Edges of weight exactly 0 are not links. circuit-tracer writes them when its edge threshold resolves to a
    score of 0 (thresholds near 1, or graphs where little reaches the logits): then every zero entry between
    kept nodes, self-pairs included, becomes a "link" — up to N² of them. ``keep_zero_weight_links=True``
    reproduces that (dense graphs only: a sparse graph stores no zero entries). A sparse graph
    (`SparseAdjacency`) is pruned and exported without a dense ``[N, N]`` array.

    ``keep_threshold`` (≥ ``node_threshold``) prunes at that cumulative influence instead, keeping more nodes
    than the default view ``node_threshold`` (still written as ``metadata.node_threshold``) for the viewer's
    node slider; None prunes at ``node_threshold``.
    """
    check_slug(slug)
    if not 0 <= node_threshold <= 1:
        raise ValueError(f"node_threshold must be between 0.0 and 1.0, got {node_threshold}")
    if keep_threshold is not None and not node_threshold <= keep_threshold <= 1:
        raise ValueError(
            f"keep_threshold={keep_threshold} must lie between node_threshold={node_threshold} and 1 (it keeps "
            "nodes above the default view for the viewer's slider); pass None to prune at node_threshold"
        )
    if max_nodes is not None and max_nodes < graph.n_pos + graph.n_logits:
        raise ValueError(
            f"max_nodes={max_nodes} is below the {graph.n_pos + graph.n_logits} token and logit nodes that are "
            "always kept; raise it (or pass None for no cap)"
        )
    values = graph.adjacency_matrix.data if graph.is_sparse else np.asarray(graph.adjacency_matrix)
    bad = int(np.count_nonzero(~np.isfinite(values)))
    if bad:
        raise ValueError(
            f"the graph has {bad} non-finite edge weights (NaN/Inf): it was computed from non-finite weights or "
            "activations; check the model and transcoder files"
        )
    pr = prune_graph(graph, node_threshold if keep_threshold is None else keep_threshold, edge_threshold)
    node_mask = np.asarray(pr.node_mask)
    edges = _kept_edges(graph, pr, node_mask, keep_zero_weight_links)
    cumulative = np.asarray(pr.cumulative_scores, np.float64)
    n_before = (_connected(graph, node_mask, edges).sum(), len(edges[0]))
    node_mask, edges = _cap(graph, node_mask, edges, cumulative, max_nodes, max_links)
    node_mask = _connected(graph, node_mask, edges)

    S, L, T = graph.n_selected, graph.n_layers, graph.n_pos
    af = np.asarray(graph.active_features)
    sel = np.asarray(graph.selected_features)
    acts = np.asarray(graph.activation_values, np.float64)
    toks = np.asarray(graph.input_tokens).tolist()
    logit_ids = np.asarray(graph.logit_token_ids).tolist()
    probs = np.asarray(graph.logit_probabilities, np.float64).tolist()
    logit_pos = np.asarray(graph.logit_positions).tolist()
    prompt_tokens = token_strings(graph, tokenizer)
    err0, tok0, logit0 = graph.error_slice.start, graph.token_slice.start, graph.logit_slice.start

    ids: dict[int, str] = {}
    nodes: list[dict[str, Any]] = []
    for i in np.flatnonzero(node_mask).tolist():
        infl = (
            float(cumulative[i]) if np.isfinite(cumulative[i]) else None
        )  # 0/0 when nothing reaches a logit
        if i < S:
            layer, pos, feat = (int(x) for x in af[sel[i]])
            node = _node(f"{layer}_{feat}_{pos}", cantor_pairing(layer, feat), str(layer), pos, _FEATURE)
            node.update(jsNodeId=f"{layer}_{feat}-0", influence=infl, activation=float(acts[sel[i]]))
        elif i < tok0:
            layer, pos = divmod(i - err0, T)
            node = _node(f"{layer}_-1_{pos}", -1, str(layer), pos, _ERROR)
            node.update(jsNodeId=f"{layer}_-1-{pos}", influence=infl)
        elif i < logit0:
            pos = i - tok0
            node = _node(f"E_{toks[pos]}_{pos}", pos, "E", pos, _EMBED)
            node.update(jsNodeId=f"E_{toks[pos]}-{pos}", influence=infl)
        else:
            k = i - logit0
            vid, p, pos = int(logit_ids[k]), float(probs[k]), int(logit_pos[k])
            node = _node(f"{L + 1}_{vid}_{pos}", vid, str(L + 1), pos, _LOGIT)
            where = "" if pos == T - 1 else f" at {pos} {json.dumps(prompt_tokens[pos], ensure_ascii=False)}"
            node.update(
                token_prob=p,
                is_target_logit=k == 0,
                jsNodeId=f"L_{vid}-{pos}",
                clerp=f'Output "{graph.logit_labels[k]}"{where} (p={p:.3f})',
            )
        ids[i] = node["node_id"]
        nodes.append(node)

    t_idx, s_idx, entries = edges
    weights = _edge_weights(graph, t_idx, s_idx, entries)
    if not np.all(np.isfinite(weights)):
        raise ValueError(
            "the graph's adjacency matrix has NaN/inf entries on kept edges (overflow in attribution? try "
            "dtype float32); JSON cannot hold them"
        )
    weights = weights.tolist()
    links = [
        {"source": ids[s], "target": ids[t], "weight": w}
        for t, s, w in zip(t_idx.tolist(), s_idx.tolist(), weights, strict=True)
    ]
    scan_name, transcoder_list = _scan_fields(scan if scan is not None else graph.scan)
    doc = {
        "metadata": {
            "slug": slug,
            "scan": scan_name,
            "transcoder_list": transcoder_list,
            "prompt_tokens": prompt_tokens,
            "prompt": graph.input_string,
            "node_threshold": float(node_threshold),
            "schema_version": SCHEMA_VERSION,
        },
        "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""},
        "nodes": nodes,
        "links": links,
    }
    return doc, (int(n_before[0]), int(n_before[1]))


def _node(node_id: str, feature: int, layer: str, ctx_idx: int, feature_type: str) -> dict[str, Any]:
    # every schema field, with the schema's defaults; callers fill in the type-specific ones
    return {
        "node_id": node_id,
        "feature": int(feature),
        "layer": layer,
        "ctx_idx": int(ctx_idx),
        "feature_type": feature_type,
        "token_prob": 0.0,
        "is_target_logit": False,
        "run_idx": 0,
        "reverse_ctx_idx": 0,
        "jsNodeId": node_id,
        "clerp": "",
        "influence": None,
        "activation": None,
    }


def _connected(graph: Graph, node_mask: np.ndarray, edges) -> np.ndarray:
    """Nodes touched by a kept edge ``(t, s, _)``, plus every token and logit node (the reference drops the
    rest)."""
    touched = np.zeros(node_mask.shape[0], bool)
    touched[edges[0]] = True
    touched[edges[1]] = True
    keep = node_mask & touched
    keep[graph.token_slice] = node_mask[graph.token_slice]
    keep[graph.logit_slice] = node_mask[graph.logit_slice]
    return keep


def check_slug(slug: str) -> None:
    if (
        not isinstance(slug, str)
        or not slug
        or slug.startswith(".")
        or not all(c.isascii() and (c.isalnum() or c in "-_.") for c in slug)
    ):
        raise ValueError(
            f"slug {slug!r} must be a non-empty file name of ASCII letters, digits, '-', '_' or '.' (not starting "
            "with '.', as Neuronpedia's upload requires); it names <slug>.json"
        )


def write_text_atomic(path: str | os.PathLike, data: str) -> int:
    """Write ``data`` (UTF-8) to a temporary file beside ``path`` and ``os.replace`` it in: readers see the old
    file or the new one, never a partial write. Returns the number of bytes written."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(data)
        apply_mode(tmp, path)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return len(data.encode())


def write_json_atomic(path: str | os.PathLike, obj: Any, *, indent: int | None = None) -> int:
    """Write ``obj`` as JSON atomically (`write_text_atomic`). Returns the number of bytes written."""
    data = json.dumps(obj, indent=indent, allow_nan=False, separators=None if indent else (",", ":"))
    return write_text_atomic(path, data)


def add_graph_metadata(metadata: dict[str, Any], out_dir: str | os.PathLike) -> Path:
    """Add (or replace, by slug) one graph's metadata in ``out_dir/graph-metadata.json`` = ``{"graphs": […]}``."""
    index = Path(out_dir) / INDEX_NAME
    with _WRITE_LOCK:
        graphs: list[dict[str, Any]] = []
        if index.exists():
            try:
                data = json.loads(index.read_text(encoding="utf-8"))
                graphs = list(data["graphs"])
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(
                    f"{index} is not a graph index ({{'graphs': [...]}}): {e}; delete it to rebuild"
                ) from e
        graphs = [g for g in graphs if not (isinstance(g, dict) and g.get("slug") == metadata["slug"])]
        graphs.append(metadata)
        write_json_atomic(index, {"graphs": graphs}, indent=2)
    return index


def export_graph_json(
    graph: Graph,
    slug: str,
    out_dir: str | os.PathLike,
    node_threshold: float = 0.8,
    edge_threshold: float = 0.98,
    *,
    tokenizer=None,
    scan: str | Sequence[str] | None = None,
    max_nodes: int | None = DEFAULT_MAX_NODES,
    max_links: int | None = DEFAULT_MAX_LINKS,
    keep_zero_weight_links: bool = False,
    keep_threshold: float | None = VIEW_KEEP_THRESHOLD,
) -> ExportResult:
    """Prune ``graph`` and write ``out_dir/<slug>.json`` (schema in the module docstring) plus its entry in
    ``out_dir/graph-metadata.json``. Caps: at most ``max_nodes`` nodes (tokens and logits always kept, then by
    influence) and ``max_links`` links (by edge influence score); ``None`` disables a cap. Nodes are kept up to
    ``keep_threshold`` cumulative influence (default 0.95, at least ``node_threshold``), so the viewer, which
    opens at ``node_threshold``, can show more; ``keep_threshold=None`` writes exactly circuit-tracer's file.
    Other arguments as in `graph_to_json`."""
    doc, (n_nodes_pruned, n_links_pruned) = graph_to_json(
        graph,
        slug,
        node_threshold,
        edge_threshold,
        tokenizer=tokenizer,
        scan=scan,
        max_nodes=max_nodes,
        max_links=max_links,
        keep_zero_weight_links=keep_zero_weight_links,
        keep_threshold=None if keep_threshold is None else max(keep_threshold, node_threshold),
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{slug}.json"
    with _WRITE_LOCK:
        n_bytes = write_json_atomic(path, doc)
    index = add_graph_metadata(doc["metadata"], out)
    return ExportResult(
        path=path,
        index_path=index,
        n_nodes=len(doc["nodes"]),
        n_links=len(doc["links"]),
        n_nodes_pruned=n_nodes_pruned,
        n_links_pruned=n_links_pruned,
        n_bytes=n_bytes,
    )


def shown_at_threshold(doc: dict[str, Any], node_threshold: float) -> list[bool]:
    """Which of ``doc["nodes"]`` the viewer's node slider shows at ``node_threshold``, one bool per node.

    The rule of `prune_graph`'s node step, on the influences the file holds: the cut is the smallest node
    ``influence`` (cumulative fraction) that reaches ``node_threshold`` (compared in float32, as the pruning
    does), and nodes up to the cut are shown — so a file pruned at t shows every node at t, and a file kept to
    0.95 shows at 0.8 the nodes a 0.8 pruning keeps. Tokens, logits and nodes without an influence are always
    shown; with no influence reaching the threshold, all are."""
    t = float(np.float32(node_threshold))
    infl = [n.get("influence") for n in doc["nodes"]]
    reaching = [v for v in infl if v is not None and v >= t]
    cut = min(reaching) if reaching else math.inf
    return [
        n["feature_type"] in (_EMBED, _LOGIT) or v is None or v <= cut
        for n, v in zip(doc["nodes"], infl, strict=True)
    ]


def view_document(doc: dict[str, Any], node_threshold: float | None = None) -> dict[str, Any]:
    """``doc`` as the viewer opens it: at ``node_threshold`` (default ``metadata.node_threshold``, else 0.8),
    the nodes `shown_at_threshold` hides are dropped with their links, then every feature or error node left
    without a link (tokens and logits stay). A document pruned at its own threshold comes back unchanged."""
    if node_threshold is None:
        t = doc["metadata"].get("node_threshold")
        node_threshold = float(t) if _is(t, (int, float)) and 0 <= t <= 1 else 0.8
    shown = shown_at_threshold(doc, node_threshold)
    ids = {n["node_id"] for n, keep in zip(doc["nodes"], shown, strict=True) if keep}
    links = [e for e in doc["links"] if e["source"] in ids and e["target"] in ids]
    touched = {e[k] for e in links for k in ("source", "target")}
    nodes = [
        n for n in doc["nodes"] if n["node_id"] in ids and (n["node_id"] in touched or n["feature_type"] in (_EMBED, _LOGIT))
    ]
    return {**doc, "nodes": nodes, "links": links}


# ----------------------------------------------------------------------------------------------------
# Validation (what the server accepts and what a graph file must look like)

_NODE_FIELDS: dict[str, tuple[type, ...]] = {
    "node_id": (str,),
    "feature": (int,),
    "layer": (str,),
    "ctx_idx": (int,),
    "feature_type": (str,),
}
_NODE_OPTIONAL: dict[str, tuple[type, ...]] = {
    "token_prob": (int, float),
    "is_target_logit": (bool,),
    "run_idx": (int,),
    "reverse_ctx_idx": (int,),
    "jsNodeId": (str,),
    "clerp": (str,),
    "influence": (int, float, type(None)),
    "activation": (int, float, type(None)),
}
_META_FIELDS: dict[str, tuple[type, ...]] = {
    "slug": (str,),
    "scan": (str,),
    "transcoder_list": (list,),
    "prompt_tokens": (list,),
    "prompt": (str,),
}


MAX_LAYERS = 1_000  # no model has more; a bound keeps a crafted "layer" from sizing a picture


def _check_node_place(i: int, n: dict[str, Any], n_pos: int) -> None:
    """A node's position and layer lie inside the graph: ``0 ≤ ctx_idx < len(prompt_tokens)``, ``layer`` ``"E"``
    for embeddings and a whole number ``0 ≤ layer ≤ MAX_LAYERS`` otherwise; numbers are finite."""
    if not 0 <= n["ctx_idx"] < max(n_pos, 1):
        raise ValueError(
            f"nodes[{i}].ctx_idx {n['ctx_idx']} is outside the prompt's {n_pos} positions (metadata.prompt_tokens)"
        )
    layer = n["layer"]
    if n["feature_type"] == "embedding":
        if layer != "E":
            raise ValueError(f"nodes[{i}] is an embedding, so its layer must be 'E', got {layer!r}")
    elif not (layer.isdigit() and int(layer) <= MAX_LAYERS):
        raise ValueError(f"nodes[{i}].layer must be a whole number 0..{MAX_LAYERS} as a string, got {layer[:20]!r}")
    for key in ("token_prob", "influence", "activation"):
        v = n.get(key)
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"nodes[{i}].{key} must be finite, got {v}")


def _is(value: Any, types: tuple[type, ...]) -> bool:
    # bool is an int subclass in Python; the schema keeps them apart
    if isinstance(value, bool) and bool not in types:
        return False
    return isinstance(value, types)


def validate_qparams(q: Any) -> None:
    """Raise ValueError unless ``q`` is a qParams object: pinnedIds [str], supernodes [[label, *node ids]],
    linkType, clickedId, sg_pos strings."""
    if not isinstance(q, dict):
        raise ValueError("qParams must be an object")
    pinned = q.get("pinnedIds")
    if not isinstance(pinned, list) or not all(isinstance(x, str) for x in pinned):
        raise ValueError("qParams.pinnedIds must be a list of node id strings")
    sn = q.get("supernodes")
    if not isinstance(sn, list) or not all(
        isinstance(g, list) and g and all(isinstance(x, str) for x in g) for g in sn
    ):
        raise ValueError("qParams.supernodes must be a list of [label, node_id, …] string lists")
    for key in ("linkType", "clickedId", "sg_pos"):
        if not isinstance(q.get(key), str):
            raise ValueError(f"qParams.{key} must be a string")


def validate_graph_json(doc: Any) -> None:
    """Raise ValueError naming the first problem unless ``doc`` is a graph document: ``metadata`` with the
    schema's fields, ``qParams`` (optional), ``nodes`` with the required node fields and unique ids, ``links``
    whose ``source``/``target`` name nodes and whose ``weight`` is a number."""
    if not isinstance(doc, dict):
        raise ValueError("a graph must be a JSON object with metadata, nodes and links")
    for key in ("metadata", "nodes", "links"):
        if key not in doc:
            raise ValueError(f"not a graph: no '{key}'")
    meta = doc["metadata"]
    if not isinstance(meta, dict):
        raise ValueError("metadata must be an object")
    for key, types in _META_FIELDS.items():
        if not _is(meta.get(key), types):
            raise ValueError(f"metadata.{key} must be {'/'.join(t.__name__ for t in types)}")
    if not all(isinstance(t, str) for t in meta["prompt_tokens"]):
        raise ValueError("metadata.prompt_tokens must be a list of strings")
    if "qParams" in doc:
        validate_qparams(doc["qParams"])
    nodes, links = doc["nodes"], doc["links"]
    if not isinstance(nodes, list) or not isinstance(links, list):
        raise ValueError("nodes and links must be lists")
    ids: set[str] = set()
    for i, n in enumerate(nodes):
        if not isinstance(n, dict):
            raise ValueError(f"nodes[{i}] must be an object")
        for key, types in _NODE_FIELDS.items():
            if not _is(n.get(key), types):
                raise ValueError(f"nodes[{i}].{key} must be {'/'.join(t.__name__ for t in types)}")
        for key, types in _NODE_OPTIONAL.items():
            if key in n and not _is(n[key], types):
                raise ValueError(f"nodes[{i}].{key} has the wrong type")
        if n["node_id"] in ids:
            raise ValueError(f"duplicate node_id {n['node_id']!r}")
        ids.add(n["node_id"])
        _check_node_place(i, n, len(meta["prompt_tokens"]))
    for i, e in enumerate(links):
        if not isinstance(e, dict):
            raise ValueError(f"links[{i}] must be an object")
        src, dst = e.get("source"), e.get("target")
        if not (isinstance(src, str) and isinstance(dst, str) and src in ids and dst in ids):
            raise ValueError(f"links[{i}] must join two existing node ids (source, target)")
        if not _is(e.get("weight"), (int, float)) or not math.isfinite(e["weight"]):
            raise ValueError(f"links[{i}].weight must be a finite number")
