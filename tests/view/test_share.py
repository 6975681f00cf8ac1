"""``jcircuits share``: the one-file HTML holds the viewer, the graph as given and the store's dashboards of its
features, and no text in a graph can end its script element early."""

from __future__ import annotations

import json
import re

import pytest
from synthetic import synthetic_graph

from jcircuits.cli import main as cli_main
from jcircuits.default import default_features
from jcircuits.features.format import cantor_pairing
from jcircuits.view.server import STATIC_DIR
from jcircuits.view.share import embedded_features, share_html


def shared_data(html: str) -> dict:
    m = re.search(r"<script>window\.JC_SHARED = (.*?);</script>", html, re.S)
    assert m, "no JC_SHARED script"
    return json.loads(m[1])


def default_doc() -> dict:
    """A synthetic graph whose feature ids are features of the default transcoders (4 layers × 512)."""
    doc = synthetic_graph("tiny", n_layers=4, n_pos=5, n_features=12, n_links=60, seed=1)
    doc["metadata"]["scan"] = default_features().meta["scan"]
    rename = {}
    for n in doc["nodes"]:
        if n["feature_type"] == "cross layer transcoder":
            layer, feat, pos = (int(x) for x in n["node_id"].split("_"))
            rename[n["node_id"]] = f"{layer}_{feat % 512}_{pos}"
            n["node_id"] = n["jsNodeId"] = rename[n["node_id"]]
            n["feature"] = cantor_pairing(layer, feat % 512)
    assert len(set(rename.values())) == len(rename)
    for e in doc["links"]:
        e["source"], e["target"] = rename.get(e["source"], e["source"]), rename.get(e["target"], e["target"])
    return doc


def test_the_html_embeds_graph_dashboards_and_the_viewer_inline():
    store = default_features()
    doc = default_doc()
    doc["nodes"][0]["clerp"] = "</script><script>alert(1)</script> \u2028 <!--"
    feats = embedded_features(doc, store)
    html = share_html(doc, feats)
    assert "</script><script>alert(1)" not in html and "<!--" not in html.split("<script>window.JC_SHARED")[1]
    data = shared_data(html)
    assert data["graph"] == doc
    ids = {
        tuple(n["node_id"].split("_")[:2])
        for n in doc["nodes"]
        if n["feature_type"] == "cross layer transcoder"
    }
    assert set(data["features"]) == {f"{la}/{f}" for la, f in ids}
    for key, d in data["features"].items():
        la, f = map(int, key.split("/"))
        assert d["record"] == store.feature(la, f) and d["label"] == store.label(la, f)["label"]
    assert (STATIC_DIR / "viewer.js").read_text() in html and (STATIC_DIR / "viewer.css").read_text() in html
    assert 'src="static/' not in html and 'href="static/' not in html  # nothing to fetch


def test_share_command_writes_the_file_and_says_when_it_has_no_dashboards(tmp_path, capsys):
    doc = default_doc()
    (tmp_path / "g.json").write_text(json.dumps(doc))
    assert cli_main(["share", str(tmp_path / "g.json"), "-o", str(tmp_path / "out" / "g.html")]) == 0
    data = shared_data((tmp_path / "out" / "g.html").read_text())
    assert data["graph"] == doc and len(data["features"]) > 0
    doc["metadata"]["scan"] = "someone-elses-transcoders"
    (tmp_path / "h.json").write_text(json.dumps(doc))
    assert cli_main(["share", str(tmp_path / "h.json"), "-o", str(tmp_path / "h.html")]) == 0
    assert shared_data((tmp_path / "h.html").read_text())["features"] == {}
    assert "no feature dashboards for transcoders 'someone-elses-transcoders'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [(["missing.json"], "no such graph file"), (["bad.json"], "is not a graph JSON")],
)
def test_share_refuses_bad_input_in_one_line(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.json").write_text(json.dumps({"hello": 1}))
    assert cli_main(["share", *args, "-o", "x.html"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
