"""What is not a transcoder set says what it is: pickles are never read, stray arrays and non-archives are named,
and nothing is mistaken for a missing directory."""

from __future__ import annotations

import numpy as np
import pytest

from jcircuits.transcoders import load_transcoders
from jcircuits_converters.transcoders import TranscoderFormatError


@pytest.mark.parametrize("name", ["transcoder.pt", "layer_0.pth", "pytorch_model.bin"])
def test_pickle_files_are_refused_as_pickles(tmp_path, name):
    (tmp_path / name).write_bytes(b"\x80\x04\x95not really a pickle")
    with pytest.raises(TranscoderFormatError, match="pickle file, and pickles are never read"):
        load_transcoders(tmp_path / name)
    with pytest.raises(TranscoderFormatError, match="pickle file"):
        load_transcoders([tmp_path / name])


def test_an_npy_array_or_other_file_is_not_a_transcoder(tmp_path):
    np.save(tmp_path / "W_enc.npy", np.zeros((4, 8), np.float32))
    with pytest.raises(TranscoderFormatError, match="is not a transcoder file: expected a config.yaml"):
        load_transcoders(tmp_path / "W_enc.npy")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(TranscoderFormatError, match="is not a transcoder file"):
        load_transcoders(tmp_path / "notes.txt")


def test_an_npz_that_is_not_an_archive_or_holds_objects_is_refused_without_unpickling(tmp_path):
    (tmp_path / "params.npz").write_bytes(b"\x80\x04 not a zip")
    with pytest.raises(TranscoderFormatError, match="not a NumPy .npz archive"):
        load_transcoders(tmp_path / "params.npz")
    f32 = np.zeros(4, np.float32)
    obj = np.array([{"a": 1}], dtype=object)
    np.savez(tmp_path / "obj.npz", W_enc=obj, W_dec=obj, b_enc=f32, b_dec=f32, threshold=f32)
    with pytest.raises(ValueError, match="allow_pickle"):
        load_transcoders(tmp_path / "obj.npz")


def test_a_missing_path_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="is no file, directory or Hub reference"):
        load_transcoders(tmp_path / "nope.yaml")
