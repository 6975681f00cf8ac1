"""Static pictures of a pruned attribution graph: SVG written directly, PNG drawn with Pillow, same layout.

The layout is the viewer's: one row per layer (token embeddings at the bottom, logits on top), one column per
prompt position, each column as wide as its fullest (row, position) cell in node slots (at least 3), nodes of a
cell centred side by side — features before errors, most influential first. Edges are straight lines coloured
by sign (blue positive, red negative) and binned into 6 strengths by ``sqrt(|w| / max|w|)``, weakest drawn
first; each bin is one SVG path, so a 100k-edge picture stays a small file. Input is a graph document (the
dict `jcircuits.view.export.graph_to_json` makes, or a saved ``<slug>.json``), so node labels edited in the viewer
show up in the picture.

Around the graph: the slug as a title and the prompt above it, a legend below the tokens, and node labels beside
nodes (people's labels, else the automatic labels of a feature store when one is given), placed most
influential first where they overlap nothing already drawn. Feature nodes are sized by influence as in the
viewer. The margins are sized from the text, so rotated logit labels are never cut off.
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
from jcircuits.view.export import graph_to_json, validate_graph_json, view_document

__all__ = [
    "Layout",
    "compute_layout",
    "render_svg",
    "render_png",
    "render",
    "load_document",
    "GraphPicture",
    "show_graph",
    "node_labels",
]

MIN_SLOTS = 3
LEVELS = 6
MARGIN = {"left": 48, "right": 18, "top": 70, "bottom": 40}  # the least; text widens them (`_margins`)
TITLE_H = 40  # title and prompt lines above the graph
LEGEND_H = 22  # the legend line below the tokens
MAX_LABELS = 200
_CHAR_W = 0.6  # average glyph width of the sans font, in font sizes (for sizing margins and label boxes)
# feature nodes by influence, as in the viewer: the most influential quarter largest and darkest
_INFL_BINS = (0.25, 0.5, 0.75, math.inf)
_INFL_SIZE = (1.4, 1.15, 0.95, 0.8)
_INFL_FILL = ("#e8a33d", "#f1c27d", "#f7dfb5", "#fbf4e6")
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
    margin: dict[str, float] = dataclasses.field(default_factory=lambda: dict(MARGIN))


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

    margin = _margins(doc, width)
    W = max(width - margin["left"] - margin["right"], 50)
    H = max(height - margin["top"] - margin["bottom"], 50)
    slot_w = W / sum(col_slots)
    col_x = [0.0]
    for s in col_slots:
        col_x.append(col_x[-1] + s * slot_w)
    col_x = [margin["left"] + c for c in col_x]
    row_h = H / n_rows
    row_y = [margin["top"] + (n_rows - 1 - r + 0.5) * row_h for r in range(n_rows)]
    xs = [(col_x[n["ctx_idx"]] + col_x[n["ctx_idx"] + 1]) / 2 + slot[i] * slot_w for i, n in enumerate(nodes)]
    ys = [row_y[r] for r in rows]
    radius = min(max(0.42 * slot_w, 1.5), 7.0)
    return Layout(width, height, xs, ys, kinds, radius, n_rows, row_y, col_x, tokens, margin)


def _text_w(text: str, size: float) -> float:
    return _CHAR_W * size * len(text)


def _margins(doc: dict[str, Any], width: float) -> dict[str, float]:
    """Margins that hold the title, the rotated (60°) logit labels, the tokens and the legend (wrapped to
    ``width``)."""
    widest = max((_text_w(_logit_label(n), 11) for n in doc["nodes"] if n["feature_type"] == "logit"), default=0)
    return {
        "left": MARGIN["left"],
        "right": max(MARGIN["right"], 0.5 * widest + 12),  # cos 60° of the label's length
        "top": max(MARGIN["top"], TITLE_H + 0.87 * widest + 16),  # sin 60°
        "bottom": MARGIN["bottom"] + LEGEND_H * (1 + _legend_items(width)[-1][2]),
    }


def _influence_bin(node: dict[str, Any]) -> int:
    v = node.get("influence")
    return 3 if v is None else next(b for b, top in enumerate(_INFL_BINS) if v <= top)


def _node_style(node: dict[str, Any], kind: str, radius: float) -> tuple[str, float]:
    """(fill colour, radius) of a node: features by influence bin, the rest by kind."""
    if kind != "feature":
        return _FILL[kind], radius
    b = _influence_bin(node)
    return _INFL_FILL[b], radius * _INFL_SIZE[b]


def node_labels(doc: dict[str, Any], store=None) -> dict[str, str]:
    """``{node_id: label}`` for features and errors: the node's clerp (a person's label), else the automatic
    label ``store`` (a `jcircuits.features.FeatureStore`) holds for the feature."""
    out = {}
    for n in doc["nodes"]:
        if n["feature_type"] not in ("cross layer transcoder", "mlp reconstruction error"):
            continue
        if n.get("clerp"):
            out[n["node_id"]] = n["clerp"]
        elif store is not None and n["feature_type"] == "cross layer transcoder":
            layer, index = (int(x) for x in n["node_id"].split("_")[:2])
            try:
                lab = store.label(layer, index)
            except ValueError:  # the store does not have this feature
                lab = None
            if lab and lab.get("label"):
                out[n["node_id"]] = lab["label"]
    return out


def _place_labels(doc: dict[str, Any], lay: Layout, labels: dict[str, str], size: float = 10):
    """``[(x, y, text)]``: labels right (else left) of their nodes, most influential first, where they overlap
    neither a node nor a label already placed, inside the graph area; at most ``MAX_LABELS``."""
    taken = [(x - lay.radius * 1.4, y - lay.radius * 1.4, x + lay.radius * 1.4, y + lay.radius * 1.4)
             for x, y in zip(lay.x, lay.y, strict=True)]  # fmt: skip
    order = sorted(range(len(doc["nodes"])), key=lambda i: (doc["nodes"][i].get("influence") is None,
                                                            doc["nodes"][i].get("influence") or 0.0))  # fmt: skip
    placed = []
    right = lay.width - lay.margin["right"]
    for i in order:
        text = labels.get(doc["nodes"][i]["node_id"])
        if not text or len(placed) >= MAX_LABELS:
            continue
        text = text if len(text) <= 30 else text[:29] + "…"
        w, off = _text_w(text, size), lay.radius * 1.4 + 3
        for x0 in (lay.x[i] + off, lay.x[i] - off - w):
            box = (x0 - 1, lay.y[i] - size * 0.7, x0 + w + 1, lay.y[i] + size * 0.7)
            inside = box[0] >= 0 and box[2] <= right
            if inside and not any(a[0] < box[2] and box[0] < a[2] and a[1] < box[3] and box[1] < a[3] for a in taken):
                taken.append(box)
                placed.append((x0, lay.y[i], text))
                break
    return placed


_LEGEND = [
    ("feature", "feature (larger, darker: more influential)"),
    ("error", "error"),
    ("embedding", "token"),
    ("logit", "logit"),
]


def _title_lines(doc: dict[str, Any]) -> tuple[str, str]:
    meta = doc["metadata"]
    title = str(meta.get("slug") or "graph")
    prompt = _token_text(meta.get("prompt") or "")
    return title, (prompt if len(prompt) <= 160 else prompt[:159] + "…")


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


def render_svg(doc: dict[str, Any], width: int = 1200, height: int = 700, *, labels: dict[str, str] | None = None) -> str:
    """The graph as a standalone SVG document (string); ``labels`` ``{node_id: text}`` are drawn beside nodes
    (`node_labels` makes them)."""
    lay = compute_layout(doc, width, height)
    f = lambda v: f"{v:.1f}"  # noqa: E731
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif">',
        f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
        '<g stroke="#eef0f3" stroke-width="1">',
    ]
    top, bottom = lay.row_y[-1] - 20, lay.row_y[0] + 20
    right = width - lay.margin["right"]
    for y in lay.row_y:
        out.append(f'<line x1="{lay.margin["left"]}" y1="{f(y)}" x2="{f(right)}" y2="{f(y)}"/>')
    for x in lay.col_x:
        out.append(f'<line x1="{f(x)}" y1="{f(top)}" x2="{f(x)}" y2="{f(bottom)}"/>')
    out.append("</g>")
    out.append('<g font-size="11" fill="#8a94a3" text-anchor="end">')
    for r, y in enumerate(lay.row_y):
        out.append(f'<text x="{lay.margin["left"] - 8}" y="{f(y + 4)}">{_row_name(r, lay.rows)}</text>')
    out.append("</g>")
    title, prompt = _title_lines(doc)
    out.append(f'<text x="12" y="20" font-size="15" font-weight="bold" fill="#1f2933">{escape(title)}</text>')
    out.append(f'<text x="12" y="37" font-size="12" fill="#6b7280">{escape(prompt)}</text>')
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
        kind, x, y = lay.kinds[i], lay.x[i], lay.y[i]
        fill, r = _node_style(n, kind, lay.radius)
        style = f'fill="{fill}" stroke="{_STROKE[kind]}"'
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
    out.append("</g>")
    out.append('<g font-size="10" fill="#1f2933" stroke="#ffffff" stroke-width="3" paint-order="stroke" '
               'stroke-linejoin="round">')  # fmt: skip
    for x, y, text in _place_labels(doc, lay, labels if labels is not None else node_labels(doc)):
        out.append(f'<text x="{f(x)}" y="{f(y + 3.5)}" class="node-label">{escape(text)}</text>')
    out.append("</g>")
    out.append(f'<g font-size="11" fill="#4b5563" class="legend">{"".join(_legend_svg(lay, bottom + 36))}</g>')
    out.append("</svg>")
    return "\n".join(out)


def _legend_items(width: float) -> list[tuple[str, float, int, str]]:
    """(kind or edge colour, x, line, text) of each legend entry, left to right, wrapped to ``width``."""
    entries = [(kind, 16, text) for kind, text in _LEGEND]
    entries += [("pos", 28, "excites"), ("neg", 28, "inhibits (width = |weight|)")]
    items, x, line = [], float(MARGIN["left"]), 0
    for kind, lead, text in entries:
        w = lead + 0.55 * 11 * len(text) + 16
        if x + w > width - 8 and x > MARGIN["left"]:
            x, line = float(MARGIN["left"]), line + 1
        items.append((kind, x, line, text))
        x += w
    return items


def _legend_svg(lay: Layout, y0: float) -> list[str]:
    out = []
    for kind, x, line, text in _legend_items(lay.width):
        y = y0 + line * LEGEND_H
        if kind in _FILL:
            pts = _node_points(kind, x + 7, y - 4, 5)
            fill = _INFL_FILL[0] if kind == "feature" else _FILL[kind]
            if pts is None:
                out.append(f'<circle cx="{x + 7:.1f}" cy="{y - 4:.1f}" r="5" fill="{fill}" stroke="{_STROKE[kind]}"/>')
            else:
                p = " ".join(f"{a:.1f},{c:.1f}" for a, c in pts)
                out.append(f'<polygon points="{p}" fill="{fill}" stroke="{_STROKE[kind]}"/>')
            out.append(f'<text x="{x + 16:.1f}" y="{y:.1f}">{escape(text)}</text>')
        else:
            (cr, cg, cb) = _POS if kind == "pos" else _NEG
            out.append(f'<line x1="{x:.1f}" y1="{y - 4:.1f}" x2="{x + 22:.1f}" y2="{y - 4:.1f}" '
                       f'stroke="rgb({cr},{cg},{cb})" stroke-width="2"/>')  # fmt: skip
            out.append(f'<text x="{x + 28:.1f}" y="{y:.1f}">{escape(text)}</text>')
    return out


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.truetype("DejaVuSans.ttf", size)
    except OSError:
        return ImageFont.load_default(size=size)


def render_png(
    doc: dict[str, Any], width: int = 1200, height: int = 700, *, scale: int = 2, labels: dict[str, str] | None = None
) -> bytes:
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
        draw.line([(lay.margin["left"] * s, y * s), ((width - lay.margin["right"]) * s, y * s)], fill=grid, width=1)
    for x in lay.col_x:
        draw.line([(x * s, top * s), (x * s, bottom * s)], fill=grid, width=1)
    small, normal = _font(int(11 * s)), _font(int(12 * s))
    title, prompt = _title_lines(doc)
    draw.text((12 * s, 20 * s), title, fill=(31, 41, 51, 255), font=_font(int(15 * s)), anchor="ls")
    draw.text((12 * s, 37 * s), prompt, fill=(107, 114, 128, 255), font=normal, anchor="ls")
    for r, y in enumerate(lay.row_y):
        draw.text(
            ((lay.margin["left"] - 8) * s, y * s),
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
        fill, r = _node_style(doc["nodes"][i], kind, lay.radius)
        x, y, r = lay.x[i] * s, lay.y[i] * s, r * s
        pts = _node_points(kind, x, y, r)
        style = dict(fill=fill, outline=_STROKE[kind], width=max(1, round(s)))
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
    tiny = _font(int(10 * s))
    for x, y, text in _place_labels(doc, lay, labels if labels is not None else node_labels(doc)):
        draw.text((x * s, y * s), text, fill=(31, 41, 51, 255), font=tiny, anchor="lm",
                  stroke_width=max(1, round(1.5 * s)), stroke_fill=(255, 255, 255, 230))  # fmt: skip
    for kind, x, line, text in _legend_items(width):
        ly = (bottom + 36 + line * LEGEND_H) * s
        if kind in _FILL:
            pts = _node_points(kind, (x + 7) * s, ly - 4 * s, 5 * s)
            fill = _INFL_FILL[0] if kind == "feature" else _FILL[kind]
            style = dict(fill=fill, outline=_STROKE[kind], width=max(1, round(s)))
            if pts is None:
                draw.ellipse([(x + 2) * s, ly - 9 * s, (x + 12) * s, ly + 1 * s], **style)
            else:
                draw.polygon(pts, **style)
            draw.text(((x + 16) * s, ly), text, fill=(75, 85, 99, 255), font=small, anchor="ls")
        else:
            rgb = _POS if kind == "pos" else _NEG
            draw.line([(x * s, ly - 4 * s), ((x + 22) * s, ly - 4 * s)], fill=(*rgb, 255), width=max(1, round(2 * s)))
            draw.text(((x + 28) * s, ly), text, fill=(75, 85, 99, 255), font=small, anchor="ls")
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def load_document(
    source,
    node_threshold: float = 0.8,
    edge_threshold: float = 0.98,
    *,
    tokenizer=None,
    keep_threshold: float | None = None,
) -> dict[str, Any]:
    """A graph document from a `Graph`, a graph file (``.safetensors``, pruned here; ``keep_threshold`` as in
    `graph_to_json`), a graph JSON (``.json``, used as saved, annotations included) or a document dict."""
    if isinstance(source, dict):
        validate_graph_json(source)
        return source
    if isinstance(source, Graph):
        return graph_to_json(
            source, "graph", node_threshold, edge_threshold, tokenizer=tokenizer, keep_threshold=keep_threshold
        )[0]
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
    slug = path.stem.replace(" ", "_") or "graph"
    return graph_to_json(
        graph, slug, node_threshold, edge_threshold, tokenizer=tokenizer, keep_threshold=keep_threshold
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
    features=None,
) -> Path:
    """Write a picture of ``source`` (see `load_document`) to ``out``; the format follows its suffix
    (``.svg`` or ``.png``). People's labels are drawn beside their nodes, and, with ``features`` (a
    `jcircuits.features.FeatureStore` of the graph's transcoders), the automatic labels of the other features.
    A graph JSON is drawn as the viewer opens it (`view_document`: at its ``metadata.node_threshold``; exports
    keep more nodes for the viewer's slider)."""
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in (".svg", ".png"):
        raise ValueError(f"cannot tell the picture format of {out}: use a .svg or .png file name")
    doc = view_document(load_document(source, node_threshold, edge_threshold, tokenizer=tokenizer))
    labels = node_labels(doc, features)
    out.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".svg":
        out.write_text(render_svg(doc, width, height, labels=labels), encoding="utf-8")
    else:
        out.write_bytes(render_png(doc, width, height, labels=labels))
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
    viewer; a graph JSON is drawn as the viewer opens it (`view_document`)."""
    doc = view_document(load_document(graph, node_threshold, edge_threshold, tokenizer=tokenizer))
    return GraphPicture(doc, width, height)
