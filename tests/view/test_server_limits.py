"""The viewer server under slow, crowded and hostile clients: timeouts, a bound on connections, a deep listen
backlog, bounded annotation growth, 400 (never 500) for bad JSON, and saves that keep the file's permissions."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest
from test_server import post_json, request, served  # noqa: F401 (the fixture)

from jcircuits.view import server as srv

Q = {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""}


def _open_idle(port: int, first_bytes: bytes = b"") -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    if first_bytes:
        s.sendall(first_bytes)
    return s


def test_a_slow_client_is_timed_out_and_others_are_served_meanwhile(served, monkeypatch):  # noqa: F811
    gdir, port = served
    monkeypatch.setattr(srv._Handler, "timeout", 0.5)
    # a request line and a Content-Length, then silence: the body never comes
    slow = _open_idle(port, b"POST /graphs/syn.json HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
    t0 = time.perf_counter()
    assert request(port, "GET", "/graphs/syn.json")[0] == 200  # served while the slow one waits
    assert time.perf_counter() - t0 < 2
    slow.settimeout(5)
    assert slow.recv(100) == b""  # the server hung up on it after its timeout
    slow.close()


def test_past_the_connection_bound_clients_get_503_and_service_resumes(served, monkeypatch):  # noqa: F811
    gdir, port = served
    monkeypatch.setattr(srv._Handler, "timeout", 30.0)
    idle = [_open_idle(port) for _ in range(srv.MAX_CONNECTIONS)]
    time.sleep(0.3)
    try:
        status, _, body = request(port, "GET", "/graphs/syn.json")
        assert status == 503 and "busy" in json.loads(body)["error"]
    finally:
        for s in idle:
            s.close()
    deadline = time.time() + 5
    while request(port, "GET", "/graphs/syn.json")[0] != 200:
        assert time.time() < deadline, "the server did not recover after the idle clients left"
        time.sleep(0.1)


def test_forty_simultaneous_saves_all_land_or_get_an_error(served):  # noqa: F811
    gdir, port = served
    ids = [n["node_id"] for n in json.loads((gdir / "syn.json").read_text())["nodes"]]
    results, barrier = [], threading.Barrier(40)

    def save(i):
        barrier.wait()
        try:
            results.append(post_json(port, "/graphs/syn.json", {"clerps": {ids[i]: f"label {i}"}})[0])
        except OSError as e:  # a reset connection would land here
            results.append(repr(e))

    threads = [threading.Thread(target=save, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    # no connection is reset: each save lands (200) or is told the server is busy (503, past MAX_CONNECTIONS)
    assert len(results) == 40 and set(results) <= {200, 503}, results
    assert results.count(200) >= srv.MAX_CONNECTIONS - 1, results
    doc = json.loads((gdir / "syn.json").read_text())
    assert sum(doc["nodes"][i]["clerp"] == f"label {i}" for i in range(40)) == results.count(200)


def test_labels_and_supernodes_are_bounded_so_the_file_cannot_grow_without_bound(served):  # noqa: F811
    gdir, port = served
    ids = [n["node_id"] for n in json.loads((gdir / "syn.json").read_text())["nodes"]]
    status, reply = post_json(port, "/graphs/syn.json", {"clerps": {ids[0]: "x" * (srv.MAX_LABEL_CHARS + 1)}})
    assert status == 400 and "labels over" in reply["error"]
    many = {**Q, "supernodes": [[f"g{i}", ids[0]] for i in range(srv.MAX_SUPERNODES + 1)]}
    assert post_json(port, "/graphs/syn.json", {"qParams": many})[0] == 400
    huge = {**Q, "sg_pos": "1" * (srv.MAX_QPARAMS_BYTES + 1)}
    assert post_json(port, "/graphs/syn.json", {"qParams": huge})[0] == 400
    # the largest allowed save, three times over, leaves the file the same size as after the first
    labels = {i: "y" * srv.MAX_LABEL_CHARS for i in ids}
    sizes = []
    for _ in range(3):
        assert post_json(port, "/graphs/syn.json", {"clerps": labels})[0] == 200
        sizes.append((gdir / "syn.json").stat().st_size)
    assert sizes[0] == sizes[1] == sizes[2]


@pytest.mark.parametrize(
    "body",
    [
        b'{"qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": "",'
        b' "extra": NaN}}',
        b'{"qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": "",'
        b' "extra": -Infinity}}',
        b'{"clerps": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    ],
    ids=["nan", "infinity", "deep"],
)
def test_nan_and_deeply_nested_saves_get_400(served, body):  # noqa: F811
    gdir, port = served
    before = (gdir / "syn.json").read_bytes()
    status, _, reply = request(port, "POST", "/graphs/syn.json", body, {"Content-Type": "application/json"})
    assert status == 400, reply
    assert (gdir / "syn.json").read_bytes() == before


def test_a_save_keeps_the_files_permissions(served):  # noqa: F811
    gdir, port = served
    path = gdir / "syn.json"
    path.chmod(0o644)
    assert post_json(port, "/graphs/syn.json", {"qParams": Q})[0] == 200
    assert path.stat().st_mode & 0o777 == 0o644
    path.chmod(0o640)
    assert post_json(port, "/graphs/syn.json", {"qParams": Q})[0] == 200
    assert path.stat().st_mode & 0o777 == 0o640
