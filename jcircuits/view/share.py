"""One self-contained HTML file of a graph: the viewer's page with its script and style inline, the graph JSON,
and the dashboards of the features the graph shows, so it opens from disk (``file://``) or any static host with
no server. It is read-only: pins, labels and supernodes can be changed and shared by URL, not saved.

The data rides in ``window.JC_SHARED = {"graph": <graph JSON>, "features": {"layer/index": {"record", "label",
"label_source"}}, "transcoder_kind"}``, each dashboard in the shape the server's ``/features/<layer>/<index>.json``
answers with. Every ``<`` in it is written ``\\u003c`` (and U+2028/U+2029 escaped), so no label or token can
end the script element early.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jcircuits.features.format import FeatureStore
from jcircuits.features.labels import auto_label
from jcircuits.view.export import validate_graph_json, write_text_atomic
from jcircuits.view.server import STATIC_DIR, pick_store

__all__ = ["share_html", "write_share_html", "embedded_features"]

_FEATURE = "cross layer transcoder"


def embedded_features(doc: dict[str, Any], store: FeatureStore) -> dict[str, dict]:
    """``{"layer/index": {"record", "label", "label_source"}}`` for every feature node of ``doc``, read from
    ``store`` (the automatic label computed from the record when the store ships none)."""
    out: dict[str, dict] = {}
    for n in doc["nodes"]:
        if n["feature_type"] != _FEATURE:
            continue
        layer, index = (int(x) for x in n["node_id"].split("_")[:2])
        key = f"{layer}/{index}"
        if key in out:
            continue
        try:
            record = store.feature(layer, index)
        except ValueError as e:
            raise ValueError(
                f"the dashboards in {store.root} do not fit this graph's feature {key}: {e}"
            ) from None
        label = store.label(layer, index) or {"label": auto_label(record), "label_source": "auto"}
        out[key] = {"record": record, **label}
    return out


def _script_json(obj: Any) -> str:
    text = json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def share_html(
    doc: dict[str, Any], features: dict[str, dict] | None = None, *, kind: str | None = None
) -> str:
    """The HTML text of the one-file viewer for graph ``doc`` (validated) with ``features`` embedded; ``kind``
    (``"plt"``/``"clt"``, from the dashboards' store) names the transcoders in the details pane."""
    validate_graph_json(doc)
    page = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    css = (STATIC_DIR / "viewer.css").read_text(encoding="utf-8")
    js = (STATIC_DIR / "viewer.js").read_text(encoding="utf-8")
    link = '<link rel="stylesheet" href="static/viewer.css">'
    script = '<script src="static/viewer.js"></script>'
    if link not in page or script not in page:
        raise RuntimeError(
            f"{STATIC_DIR / 'index.html'} no longer links viewer.css / viewer.js as share expects"
        )
    data = _script_json({"graph": doc, "features": features or {}, "transcoder_kind": kind})
    page = page.replace(link, f"<style>\n{css}</style>")
    return page.replace(script, f"<script>window.JC_SHARED = {data};</script>\n<script>\n{js}</script>")


def write_share_html(
    doc: dict[str, Any], out: str | os.PathLike, stores: Sequence[FeatureStore] = ()
) -> tuple[Path, int, str | None]:
    """Write the one-file viewer of ``doc`` to ``out`` with the dashboards of its features from the store made
    for its transcoders (see `jcircuits.view.server.pick_store`). Returns (path, number of dashboards, a note
    when there were none for these transcoders)."""
    note, kind = None, None
    features: dict[str, dict] = {}
    try:
        store = pick_store(list(stores), doc["metadata"].get("scan"))
        features, kind = embedded_features(doc, store), store.meta.get("kind")
    except LookupError as e:
        note = str(e)
    path = Path(out)
    write_text_atomic(path, share_html(doc, features, kind=kind))
    return path, len(features), note
