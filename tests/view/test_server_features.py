"""The viewer server's feature-dashboard routes: one feature's record and label from a `FeatureStore`, labels in
bulk, and the store chosen by the graph's transcoder set (dashboards of another set are never served)."""

from __future__ import annotations

import json
import threading

import pytest
from synthetic import synthetic_graph, write_graph
from test_server import post_json, request

from jcircuits.default import default_features
from jcircuits.features.format import FeatureStore
from jcircuits.features.labels import auto_label
from jcircuits.view.server import make_server


@pytest.fixture
def store():
    return default_features()


def _serve(gdir, stores):
    httpd = make_server(gdir, 0, features=stores)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return httpd


@pytest.fixture
def port(tmp_path, store):
    write_graph(tmp_path, synthetic_graph())
    httpd = _serve(tmp_path, [store])
    yield httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


def get_json(port: int, path: str):
    status, _, body = request(port, "GET", path)
    return status, json.loads(body)


def test_feature_route_returns_the_stores_record_and_label(port, store):
    scan = store.meta["scan"]
    status, got = get_json(port, f"/features/2/7.json?scan={scan}")
    assert status == 200
    assert got["record"] == store.feature(2, 7)
    assert (got["label"], got["label_source"]) == (store.label(2, 7)["label"], "auto")
    status, info = get_json(port, "/features/info.json")
    assert info["stores"][0]["scan"] == scan and info["stores"][0]["n_layers"] == store.n_layers


def test_bulk_labels_are_the_stores_labels(port, store):
    feats = [[0, 0], [1, 5], [3, store.n_features(3) - 1]]
    status, got = post_json(port, "/features/labels.json", {"scan": store.meta["scan"], "features": feats})
    assert status == 200
    assert got["labels"] == {f"{la}/{f}": store.label(la, f)["label"] for la, f in feats}
    assert got["kind"] == "plt"  # the default's per-layer transcoders, as its features.json records


@pytest.mark.parametrize(
    ("path", "status", "message"),
    [
        ("/features/9/0.json", 404, "layer 9 is not in this feature store"),
        ("/features/0/99999.json", 404, "feature 99999 is not in layer 0"),
        ("/features/0/x.json", 404, "/features/<layer>/<index>.json"),
        ("/features/0/1.json?scan=someone-else", 404, "no feature dashboards for transcoders 'someone-else'"),
    ],
)
def test_bad_feature_requests_say_what_is_wrong(port, path, status, message):
    got_status, got = get_json(port, path)
    assert got_status == status and message in got["error"], got


def test_bad_label_requests_are_400(port):
    for body in ({"features": [[0, "a"]]}, {"features": "all"}, [1, 2]):
        status, got = post_json(port, "/features/labels.json", body)
        assert status == 400 and "error" in got


def test_no_store_says_how_to_add_one(tmp_path):
    write_graph(tmp_path, synthetic_graph())
    httpd = _serve(tmp_path, [])
    try:
        status, got = get_json(httpd.server_address[1], "/features/0/0.json")
        assert status == 404 and "--features DIR" in got["error"]
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_folder_without_stored_labels_gets_automatic_ones_from_the_record(tmp_path, store):
    """circuit-tracer's folders ship no labels.auto.json and record no scan: the label is computed from the
    record, and the folder serves any graph when it is the only anonymous store."""
    import shutil

    folder = tmp_path / "ct"
    shutil.copytree(store.root, folder, ignore=shutil.ignore_patterns("labels.auto.json", "features.json"))
    gdir = tmp_path / "g"
    gdir.mkdir()
    write_graph(gdir, synthetic_graph())
    httpd = _serve(gdir, [FeatureStore(folder), store])
    try:
        status, got = get_json(httpd.server_address[1], "/features/1/3.json?scan=gemma-2-2b-transcoders")
        assert status == 200 and got["record"] == store.feature(1, 3)
        assert got["label"] == auto_label(store.feature(1, 3)) and got["label_source"] == "auto"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_attribute_and_serve_commands_give_the_viewer_dashboards_and_a_model(tmp_path, monkeypatch, store):
    """``attribute --serve`` serves the default model's dashboards and steers with the model it traced;
    ``serve --model default`` does the same for a directory; ``serve --features DIR`` adds a folder's store."""
    import jcircuits.view.server as server
    from jcircuits.cli import main as cli_main

    calls = []
    monkeypatch.setattr(server, "serve", lambda *a, **kw: calls.append((a, kw)))
    gdir = tmp_path / "g"
    code = cli_main(["attribute", "--prompt", "3 plus 4 is", "-q", "-o", str(tmp_path / "a.safetensors"),
                     "--graph-dir", str(gdir), "--serve"])  # fmt: skip
    assert code == 0
    ((_, kw),) = calls
    assert [s.root for s in kw["features"]] == [store.root]
    assert kw["steer"].transcoders.cfg.scan == store.meta["scan"]
    calls.clear()
    assert (
        cli_main(["serve", "--graph-dir", str(gdir), "--model", "default", "--features", str(store.root)])
        == 0
    )
    ((_, kw),) = calls
    assert [s.root for s in kw["features"]] == [store.root, store.root] and kw["steer"] is not None
    calls.clear()
    assert cli_main(["serve", "--graph-dir", str(gdir)]) == 0
    ((_, kw),) = calls
    assert kw["steer"] is None and [s.root for s in kw["features"]] == [store.root]
