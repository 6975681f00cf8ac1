"""circuit-tracer's feature-dashboard layout on disk, and ``FeatureStore`` to read one feature from it.

The conventions, as circuit-tracer's frontend reads them (``frontend/assets/feature_examples/
init-feature-examples.js``, ``frontend/assets/util.js``, ``frontend/feature_models.py``, ``frontend/local_server.py``
at decoderesearch/circuit-tracer):

- A feature folder ``DIR`` (on the Hub: ``<repo>/features/``) holds ``index.json.gz``: gzip-compressed JSON,
  indexed by layer (``index[layer]``; we write a list, one entry per layer in order, and read a list or an object
  keyed by the layer as a string). Each entry has ``filename`` (a file in ``DIR``) and ``offsets``: ``F + 1``
  byte offsets into that file, feature ``f`` of the layer occupying bytes ``offsets[f]`` to ``offsets[f + 1]``.
  The frontend asks for them with an HTTP ``Range: bytes=offsets[f]-offsets[f+1]`` (inclusive, so one byte more
  than the record; it decodes by the length prefix, so the extra byte is harmless).
- Each record is a 4-byte little-endian unsigned length ``n`` followed by ``n`` bytes of zlib-compressed (zlib
  header, ``pako.inflate``) UTF-8 JSON of circuit-tracer's feature model: ``transcoder_id`` (str), ``index``
  (int), ``examples_quantiles`` (list of ``{quantile_name: str, examples: [{tokens_acts_list: [float],
  train_token_ind: int, is_repeated_datapoint: bool, tokens: [str]}]}``), ``top_logits`` / ``bottom_logits``
  (lists of token strings), ``act_min``, ``act_max`` (float), ``quantile_values`` (list of float; the frontend
  reads entry ``i`` as the ``(i+1)``-th percentile, so we write 100 ascending values), ``histogram`` (list of
  counts over equal bins from ``act_min`` to ``act_max``) and ``activation_frequency`` (float in [0, 1]).
- The graph JSON names a feature by ``cantor_pairing(layer, feature) = (l+f)(l+f+1)/2 + f``; the frontend
  un-pairs that id to (layer, feature) to find the record. Inside the record, ``index`` is ours to choose (the
  frontend does not read it): we write the feature's index within its layer, and ``transcoder_id`` is
  ``"<scan>/<layer>"``.

Our own additions live beside these files, never inside the records: ``features.json`` (how the dashboards were
made) and ``labels.auto.json`` (automatic labels, ``label_source: "auto"``); labels people write go in
``labels.json`` (``{"layer/feature": "text"}``) and win over automatic ones in ``FeatureStore.label``.
"""

from __future__ import annotations

import gzip
import json
import os
import struct
import zlib
from pathlib import Path

__all__ = [
    "INDEX_NAME",
    "META_NAME",
    "AUTO_LABELS_NAME",
    "LABELS_NAME",
    "FeatureStore",
    "cantor_pairing",
    "cantor_unpair",
    "encode_record",
    "decode_record",
    "write_layer",
    "write_index",
    "layer_filename",
]

INDEX_NAME = "index.json.gz"
META_NAME = "features.json"
AUTO_LABELS_NAME = "labels.auto.json"
LABELS_NAME = "labels.json"
RECORD_FIELDS = (
    "transcoder_id",
    "index",
    "examples_quantiles",
    "top_logits",
    "bottom_logits",
    "act_min",
    "act_max",
    "quantile_values",
    "histogram",
    "activation_frequency",
)


def cantor_pairing(x: int, y: int) -> int:
    """The graph JSON's feature id of (layer ``x``, feature ``y``)."""
    return (x + y) * (x + y + 1) // 2 + y


def cantor_unpair(z: int) -> tuple[int, int]:
    """``(layer, feature)`` of a graph feature id (exact in integers, unlike a float square root)."""
    from math import isqrt

    w = (isqrt(8 * z + 1) - 1) // 2
    y = z - w * (w + 1) // 2
    return w - y, y


def layer_filename(layer: int) -> str:
    return f"layer_{layer}.bin"


def _record_json(record: dict) -> bytes:
    missing = [k for k in RECORD_FIELDS if k not in record]
    if missing:
        raise ValueError(f"feature record lacks the fields {missing}")
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode()


def _framed(body_json: bytes) -> bytes:
    body = zlib.compress(body_json, 6)
    return struct.pack("<I", len(body)) + body


def encode_record(record: dict) -> bytes:
    """One record: 4-byte little-endian length, then zlib-compressed compact JSON."""
    return _framed(_record_json(record))


def decode_record(data: bytes) -> dict:
    """The JSON of one record's bytes (extra trailing bytes, as a frontend range read gives, are ignored)."""
    if len(data) < 4:
        raise ValueError(f"a feature record is at least 4 bytes (its length), got {len(data)}")
    (n,) = struct.unpack("<I", data[:4])
    if len(data) < 4 + n:
        raise ValueError(f"feature record says {n} bytes but only {len(data) - 4} follow its length")
    return json.loads(zlib.decompress(data[4 : 4 + n]).decode())


def write_layer(path: Path, records) -> list[int]:
    """Write one layer's records (in feature order) to ``path``; returns the ``F + 1`` byte offsets."""
    from concurrent.futures import ThreadPoolExecutor
    from itertools import islice

    offsets = [0]
    tmp = path.with_name(path.name + ".tmp")
    it = iter(records)
    # zlib runs outside the GIL: a pool compresses one chunk of records while this thread builds the next one's
    with open(tmp, "wb") as f, ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1))) as pool:
        pending: list = []
        while True:
            chunk = [_record_json(r) for r in islice(it, 256)]
            for fut in pending:
                b = fut.result()
                f.write(b)
                offsets.append(offsets[-1] + len(b))
            if not chunk:
                break
            pending = [pool.submit(_framed, c) for c in chunk]
    os.replace(tmp, path)
    return offsets


def write_index(out_dir: Path, entries: list[dict]) -> Path:
    """``index.json.gz``: a list indexed by layer of ``{"filename", "offsets"}`` (byte-reproducible)."""
    path = Path(out_dir) / INDEX_NAME
    tmp = path.with_name(path.name + ".tmp")
    data = json.dumps(entries, separators=(",", ":")).encode("utf-8")
    # no time stamp or file name in the gzip header: the same dashboards give the same bytes
    tmp.write_bytes(gzip.compress(data, mtime=0))
    os.replace(tmp, path)
    return path


class FeatureStore:
    """Read feature dashboards from a circuit-tracer feature folder, one byte range per feature.

    ``source``: a local folder holding ``index.json.gz`` (ours or circuit-tracer's), or a Hub repository
    (``org/repo`` or ``hf://org/repo?revision=…``) whose ``features/`` folder holds it, through
    ``jcircuits.common.hub`` (offline mode and cache respected; the whole folder is fetched once).
    """

    def __init__(self, source: str | os.PathLike):
        p = Path(source)
        if p.is_dir():
            self.root = p
        elif p.exists():
            raise NotADirectoryError(f"{source} is a file; a feature store is a folder holding {INDEX_NAME}")
        else:
            from jcircuits.common.hub import hub_snapshot, parse_ref

            ref = parse_ref(str(source))
            if ref is None:
                raise FileNotFoundError(f"no feature folder {source!r} (a local folder or a hub repo)")
            sub = "/".join(x for x in ((ref.path or "").strip("/"), "features") if x)
            self.root = hub_snapshot(ref.repo_id, ["*"], revision=ref.revision, subdir=sub)
        index_path = self.root / INDEX_NAME
        if not index_path.is_file():
            raise FileNotFoundError(f"{self.root} has no {INDEX_NAME}: not a feature folder")
        with gzip.open(index_path, "rt", encoding="utf-8") as f:
            index = json.load(f)
        if isinstance(index, dict):
            index = [index[k] for k in sorted(index, key=int)]
        self.index: list[dict] = index
        self.meta = self._json(META_NAME)
        self._auto = self._json(AUTO_LABELS_NAME)
        self._human = self._json(LABELS_NAME)

    def _json(self, name: str) -> dict:
        p = self.root / name
        return json.loads(p.read_text()) if p.is_file() else {}

    @property
    def n_layers(self) -> int:
        return len(self.index)

    def n_features(self, layer: int) -> int:
        return len(self._entry(layer)["offsets"]) - 1

    def _entry(self, layer: int) -> dict:
        if not 0 <= layer < len(self.index):
            raise ValueError(f"layer {layer} is not in this feature store (layers 0 to {len(self.index) - 1})")
        return self.index[layer]

    def byte_range(self, layer: int, index: int) -> tuple[str, int, int]:
        """``(filename, start, end)`` of one record (``end`` exclusive)."""
        e = self._entry(layer)
        offs = e["offsets"]
        if not 0 <= index < len(offs) - 1:
            raise ValueError(f"feature {index} is not in layer {layer} (features 0 to {len(offs) - 2})")
        return e["filename"], int(offs[index]), int(offs[index + 1])

    def feature(self, layer: int, index: int) -> dict:
        """The record of feature ``index`` of ``layer``, reading only its bytes."""
        name, start, end = self.byte_range(layer, index)
        with open(self.root / name, "rb") as f:
            f.seek(start)
            data = f.read(end - start)
        return decode_record(data)

    def feature_by_id(self, node_feature: int) -> dict:
        """The record of a graph JSON feature id (``cantor_pairing(layer, feature)``)."""
        return self.feature(*cantor_unpair(int(node_feature)))

    def label(self, layer: int, index: int) -> dict | None:
        """``{"label", "label_source"}``: a person's label (``labels.json``, source ``"human"``) if there is
        one, else the automatic one (``labels.auto.json``, source ``"auto"``), else ``None``."""
        key = f"{layer}/{index}"
        if key in self._human:
            v = self._human[key]
            return {"label": v if isinstance(v, str) else v.get("label", ""), "label_source": "human"}
        return self._auto.get(key)
