"""The viewer's HTTP server: routes, gzip, path traversal, annotation saves (validation, atomicity, concurrency)."""

from __future__ import annotations

import gzip
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from synthetic import synthetic_graph, write_graph

from jcircuits.view.export import validate_graph_json
from jcircuits.view.server import make_server

ROOT = Path(__file__).resolve().parents[2]
SECRET = "TOP-SECRET-CONTENT-42"


@pytest.fixture
def served(tmp_path):
    """(graph_dir, port) of a running server on a fresh directory holding one synthetic graph, with a secret
    file beside (outside) the directory."""
    (tmp_path / "secret.json").write_text(json.dumps({"secret": SECRET}))
    gdir = tmp_path / "graphs"
    gdir.mkdir()
    write_graph(gdir, synthetic_graph())
    httpd = make_server(gdir, 0)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield gdir, httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


def request(port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    """A raw HTTP request (the path is sent exactly as given: no client-side normalisation)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        res = conn.getresponse()
        return res.status, dict(res.getheaders()), res.read()
    finally:
        conn.close()


def post_json(port: int, path: str, obj) -> tuple[int, dict]:
    status, _, body = request(
        port, "POST", path, json.dumps(obj).encode(), {"Content-Type": "application/json"}
    )
    return status, json.loads(body)


def test_binds_loopback_and_serves_viewer_index_and_graphs(served):
    gdir, port = served
    status, headers, body = request(port, "GET", "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html") and b"viewer.js" in body
    status, headers, body = request(port, "GET", "/static/viewer.js")
    assert status == 200 and "javascript" in headers["Content-Type"]
    status, _, body = request(port, "GET", "/graphs/graph-metadata.json")
    assert status == 200 and [g["slug"] for g in json.loads(body)["graphs"]] == ["syn"]
    status, _, body = request(port, "GET", "/graphs/syn.json?x=1")
    assert status == 200 and json.loads(body) == json.loads((gdir / "syn.json").read_text())
    status, _, body = request(port, "GET", "/graphs/missing.json")
    assert status == 404 and "missing.json" in json.loads(body)["error"]
    status, _, body = request(port, "GET", "/nowhere")
    assert status == 404
    (gdir / "graph-metadata.json").unlink()
    status, _, body = request(port, "GET", "/graphs/graph-metadata.json")
    assert status == 200 and json.loads(body) == {"graphs": []}


def test_server_listens_on_127_0_0_1_only(tmp_path):
    httpd = make_server(tmp_path, 0)
    try:
        assert httpd.server_address[0] == "127.0.0.1"
    finally:
        httpd.server_close()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        make_server(tmp_path / "absent", 0)


def test_large_graphs_are_gzipped_above_1_mb(served):
    gdir, port = served
    big = synthetic_graph("big", n_features=1500, n_links=14_000, seed=1)
    path = write_graph(gdir, big)
    assert path.stat().st_size > 1024**2
    status, headers, body = request(port, "GET", "/graphs/big.json", headers={"Accept-Encoding": "gzip"})
    assert status == 200 and headers.get("Content-Encoding") == "gzip"
    assert len(body) < path.stat().st_size / 2
    assert gzip.decompress(body) == path.read_bytes()
    status, headers, body = request(port, "GET", "/graphs/big.json")  # client without gzip: plain bytes
    assert status == 200 and "Content-Encoding" not in headers and body == path.read_bytes()
    status, headers, _ = request(port, "GET", "/graphs/syn.json", headers={"Accept-Encoding": "gzip"})
    assert "Content-Encoding" not in headers  # small files go as they are


TRAVERSALS = [
    "/graphs/../secret.json",
    "/graphs/%2e%2e/secret.json",
    "/graphs/%2E%2E/secret.json",
    "/graphs/..%2fsecret.json",
    "/graphs/%2e%2e%2fsecret.json",
    "/graphs/%2e%2e%2F%2e%2e%2F..%2Fetc%2Fpasswd",
    "/graphs/sub/../../secret.json",
    "/graphs/./../secret.json",
    "/graphs/..%5csecret.json",
    "/graphs/..\\secret.json",
    "/graphs/%252e%252e%252fsecret.json",
    "/graphs//etc/passwd",
    "/graphs/%2fetc%2fpasswd",
    "/graphs/.%00./secret.json",
    "/static/../server.py",
    "/static/%2e%2e/server.py",
    "/static/..%2f..%2fexport.py",
    "/../secret.json",
    "/%2e%2e/secret.json",
]


@pytest.mark.parametrize("path", TRAVERSALS)
def test_path_traversal_is_refused(served, path):
    gdir, port = served
    status, _, body = request(port, "GET", path)
    assert status in (400, 403, 404), (path, status)
    assert SECRET.encode() not in body and b"import" not in body
    before = (gdir.parent / "secret.json").read_bytes()
    status, _, body = request(port, "POST", path, json.dumps({"clerps": {}}).encode())
    assert status in (400, 403, 404), (path, status)
    assert (gdir.parent / "secret.json").read_bytes() == before


def test_symlinks_out_of_the_directory_and_hidden_files_are_refused(served):
    gdir, port = served
    os.symlink(gdir.parent / "secret.json", gdir / "link.json")
    status, _, body = request(port, "GET", "/graphs/link.json")
    assert status == 403 and SECRET.encode() not in body
    (gdir / ".hidden.json").write_text("{}")
    assert request(port, "GET", "/graphs/.hidden.json")[0] == 404
    (gdir / "notes.txt").write_text("x")
    assert request(port, "GET", "/graphs/notes.txt")[0] == 403


def test_save_merges_labels_and_qparams_into_the_file(served):
    gdir, port = served
    before = json.loads((gdir / "syn.json").read_text())
    ids = [n["node_id"] for n in before["nodes"]]
    q = {"pinnedIds": ids[:3], "supernodes": [["my group", ids[0], ids[1]]], "linkType": "both",
         "clickedId": ids[2], "sg_pos": ""}  # fmt: skip
    status, reply = post_json(port, "/graphs/syn.json", {"qParams": q, "clerps": {ids[5]: "says hello"}})
    assert status == 200 and reply["saved"] == "syn.json"
    after = json.loads((gdir / "syn.json").read_text())
    validate_graph_json(after)
    assert after["qParams"] == q
    assert after["nodes"][5]["clerp"] == "says hello"
    expected = before["nodes"]
    expected[5]["clerp"] = "says hello"
    assert after["nodes"] == expected and after["links"] == before["links"]
    assert after["metadata"] == before["metadata"]
    # clerps alone keep the saved qParams
    status, _ = post_json(port, "/graphs/syn.json", {"clerps": {ids[6]: "another"}})
    after2 = json.loads((gdir / "syn.json").read_text())
    assert status == 200 and after2["qParams"] == q and after2["nodes"][6]["clerp"] == "another"


MALFORMED = [
    b"not json at all",
    b'{"qParams": ',
    b"\xff\xfe\x00garbage",
    b"[1, 2, 3]",
    b'"just a string"',
    b'{"nodes": [], "links": []}',
    b'{"clerps": {"0_-1_0": 5}}',
    b'{"clerps": ["a", "b"]}',
    b'{"clerps": {"no-such-node": "x"}}',
    b'{"qParams": {"pinnedIds": "0_-1_0", "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""}}',
    b'{"qParams": {"pinnedIds": [], "supernodes": [[]], "linkType": "both", "clickedId": "", "sg_pos": ""}}',
    b'{"qParams": {"pinnedIds": [], "supernodes": [["g", 3]], "linkType": "both", "clickedId": "", "sg_pos": ""}}',
    b'{"qParams": {"pinnedIds": ["nope"], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""}}',
    b'{"qParams": {"pinnedIds": [], "supernodes": []}}',
]


@pytest.mark.parametrize("body", MALFORMED)
def test_malformed_saves_get_400_and_leave_the_file_untouched(served, body):
    gdir, port = served
    path = gdir / "syn.json"
    before, mtime = path.read_bytes(), path.stat().st_mtime_ns
    status, headers, reply = request(
        port, "POST", "/graphs/syn.json", body, {"Content-Type": "application/json"}
    )
    assert status == 400, reply
    assert headers["Content-Type"] == "application/json" and json.loads(reply)["error"]
    assert path.read_bytes() == before and path.stat().st_mtime_ns == mtime
    assert sorted(p.name for p in gdir.iterdir()) == ["graph-metadata.json", "syn.json"]  # no temp files left
    assert request(port, "GET", "/graphs/syn.json")[0] == 200  # still serving


def test_saves_to_missing_index_or_corrupt_files_are_refused(served):
    gdir, port = served
    assert post_json(port, "/graphs/absent.json", {"clerps": {}})[0] == 404
    assert not (gdir / "absent.json").exists()
    index = (gdir / "graph-metadata.json").read_bytes()
    assert post_json(port, "/graphs/graph-metadata.json", {"clerps": {}})[0] == 403
    assert (gdir / "graph-metadata.json").read_bytes() == index
    (gdir / "broken.json").write_text('{"metadata": {"slug"')
    status, reply = post_json(port, "/graphs/broken.json", {"clerps": {}})
    assert status == 409 and "not a valid graph" in reply["error"]
    assert (gdir / "broken.json").read_text() == '{"metadata": {"slug"'
    for bad_length in ("abc", "-5"):
        status, _, _ = request(port, "POST", "/graphs/syn.json", None, {"Content-Length": bad_length})
        assert status in (400, 411)
    assert request(port, "GET", "/")[0] == 200


def test_concurrent_saves_do_not_corrupt_the_file_and_all_land(served):
    gdir, port = served
    path = gdir / "syn.json"
    ids = [n["node_id"] for n in json.loads(path.read_text())["nodes"]]
    n_threads, per_thread = 12, 6
    errors: list[str] = []
    reads_ok = []
    stop = threading.Event()

    def writer(t: int) -> None:
        for j in range(per_thread):
            node = ids[(t * per_thread + j) % len(ids)]
            q = {"pinnedIds": [node], "supernodes": [], "linkType": "both", "clickedId": node, "sg_pos": ""}
            status, reply = post_json(port, "/graphs/syn.json", {"qParams": q, "clerps": {node: f"t{t}-{j}"}})
            if status != 200:
                errors.append(f"{status} {reply}")

    def reader() -> None:
        while not stop.is_set():
            status, _, body = request(port, "GET", "/graphs/syn.json")
            try:
                validate_graph_json(json.loads(body))
                reads_ok.append(status == 200)
            except ValueError as e:
                errors.append(f"torn read: {e}")

    readers = [threading.Thread(target=reader) for _ in range(2)]
    writers = [threading.Thread(target=writer, args=(t,)) for t in range(n_threads)]
    for th in readers + writers:
        th.start()
    for th in writers:
        th.join()
    stop.set()
    for th in readers:
        th.join()
    assert not errors, errors[:3]
    assert reads_ok and all(reads_ok)
    doc = json.loads(path.read_text())
    validate_graph_json(doc)
    clerps = {n["node_id"]: n["clerp"] for n in doc["nodes"]}
    for t in range(n_threads):  # every read-modify-write landed: none overwrote another's label
        for j in range(per_thread):
            assert clerps[ids[(t * per_thread + j) % len(ids)]] == f"t{t}-{j}"
    assert [p.name for p in gdir.iterdir() if p.name.startswith(".")] == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_command_runs_until_stopped_and_reports_bad_dirs(tmp_path):
    write_graph(tmp_path, synthetic_graph())
    port = _free_port()
    env = {**os.environ, "JCIRCUITS_CACHE_DIR": ""}
    proc = subprocess.Popen(
        [sys.executable, "-m", "jcircuits.cli", "serve", "--graph-dir", str(tmp_path), "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
    )  # fmt: skip
    try:
        line = proc.stdout.readline()
        assert f"http://127.0.0.1:{port}/" in line
        deadline = time.time() + 30
        while True:
            try:
                status, _, body = request(port, "GET", "/graphs/syn.json")
                break
            except ConnectionRefusedError:
                assert time.time() < deadline
                time.sleep(0.1)
        assert status == 200 and json.loads(body)["metadata"]["slug"] == "syn"
        assert request(port, "GET", "/graphs/../x")[0] == 403
        assert proc.poll() is None  # still running after a refused request
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    bad = subprocess.run(
        [sys.executable, "-m", "jcircuits.cli", "serve", "--graph-dir", str(tmp_path / "nope")],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert bad.returncode == 2 and "does not exist" in bad.stderr
