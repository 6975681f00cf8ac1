"""Static pictures of a pruned attribution graph: SVG written directly, PNG drawn with Pillow, same layout.

The layout is the viewer's: one row per layer (token embeddings at the bottom, logits on top), one column per
prompt position, each column as wide as its fullest (row, position) cell in node slots (at least 3), nodes of a
cell centred side by side — features before errors, most influential first. Edges are straight lines coloured
by sign (blue positive, red negative) and binned into 6 strengths by ``sqrt(|w| / max|w|)``, weakest drawn
first; each bin is one SVG path, so a 100k-edge picture stays a small file. Input is a graph document (the
dict `jcircuits.view.export.graph_to_json` makes, or a saved ``<slug>.json``), so node labels edited in the viewer
show up in the picture.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from jcircuits.graph import Graph
from jcircuits.view.export import graph_to_json, validate_graph_json

__all__ = [
    "Layout",
    "compute_layout",
    "render_svg",
    "render_png",
    "render",
    "load_document",
    "GraphPicture",
    "show_graph",
]

MIN_SLOTS = 3
LEVELS = 6
MARGIN = {"left": 48, "right": 18, "top": 70, "bottom": 40}
_POS, _NEG = (43, 108, 176), (197, 48, 48)
_FILL = {"feature": "#fbf4e6", "error": "#d5d9df", "embedding": "#d7f0dd", "logit": "#e8defa"}
_STROKE = {"feature": "#8c6d3f", "error": "#7b8794", "embedding": "#3f7d50", "logit": "#6b46c1"}
_KIND = {
    "cross layer transcoder": "feature",
    "mlp reconstruction error": "error",
    "embedding": "embedding",
    "logit": "logit",
}


@dataclasses.dataclass
class Layout:
    """Pixel positions of every node of a graph document on a ``width × height`` canvas.

    ``x, y [N]`` node centres, ``kinds [N]`` (feature/error/embedding/logit), ``radius`` the node size,
    ``rows`` the number of rows, ``row_y [rows]`` row centres (row 0 = embeddings), ``col_x [T + 1]`` column
    edges, ``tokens [T]`` the prompt tokens."""

    width: int
    height: int
    x: list[float]
    y: list[float]
    kinds: list[str]
    radius: float
    rows: int
    row_y: list[float]
    col_x: list[float]
    tokens: list[str]


def _token_text(s: str) -> str:
    return str(s).replace("\n", "⏎").replace("\t", "→").replace("\r", "↵")


def compute_layout(doc: dict[str, Any], width: int = 1200, height: int = 700) -> Layout:
    """Place the nodes of ``doc`` (layer rows × position columns; see the module docstring)."""
    nodes = doc["nodes"]
    kinds = [_KIND.get(n["feature_type"], "feature") for n in nodes]
    rows = [0] * len(nodes)
    max_row = 0
    for i, (n, k) in enumerate(zip(nodes, kinds, strict=True)):
        if k == "embedding":
            rows[i] = 0
        elif k != "logit":
            try:
                rows[i] = int(n["layer"]) + 1
            except ValueError:
                rows[i] = 1
            max_row = max(max_row, rows[i])
    logit_row = max_row + 1
    for n, k in zip(nodes, kinds, strict=True):
        if k == "logit" and n["layer"].lstrip("-").isdigit():
            logit_row = max(logit_row, int(n["layer"]))
    rows = [logit_row if k == "logit" else r for r, k in zip(rows, kinds, strict=True)]
    n_rows = logit_row + 1
    tokens = [str(t) for t in doc["metadata"]["prompt_tokens"]]
    n_pos = max([len(tokens)] + [n["ctx_idx"] + 1 for n in nodes])

    cells: dict[tuple[int, int], list[int]] = {}
    for i, n in enumerate(nodes):
        cells.setdefault((rows[i], n["ctx_idx"]), []).append(i)
    type_order = {"feature": 0, "error": 1, "embedding": 2, "logit": 3}
    slot = [0.0] * len(nodes)
    col_slots = [MIN_SLOTS] * n_pos
    for (_, pos), members in cells.items():
        members.sort(
            key=lambda i: (
                type_order[kinds[i]],
                2.0 if nodes[i].get("influence") is None else nodes[i]["influence"],
                nodes[i]["node_id"],
            )
        )
        for k, i in enumerate(members):
            slot[i] = k - (len(members) - 1) / 2
        col_slots[pos] = max(col_slots[pos], len(members))

    W = max(width - MARGIN["left"] - MARGIN["right"], 50)
    H = max(height - MARGIN["top"] - MARGIN["bottom"], 50)
    slot_w = W / sum(col_slots)
    col_x = [0.0]
    for s in col_slots:
        col_x.append(col_x[-1] + s * slot_w)
    col_x = [MARGIN["left"] + c for c in col_x]
    row_h = H / n_rows
    row_y = [MARGIN["top"] + (n_rows - 1 - r + 0.5) * row_h for r in range(n_rows)]
    xs = [(col_x[n["ctx_idx"]] + col_x[n["ctx_idx"] + 1]) / 2 + slot[i] * slot_w for i, n in enumerate(nodes)]
    ys = [row_y[r] for r in rows]
    radius = min(max(0.42 * slot_w, 1.5), 7.0)
    return Layout(width, height, xs, ys, kinds, radius, n_rows, row_y, col_x, tokens)


def _edge_bins(doc: dict[str, Any]) -> list[list[tuple[int, int]]]:
    """Links as (source, target) node indices in ``2 × LEVELS`` bins: positive levels then negative."""
    ids = {n["node_id"]: i for i, n in enumerate(doc["nodes"])}
    links = doc["links"]
    max_abs = max((abs(e["weight"]) for e in links), default=0.0)
    bins: list[list[tuple[int, int]]] = [[] for _ in range(2 * LEVELS)]
    if max_abs == 0:
        return bins
    for e in links:
        w = e["weight"]
        level = min(LEVELS - 1, int(LEVELS * math.sqrt(abs(w) / max_abs)))
        bins[(LEVELS if w < 0 else 0) + level].append((ids[e["source"]], ids[e["target"]]))
    return bins


def _edge_style(b: int) -> tuple[tuple[int, int, int], float, float]:
    level = b % LEVELS
    return (_NEG if b >= LEVELS else _POS), 0.07 + 0.13 * level, 0.5 + 0.45 * level


def _logit_label(node: dict[str, Any]) -> str:
    clerp = node.get("clerp") or ""
    if clerp.startswith('Output "') and clerp.endswith(")") and '" (p=' in clerp:
        tok, _, p = clerp[len('Output "') : -1].rpartition('" (p=')
        return f"{_token_text(tok)} {p}"
    return clerp or node["node_id"]


def _row_name(r: int, rows: int) -> str:
    return "Emb" if r == 0 else "Logit" if r == rows - 1 else f"L{r - 1}"


def _node_points(kind: str, x: float, y: float, r: float) -> list[tuple[float, float]] | None:
    """Polygon corners of a node's shape (None = circle)."""
    if kind == "feature":
        return None
    if kind == "error":
        a = 0.85 * r
        return [(x - a, y - a), (x + a, y - a), (x + a, y + a), (x - a, y + a)]
    if kind == "embedding":
        return [
            (x - 1.1 * r, y - 0.75 * r),
            (x + 1.1 * r, y - 0.75 * r),
            (x + 1.1 * r, y + 0.75 * r),
            (x - 1.1 * r, y + 0.75 * r),
        ]
    return [(x, y - 1.2 * r), (x + 1.2 * r, y), (x, y + 1.2 * r), (x - 1.2 * r, y)]


def render_svg(doc: dict[str, Any], width: int = 1200, height: int = 700) -> str:
    """The graph as a standalone SVG document (string)."""
    lay = compute_layout(doc, width, height)
    f = lambda v: f"{v:.1f}"  # noqa: E731
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif">',
        f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
        '<g stroke="#eef0f3" stroke-width="1">',
    ]
    top, bottom = lay.row_y[-1] - 20, lay.row_y[0] + 20
    for y in lay.row_y:
        out.append(f'<line x1="{MARGIN["left"]}" y1="{f(y)}" x2="{width - MARGIN["right"]}" y2="{f(y)}"/>')
    for x in lay.col_x:
        out.append(f'<line x1="{f(x)}" y1="{f(top)}" x2="{f(x)}" y2="{f(bottom)}"/>')
    out.append("</g>")
    out.append('<g font-size="11" fill="#8a94a3" text-anchor="end">')
    for r, y in enumerate(lay.row_y):
        out.append(f'<text x="{MARGIN["left"] - 8}" y="{f(y + 4)}">{_row_name(r, lay.rows)}</text>')
    out.append("</g>")
    for b, pairs in enumerate(_edge_bins(doc)):
        if not pairs:
            continue
        (cr, cg, cb), alpha, lw = _edge_style(b)
        d = "".join(f"M{f(lay.x[s])} {f(lay.y[s])}L{f(lay.x[t])} {f(lay.y[t])}" for s, t in pairs)
        out.append(
            f'<path d="{d}" fill="none" stroke="rgb({cr},{cg},{cb})" stroke-opacity="{alpha:.2f}" '
            f'stroke-width="{lw:.2f}"/>'
        )
    out.append('<g stroke-width="1">')
    for i, n in enumerate(doc["nodes"]):
        kind, x, y, r = lay.kinds[i], lay.x[i], lay.y[i], lay.radius
        style = f'fill="{_FILL[kind]}" stroke="{_STROKE[kind]}"'
        title = f"<title>{escape(n.get('clerp') or n['node_id'])}</title>"
        pts = _node_points(kind, x, y, r)
        if pts is None:
            out.append(f'<circle cx="{f(x)}" cy="{f(y)}" r="{f(r)}" {style}>{title}</circle>')
        else:
            p = " ".join(f"{f(a)},{f(c)}" for a, c in pts)
            out.append(f'<polygon points="{p}" {style}>{title}</polygon>')
    out.append("</g>")
    out.append('<g font-size="12" fill="#1f2933" text-anchor="middle">')
    for p, tok in enumerate(lay.tokens):
        cx = (lay.col_x[p] + lay.col_x[p + 1]) / 2
        out.append(f'<text x="{f(cx)}" y="{f(bottom + 16)}">{escape(_token_text(tok))}</text>')
    out.append("</g>")
    out.append('<g font-size="11" fill="#1f2933">')
    for i, n in enumerate(doc["nodes"]):
        if lay.kinds[i] == "logit":
            x, y = lay.x[i], lay.y[i] - lay.radius - 4
            out.append(
                f'<text x="{f(x)}" y="{f(y)}" transform="rotate(-60 {f(x)} {f(y)})">'
                f"{escape(_logit_label(n))}</text>"
            )
    out.append("</g></svg>")
    return "\n".join(out)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.truetype("DejaVuSans.ttf", size)
    except OSError:
        return ImageFont.load_default(size=size)


def render_png(doc: dict[str, Any], width: int = 1200, height: int = 700, *, scale: int = 2) -> bytes:
    """The graph as PNG bytes, drawn with Pillow at ``scale`` × the layout's size (same picture as the SVG)."""
    from PIL import Image, ImageDraw

    lay = compute_layout(doc, width, height)
    s = float(scale)
    # an RGB image drawn through an "RGBA" Draw blends translucent strokes (an RGBA image would overwrite)
    im = Image.new("RGB", (int(width * s), int(height * s)), (255, 255, 255))
    draw = ImageDraw.Draw(im, "RGBA")
    top, bottom = lay.row_y[-1] - 20, lay.row_y[0] + 20
    grid = (238, 240, 243, 255)
    for y in lay.row_y:
        draw.line([(MARGIN["left"] * s, y * s), ((width - MARGIN["right"]) * s, y * s)], fill=grid, width=1)
    for x in lay.col_x:
        draw.line([(x * s, top * s), (x * s, bottom * s)], fill=grid, width=1)
    small, normal = _font(int(11 * s)), _font(int(12 * s))
    for r, y in enumerate(lay.row_y):
        draw.text(
            ((MARGIN["left"] - 8) * s, y * s),
            _row_name(r, lay.rows),
            fill=(138, 148, 163, 255),
            font=small,
            anchor="rm",
        )
    for b, pairs in enumerate(_edge_bins(doc)):
        (cr, cg, cb), alpha, lw = _edge_style(b)
        color, w = (cr, cg, cb, round(255 * alpha)), max(1, round(lw * s))
        for src, tgt in pairs:
            draw.line(
                [(lay.x[src] * s, lay.y[src] * s), (lay.x[tgt] * s, lay.y[tgt] * s)], fill=color, width=w
            )
    for i, kind in enumerate(lay.kinds):
        x, y, r = lay.x[i] * s, lay.y[i] * s, lay.radius * s
        pts = _node_points(kind, x, y, r)
        style = dict(fill=_FILL[kind], outline=_STROKE[kind], width=max(1, round(s)))
        if pts is None:
            draw.ellipse([x - r, y - r, x + r, y + r], **style)
        else:
            draw.polygon(pts, **style)
    for p, tok in enumerate(lay.tokens):
        cx = (lay.col_x[p] + lay.col_x[p + 1]) / 2
        draw.text(
            (cx * s, (bottom + 12) * s), _token_text(tok), fill=(31, 41, 51, 255), font=normal, anchor="mm"
        )
    for i, n in enumerate(doc["nodes"]):
        if lay.kinds[i] != "logit":
            continue
        text = _logit_label(n)
        box = draw.textbbox((0, 0), text, font=small)
        label = Image.new("RGBA", (box[2] + 4, box[3] + 4), (255, 255, 255, 0))
        ImageDraw.Draw(label).text((2, 2), text, fill=(31, 41, 51, 255), font=small)
        label = label.rotate(60, expand=True, resample=Image.BICUBIC)
        # the text starts at the node and rises to the right (as the SVG's rotate(-60) about its start)
        x0, y0 = lay.x[i] * s, (lay.y[i] - lay.radius - 4) * s
        im.paste(label, (max(int(x0), 0), max(int(y0 - label.height), 0)), label)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def load_document(
    source,
    node_threshold: float = 0.8,
    edge_threshold: float = 0.98,
    *,
    tokenizer=None,
) -> dict[str, Any]:
    """A graph document from a `Graph`, a graph file (``.safetensors``, pruned here), a graph JSON (``.json``,
    used as saved, annotations included) or a document dict."""
    if isinstance(source, dict):
        validate_graph_json(source)
        return source
    if isinstance(source, Graph):
        return graph_to_json(source, "graph", node_threshold, edge_threshold, tokenizer=tokenizer)[0]
    path = Path(os.fspath(source))
    if not path.exists():
        raise FileNotFoundError(f"no such graph file: {path}")
    if not path.is_file():
        raise ValueError(f"{path} is a directory, not a graph file (.safetensors or .json)")
    if path.suffix == ".json":
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise ValueError(f"{path} is not valid JSON ({e})") from e
        try:
            validate_graph_json(doc)
        except ValueError as e:
            raise ValueError(f"{path} is not a graph JSON: {e}") from e
        return doc
    graph = Graph.load(path)
    return graph_to_json(
        graph, path.stem.replace(" ", "_") or "graph", node_threshold, edge_threshold, tokenizer=tokenizer
    )[0]


def render(
    source,
    out: str | os.PathLike,
    node_threshold: float = 0.8,
    edge_threshold: float = 0.98,
    *,
    tokenizer=None,
    width: int = 1200,
    height: int = 700,
) -> Path:
    """Write a picture of ``source`` (see `load_document`) to ``out``; the format follows its suffix
    (``.svg`` or ``.png``)."""
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in (".svg", ".png"):
        raise ValueError(f"cannot tell the picture format of {out}: use a .svg or .png file name")
    doc = load_document(source, node_threshold, edge_threshold, tokenizer=tokenizer)
    out.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".svg":
        out.write_text(render_svg(doc, width, height), encoding="utf-8")
    else:
        out.write_bytes(render_png(doc, width, height))
    return out


class GraphPicture:
    """A picture of a graph that notebooks display inline (``_repr_svg_`` / ``_repr_png_``)."""

    def __init__(self, doc: dict[str, Any], width: int = 1000, height: int = 600):
        self.doc, self.width, self.height = doc, width, height

    def _repr_svg_(self) -> str:
        return render_svg(self.doc, self.width, self.height)

    def _repr_png_(self) -> bytes:
        return render_png(self.doc, self.width, self.height)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the picture; ``.svg`` or ``.png`` by suffix."""
        return render(self.doc, path, width=self.width, height=self.height)

    def __repr__(self) -> str:
        return f"<GraphPicture {len(self.doc['nodes'])} nodes, {len(self.doc['links'])} links>"


def show_graph(
    graph,
    node_threshold: float = 0.8,
    edge_threshold: float = 0.98,
    *,
    tokenizer=None,
    width: int = 1000,
    height: int = 600,
) -> GraphPicture:
    """A picture of the pruned ``graph`` (a `Graph`, a graph file or a graph JSON) that a notebook displays inline
    (SVG, or PNG via ``_repr_png_``); ``.save("g.svg"|"g.png")`` writes it. Layout as ``jcircuits render`` and the
    viewer."""
    return GraphPicture(load_document(graph, node_threshold, edge_threshold, tokenizer=tokenizer), width, height)
