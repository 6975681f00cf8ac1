"""Interpreting a circuit in the viewer, in Debian's headless Chromium at 1600×1000: feature dashboards on hover
and click (equal to the `FeatureStore`'s values), labels drawn on the canvas, the view shared by URL, the
subgraph pane's layout and dragging (saved as ``sg_pos``), and ``jcircuits share``'s one-file HTML opened from
disk. The graph is the default model's, traced by ``jcircuits attribute``; its dashboards are the default's.
Screenshots go to tests/_artifacts/screenshots/ (look at them; they are not committed)."""

from __future__ import annotations

import json
import math
import re
import shutil
import threading

import pytest
from synthetic import synthetic_graph, write_graph
from test_viewer_e2e import (
    SHOTS,
    _need_browser,
    canvas_point,
    checked_page,
    chromium,
    click_node,
    counts,
    open_graph,
    set_slider,
    texas_graph_dir,
)

from jcircuits.cli import main as cli_main
from jcircuits.default import default_features
from jcircuits.features.format import cantor_unpair
from jcircuits.view.export import view_document
from jcircuits.view.server import make_server

VIEWPORT = {"width": 1600, "height": 1000}
FEATURE = "cross layer transcoder"


@pytest.fixture(scope="module")
def graph_dir(tmp_path_factory):
    _need_browser()
    gdir = texas_graph_dir(tmp_path_factory)
    shutil.copy(
        gdir / "texas.json", gdir / "texas-steer.json"
    )  # for the steering test, untouched by the others
    syn = synthetic_graph("syn", n_layers=3, n_pos=5, n_features=30, n_links=200, seed=5)
    logits = [n for n in syn["nodes"] if n["feature_type"] == "logit"]
    for n, p in zip(
        logits, [0.05, 0.5, 0.03, 0.2, 0.1], strict=True
    ):  # vocabulary order is not probability order
        n["token_prob"] = p
    write_graph(gdir, syn)
    return gdir


@pytest.fixture(scope="module")
def store():
    return default_features()


@pytest.fixture(scope="module")
def server(graph_dir, store):
    httpd = make_server(graph_dir, 0, features=[store])
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd.url
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    with chromium(tmp_path_factory.mktemp("chromium-profile"), VIEWPORT) as ctx:
        yield ctx


@pytest.fixture
def page(browser):
    with checked_page(browser) as page:
        yield page


def features_by_influence(doc) -> list[dict]:
    return sorted((n for n in doc["nodes"] if n["feature_type"] == FEATURE), key=lambda n: n["influence"])


def layer_index(node: dict) -> tuple[int, int]:
    layer, index = cantor_unpair(node["feature"])
    assert (str(layer), str(index)) == tuple(node["node_id"].split("_")[:2])
    return layer, index


def wait_labels(page) -> None:
    page.wait_for_function("window.jcViewer.drawnLabels().length > 0")


def test_hover_and_click_show_the_features_dashboard_from_the_store(page, server, graph_dir, store):
    doc = json.loads((graph_dir / "texas.json").read_text())
    node = features_by_influence(doc)[0]
    rec = store.feature(*layer_index(node))
    label = store.label(*layer_index(node))["label"]
    top = rec["examples_quantiles"][0]["examples"][0]
    open_graph(page, server, "texas")

    # hover: the tooltip shows the automatic label, the strongest context and the top logits
    x, y = canvas_point(page, node["node_id"])
    page.mouse.move(x, y)
    tip = page.locator("#tooltip .tip-feature")
    tip.wait_for(state="visible")
    assert page.locator("#tooltip .tip-label").inner_text() == label
    tokens = page.locator("#tooltip .tip-feature .fp-example .tok")
    assert tokens.count() == len(top["tokens"])
    assert tokens.nth(top["train_token_ind"]).inner_text() == top["tokens"][top["train_token_ind"]]
    assert f"promotes: {rec['top_logits'][0]}," in page.locator("#tooltip .tip-logits").inner_text()
    # …and previews the node's strongest links
    inputs = [e for e in doc["links"] if e["target"] == node["node_id"]]
    preview = page.evaluate("window.jcViewer.state.previewLinks")
    assert max(inputs, key=lambda e: abs(e["weight"]))["source"] in {p["node"] for p in preview}
    page.screenshot(path=str(SHOTS / "20-feature-hover.png"))

    # click: the details pane's feature panel
    click_node(page, node["node_id"])
    wait_labels(page)  # the store's answer names the transcoders' kind too
    assert "feature (per-layer transcoder)" in page.locator("#details-table").inner_text()
    panel = page.locator("#feature-panel")
    panel.locator(".fp-top-logits li").first.wait_for()
    assert panel.locator(".fp-label").inner_text().startswith(label)
    assert "automatic label" in panel.locator(".fp-source").inner_text()
    assert panel.locator(".fp-top-logits li").all_inner_texts() == rec["top_logits"][:8]
    assert panel.locator(".fp-bottom-logits li").all_inner_texts() == rec["bottom_logits"][:8]
    first = panel.locator(".fp-top .fp-example").first
    assert [float(t) for t in first.locator(".tok").evaluate_all("(ts) => ts.map((t) => t.dataset.act)")] == [
        float(a) for a in top["tokens_acts_list"]
    ]
    assert first.locator(".tok.max").inner_text() == top["tokens"][top["train_token_ind"]]
    # per-token shading: alpha grows with the activation; the maximum is the darkest
    alphas = first.locator(".tok").evaluate_all(
        "(ts) => ts.map((t) => { const m = /rgba\\(.*, ([0-9.]+)\\)/.exec(t.style.background); return m ? +m[1] : 0; })"
    )
    assert alphas[top["train_token_ind"]] == max(alphas) > 0.5
    n_bands = sum(1 for q in rec["examples_quantiles"][1:] if q["examples"])
    assert panel.locator("details.fp-quantile").count() == n_bands > 0  # lower quantile bands
    stats = panel.locator(".fp-stats").inner_text()
    shown = re.match(r"active on ([0-9.e+-]+)% of tokens · max activation ([0-9.e+-]+)", stats)
    assert shown, stats  # two and three significant digits
    assert float(shown[1]) == pytest.approx(100 * rec["activation_frequency"], rel=0.05)
    assert float(shown[2]) == pytest.approx(rec["act_max"], rel=0.005)
    assert panel.locator(".fp-hist rect").count() == len(rec["histogram"])
    page.screenshot(path=str(SHOTS / "21-feature-panel.png"))

    # a person's label replaces the automatic one
    page.fill("#clerp-input", "texas → austin")
    page.click("#clerp-form button[type=submit]")
    assert panel.locator(".fp-label").inner_text().startswith("texas → austin")
    assert "your label" in panel.locator(".fp-source").inner_text()


def test_typed_label_is_drawn_beside_its_node_and_automatic_labels_elsewhere(page, server, graph_dir, store):
    doc = json.loads((graph_dir / "texas.json").read_text())
    feats = features_by_influence(doc)
    open_graph(page, server, "texas")
    wait_labels(page)
    drawn = {d["id"]: d for d in page.evaluate("window.jcViewer.drawnLabels()")}
    by_id = {n["node_id"]: n for n in feats}
    for node_id, d in drawn.items():  # automatic labels are the store's, cut to 30 characters
        want = store.label(*layer_index(by_id[node_id]))["label"]
        assert d["text"] == (want if len(want) <= 30 else want[:29] + "…")
    assert (
        page.locator("#legend").is_visible()
        and "lower = more important" in page.locator("#legend").inner_text()
    )

    node = feats[0]
    click_node(page, node["node_id"])
    page.fill("#clerp-input", "Texas capital")
    page.click("#clerp-form button[type=submit]")
    page.wait_for_function(
        "(id) => window.jcViewer.drawnLabels().some((d) => d.id === id && d.text === 'Texas capital')",
        arg=node["node_id"],
    )
    d = next(d for d in page.evaluate("window.jcViewer.drawnLabels()") if d["id"] == node["node_id"])
    pos = page.evaluate("(id) => window.jcViewer.nodeScreenPos(id)", node["node_id"])
    assert abs(d["y"] - pos["y"]) < 1 and 0 < abs(d["x"] - pos["x"]) < 30  # beside the node
    # the text is on the canvas: dark pixels inside its box
    dark = page.evaluate(
        """(d) => {
            const c = document.getElementById('graph-canvas'), k = window.devicePixelRatio || 1;
            const px = c.getContext('2d').getImageData(Math.floor(d.x * k), Math.floor((d.y - 6) * k),
                Math.ceil(d.w * k), Math.ceil(12 * k)).data;
            let n = 0;
            for (let i = 0; i < px.length; i += 4) if (px[i] < 90 && px[i + 1] < 90 && px[i + 2] < 90) n++;
            return n;
        }""",
        d,
    )
    assert dark > 40
    page.screenshot(path=str(SHOTS / "22-labels-on-canvas.png"))


def test_a_shared_url_restores_pins_supernodes_labels_selection_and_sliders(page, browser, server, graph_dir):
    path = graph_dir / "texas.json"
    before = path.read_bytes()
    doc = json.loads(before)
    feats = features_by_influence(doc)
    a, b, c = (n["node_id"] for n in feats[:3])
    open_graph(page, server, "texas")
    click_node(page, a, shift=True)
    click_node(page, b, shift=True)
    click_node(page, c, shift=True)
    for box in page.locator("#pinned-list .group-check").all()[:2]:
        box.check()
    page.fill("#supernode-label", "capital says")
    page.click("#supernode-form button[type=submit]")
    click_node(page, c)
    page.fill("#clerp-input", "says a capital")
    page.click("#clerp-form button[type=submit]")
    page.evaluate("""() => { const el = document.getElementById('edge-threshold'); el.value = '0.9';
                     el.dispatchEvent(new Event('input', {bubbles: true})); }""")
    url = page.evaluate("window.jcViewer.viewUrl()")
    page.wait_for_function("(u) => window.location.href === u", arg=url)  # the address bar follows the view

    other = browser.new_page()
    try:
        other.goto(url)
        other.wait_for_function("window.jcViewer && window.jcViewer.state.ready")
        st = other.evaluate(
            """() => { const s = window.jcViewer.state; return {pinned: s.pinned, supernodes: s.supernodes,
                selected: s.nodes[s.selected].node_id, edge: s.edgeThreshold, clerps: s.nodes.filter((n) => n.clerp)
                .map((n) => [n.node_id, n.clerp])}; }"""
        )
        assert st["pinned"] == [a, b, c]
        assert st["supernodes"] == [["capital says", a, b]]
        assert st["selected"] == c and st["edge"] == 0.9
        assert [c, "says a capital"] in st["clerps"]
        assert other.locator("#details-title").inner_text() == "says a capital"
        assert other.locator("#edge-threshold").input_value() == "0.9"
        assert other.locator("#save").is_disabled()  # restoring a view is not an edit…
        assert other.evaluate("window.jcViewer.state.clerps") == {c: "says a capital"}  # …but a Save keeps it
        other.screenshot(path=str(SHOTS / "23-shared-url.png"))
    finally:
        other.close()
    assert path.read_bytes() == before  # the file was never touched


def test_subgraph_lays_out_pins_by_layer_and_pinned_order_and_saves_dragged_positions(
    page, server, graph_dir
):
    path = graph_dir / "texas.json"
    doc = json.loads(path.read_text())
    feats = features_by_influence(doc)
    # three pins at distinct positions
    chosen: list[dict] = []
    for n in feats:
        if all(n["ctx_idx"] != m["ctx_idx"] for m in chosen):
            chosen.append(n)
        if len(chosen) == 3:
            break
    open_graph(page, server, "texas")
    for n in chosen:
        click_node(page, n["node_id"], shift=True)
    items = {it["key"]: it for it in page.evaluate("window.jcViewer.subgraphItems()")}
    width = page.evaluate("document.getElementById('subgraph-svg').clientWidth")
    height = page.evaluate("document.getElementById('subgraph-svg').clientHeight")
    by_pos = sorted(chosen, key=lambda n: n["ctx_idx"])
    xs = [items[n["node_id"]]["x"] for n in by_pos]
    assert xs == sorted(xs) and xs[0] < 0.3 * width and xs[-1] > 0.7 * width  # pinned order fills the pane
    by_layer = sorted(chosen, key=lambda n: int(n["layer"]))
    ys = [items[n["node_id"]]["y"] for n in by_layer]
    assert ys == sorted(ys, reverse=True)  # higher layers higher up
    assert page.locator("#subgraph-svg .sg-weight").count() > 0  # link weights are written on the links
    assert page.locator("#supernode-form").is_visible()

    # drag the first node 60 px left and 40 px down
    moved = by_pos[-1]["node_id"]
    g = page.locator(f'#subgraph-svg .sg-node[data-key="{moved}"]')
    box = g.bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + 6
    start = items[moved]
    page.mouse.move(cx, cy)
    page.mouse.down()
    page.mouse.move(cx - 30, cy + 20, steps=4)
    page.mouse.move(cx - 60, cy + 40, steps=4)
    page.mouse.up()
    after = {it["key"]: it for it in page.evaluate("window.jcViewer.subgraphItems()")}[moved]
    assert after["x"] == pytest.approx(start["x"] - 60, abs=1.5) and after["y"] == pytest.approx(
        start["y"] + 40, abs=1.5
    )
    page.click("#save")
    page.wait_for_function("document.getElementById('status').textContent === 'saved'")
    sg = json.loads(json.loads(path.read_text())["qParams"]["sg_pos"])
    assert sg["jcircuits"] == 1
    fx, fy = sg["pos"][moved]
    assert fx == pytest.approx(after["x"] / width, abs=1e-3) and fy == pytest.approx(
        after["y"] / height, abs=1e-3
    )
    page.screenshot(path=str(SHOTS / "24-subgraph-dragged.png"))

    page.reload()
    page.wait_for_function("window.jcViewer && window.jcViewer.state.ready")
    again = {it["key"]: it for it in page.evaluate("window.jcViewer.subgraphItems()")}[moved]
    assert again["x"] == pytest.approx(after["x"], abs=0.5) and again["y"] == pytest.approx(
        after["y"], abs=0.5
    )


def test_shared_html_opens_from_disk_read_only_with_its_dashboards(page, graph_dir, store, tmp_path):
    doc = json.loads((graph_dir / "texas.json").read_text())
    node = features_by_influence(doc)[0]
    other = features_by_influence(doc)[1]
    out = tmp_path / "texas.html"
    assert cli_main(["share", str(graph_dir / "texas.json"), "-o", str(out)]) == 0
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(f"{out.as_uri()}?graph=texas&pinnedIds={other['node_id']}")
    page.wait_for_function("window.jcViewer && (window.jcViewer.state.ready || window.jcViewer.state.error)")
    assert page.evaluate("window.jcViewer.state.error") is None
    assert all(u.startswith(("file:", "data:")) for u in requests), requests  # no server, no network
    assert page.evaluate("window.jcViewer.state.nodes.length") == len(doc["nodes"])
    assert page.evaluate("window.jcViewer.state.pinned") == [other["node_id"]]  # URL state works from disk
    assert page.locator("#save").is_hidden()

    rec = store.feature(*layer_index(node))
    click_node(page, node["node_id"])
    panel = page.locator("#feature-panel")
    panel.locator(".fp-top-logits li").first.wait_for()
    assert panel.locator(".fp-top-logits li").first.inner_text() == rec["top_logits"][0]
    top = rec["examples_quantiles"][0]["examples"][0]
    assert (
        panel.locator(".fp-top .fp-example").first.locator(".tok.max").inner_text()
        == top["tokens"][top["train_token_ind"]]
    )
    wait_labels(page)
    page.fill("#clerp-input", "edited, not saved")
    page.click("#clerp-form button[type=submit]")
    assert "read-only" in page.locator("#status").inner_text()
    assert "edited" in page.evaluate("window.jcViewer.viewUrl()")  # …but kept in the link
    page.screenshot(path=str(SHOTS / "25-shared-html-file.png"))


def test_metadata_logit_row_repeated_tokens_logit_order_and_slider_range(page, server, graph_dir):
    doc = json.loads((graph_dir / "texas.json").read_text())
    tokens = doc["metadata"]["prompt_tokens"]
    open_graph(page, server, "texas")
    # a logit sits in the logit row, after the last layer, not at "layer L+1"
    logit = next(n for n in doc["nodes"] if n["feature_type"] == "logit")
    click_node(page, logit["node_id"])
    table = page.locator("#details-table").inner_text()
    n_layers = int(logit["layer"]) - 1
    assert f"row\tlogits (output, after L{n_layers - 1})" in table and "layer\t" not in table
    # which occurrence of a repeated token a node is at
    repeated = next(  # among the nodes shown at the opening view
        n for n in view_document(doc)["nodes"]
        if tokens.count(tokens[n["ctx_idx"]]) > 1 and n["feature_type"] == FEATURE
    )  # fmt: skip
    k = tokens[: repeated["ctx_idx"] + 1].count(tokens[repeated["ctx_idx"]])
    total = tokens.count(tokens[repeated["ctx_idx"]])
    click_node(page, repeated["node_id"])
    nth = {1: "1st", 2: "2nd", 3: "3rd"}.get(k, f"{k}th")
    assert (
        f'{repeated["ctx_idx"]} "{tokens[repeated["ctx_idx"]]}" ({nth} of {total})'
        in page.locator("#details-table").inner_text()
    )
    # the node slider ends at the most influence the file holds (the export kept nodes to 0.95) and opens at the
    # default view, 0.8: the nodes view_document keeps (those a 0.8 pruning keeps); moving it up adds the rest
    most = max(n["influence"] for n in doc["nodes"] if n["influence"] is not None)
    top = float(page.locator("#node-threshold").get_attribute("max"))
    assert top == pytest.approx(min(1, math.ceil(most * 100) / 100)) and top > 0.9
    assert float(page.locator("#node-threshold").input_value()) == doc["metadata"]["node_threshold"] == 0.8
    page.keyboard.press("Escape")  # a selected node stays shown whatever the slider says
    opening = view_document(doc)
    visible = page.evaluate(
        "(() => { const s = window.jcViewer.state; return s.nodes.filter((n, i) => s.nodeVisible[i])"
        ".map((n) => n.node_id); })()"
    )
    assert sorted(visible) == sorted(n["node_id"] for n in opening["nodes"])
    assert counts(page) == (len(opening["nodes"]), len(opening["links"]))
    set_slider(page, "node-threshold", 0.9)
    middle = view_document(doc, 0.9)
    assert counts(page) == (len(middle["nodes"]), len(middle["links"]))
    set_slider(page, "node-threshold", top)
    assert counts(page) == (len(doc["nodes"]), len(doc["links"]))
    assert len(opening["nodes"]) < len(middle["nodes"]) < len(doc["nodes"])

    syn = json.loads((graph_dir / "syn.json").read_text())
    open_graph(page, server, "syn")
    logits = sorted((n for n in syn["nodes"] if n["feature_type"] == "logit"), key=lambda n: -n["token_prob"])
    xs = [page.evaluate("(id) => window.jcViewer.nodeScreenPos(id).x", n["node_id"]) for n in logits]
    assert xs == sorted(xs)  # most probable first, left to right
    page.screenshot(path=str(SHOTS / "26-logits-by-probability.png"))


@pytest.fixture(scope="module")
def steer_server(graph_dir, store):
    from jcircuits.default import default_model, default_transcoders
    from jcircuits.view.steer import Steerer

    model = default_model()
    steerer = Steerer(model, default_transcoders(model))
    httpd = make_server(graph_dir, 0, features=[store], steer=steerer)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd.url, steerer
    httpd.shutdown()
    httpd.server_close()


def test_steering_a_pinned_feature_shows_what_feature_intervention_gives(page, steer_server, graph_dir):
    import jax
    import numpy as np

    from jcircuits.intervention import feature_intervention

    url, steerer = steer_server
    model, ts = steerer.model, steerer.transcoders
    doc = json.loads((graph_dir / "texas-steer.json").read_text())
    tokens = [0] * len(doc["metadata"]["prompt_tokens"])
    for n in doc["nodes"]:
        if n["feature_type"] == "embedding":
            tokens[n["ctx_idx"]] = int(n["node_id"].split("_")[1])
    ids = np.asarray(tokens)
    before, clean = feature_intervention(model, ts, ids, [])
    top_before = int(np.argmax(before[-1]))
    p_before = np.sort(np.asarray(jax.nn.softmax(np.asarray(before[-1], np.float64))))[::-1]
    assert p_before[0] - p_before[1] > 1e-3  # the clean top token is not a near-tie either
    # the most influential feature, and the first multiplier that changes the top token
    chosen = None
    for node in features_by_influence(doc)[:6]:
        layer, index = layer_index(node)
        for k in (-2.0, -5.0, 0.0):
            edit = [
                (layer, node["ctx_idx"], index, k * float(np.asarray(clean)[layer, node["ctx_idx"], index]))
            ]
            logits, _ = feature_intervention(model, ts, ids, edit)
            p = np.asarray(jax.nn.softmax(np.asarray(logits[-1], np.float64)))
            first, second = np.sort(p)[::-1][:2]
            # a clear winner only: which of two near-tied tokens is on top would be round-off's choice
            if int(np.argmax(p)) != top_before and first - second > 1e-3:
                chosen = node, k, p
                break
        if chosen:
            break
    assert chosen, "no single-feature edit changes the top token of this prompt"
    node, k, p_after = chosen

    open_graph(page, url, "texas-steer")
    steer_box = page.locator("#steer")
    steer_box.wait_for(state="visible")
    click_node(page, node["node_id"], shift=True)
    row = page.locator(f'#steer-table tr[data-node-id="{node["node_id"]}"]')
    row.locator(".steer-use").check()
    row.locator(".steer-mode").select_option("multiplier")
    row.locator(".steer-x").fill(str(k))
    page.fill("#steer-n", "4")
    page.click("#steer-run")
    page.locator("#steer-result .steer-top").wait_for()
    cells = page.locator("#steer-result .steer-top tr").nth(1).locator("td").all_inner_texts()
    top_after = int(np.argmax(p_after))
    assert cells[0] == model.tokenizer.decode([top_before])
    assert cells[2] == model.tokenizer.decode([top_after]) != cells[0]  # the top token changed, as computed
    assert float(cells[3]) == pytest.approx(p_after[top_after], abs=6e-5)  # shown to 4 decimals
    assert page.locator("#steer-result .steer-top tr").nth(1).locator("td.changed").count() == 1
    assert page.locator("#steer-result .gen.after").inner_text().startswith("after:")
    page.locator("#steer").scroll_into_view_if_needed()
    page.screenshot(path=str(SHOTS / "27-steering.png"))

    # a new prompt traced on the server's model joins the list and opens (the pin is unsaved: confirm leaving)
    page.once("dialog", lambda d: d.accept())
    page.fill("#trace-prompt", "2 plus 3 is")
    page.fill("#trace-slug", "add23")
    page.click("#trace-form button[type=submit]")
    page.wait_for_function(
        "(window.jcViewer.state.slug === 'add23' && window.jcViewer.state.ready) || "
        "document.getElementById('trace-status').textContent.startsWith('trace failed')",
        timeout=180_000,
    )
    assert page.evaluate("window.jcViewer.state.slug") == "add23", page.locator("#trace-status").inner_text()
    traced = json.loads((graph_dir / "add23.json").read_text())
    assert page.evaluate("window.jcViewer.state.nodes.length") == len(traced["nodes"])
    assert "add23" in page.locator("#graph-select").inner_text()
