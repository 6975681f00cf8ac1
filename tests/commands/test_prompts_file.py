"""``jcircuits attribute --prompts-file`` and ``--target-position`` on the embedded default, end to end."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from jcircuits.cli import main
from jcircuits.commands.attribute import prompt_slugs
from jcircuits.graph import Graph


def test_slugs_are_file_names_and_unique():
    assert prompt_slugs(["The capital, of Texas!", "the capital of texas", "?!", "x" * 80]) == [
        "the-capital-of-texas", "the-capital-of-texas-2", "prompt-2", "x" * 48,
    ]  # fmt: skip


def test_prompts_file_writes_a_graph_per_line_and_an_index(tmp_path):
    prompts = ["the capital of texas is", "", "2 plus 3 is", "the state containing dallas is"]
    (tmp_path / "prompts.txt").write_text("\n".join(prompts) + "\n")
    out = tmp_path / "graphs"
    argv = ["attribute", "--prompts-file", str(tmp_path / "prompts.txt"), "--graph-dir", str(out), "-q"]
    assert main([*argv, "--target-position=-2,-1"]) == 0  # "=": the value starts with "-"
    slugs = ["the-capital-of-texas-is", "2-plus-3-is", "the-state-containing-dallas-is"]
    index = json.loads((out / "graph-metadata.json").read_text())
    assert sorted(m["slug"] for m in index["graphs"]) == sorted(slugs)
    for slug, prompt in zip(slugs, [p for p in prompts if p], strict=True):
        g = Graph.load(out / f"{slug}.safetensors")
        assert g.input_string.endswith(prompt)
        T = g.n_pos
        assert sorted(set(g.logit_positions.tolist())) == [T - 2, T - 1]
        doc = json.loads((out / f"{slug}.json").read_text())
        logits = [n for n in doc["nodes"] if n["feature_type"] == "logit"]
        early = [n for n in logits if n["ctx_idx"] == T - 2]
        assert early and all(f' at {T - 2} "' in n["clerp"] and n["node_id"].endswith(f"_{T - 2}") for n in early)
        assert all(" at " not in n["clerp"] for n in logits if n["ctx_idx"] == T - 1)
    single = tmp_path / "single.safetensors"
    assert main(["attribute", "--prompt", prompts[2], "--target-position=-2,-1", "-q", "-o", str(single)]) == 0
    a, b = Graph.load(single), Graph.load(out / "2-plus-3-is.safetensors")
    assert np.array_equal(a.adjacency_matrix, b.adjacency_matrix)


@pytest.mark.skipif(jax.device_count() < 2, reason="needs XLA_FLAGS=--xla_force_host_platform_device_count=8")
def test_a_mesh_splits_the_prompts_file_and_the_graphs_do_not_change(tmp_path, capsys):
    prompts = ["the capital of texas is", "2 plus 3 is", "the state containing dallas is"]
    (tmp_path / "prompts.txt").write_text("\n".join(prompts) + "\n")
    argv = ["attribute", "--prompts-file", str(tmp_path / "prompts.txt"), "-q"]
    assert main([*argv, "--graph-dir", str(tmp_path / "one")]) == 0
    mesh = f"{jax.device_count()}x1"  # a data slice a device: each prompt runs on one device
    assert main([*argv, "--graph-dir", str(tmp_path / "two"), "--mesh", mesh]) == 0
    assert "attributed 3 prompts" in capsys.readouterr().out
    for slug in ("the-capital-of-texas-is", "2-plus-3-is", "the-state-containing-dallas-is"):
        a, b = (Graph.load(tmp_path / d / f"{slug}.safetensors") for d in ("one", "two"))
        assert np.array_equal(a.adjacency_matrix, b.adjacency_matrix), slug
        assert np.array_equal(a.active_features, b.active_features) and a.input_string == b.input_string
