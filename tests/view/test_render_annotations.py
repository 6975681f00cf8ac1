"""`render`'s annotations: title, prompt, legend, labels beside nodes (people's, else a store's automatic ones),
feature nodes sized by influence, and margins that keep every label inside the picture."""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET

import numpy as np
from PIL import Image
from synthetic import synthetic_graph

from jcircuits.default import default_features
from jcircuits.features.format import cantor_pairing
from jcircuits.view.render import compute_layout, node_labels, render_png, render_svg

NS = "{http://www.w3.org/2000/svg}"


def doc_with_labels() -> dict:
    doc = synthetic_graph("annotated", n_layers=3, n_pos=5, n_features=20, n_links=120, seed=2)
    doc["metadata"]["prompt"] = "w0 w1 w2 w3 w4"
    feats = sorted(
        (n for n in doc["nodes"] if n["feature_type"] == "cross layer transcoder"),
        key=lambda n: n["influence"],
    )
    feats[0]["clerp"] = "Texas capital"
    logit = next(n for n in doc["nodes"] if n["feature_type"] == "logit")
    logit["clerp"] = 'Output "a very long output token string" (p=0.500)'  # the longest rotated label
    return doc


def test_svg_has_title_prompt_legend_and_the_persons_label():
    doc = doc_with_labels()
    root = ET.fromstring(render_svg(doc, 1000, 600))
    texts = [t.text for t in root.iter(f"{NS}text")]
    assert "annotated" in texts and "w0 w1 w2 w3 w4" in texts
    labels = [t.text for t in root.iter(f"{NS}text") if t.get("class") == "node-label"]
    assert labels == ["Texas capital"]  # no store: only people's labels
    legend = next(g for g in root.iter(f"{NS}g") if g.get("class") == "legend")
    legend_text = " ".join(t.text for t in legend.iter(f"{NS}text"))
    for word in ("feature", "error", "token", "logit", "excites", "inhibits"):
        assert word in legend_text


def test_automatic_labels_come_from_the_store_and_people_win():
    store = default_features()
    doc = doc_with_labels()
    feats = [n for n in doc["nodes"] if n["feature_type"] == "cross layer transcoder"]
    for n in feats:  # ids of features the default store has
        layer, feat, pos = (int(x) for x in n["node_id"].split("_"))
        n["node_id"] = n["jsNodeId"] = f"{layer}_{feat % 512}_{pos}"
        n["feature"] = cantor_pairing(layer, feat % 512)
    labels = node_labels(doc, store)
    for n in feats:
        layer, index = (int(x) for x in n["node_id"].split("_")[:2])
        want = n["clerp"] or store.label(layer, index)["label"]
        assert labels[n["node_id"]] == want


def test_png_keeps_every_label_inside_the_picture():
    doc = doc_with_labels()
    for width, height in ((1000, 600), (700, 420)):
        im = np.asarray(Image.open(io.BytesIO(render_png(doc, width, height))).convert("L"))
        border = np.concatenate([im[:3].ravel(), im[-3:].ravel(), im[:, :3].ravel(), im[:, -3:].ravel()])
        assert border.min() > 245, f"ink on the picture's edge at {width}x{height}: something is cut off"


def test_feature_nodes_are_sized_by_influence():
    doc = doc_with_labels()
    root = ET.fromstring(render_svg(doc, 1000, 600))
    r_of = {
        c.find(f"{NS}title").text: float(c.get("r"))
        for c in root.iter(f"{NS}circle")
        if c.find(f"{NS}title") is not None
    }
    feats = sorted(
        (n for n in doc["nodes"] if n["feature_type"] == "cross layer transcoder"),
        key=lambda n: n["influence"],
    )
    name = lambda n: n["clerp"] or n["node_id"]  # noqa: E731
    base = compute_layout(doc, 1000, 600).radius
    assert r_of[name(feats[0])] > base > r_of[name(feats[-1])]
