"""A bounded fuzz of what people feed the tools: a few hundred mutated graph JSON files through ``render`` and the
viewer's validator, mutated graphs through the exporter, and mutated token lists through ``attribute --tokens``.
Every case ends with a result or a clear error (exit 2): never a hang, a traceback or a silent NaN. The time
bound is a hang guard (generous, as the suite shares a busy machine), not a speed claim; each test prints its
slowest case."""

from __future__ import annotations

import copy
import json
import math
import time

import numpy as np
import pytest
from synthetic import synthetic_graph

from jcircuits.cli import main

POOL = [None, True, -1, 0, 10**8, -(10**8), 2**63, 1.5, math.nan, math.inf, "", "E", "100000000", "-3", "x" * 300,
        [], {}, [[[]]], {"a": 1}]  # fmt: skip


def _mutate(doc: dict, rng: np.random.Generator) -> dict:
    doc = copy.deepcopy(doc)
    where = rng.integers(4)
    if where == 0:  # a node field
        n = doc["nodes"][rng.integers(len(doc["nodes"]))]
        key = list(n)[rng.integers(len(n))]
        if rng.random() < 0.15:
            del n[key]
        else:
            n[key] = POOL[rng.integers(len(POOL))]
    elif where == 1 and doc["links"]:  # a link field
        e = doc["links"][rng.integers(len(doc["links"]))]
        e[["source", "target", "weight"][rng.integers(3)]] = POOL[rng.integers(len(POOL))]
    elif where == 2:  # metadata
        m = doc["metadata"]
        m[list(m)[rng.integers(len(m))]] = POOL[rng.integers(len(POOL))]
    else:  # structure
        choice = rng.integers(4)
        if choice == 0:
            doc["nodes"].append(copy.deepcopy(doc["nodes"][0]))  # duplicate id
        elif choice == 1:
            doc[["nodes", "links", "metadata"][rng.integers(3)]] = POOL[rng.integers(len(POOL))]
        elif choice == 2:
            doc["qParams"] = POOL[rng.integers(len(POOL))]
        else:
            doc["nodes"] = doc["nodes"][: rng.integers(len(doc["nodes"]))]
    return doc


HANG_S = 60.0  # far above any case's time on an idle machine (< 2 s); only a hang exceeds it
SLOWEST: dict[str, float] = {}


def _check(argv, capsys, budget_s: float = HANG_S) -> int:
    t0 = time.perf_counter()
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    took = time.perf_counter() - t0
    err = capsys.readouterr().err
    assert code in (0, 2), (argv, code, err)
    assert "Traceback" not in err and (code == 0 or "error" in err), err
    assert took < budget_s, f"{argv} took {took:.1f} s"
    SLOWEST[argv[0]] = max(SLOWEST.get(argv[0], 0.0), took)
    return code


def test_mutated_graph_json_renders_or_is_refused(tmp_path, capsys):
    base = synthetic_graph(n_features=30, n_links=120)
    rng = np.random.default_rng(0)
    outcomes = []
    for i in range(300):
        doc = _mutate(base, rng)
        path = tmp_path / f"g{i}.json"
        path.write_text(json.dumps(doc, allow_nan=True))
        code = _check(["render", str(path), "-o", str(tmp_path / f"g{i}.svg")], capsys)
        outcomes.append(code)
        if code == 0:  # a picture came out: the document was a valid graph
            assert (tmp_path / f"g{i}.svg").stat().st_size > 0
    assert outcomes.count(2) > 100 and outcomes.count(0) > 10, (outcomes.count(0), outcomes.count(2))
    print(f"render: {outcomes.count(0)} drawn, {outcomes.count(2)} refused, slowest {SLOWEST['render']:.2f} s")


def test_mutated_graphs_export_or_are_refused(tmp_path):
    from random_demo import demo_model, demo_transcoders  # noqa: I001

    from jcircuits.attribution import attribute
    from jcircuits.graph import Graph
    from jcircuits.view.export import export_graph_json
    from jcircuits.view.render import render

    model = demo_model()
    g = attribute(model, demo_transcoders(model), "the capital of texas is", verbose=False)
    g.save(tmp_path / "g.safetensors")
    export_graph_json(g, "warm", tmp_path / "graphs")  # compiles the pruning once
    rng = np.random.default_rng(1)
    refused, slowest = 0, 0.0
    for i in range(40):
        h = Graph.load(tmp_path / "g.safetensors")
        A = np.array(h.adjacency_matrix)
        k = rng.integers(3)
        if k == 0:
            A[rng.integers(A.shape[0]), rng.integers(A.shape[1])] = [np.nan, np.inf, -np.inf][rng.integers(3)]
        elif k == 1:
            A *= float(rng.choice([0.0, 1e30, -1.0]))
        else:
            h.logit_probabilities = np.asarray(h.logit_probabilities) * float(rng.choice([0.0, 2.0]))
        h.adjacency_matrix = A
        t0 = time.perf_counter()
        try:
            res = export_graph_json(h, f"m{i}", tmp_path / "graphs")
        except ValueError as e:
            refused += 1
            assert str(e)
        else:
            doc = json.loads((tmp_path / "graphs" / f"m{i}.json").read_text())
            assert all(math.isfinite(e["weight"]) for e in doc["links"]) and res.n_nodes >= 0
            render(tmp_path / "graphs" / f"m{i}.json", tmp_path / f"m{i}.svg")
        took = time.perf_counter() - t0
        assert took < HANG_S
        slowest = max(slowest, took)
    assert refused > 0
    print(f"export: {refused} of 40 refused, slowest {slowest:.2f} s")


@pytest.mark.slow
def test_mutated_token_lists_attribute_or_are_refused(tmp_path, capsys):
    rng = np.random.default_rng(2)
    out = str(tmp_path / "g.safetensors")
    base = ["attribute", "-q", "-o", out, "--tokens"]
    _check([*base, "1,5,9,33,7"], capsys, budget_s=300)  # compiles the first shapes
    codes = []
    for _ in range(24):  # prompts of 0-8 ids share one length bucket, so few shapes compile
        n = int(rng.integers(0, 9))
        ids = [str(int(x)) for x in rng.integers(-3, 140, n)]  # the default vocabulary has 116 ids
        if rng.random() < 0.2:
            ids.insert(int(rng.integers(len(ids) + 1)), ["x", "", "1e3", "99999999999", " "][rng.integers(5)])
        codes.append(_check([*base, ",".join(ids)], capsys))
    assert codes.count(2) > 3 and codes.count(0) > 2, codes
    print(f"attribute --tokens: {codes.count(0)} traced, {codes.count(2)} refused, slowest {SLOWEST['attribute']:.2f} s")
