"""``jcircuits attribute --dtype bfloat16`` runs mixed precision on the float32 node set and says so."""

from __future__ import annotations

import numpy as np

from jcircuits.cli import main
from jcircuits.graph import Graph


def test_bfloat16_run_keeps_the_float32_node_set_and_prints_its_precision(tmp_path, capsys):
    f32, b16 = tmp_path / "f32.safetensors", tmp_path / "b16.safetensors"
    assert main(["attribute", "--tokens", "1,5,9,33,7", "-q", "-o", str(f32)]) == 0
    capsys.readouterr()
    assert main(["attribute", "--tokens", "1,5,9,33,7", "-q", "--dtype", "bfloat16", "-o", str(b16)]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("precision:"))
    assert line.startswith("precision: mixed bfloat16 (float32 forward, node set and selection; rows from bfloat16")
    assert "features decided by round-off" in line
    a, b = Graph.load(f32), Graph.load(b16)
    assert b.settings["precision"]["mode"] == "mixed bfloat16" and a.settings["precision"]["mode"] == "float32"
    np.testing.assert_array_equal(b.active_features, a.active_features)
    np.testing.assert_array_equal(b.selected_features, a.selected_features)
    np.testing.assert_array_equal(b.logit_token_ids, a.logit_token_ids)
