"""The feature files follow circuit-tracer's frontend conventions byte for byte (index by layer, F + 1 offsets,
a 4-byte little-endian length, zlib JSON, cantor ids, every field of its feature model with its type), and
FeatureStore reads them back one byte range at a time; labels: automatic ones apart, people's win."""

from __future__ import annotations

import gzip
import json
import struct
import zlib

import numpy as np
import pytest
from tiny import tiny_model, tiny_transcoders

from jcircuits.features import FeatureStore, auto_label, build_dashboards, cantor_pairing, cantor_unpair
from jcircuits.features.format import decode_record, encode_record, write_index, write_layer

F = 16
FIELDS = {
    "transcoder_id": str, "index": int, "examples_quantiles": list, "top_logits": list, "bottom_logits": list,
    "act_min": float, "act_max": float, "quantile_values": list, "histogram": list, "activation_frequency": float,
}


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    model = tiny_model("llama")
    tcs = tiny_transcoders(model.cfg, "plt", n_features=F)
    rng = np.random.default_rng(1)
    tokens = rng.integers(3, 97, (6, 10)).astype(np.int32)
    tokens[:, 0] = 1
    d = tmp_path_factory.mktemp("fmt")
    return build_dashboards(model, tcs, tokens, n_top=3, context=6, batch_size=3, out_dir=d, progress=False)


def test_index_offsets_and_records_follow_the_frontend(out):
    with gzip.open(out / "index.json.gz", "rt") as f:
        index = json.load(f)
    assert isinstance(index, list) and len(index) == 3
    for layer, entry in enumerate(index):
        data = (out / entry["filename"]).read_bytes()
        offs = entry["offsets"]
        assert len(offs) == F + 1 and offs[0] == 0 and offs[-1] == len(data)
        assert all(b > a for a, b in zip(offs, offs[1:], strict=False))
        for f in range(F):
            raw = data[offs[f] : offs[f] + (offs[f + 1] - offs[f]) + 1]  # the frontend's inclusive Range read
            (n,) = struct.unpack("<I", raw[:4])
            assert n == offs[f + 1] - offs[f] - 4
            rec = json.loads(zlib.decompress(raw[4 : 4 + n]))
            assert set(rec) == set(FIELDS)
            for k, t in FIELDS.items():
                assert isinstance(rec[k], t), (k, type(rec[k]))
            assert rec["index"] == f and rec["transcoder_id"] == f"tiny-llama/{layer}"
            assert len(rec["top_logits"]) == len(rec["bottom_logits"]) == 10
            assert all(isinstance(x, str) for x in rec["top_logits"] + rec["bottom_logits"])
            assert all(isinstance(x, int) for x in rec["histogram"])
            assert 0.0 <= rec["activation_frequency"] <= 1.0
            for q in rec["examples_quantiles"]:
                assert set(q) == {"quantile_name", "examples"} and isinstance(q["quantile_name"], str)
                for e in q["examples"]:
                    assert set(e) == {"tokens_acts_list", "train_token_ind", "is_repeated_datapoint", "tokens"}
                    assert isinstance(e["is_repeated_datapoint"], bool) and isinstance(e["train_token_ind"], int)
                    assert len(e["tokens"]) == len(e["tokens_acts_list"]) <= 6
                    assert 0 <= e["train_token_ind"] < len(e["tokens"])


def test_feature_store_reads_one_range_and_cantor_ids(out):
    store = FeatureStore(out)
    assert store.n_layers == 3 and store.n_features(2) == F
    name, start, end = store.byte_range(1, 5)
    assert decode_record((out / name).read_bytes()[start:end]) == store.feature(1, 5)
    for layer, feat in [(0, 0), (1, 5), (2, 15), (7, 123456)]:
        assert cantor_unpair(cantor_pairing(layer, feat)) == (layer, feat)
    assert store.feature_by_id(cantor_pairing(2, 7)) == store.feature(2, 7)
    with pytest.raises(ValueError, match="layer 3 is not in this feature store"):
        store.feature(3, 0)
    with pytest.raises(ValueError, match=f"feature {F} is not in layer 0"):
        store.feature(0, F)


def test_a_circuit_tracer_folder_indexed_by_layer_keys_reads_too(tmp_path):
    rec = dict(
        transcoder_id="x/0", index=0, examples_quantiles=[], top_logits=["a"], bottom_logits=["b"], act_min=0.0,
        act_max=1.0, quantile_values=[0.5], histogram=[1], activation_frequency=0.1,
    )
    offs = write_layer(tmp_path / "l0.bin", [rec, {**rec, "index": 1}])
    with gzip.open(tmp_path / "index.json.gz", "wt") as f:
        json.dump({"0": {"filename": "l0.bin", "offsets": offs}}, f)
    assert FeatureStore(tmp_path).feature(0, 1)["index"] == 1
    write_index(tmp_path, [{"filename": "l0.bin", "offsets": offs}])
    assert FeatureStore(tmp_path).feature(0, 0) == rec
    with pytest.raises(ValueError, match="lacks the fields"):
        encode_record({"index": 0})
    with pytest.raises(ValueError, match="only 2 follow"):
        decode_record(struct.pack("<I", 10) + b"ab")


def test_missing_folders_and_offline_hub_repos_are_clear(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="has no index.json.gz"):
        FeatureStore(tmp_path)
    (tmp_path / "f").write_text("x")
    with pytest.raises(NotADirectoryError):
        FeatureStore(tmp_path / "f")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match="no-such-org/no-such-repo"):
        FeatureStore("no-such-org/no-such-repo")


def test_labels_are_automatic_apart_from_peoples(out):
    store = FeatureStore(out)
    lab = store.label(0, 0)
    assert lab["label_source"] == "auto" and "→" in lab["label"]
    rec = {
        "examples_quantiles": [{"quantile_name": "Top activations", "examples": [
            {"tokens": ["the", " dallas"], "train_token_ind": 1}, {"tokens": [" houston"], "train_token_ind": 0},
            {"tokens": ["dallas"], "train_token_ind": 0}]}],
        "top_logits": [" austin", " texas", " ohio"],
    }
    assert auto_label(rec) == "dallas, houston → austin, texas"
    assert auto_label({"examples_quantiles": [], "top_logits": ["a"]}) == "(never active) → a"
    # a feature firing on a common token is named by the rare tokens before it in several of its top examples
    ctx = {
        "examples_quantiles": [{"quantile_name": "Top activations", "examples": [
            {"tokens": ["the", "state", "of", "waco", "is"], "train_token_ind": 4},
            {"tokens": ["in", "lubbock", "is"], "train_token_ind": 2},
            {"tokens": ["waco", ".", "the", "state", "of", "lubbock", "is", "waco"], "train_token_ind": 6},
            {"tokens": ["rome", "is"], "train_token_ind": 1}]}],
        "top_logits": ["texas", "austin"],
    }
    freq = {"is": 0.1, "the": 0.1, "state": 0.05, "of": 0.05, ".": 0.1, "in": 0.02, "waco": 0.001,
            "lubbock": 0.002, "rome": 0.001}
    # waco twice before the firing token (its third time is after it), lubbock twice, rome once (too few)
    assert auto_label(ctx, token_frequency=freq) == "is after waco, lubbock → texas, austin"
    assert auto_label(ctx) == "is → texas, austin"  # no corpus counts: no context
    assert auto_label(rec, token_frequency=freq) == "dallas, houston → austin, texas"  # rare: named by itself
    (out / "labels.json").write_text(json.dumps({"0/0": "my label"}))
    try:
        assert FeatureStore(out).label(0, 0) == {"label": "my label", "label_source": "human"}
        assert FeatureStore(out).label(0, 1)["label_source"] == "auto"
    finally:
        (out / "labels.json").unlink()
