"""Steering through the viewer server: the answer is `feature_intervention` / `generate`'s for the same edits, bad
requests are 400s that say what is wrong, and a server without a model or for other transcoders refuses."""

from __future__ import annotations

import threading

import jax
import numpy as np
import pytest
from synthetic import synthetic_graph, write_graph
from test_server import post_json, request

from jcircuits.default import default_model, default_transcoders
from jcircuits.intervention import feature_intervention, generate
from jcircuits.view.server import make_server
from jcircuits.view.steer import Steerer

PROMPT = "the capital of texas is austin . the capital of ohio is"


@pytest.fixture(scope="module")
def steerer():
    model = default_model()
    return Steerer(model, default_transcoders(model))


@pytest.fixture(scope="module")
def port(tmp_path_factory, steerer):
    gdir = tmp_path_factory.mktemp("g")
    write_graph(gdir, synthetic_graph())
    httpd = make_server(gdir, 0, steer=steerer)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


def test_steering_equals_feature_intervention_and_generate(port, steerer):
    model, ts = steerer.model, steerer.transcoders
    tokens = [int(t) for t in model.tokenizer.encode(PROMPT)]
    _, clean = feature_intervention(model, ts, np.asarray(tokens), [])
    clean = np.asarray(clean)
    layer, feat = np.unravel_index(
        np.argmax(clean[:, -1]), clean[:, -1].shape
    )  # the strongest at the last token
    layer, feat, pos = int(layer), int(feat), len(tokens) - 1
    body = {"tokens": tokens, "scan": ts.cfg.scan, "generate": 4, "top_k": 5,
            "edits": [{"layer": layer, "position": pos, "feature": feat, "multiplier": -3.0}]}  # fmt: skip
    status, got = post_json(port, "/steer.json", body)
    assert status == 200, got
    edit = [(layer, pos, feat, -3.0 * float(clean[layer, pos, feat]))]
    assert got["interventions"] == [[layer, pos, feat, pytest.approx(edit[0][3], rel=1e-6)]]
    for key, edits in (("before", []), ("after", edit)):
        logits, _ = feature_intervention(model, ts, np.asarray(tokens), edits)
        p = np.asarray(jax.nn.softmax(np.asarray(logits[-1], np.float64)))
        top = np.argsort(-p, kind="stable")[:5]
        assert [t["id"] for t in got[key]["top"]] == top.tolist()
        np.testing.assert_allclose([t["prob"] for t in got[key]["top"]], p[top], rtol=1e-5, atol=1e-9)
        g = generate(model, ts, np.asarray(tokens), edits, max_new_tokens=4)
        assert got[key]["generated_ids"] == [int(t) for t in g.tokens]
    assert got["edits"][0]["clean"] == pytest.approx(float(clean[layer, pos, feat]))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"tokens": [], "edits": []}, "tokens must be"),
        ({"tokens": [1, 2], "edits": []}, "edits must be a list of 1"),
        ({"tokens": [1, 2], "edits": [{"layer": 9, "position": 0, "feature": 0, "value": 1}]}, "outside this model"),
        ({"tokens": [1, 2], "edits": [{"layer": 0, "position": 0, "feature": 0}]}, "exactly one of value or multiplier"),
        ({"tokens": [1, 2], "edits": [{"layer": 0, "position": 0, "feature": 0, "multiplier": 2, "from_position": True}]},
         "from_position needs a value"),
        ({"tokens": [1, 2], "scan": "another-set", "edits": [{"layer": 0, "position": 0, "feature": 0, "value": 1}]},
         "traced with transcoders 'another-set'"),
        ({"tokens": [1, 2], "generate": 99, "edits": [{"layer": 0, "position": 0, "feature": 0, "value": 1}]},
         "generate must be"),
    ],
)  # fmt: skip
def test_bad_steering_requests_are_400_with_the_reason(port, body, message):
    status, got = post_json(port, "/steer.json", body)
    assert status == 400 and message in got["error"], got


def test_info_and_a_server_without_a_model(port, tmp_path, steerer):
    import json

    status, _, body = request(port, "GET", "/steer/info.json")
    info = json.loads(body)
    assert status == 200 and info["available"] and info["scan"] == steerer.transcoders.cfg.scan
    write_graph(tmp_path, synthetic_graph())
    httpd = make_server(tmp_path, 0)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        p = httpd.server_address[1]
        assert json.loads(request(p, "GET", "/steer/info.json")[2]) == {"available": False}
        status, got = post_json(p, "/steer.json", {"tokens": [1]})
        assert status == 404 and "--model" in got["error"]
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_trace_writes_the_graph_attribute_gives_and_never_overwrites(tmp_path, steerer):
    import json

    from jcircuits.attribution import attribute
    from jcircuits.view.export import VIEW_KEEP_THRESHOLD, graph_to_json, validate_graph_json

    write_graph(tmp_path, synthetic_graph())
    httpd = make_server(tmp_path, 0, steer=steerer)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        p = httpd.server_address[1]
        status, got = post_json(p, "/trace.json", {"prompt": "3 plus 4 is", "slug": "add"})
        assert status == 200, got
        doc = json.loads((tmp_path / "add.json").read_text())
        validate_graph_json(doc)
        graph = attribute(steerer.model, steerer.transcoders, "3 plus 4 is", verbose=False)
        want, _ = graph_to_json(  # what export_graph_json writes: nodes kept above the default view
            graph, "add", tokenizer=steerer.model.tokenizer, keep_threshold=VIEW_KEEP_THRESHOLD
        )
        assert [n["node_id"] for n in doc["nodes"]] == [n["node_id"] for n in want["nodes"]]
        np.testing.assert_allclose(
            [e["weight"] for e in doc["links"]], [e["weight"] for e in want["links"]], rtol=1e-5, atol=1e-7
        )
        index = json.loads((tmp_path / "graph-metadata.json").read_text())
        assert "add" in [g["slug"] for g in index["graphs"]] and got["nodes"] == len(doc["nodes"])
        before = (tmp_path / "add.json").read_bytes()
        status, got = post_json(p, "/trace.json", {"prompt": "1 plus 1 is", "slug": "add"})
        assert status == 409 and "exists already" in got["error"]
        assert (tmp_path / "add.json").read_bytes() == before
        for body, msg in (
            ({"prompt": "", "slug": "x"}, "1 to 4000"),
            ({"prompt": "1 plus 1", "slug": "../x"}, "slug"),
        ):
            status, got = post_json(p, "/trace.json", body)
            assert status == 400 and msg in got["error"], got
    finally:
        httpd.shutdown()
        httpd.server_close()
