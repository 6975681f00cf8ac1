"""Files the tools write honour the umask (as ``open()`` does), instead of ``mkstemp``'s 0600."""

from __future__ import annotations

import os

import pytest

from jcircuits.cli import main


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_attribute_outputs_honour_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        code = main(["attribute", "--tokens", "1,5,9,33", "-q", "-o", str(tmp_path / "g.safetensors"),
                     "--graph-dir", str(tmp_path / "graphs")])  # fmt: skip
        assert code == 0
        assert main(["render", str(tmp_path / "g.safetensors"), "-o", str(tmp_path / "g.svg")]) == 0
    finally:
        os.umask(old)
    want = 0o666 & ~umask
    for f in ["g.safetensors", "g.svg", "graphs/g.json", "graphs/graph-metadata.json"]:
        assert (tmp_path / f).stat().st_mode & 0o777 == want, f
