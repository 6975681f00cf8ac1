"""Graph JSON export (schema, ids, caps, index), parity with circuit-tracer's create_graph_files, and pictures."""

from __future__ import annotations

import json
import os
import re
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from random_demo import demo_model, demo_transcoders
from synthetic import synthetic_graph

from jcircuits.attribution import attribute
from jcircuits.cli import main as cli_main
from jcircuits.graph import Graph, compute_edge_influence, compute_node_influence, find_threshold, prune_graph
from jcircuits.view.export import (
    VIEW_KEEP_THRESHOLD,
    cantor_pairing,
    export_graph_json,
    graph_to_json,
    shown_at_threshold,
    token_strings,
    validate_graph_json,
    view_document,
)
from jcircuits.view.render import compute_layout, render, render_png, render_svg, show_graph

ROOT = Path(__file__).resolve().parents[2]
EXPORT_REF = ROOT / "tests" / "reference" / "export_ref.py"
PROMPT = "the capital of texas is austin and the capital of ohio is"

# circuit-tracer's frontend models (graph_models.py): every node carries every field
NODE_FIELDS = {
    "node_id", "feature", "layer", "ctx_idx", "feature_type", "token_prob", "is_target_logit", "run_idx",
    "reverse_ctx_idx", "jsNodeId", "clerp", "influence", "activation",
}  # fmt: skip
META_FIELDS = {
    "slug",
    "scan",
    "transcoder_list",
    "prompt_tokens",
    "prompt",
    "node_threshold",
    "schema_version",
}
QPARAM_FIELDS = {"pinnedIds", "supernodes", "linkType", "clickedId", "sg_pos"}
TYPES = {"cross layer transcoder", "mlp reconstruction error", "embedding", "logit"}


@pytest.fixture(scope="module")
def demo():
    model = demo_model()
    graph = attribute(model, demo_transcoders(model), PROMPT)
    return model, graph


def _by_type(doc):
    out: dict[str, list[dict]] = {}
    for n in doc["nodes"]:
        out.setdefault(n["feature_type"], []).append(n)
    return out


def test_export_has_every_schema_field_for_every_node_type(demo, tmp_path):
    model, graph = demo
    res = export_graph_json(graph, "demo", tmp_path, tokenizer=model.tokenizer)
    doc = json.loads(res.path.read_text())
    validate_graph_json(doc)
    assert set(doc) == {"metadata", "qParams", "nodes", "links"}
    assert set(doc["metadata"]) == META_FIELDS
    assert set(doc["qParams"]) == QPARAM_FIELDS
    assert doc["qParams"] == {
        "pinnedIds": [],
        "supernodes": [],
        "linkType": "both",
        "clickedId": "",
        "sg_pos": "",
    }
    by_type = _by_type(doc)
    assert set(by_type) == TYPES, "the demo graph should keep nodes of every type"
    for nodes in by_type.values():
        for n in nodes:
            assert set(n) == NODE_FIELDS
    for e in doc["links"]:
        assert set(e) == {"source", "target", "weight"}
    meta = doc["metadata"]
    assert meta["slug"] == "demo" and meta["schema_version"] == 1 and meta["node_threshold"] == 0.8
    assert meta["prompt_tokens"] == [model.tokenizer.decode([int(t)]) for t in graph.input_tokens]
    assert meta["prompt_tokens"][:3] == ["<bos>", "the", "capital"]
    assert meta["scan"] == graph.scan and meta["transcoder_list"] == []
    assert (res.n_nodes, res.n_links) == (len(doc["nodes"]), len(doc["links"])) and not res.capped
    index = json.loads((tmp_path / "graph-metadata.json").read_text())
    assert index == {"graphs": [meta]}


def test_export_ids_and_values_follow_the_graph(demo):
    model, graph = demo
    doc, _ = graph_to_json(graph, "g", tokenizer=model.tokenizer)
    pr = prune_graph(graph)
    node_mask = np.asarray(pr.node_mask)
    cumulative = np.asarray(pr.cumulative_scores)
    L, T, S = graph.n_layers, graph.n_pos, graph.n_selected
    af, sel = np.asarray(graph.active_features), np.asarray(graph.selected_features)
    by_id = {n["node_id"]: n for n in doc["nodes"]}
    index_of = {}
    for i in np.flatnonzero(node_mask):
        if i < S:
            layer, pos, feat = (int(x) for x in af[sel[i]])
            n = by_id.get(f"{layer}_{feat}_{pos}")
            if n is None:
                continue  # pruned as unconnected
            assert n["feature"] == cantor_pairing(layer, feat) and n["jsNodeId"] == f"{layer}_{feat}-0"
            assert n["layer"] == str(layer) and n["ctx_idx"] == pos
            assert n["activation"] == pytest.approx(float(graph.activation_values[sel[i]]), rel=1e-6)
        elif i < graph.token_slice.start:
            layer, pos = divmod(int(i) - S, T)
            n = by_id.get(f"{layer}_-1_{pos}")  # post-fix error id: feature slot -1
            if n is None:
                continue
            assert n["feature"] == -1 and n["jsNodeId"] == f"{layer}_-1-{pos}" and n["activation"] is None
        elif i < graph.logit_slice.start:
            pos = int(i) - graph.token_slice.start
            n = by_id[f"E_{int(graph.input_tokens[pos])}_{pos}"]  # tokens are always kept
            assert n["layer"] == "E" and n["feature"] == pos
        else:
            k = int(i) - graph.logit_slice.start
            vid, p = int(graph.logit_token_ids[k]), float(graph.logit_probabilities[k])
            n = by_id[f"{L + 1}_{vid}_{T - 1}"]
            assert n["is_target_logit"] == (k == 0) and n["token_prob"] == pytest.approx(p)
            assert n["clerp"] == f'Output "{graph.logit_labels[k]}" (p={p:.3f})' and n["influence"] is None
            index_of[n["node_id"]] = int(i)
            continue
        assert n["influence"] == pytest.approx(float(cumulative[i]), rel=1e-6)
        index_of[n["node_id"]] = int(i)
    assert set(index_of) == set(by_id), "every exported node is a kept node of the graph"
    edge_mask = np.asarray(pr.edge_mask)
    adj = np.asarray(graph.adjacency_matrix)
    for e in doc["links"]:
        t, s = index_of[e["target"]], index_of[e["source"]]
        assert edge_mask[t, s] and e["weight"] == float(adj[t, s])
    # every kept edge between exported nodes is a link
    kept = edge_mask[np.ix_(list(index_of.values()), list(index_of.values()))].sum()
    assert kept == len(doc["links"])


def test_export_caps_keep_tokens_logits_and_the_strongest(demo, tmp_path):
    model, graph = demo
    # the export's default keeps nodes to VIEW_KEEP_THRESHOLD (for the viewer's slider); the caps apply to that
    keep = VIEW_KEEP_THRESHOLD
    full, _ = graph_to_json(
        graph, "full", tokenizer=model.tokenizer, max_nodes=None, max_links=None, keep_threshold=keep
    )
    cap_nodes, cap_links = 60, 400
    assert len(full["nodes"]) > cap_nodes and len(full["links"]) > cap_links
    res = export_graph_json(
        graph, "capped", tmp_path, tokenizer=model.tokenizer, max_nodes=cap_nodes, max_links=cap_links
    )
    doc = json.loads(res.path.read_text())
    assert res.capped and res.n_nodes <= cap_nodes and res.n_links <= cap_links
    assert (res.n_nodes_pruned, res.n_links_pruned) == (len(full["nodes"]), len(full["links"]))
    assert "capped from" in res.summary()
    types = _by_type(doc)
    assert len(types["embedding"]) == graph.n_pos and len(types["logit"]) == graph.n_logits
    # the capped feature/error nodes are the most influential of the uncapped export
    inner = sorted(
        (n["influence"], n["node_id"])
        for n in full["nodes"]
        if n["feature_type"] not in ("embedding", "logit")
    )
    kept = {n["node_id"] for n in doc["nodes"] if n["feature_type"] not in ("embedding", "logit")}
    budget = cap_nodes - graph.n_pos - graph.n_logits
    assert kept <= {nid for _, nid in inner[:budget]}
    # links are ranked by edge influence score among the capped nodes
    pr = prune_graph(graph, keep)
    assert len(doc["links"]) == cap_links
    node_of = {}
    for i in np.flatnonzero(np.asarray(pr.node_mask)):
        node_of[_node_id(graph, int(i))] = int(i)
    keep_nodes = np.zeros(graph.n_nodes, bool)
    keep_nodes[[node_of[k] for k in kept] + list(range(graph.token_slice.start, graph.n_nodes))] = True
    A = np.where(keep_nodes[:, None] & keep_nodes[None, :], np.asarray(graph.adjacency_matrix), 0.0)
    scores = np.asarray(compute_edge_influence(A, graph.logit_weights()))
    link_scores = [scores[node_of[e["target"]], node_of[e["source"]]] for e in doc["links"]]
    em = np.asarray(pr.edge_mask) & keep_nodes[:, None] & keep_nodes[None, :]
    all_scores = np.sort(scores[em])[::-1]
    assert min(link_scores) >= all_scores[cap_links - 1] - 1e-12


def test_export_keeps_nodes_above_the_default_view_and_the_slider_rule_is_the_pruning(demo):
    model, graph = demo
    kept, _ = graph_to_json(graph, "kept", tokenizer=model.tokenizer, keep_threshold=VIEW_KEEP_THRESHOLD)
    exact, _ = graph_to_json(graph, "exact", tokenizer=model.tokenizer)  # circuit-tracer's file at 0.8
    assert kept["metadata"]["node_threshold"] == exact["metadata"]["node_threshold"] == 0.8
    assert len(kept["nodes"]) > len(exact["nodes"]) and max(
        n["influence"] for n in kept["nodes"] if n["influence"] is not None
    ) > 0.9
    # a file pruned at its threshold shows every node at it
    assert view_document(exact) == exact
    # at 0.8, the slider shows the kept file's nodes that the pruning's node step (influence >= the score at which
    # the cumulative share first reaches 0.8) keeps: computed here from the adjacency, not from the file
    influence = np.asarray(compute_node_influence(graph.adjacency_matrix, graph.logit_weights()))
    for t in (0.5, 0.8, 0.9):
        step = influence >= float(find_threshold(influence, t))
        step[graph.token_slice.start :] = True  # tokens and logits always
        ids = {_node_id(graph, int(i)) for i in np.flatnonzero(step)}
        flags = shown_at_threshold(kept, t)
        assert {n["node_id"] for n, f in zip(kept["nodes"], flags, strict=True) if f} == ids & {
            n["node_id"] for n in kept["nodes"]
        }
    # the opening view: those nodes, their links, and no feature or error node left without one
    view = view_document(kept)
    ids = {n["node_id"] for n in view["nodes"]}
    assert view["links"] == [e for e in kept["links"] if e["source"] in ids and e["target"] in ids]
    touched = {e[k] for e in view["links"] for k in ("source", "target")}
    assert all(n["node_id"] in touched for n in view["nodes"] if n["feature_type"] not in ("embedding", "logit"))
    assert len(view["nodes"]) < len(kept["nodes"])
    with pytest.raises(ValueError, match="keep_threshold=0.5 must lie between node_threshold=0.8 and 1"):
        graph_to_json(graph, "bad", keep_threshold=0.5)


def _node_id(graph: Graph, i: int) -> str:
    S, T, L = graph.n_selected, graph.n_pos, graph.n_layers
    if i < S:
        layer, pos, feat = (int(x) for x in np.asarray(graph.active_features)[graph.selected_features[i]])
        return f"{layer}_{feat}_{pos}"
    if i < graph.token_slice.start:
        layer, pos = divmod(i - S, T)
        return f"{layer}_-1_{pos}"
    if i < graph.logit_slice.start:
        pos = i - graph.token_slice.start
        return f"E_{int(graph.input_tokens[pos])}_{pos}"
    return f"{L + 1}_{int(graph.logit_token_ids[i - graph.logit_slice.start])}_{T - 1}"


def test_index_replaces_a_slug_and_keeps_others(demo, tmp_path):
    model, graph = demo
    export_graph_json(graph, "a", tmp_path, tokenizer=model.tokenizer)
    export_graph_json(graph, "b", tmp_path, 0.5, tokenizer=model.tokenizer)
    export_graph_json(graph, "a", tmp_path, 0.6, tokenizer=model.tokenizer)
    graphs = json.loads((tmp_path / "graph-metadata.json").read_text())["graphs"]
    assert [(g["slug"], g["node_threshold"]) for g in graphs] == [("b", 0.5), ("a", 0.6)]
    (tmp_path / "graph-metadata.json").write_text("[1, 2")
    with pytest.raises(ValueError, match="not a graph index"):
        export_graph_json(graph, "c", tmp_path, tokenizer=model.tokenizer)


def test_token_strings_fall_back_to_stored_strings_then_ids(demo):
    model, graph = demo
    assert token_strings(graph, model.tokenizer)[1] == "the"
    assert token_strings(graph)[0] == f"#{int(graph.input_tokens[0])}"
    graph.settings["token_strings"] = [f"t{i}" for i in range(graph.n_pos)]
    try:
        assert token_strings(graph)[2] == "t2"
    finally:
        del graph.settings["token_strings"]


def test_zero_weight_edges_are_not_links_unless_asked(tmp_path):
    # nothing reaches the logits: the reference's edge threshold resolves to 0 and keeps every zero entry
    S, L, T, K = 3, 2, 3, 2
    n = S + L * T + T + K
    graph = Graph(
        input_string="a b c",
        input_tokens=np.arange(T),
        active_features=np.array([[0, 1, 5], [1, 2, 6], [1, 1, 7]]),
        activation_values=np.ones(3, np.float32),
        selected_features=np.arange(3),
        adjacency_matrix=np.zeros((n, n), np.float32),
        logit_token_ids=np.array([4, 5]),
        logit_probabilities=np.array([0.6, 0.3], np.float32),
        logit_labels=["x", "y"],
        n_layers=L,
        vocab_size=10,
    )
    doc, _ = graph_to_json(graph, "zero")
    assert doc["links"] == [] and {x["feature_type"] for x in doc["nodes"]} == {"embedding", "logit"}
    validate_graph_json(doc)
    quirk, _ = graph_to_json(graph, "zero", keep_zero_weight_links=True)
    assert len(quirk["links"]) == len(quirk["nodes"]) ** 2 == n**2
    assert all(e["weight"] == 0.0 for e in quirk["links"])
    assert all(x["influence"] is None for x in quirk["nodes"])  # 0/0 cumulative influence is not a number


@pytest.mark.parametrize("slug", ["", "../x", ".hidden", "a/b", "sp ace", "déjà-vu"])
def test_bad_slugs_are_refused(demo, slug, tmp_path):
    with pytest.raises(ValueError, match="slug"):
        export_graph_json(demo[1], slug, tmp_path)


@pytest.mark.parametrize(
    "doc, match",
    [
        ([], "JSON object"),
        ({"metadata": {}, "nodes": []}, "no 'links'"),
        ({"metadata": {"slug": "s"}, "nodes": [], "links": []}, "metadata.scan"),
        ("nodes", "JSON object"),
    ],
)
def test_validate_rejects_documents_that_are_not_graphs(doc, match):
    with pytest.raises(ValueError, match=match):
        validate_graph_json(doc)


def test_validate_rejects_broken_nodes_and_links(demo):
    model, graph = demo
    doc, _ = graph_to_json(graph, "g", tokenizer=model.tokenizer)
    validate_graph_json(doc)
    bad = json.loads(json.dumps(doc))
    bad["links"][0]["target"] = "nope"
    with pytest.raises(ValueError, match="links\\[0\\]"):
        validate_graph_json(bad)
    bad = json.loads(json.dumps(doc))
    bad["nodes"][1]["node_id"] = bad["nodes"][0]["node_id"]
    with pytest.raises(ValueError, match="duplicate"):
        validate_graph_json(bad)
    bad = json.loads(json.dumps(doc))
    bad["nodes"][0]["ctx_idx"] = "3"
    with pytest.raises(ValueError, match="ctx_idx"):
        validate_graph_json(bad)


# ----------------------------------------------------------------------------------------------------
# circuit-tracer's own create_graph_files on the same adjacency


def _ref_python() -> Path | None:
    venv = Path(os.environ.get("JCIRCUITS_REF_VENV", ROOT / ".venv-ref"))
    python = venv / "bin" / "python"
    return python if python.exists() else None


@pytest.mark.ref
def test_same_nodes_and_links_as_circuit_tracer_create_graph_files(demo, tmp_path):
    python = _ref_python()
    if python is None:
        msg = "circuit-tracer reference env missing: run `bash tests/reference/setup_ref_env.sh`"
        if os.environ.get("JCIRCUITS_REQUIRE_REF") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    model, graph = demo
    tok_dir = tmp_path / "tokenizer"
    tok_dir.mkdir()
    model.tokenizer._tk.save(str(tok_dir / "tokenizer.json"))
    (tok_dir / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": "<bos>",
                "eos_token": "<eos>",
                "pad_token": "<pad>",
                "unk_token": "<unk>",
                "clean_up_tokenization_spaces": False,
            }
        )
    )
    pt = tmp_path / "graph.pt"
    graph.to_circuit_tracer(pt, cfg={"tokenizer_name": str(tok_dir)})
    runs = [("ref80", 0.8, 0.98), ("ref60", 0.6, 0.9)]
    cmd = [str(python), str(EXPORT_REF), str(pt), str(tmp_path / "ref")]
    for slug, node_t, edge_t in runs:
        cmd += ["--run", slug, str(node_t), str(edge_t)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for slug, node_t, edge_t in runs:
        ref = json.loads((tmp_path / "ref" / f"{slug}.json").read_text())
        ours = json.loads(
            export_graph_json(
                graph, slug, tmp_path / "ours", node_t, edge_t, tokenizer=model.tokenizer, keep_threshold=None
            ).path.read_text()
        )
        _compare_with_reference(ours, ref)


def _as_ref_id(node: dict) -> str:
    """Our node id as circuit-tracer 0.5.0 writes it: error ids there are ``0_{layer}_{pos}`` (the fixed schema,
    ours, uses ``{layer}_-1_{pos}``). 0.5.0's error ids can equal a feature id (layer-0 feature f at pos p vs
    the error at layer f, pos p), so nodes and links are compared as multisets keyed by (id, type) / weight."""
    if node["feature_type"] == "mlp reconstruction error":
        assert node["node_id"] == f"{node['layer']}_-1_{node['ctx_idx']}"
        return f"0_{node['layer']}_{node['ctx_idx']}"
    return node["node_id"]


def _compare_with_reference(ours: dict, ref: dict) -> None:
    assert ours["metadata"] == ref["metadata"]
    assert ours["qParams"] == ref["qParams"]
    key = lambda n, nid: (nid, n["feature_type"])  # noqa: E731
    ref_nodes = {key(n, n["node_id"]): n for n in ref["nodes"]}
    our_nodes = {key(n, _as_ref_id(n)): n for n in ours["nodes"]}
    assert len(ref_nodes) == len(ref["nodes"]) and len(our_nodes) == len(ours["nodes"])
    assert set(our_nodes) == set(ref_nodes)
    assert {n["feature_type"] for n in ours["nodes"]} == TYPES
    for k, n in our_nodes.items():
        r = ref_nodes[k]
        assert set(n) == set(r), k
        for field in n:
            if field in ("node_id", "jsNodeId") and n["feature_type"] == "mlp reconstruction error":
                continue  # the fixed ids, by design
            if field == "influence" and n[field] is not None:
                assert n[field] == pytest.approx(r[field], rel=1e-5, abs=1e-7), (k, field)
            elif field in ("activation", "token_prob") and n[field] is not None:
                assert n[field] == pytest.approx(r[field], rel=1e-6), (k, field)
            else:
                assert n[field] == r[field], (k, field)
    ids = {n["node_id"]: _as_ref_id(n) for n in ours["nodes"]}
    our_links = sorted((ids[e["source"]], ids[e["target"]], e["weight"]) for e in ours["links"])
    ref_links = sorted((e["source"], e["target"], e["weight"]) for e in ref["links"])
    assert len(our_links) == len(ref_links)
    assert [x[:2] for x in our_links] == [x[:2] for x in ref_links]
    np.testing.assert_allclose([x[2] for x in our_links], [x[2] for x in ref_links], rtol=1e-6, atol=0)


# ----------------------------------------------------------------------------------------------------
# Pictures


def test_render_svg_and_png_share_the_layout(demo, tmp_path):
    model, graph = demo
    doc, _ = graph_to_json(graph, "g", tokenizer=model.tokenizer)
    lay = compute_layout(doc, 1200, 700)
    kinds = {n["node_id"]: k for n, k in zip(doc["nodes"], lay.kinds, strict=True)}
    ys = {
        k: {round(y, 3) for y, kk in zip(lay.y, lay.kinds, strict=True) if kk == k}
        for k in set(kinds.values())
    }
    assert len(ys["embedding"]) == 1 and len(ys["logit"]) == 1
    assert min(ys["embedding"]) > max(ys["feature"]) > max(ys["logit"])  # tokens at the bottom, logits on top
    for n, x in zip(doc["nodes"], lay.x, strict=True):  # each node inside its position's column
        assert lay.col_x[n["ctx_idx"]] <= x <= lay.col_x[n["ctx_idx"] + 1]
    svg = render_svg(doc)
    root = ET.fromstring(svg)
    ns = "{http://www.w3.org/2000/svg}"
    shapes = root.findall(f".//{ns}circle") + root.findall(f".//{ns}polygon")
    shapes = [e for e in shapes if e.find(f"{ns}title") is not None]  # the legend's shapes have no title
    assert len(shapes) == len(doc["nodes"])
    texts = [t.text for t in root.iter(f"{ns}text")]
    assert "capital" in texts and any(t and t.startswith(graph.logit_labels[0]) for t in texts)
    assert 1 <= len(root.findall(f".//{ns}path")) <= 12  # edges batched per sign x strength bin
    from PIL import Image

    png = render_png(doc, 600, 350)
    (tmp_path / "g.png").write_bytes(png)
    im = Image.open(tmp_path / "g.png")
    assert im.size == (1200, 700) and len(np.unique(np.asarray(im.convert("L")))) > 10
    pic = show_graph(graph, tokenizer=model.tokenizer)
    assert pic._repr_svg_().startswith("<svg") and pic._repr_png_()[:8] == b"\x89PNG\r\n\x1a\n"


def test_render_cli_and_bad_inputs(demo, tmp_path, capsys):
    model, graph = demo
    path = tmp_path / "g.safetensors"
    graph.save(path)
    assert cli_main(["render", str(path), "-o", str(tmp_path / "g.svg")]) == 0
    assert ET.parse(tmp_path / "g.svg").getroot().tag.endswith("svg")
    res = export_graph_json(graph, "j", tmp_path, tokenizer=model.tokenizer)
    assert cli_main(["render", str(res.path), "-o", str(tmp_path / "j.png")]) == 0
    assert (tmp_path / "j.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match=r"\.svg or \.png"):
        render(path, tmp_path / "g.gif")
    with pytest.raises(FileNotFoundError, match="no such graph file"):
        render(tmp_path / "missing.safetensors", tmp_path / "m.svg")
    (tmp_path / "corrupt.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        render(tmp_path / "corrupt.safetensors", tmp_path / "c.svg")
    (tmp_path / "notgraph.json").write_text('{"hello": 1}')
    with pytest.raises(ValueError, match="not a graph JSON"):
        render(tmp_path / "notgraph.json", tmp_path / "n.svg")
    (tmp_path / "trunc.json").write_text('{"metadata": ')
    assert cli_main(["render", str(tmp_path / "trunc.json"), "-o", str(tmp_path / "t.svg")]) == 2
    assert "not valid JSON" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------
# Neuronpedia's upload schema. No schema is available offline, so the facts are written down here, read from
# Neuronpedia's source (github.com/hijohnnylin/neuronpedia @ ebb8426f, apps/webapp/app/api/graph/graph-schema.json,
# which its upload route `api/graph/save-to-db/route.ts` checks with Ajv, then it refuses a slug or scan with a
# character outside [a-zA-Z0-9_.-]) and circuit-tracer's frontend models (circuit_tracer/frontend/graph_models.py:
# Metadata, QParams, Node). Only the JSON-Schema keywords used below are implemented (type, properties, required,
# items); optional fields are typed where present.

_STR, _NUM, _INT = "string", "number", "integer"
NEURONPEDIA_SCHEMA = {
    "type": "object",
    "required": ["metadata", "qParams", "nodes", "links"],
    "properties": {
        "metadata": {
            "type": "object",
            "required": ["slug", "scan", "prompt_tokens", "prompt"],
            "properties": {
                "slug": {"type": _STR},
                "scan": {"type": _STR},
                "prompt_tokens": {"type": "array", "items": {"type": _STR}},
                "prompt": {"type": _STR},
                "node_threshold": {"type": _NUM},
                "transcoder_list": {"type": "array", "items": {"type": _STR}},  # circuit-tracer's Metadata
                "feature_details": {"type": "object"},
                "info": {"type": "object"},
                "generation_settings": {"type": "object"},
                "pruning_settings": {"type": "object"},
            },
        },
        "qParams": {
            "type": "object",
            "required": [],
            "properties": {
                "pinnedIds": {"type": "array", "items": {"type": _STR}},
                "supernodes": {"type": "array", "items": {"type": "array", "items": {"type": _STR}}},
                "linkType": {"type": _STR},
                "clickedId": {"type": _STR},
                "sg_pos": {"type": _STR},
            },
        },
        "nodes": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["node_id", "feature", "layer", "ctx_idx", "feature_type", "jsNodeId", "clerp"],
                "properties": {
                    "node_id": {"type": _STR},
                    "feature": {"type": [_INT, "null"]},
                    "layer": {"type": [_STR, _INT]},
                    "ctx_idx": {"type": _INT},
                    "feature_type": {"type": _STR},
                    "jsNodeId": {"type": _STR},
                    "clerp": {"type": _STR},
                    "influence": {"type": [_NUM, "null"]},
                    "activation": {"type": [_NUM, "null"]},
                    "token_prob": {"type": _NUM},  # circuit-tracer's Node
                    "is_target_logit": {"type": "boolean"},
                    "run_idx": {"type": _INT},
                    "reverse_ctx_idx": {"type": _INT},
                },
            },
        },
        "links": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["source", "target", "weight"],
                "properties": {"source": {"type": _STR}, "target": {"type": _STR}, "weight": {"type": _NUM}},
            },
        },
    },
}
_JSON_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    # stricter than Ajv, which also counts a written 1.0 as an integer (Python's json reads it as a float)
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}
NEURONPEDIA_NAME = re.compile(r"[a-zA-Z0-9_.-]+")  # upload: slug and scan


def schema_errors(value, schema: dict, path: str = "root") -> list[str]:
    """Every place where ``value`` breaks ``schema`` (the keywords of `NEURONPEDIA_SCHEMA` only)."""
    types = schema.get("type")
    types = [types] if isinstance(types, str) else types or []
    if types and not any(_JSON_TYPES[t](value) for t in types):
        return [f"{path}: {type(value).__name__} is not {'/'.join(types)}"]
    errors = []
    if isinstance(value, dict):
        errors += [f"{path}: no {k!r}" for k in schema.get("required", []) if k not in value]
        for k, sub in schema.get("properties", {}).items():
            if k in value:
                errors += schema_errors(value[k], sub, f"{path}.{k}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            errors += schema_errors(item, schema["items"], f"{path}[{i}]")
    return errors


def test_schema_checker_finds_what_neuronpedia_refuses():
    doc = synthetic_graph("ok", n_features=5, n_links=20)
    assert schema_errors(doc, NEURONPEDIA_SCHEMA) == []
    bad = json.loads(json.dumps(doc))
    del bad["qParams"]
    bad["metadata"]["prompt_tokens"][1] = 7
    bad["nodes"][0]["ctx_idx"] = 1.5
    bad["nodes"][1]["feature"] = True
    del bad["nodes"][2]["clerp"]
    bad["links"][0]["weight"] = "0.5"
    assert schema_errors(bad, NEURONPEDIA_SCHEMA) == [
        "root: no 'qParams'",
        "root.metadata.prompt_tokens[1]: int is not string",
        "root.nodes[0].ctx_idx: float is not integer",
        "root.nodes[1].feature: bool is not integer/null",
        "root.nodes[2]: no 'clerp'",
        "root.links[0].weight: str is not number",
    ]


def test_export_and_viewer_saves_are_valid_for_neuronpedias_upload(demo, tmp_path):
    model, graph = demo
    for keep in (VIEW_KEEP_THRESHOLD, None):
        res = export_graph_json(graph, "np-upload", tmp_path, tokenizer=model.tokenizer, keep_threshold=keep)
        doc = json.loads(res.path.read_text())  # as a file, so the JSON types are the file's
        assert schema_errors(doc, NEURONPEDIA_SCHEMA) == []
        assert {n["feature_type"] for n in doc["nodes"]} == TYPES  # every node type was checked
        meta = doc["metadata"]
        assert NEURONPEDIA_NAME.fullmatch(meta["slug"]) and NEURONPEDIA_NAME.fullmatch(meta["scan"]), meta
        assert 0 < meta["node_threshold"] <= 1  # the default view of Neuronpedia's dynamic pruning (influence)
    # what the viewer saves (labels, pins, supernodes, its sg_pos string) stays valid
    feats = [n["node_id"] for n in doc["nodes"] if n["feature_type"] == "cross layer transcoder"][:3]
    doc["nodes"][0]["clerp"] = "says texas"
    doc["qParams"].update(
        pinnedIds=feats, supernodes=[["state facts", *feats[:2]]], clickedId=feats[0],
        sg_pos=json.dumps({"jcircuits": 1, "pos": {feats[0]: [0.25, 0.5]}}),
    )  # fmt: skip
    validate_graph_json(doc)
    assert schema_errors(json.loads(json.dumps(doc)), NEURONPEDIA_SCHEMA) == []


def test_hub_set_names_become_neuronpedia_safe_scans_that_still_find_their_dashboards_and_model(demo, tmp_path):
    """A hub transcoder set without a ``scan`` in its config is named ``org/repo@revision``; the graph JSON carries
    it as ``org-repo-revision`` (Neuronpedia's upload refuses ``/`` and ``@``), and the server's dashboards and
    steering still match it, from new files and from files written with the raw name."""
    from types import SimpleNamespace

    from jcircuits.view.export import scan_name
    from jcircuits.view.server import pick_store
    from jcircuits.view.steer import Steerer

    raw = "mwhanna/qwen3-4b-transcoders@0123abc"
    assert scan_name(raw) == "mwhanna-qwen3-4b-transcoders-0123abc"
    assert scan_name("gemma-2-2b") == "gemma-2-2b" and scan_name(None) == "local" and scan_name("//") == "local"
    model, graph = demo
    res = export_graph_json(graph, "hub-set", tmp_path, tokenizer=model.tokenizer, scan=raw)
    doc = json.loads(res.path.read_text())
    assert doc["metadata"]["scan"] == scan_name(raw) and NEURONPEDIA_NAME.fullmatch(doc["metadata"]["scan"])
    assert schema_errors(doc, NEURONPEDIA_SCHEMA) == []
    mine, other = SimpleNamespace(meta={"scan": raw}), SimpleNamespace(meta={"scan": "gemma-2-2b"})
    for asked in (doc["metadata"]["scan"], raw):
        assert pick_store([other, mine], asked) is mine
    steer = Steerer(model=model, transcoders=SimpleNamespace(cfg=SimpleNamespace(scan=raw, n_features=1)))
    steer.check_scan(doc["metadata"]["scan"])  # the same set: accepted
    assert steer.info()["scan"] == doc["metadata"]["scan"]
    with pytest.raises(ValueError, match="traced with transcoders"):
        steer.check_scan("gemma-2-2b")
