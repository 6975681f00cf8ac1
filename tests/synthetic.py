"""A synthetic graph document in the export schema (no attribution needed), shared by the server, browser and
fuzz tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from jcircuits.view.export import add_graph_metadata, validate_graph_json, write_json_atomic

__all__ = ["synthetic_graph", "write_graph"]


def synthetic_graph(
    slug: str = "syn",
    n_layers: int = 4,
    n_pos: int = 6,
    n_features: int = 40,
    n_links: int = 300,
    seed: int = 0,
) -> dict:
    """A graph document in the export schema with random features and acyclic links (lower row -> higher row).

    Rows: tokens (0), layers 1..L (features and errors), logits (L + 1), as the viewer lays them out. Shared by
    the browser tests (which need a 5,000-node / 100,000-link graph without running attribution)."""
    rng = np.random.default_rng(seed)
    L, T = n_layers, n_pos
    nodes, rows = [], []

    def add(node_id, feature, layer, pos, kind, row, **extra):
        node = {
            "node_id": node_id, "feature": int(feature), "layer": layer, "ctx_idx": int(pos), "feature_type": kind,
            "token_prob": 0.0, "is_target_logit": False, "run_idx": 0, "reverse_ctx_idx": 0, "jsNodeId": node_id,
            "clerp": "", "influence": None, "activation": None,
        }  # fmt: skip
        node.update(extra)
        nodes.append(node)
        rows.append(row)

    seen = set()
    while len(seen) < n_features:
        layer, pos, feat = int(rng.integers(L)), int(rng.integers(1, T)), int(rng.integers(10_000))
        if (layer, pos, feat) in seen:
            continue
        seen.add((layer, pos, feat))
        add(f"{layer}_{feat}_{pos}", feat, str(layer), pos, "cross layer transcoder", layer + 1,
            jsNodeId=f"{layer}_{feat}-0", activation=float(rng.gamma(2.0)))  # fmt: skip
    for layer in range(L):
        for pos in range(T):
            add(f"{layer}_-1_{pos}", -1, str(layer), pos, "mlp reconstruction error", layer + 1,
                jsNodeId=f"{layer}_-1-{pos}")  # fmt: skip
    tokens = [f"w{p}" for p in range(T)]
    for pos in range(T):
        add(f"E_{100 + pos}_{pos}", pos, "E", pos, "embedding", 0, jsNodeId=f"E_{100 + pos}-{pos}")
    for k, p in enumerate([0.5, 0.2, 0.1, 0.05, 0.03]):
        add(f"{L + 1}_{500 + k}_{T - 1}", 500 + k, str(L + 1), T - 1, "logit", L + 1,
            jsNodeId=f"L_{500 + k}-{T - 1}", token_prob=p, is_target_logit=k == 0,
            clerp=f'Output "t{k}" (p={p:.3f})')  # fmt: skip
    inner = [i for i, n in enumerate(nodes) if n["feature_type"] not in ("embedding", "logit")]
    ranks = rng.permutation(len(inner))
    for r, i in zip(ranks, inner, strict=True):
        nodes[i]["influence"] = float((r + 1) / len(inner))
    for i, n in enumerate(nodes):
        if n["feature_type"] == "embedding":
            nodes[i]["influence"] = float(rng.random())
    row = np.asarray(rows)
    pairs: set[tuple[int, int]] = set()
    while len(pairs) < n_links:
        s = rng.integers(len(nodes), size=2 * n_links)
        t = rng.integers(len(nodes), size=2 * n_links)
        ok = row[s] < row[t]
        for a, b in zip(s[ok].tolist(), t[ok].tolist(), strict=True):
            pairs.add((a, b))
            if len(pairs) == n_links:
                break
    weights = rng.standard_normal(n_links) * np.exp(rng.normal(0, 1, n_links))
    links = [
        {"source": nodes[a]["node_id"], "target": nodes[b]["node_id"], "weight": float(w)}
        for (a, b), w in zip(sorted(pairs), weights, strict=True)
    ]
    doc = {
        "metadata": {
            "slug": slug, "scan": "synthetic", "transcoder_list": [], "prompt_tokens": tokens,
            "prompt": " ".join(tokens), "node_threshold": 0.8, "schema_version": 1,
        },
        "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""},
        "nodes": nodes,
        "links": links,
    }  # fmt: skip
    validate_graph_json(doc)
    return doc


def write_graph(directory: Path, doc: dict) -> Path:
    path = directory / f"{doc['metadata']['slug']}.json"
    write_json_atomic(path, doc)
    add_graph_metadata(doc["metadata"], directory)
    return path
