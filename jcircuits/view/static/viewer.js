// jcircuits viewer: reads a graph JSON (circuit-tracer / Neuronpedia schema) from the local server and draws it
// on a canvas. Rows are layers (token embeddings at the bottom, logits on top), columns are prompt positions.
// Links live in typed arrays with per-node CSR indexes so 100k edges filter and draw in a few milliseconds;
// edges are batched into a dozen paths by sign and strength instead of one stroke each.
// Feature dashboards come from the server's FeatureStores (/features/…), or, in a file written by
// `jcircuits share`, from window.JC_SHARED (graph + dashboards embedded; read-only, no server).
// Sections: loading · indexes and layout · visibility (sliders) · drawing (edges, nodes, canvas labels, overlay
// with hover previews) · supernodes · node text · feature dashboards · details and pins · subgraph pane (drag,
// sg_pos) · steering and tracing (server with a model) · the view in the URL · saving · events.
'use strict';

(() => {
  const FEATURE = 0, ERROR = 1, EMBED = 2, LOGIT = 3;
  const TYPE_CODES = {
    'cross layer transcoder': FEATURE, 'mlp reconstruction error': ERROR, 'embedding': EMBED, 'logit': LOGIT,
  };
  const TYPE_NAMES = ['feature', 'error', 'token', 'logit'];
  const MARGIN = {left: 48, right: 64, top: 48, bottom: 50};  // right: room for the rotated logit labels
  const LEVELS = 6;  // edge strength bins per sign
  const MIN_SLOTS = 3;  // narrowest column, in node slots, so token labels stay readable
  const $ = (id) => document.getElementById(id);
  const SHARED = window.JC_SHARED || null;  // {graph, features: {"layer/index": dashboard}} from `jcircuits share`
  const MAX_CANVAS_LABELS = 300;  // node labels drawn per frame at most (most influential first)
  const dpr = () => window.devicePixelRatio || 1;

  const state = {
    slug: null, doc: null, nodes: [], ids: new Map(), types: null, rows: null, nRows: 0, nPos: 0,
    src: null, tgt: null, w: null, nLinks: 0, inStart: null, inIdx: null, outStart: null, outIdx: null,
    sortedAbs: null, cumShare: null, cellSlot: null, x: null, y: null, slotW: 1,
    nodeVisible: null, linkVisible: null, nodeThreshold: 1, edgeThreshold: 1,
    selected: -1, hovered: -1, pinned: [], supernodes: [], clerps: {}, dirty: false,
    // supernodes on the main canvas: snCollapsed parallels supernodes (view state, not saved); snGroupOf maps a
    // node to its supernode (-1: none); snHidden marks members of collapsed supernodes, drawn as one box
    snCollapsed: [], snGroupOf: null, snHidden: null, hoveredGroup: -1, edgeCut: 0,
    drawnSupernodes: [], drawnAggregates: [], sgPos: '', linkType: 'both', sgOverride: new Map(),
    drawnLabels: [], fileClerps: new Map(), urlApplied: false, sameCol: null, labelOrder: null,
    view: {scale: 1, tx: 0, ty: 0}, width: 0, height: 0,
    timings: {}, renders: 0, lastRenderMs: 0, ready: false, error: null,
  };

  // ---------------------------------------------------------------------------------------------------
  // Loading and validation

  function showError(message) {
    state.error = message;
    const box = $('error');
    box.textContent = message;
    box.hidden = false;
  }

  function clearError() {
    state.error = null;
    $('error').hidden = true;
  }

  async function fetchJson(url) {
    let res;
    try {
      res = await fetch(url, {cache: 'no-store'});
    } catch (e) {
      throw new Error(`cannot reach the jcircuits server (${e.message}); is \`jcircuits serve\` running?`);
    }
    const text = await res.text();
    if (!res.ok) {
      let msg = text;
      try { msg = JSON.parse(text).error || text; } catch (_) { /* not JSON: show the text */ }
      throw new Error(`${url}: ${res.status} ${msg}`);
    }
    try {
      return JSON.parse(text);
    } catch (e) {
      throw new Error(`${url} is not valid JSON (${e.message}); the file is corrupt or truncated`);
    }
  }

  // The first problem that makes `doc` unusable as a graph, or null.
  function validate(doc) {
    if (!doc || typeof doc !== 'object' || Array.isArray(doc)) return 'not a graph: expected a JSON object';
    for (const key of ['metadata', 'nodes', 'links']) {
      if (!(key in doc)) return `not a graph: no "${key}"`;
    }
    const meta = doc.metadata;
    if (!meta || typeof meta !== 'object') return 'not a graph: metadata must be an object';
    if (!Array.isArray(meta.prompt_tokens)) return 'not a graph: metadata.prompt_tokens must be a list';
    if (!Array.isArray(doc.nodes) || !Array.isArray(doc.links)) return 'not a graph: nodes and links must be lists';
    const seen = new Set();
    for (let i = 0; i < doc.nodes.length; i++) {
      const n = doc.nodes[i];
      if (!n || typeof n.node_id !== 'string') return `nodes[${i}] has no node_id`;
      if (typeof n.feature_type !== 'string') return `nodes[${i}] (${n.node_id}) has no feature_type`;
      if (typeof n.layer !== 'string' || !Number.isInteger(n.ctx_idx)) {
        return `nodes[${i}] (${n.node_id}) needs a string layer and an integer ctx_idx`;
      }
      if (seen.has(n.node_id)) {
        return `duplicate node_id ${n.node_id} (circuit-tracer 0.5.0 gives an error node the id of a layer-0 ` +
          'feature; its links are ambiguous. Re-export the graph with jcircuits)';
      }
      seen.add(n.node_id);
    }
    for (let i = 0; i < doc.links.length; i++) {
      const e = doc.links[i];
      if (!e || !seen.has(e.source) || !seen.has(e.target)) return `links[${i}] joins unknown node ids`;
      if (typeof e.weight !== 'number' || !Number.isFinite(e.weight)) return `links[${i}] has no numeric weight`;
    }
    return null;
  }

  async function loadIndex() {
    const index = SHARED ? {graphs: [SHARED.graph.metadata]} : await fetchJson('graphs/graph-metadata.json');
    const graphs = Array.isArray(index.graphs) ? index.graphs.filter((g) => g && typeof g.slug === 'string') : [];
    const select = $('graph-select');
    select.textContent = '';
    for (const g of graphs) {
      const opt = document.createElement('option');
      opt.value = g.slug;
      opt.textContent = g.prompt ? `${g.slug} — ${String(g.prompt).slice(0, 60)}` : g.slug;
      select.append(opt);
    }
    return graphs.map((g) => g.slug);
  }

  async function loadGraph(slug) {
    state.ready = false;
    clearError();
    const t0 = performance.now();
    let doc;
    try {
      doc = SHARED ? SHARED.graph : await fetchJson(`graphs/${encodeURIComponent(slug)}.json`);
    } catch (e) {
      showError(`cannot open graph "${slug}": ${e.message}`);
      return;
    }
    const t1 = performance.now();
    const problem = validate(doc);
    if (problem) {
      showError(`graph "${slug}" cannot be shown: ${problem}`);
      return;
    }
    build(slug, doc);
    const t2 = performance.now();
    resize();
    render();
    const t3 = performance.now();
    state.timings = {fetchParseMs: t1 - t0, buildMs: t2 - t1, firstRenderMs: t3 - t2, totalMs: t3 - t0};
    state.ready = true;
    syncUrl(true);
    loadFeatureLabels(slug);
  }

  // ---------------------------------------------------------------------------------------------------
  // Indexes and layout

  function build(slug, doc) {
    state.slug = slug;
    state.doc = doc;
    const nodes = doc.nodes;
    const N = nodes.length;
    state.nodes = nodes;
    state.ids = new Map(nodes.map((n, i) => [n.node_id, i]));
    state.types = new Uint8Array(N);
    state.rows = new Int32Array(N);
    let maxRow = 0;
    let maxCtx = 0;
    for (let i = 0; i < N; i++) {
      const n = nodes[i];
      const t = TYPE_CODES[n.feature_type] ?? FEATURE;
      state.types[i] = t;
      maxCtx = Math.max(maxCtx, n.ctx_idx);
      if (t === EMBED) state.rows[i] = 0;
      else if (t !== LOGIT) {
        const layer = parseInt(n.layer, 10);
        state.rows[i] = Number.isFinite(layer) ? layer + 1 : 1;
        maxRow = Math.max(maxRow, state.rows[i]);
      }
    }
    // logits sit one row above the last layer (their schema layer is n_layers + 1)
    let logitRow = maxRow + 1;
    for (let i = 0; i < N; i++) {
      if (state.types[i] === LOGIT) {
        const layer = parseInt(nodes[i].layer, 10);
        if (Number.isFinite(layer) && layer > logitRow) logitRow = layer;
      }
    }
    for (let i = 0; i < N; i++) if (state.types[i] === LOGIT) state.rows[i] = logitRow;
    state.nRows = logitRow + 1;
    state.nPos = Math.max(doc.metadata.prompt_tokens.length, maxCtx + 1);

    // links: typed arrays plus CSR indexes of each node's inputs and outputs
    const M = doc.links.length;
    const src = new Int32Array(M), tgt = new Int32Array(M), w = new Float32Array(M);
    const inCount = new Int32Array(N + 1), outCount = new Int32Array(N + 1);
    for (let k = 0; k < M; k++) {
      const e = doc.links[k];
      src[k] = state.ids.get(e.source);
      tgt[k] = state.ids.get(e.target);
      w[k] = e.weight;
      inCount[tgt[k] + 1]++;
      outCount[src[k] + 1]++;
    }
    for (let i = 0; i < N; i++) { inCount[i + 1] += inCount[i]; outCount[i + 1] += outCount[i]; }
    const inIdx = new Int32Array(M), outIdx = new Int32Array(M);
    const inFill = inCount.slice(0, N), outFill = outCount.slice(0, N);
    for (let k = 0; k < M; k++) { inIdx[inFill[tgt[k]]++] = k; outIdx[outFill[src[k]]++] = k; }
    Object.assign(state, {src, tgt, w, nLinks: M, inStart: inCount, inIdx, outStart: outCount, outIdx});

    // the edge slider keeps the strongest edges carrying a fraction of total |weight|
    const sortedAbs = Float32Array.from(w, Math.abs).sort().reverse();
    const cumShare = new Float64Array(M);
    let total = 0;
    for (let k = 0; k < M; k++) { total += sortedAbs[k]; cumShare[k] = total; }
    for (let k = 0; k < M; k++) cumShare[k] /= total || 1;
    state.sortedAbs = sortedAbs;
    state.cumShare = cumShare;

    // each node's slot within its (row, position) cell: features before errors, most influential first
    const cells = new Map();
    for (let i = 0; i < N; i++) {
      const key = state.rows[i] * state.nPos + nodes[i].ctx_idx;
      if (!cells.has(key)) cells.set(key, []);
      cells.get(key).push(i);
    }
    const infl = (i) => (nodes[i].influence == null ? 2 : nodes[i].influence);
    // logits by probability (most likely first), not vocabulary order
    const prob = (i) => (state.types[i] === LOGIT ? -Number(nodes[i].token_prob || 0) : 0);
    state.cellSlot = new Float32Array(N);  // slot offset from the cell centre, in slots
    state.colSlots = new Float32Array(state.nPos).fill(MIN_SLOTS);
    for (const [key, members] of cells) {
      members.sort((a, b) => (state.types[a] - state.types[b]) || (prob(a) - prob(b)) || (infl(a) - infl(b)) ||
        (nodes[a].node_id < nodes[b].node_id ? -1 : 1));
      members.forEach((i, k) => { state.cellSlot[i] = k - (members.length - 1) / 2; });
      const pos = key % state.nPos;
      state.colSlots[pos] = Math.max(state.colSlots[pos], members.length);
    }

    // links within one column (same prompt position) are drawn as arcs, so they do not hide each other
    state.sameCol = new Uint8Array(M);
    for (let k = 0; k < M; k++) state.sameCol[k] = nodes[src[k]].ctx_idx === nodes[tgt[k]].ctx_idx ? 1 : 0;
    // canvas labels are placed most influential first
    state.labelOrder = Int32Array.from(nodes.keys()).sort((a, b) => infl(a) - infl(b));
    // which occurrence of a repeated prompt token a position is
    const toks = doc.metadata.prompt_tokens;
    const seenTok = new Map();
    state.occurrence = toks.map((t) => { const k = (seenTok.get(t) || 0) + 1; seenTok.set(t, k); return k; });
    state.tokenCount = seenTok;
    state.fileClerps = new Map(nodes.map((n) => [n.node_id, n.clerp || '']));
    // the node slider spans what the file holds (exports keep nodes to 0.95, circuit-tracer's to its threshold)
    // and opens at metadata.node_threshold, so moving it up adds the nodes kept above the default view
    state.inflSorted = Float64Array.from(nodes.filter((n) => n.influence != null), (n) => n.influence).sort();
    const maxInfl = state.inflSorted.length ? state.inflSorted[state.inflSorted.length - 1] : 0;
    state.nodeMax = maxInfl > 0 ? Math.min(1, Math.max(0.05, Math.ceil(maxInfl * 100) / 100)) : 1;  // 0.05: the slider min
    $('node-threshold').max = String(state.nodeMax);
    const metaT = Number(doc.metadata.node_threshold);
    state.nodeDefault = Math.min(Number.isFinite(metaT) && metaT > 0 ? metaT : 0.8, state.nodeMax);

    const url = new URL(window.location.href);
    const fromUrl = !state.urlApplied && url.searchParams.get('graph') === slug ? readUrlState(url) : {};
    state.urlApplied = true;
    const q = {...(doc.qParams || {}), ...fromUrl};
    for (const [id, label] of fromUrl.clerps || []) {
      const i = state.ids.get(id);
      if (i !== undefined && typeof label === 'string') nodes[i].clerp = label;
    }
    for (const [key, input] of [['nodeThreshold', 'node-threshold'], ['edgeThreshold', 'edge-threshold']]) {
      const v = key in fromUrl ? fromUrl[key] : key === 'nodeThreshold' ? state.nodeDefault : 1;
      state[key] = Math.min(Math.max(v, Number($(input).min)), Number($(input).max));
      $(input).value = String(state[key]);
      $(`${input}-value`).textContent = state[key].toFixed(2);
    }
    state.pinned = (Array.isArray(q.pinnedIds) ? q.pinnedIds : []).filter((id) => state.ids.has(id));
    state.supernodes = (Array.isArray(q.supernodes) ? q.supernodes : [])
      .filter((g) => Array.isArray(g) && g.length > 1)
      .map(([label, ...members]) => [String(label), ...members.filter((id) => state.ids.has(id))])
      .filter((g) => g.length > 1);
    state.snCollapsed = state.supernodes.map(() => false);
    // sg_pos: subgraph positions. This viewer writes {"jcircuits": 1, "pos": {item key: [fx, fy]}} (fractions
    // of the pane) for the nodes a person dragged; any other string (Neuronpedia's) is kept verbatim, unused
    state.sgPos = typeof q.sg_pos === 'string' ? q.sg_pos : '';
    state.sgOverride = parseSgPos(state.sgPos);
    state.linkType = typeof q.linkType === 'string' ? q.linkType : 'both';
    state.hoveredGroup = -1;
    state.drawnSupernodes = [];
    state.drawnAggregates = [];
    indexSupernodes();
    state.selected = state.ids.has(q.clickedId) ? state.ids.get(q.clickedId) : -1;
    state.hovered = -1;
    state.clerps = {};
    // labels from the URL are part of what a Save writes, like the URL's pins (restoring is not an edit)
    for (const [id, label] of fromUrl.clerps || []) {
      if (state.ids.has(id) && typeof label === 'string') state.clerps[id] = label;
    }
    state.dirty = false;
    state.view = {scale: 1, tx: 0, ty: 0};
    $('prompt').textContent = doc.metadata.prompt ?? '';
    $('prompt').title = doc.metadata.prompt ?? '';
    $('save').disabled = true;
    setStatus('');
    computeVisibility();
    renderDetails();
    renderSubgraph();
  }

  // world coordinates (CSS pixels at zoom 1) of every node for the current canvas size
  function layout() {
    const W = Math.max(state.width - MARGIN.left - MARGIN.right, 50);
    const H = Math.max(state.height - MARGIN.top - MARGIN.bottom, 50);
    const totalSlots = state.colSlots.reduce((a, b) => a + b, 0) || 1;
    state.slotW = W / totalSlots;
    state.colX = new Float32Array(state.nPos + 1);
    for (let p = 0; p < state.nPos; p++) state.colX[p + 1] = state.colX[p] + state.colSlots[p] * state.slotW;
    state.rowH = H / Math.max(state.nRows, 1);
    const N = state.nodes.length;
    state.x = new Float32Array(N);
    state.y = new Float32Array(N);
    for (let i = 0; i < N; i++) {
      const p = state.nodes[i].ctx_idx;
      state.x[i] = MARGIN.left + (state.colX[p] + state.colX[p + 1]) / 2 + state.cellSlot[i] * state.slotW;
      state.y[i] = rowY(state.rows[i]);
    }
  }

  const rowY = (row) => MARGIN.top + (state.nRows - 1 - row + 0.5) * state.rowH;
  const sx = (x) => x * state.view.scale + state.view.tx;
  const sy = (y) => y * state.view.scale + state.view.ty;
  const nodeRadius = () => Math.min(Math.max(0.42 * state.slotW * state.view.scale, 1.5), 7);

  // ---------------------------------------------------------------------------------------------------
  // Visibility (sliders)

  // the node slider's rule, prune_graph's node step on the influences the file holds (view_document in
  // export.py): show nodes up to the smallest cumulative influence that reaches the threshold (in float32, as
  // the pruning compares), so a file pruned at t shows all its nodes at t
  function influenceCut(threshold) {
    const a = state.inflSorted, t = Math.fround(threshold);
    let lo = 0, hi = a.length;
    while (lo < hi) { const mid = (lo + hi) >> 1; if (a[mid] >= t) hi = mid; else lo = mid + 1; }
    return lo < a.length ? a[lo] : Infinity;
  }

  function computeVisibility() {
    const N = state.nodes.length, M = state.nLinks;
    const nodeVisible = new Uint8Array(N);
    const keep = new Set(state.pinned);
    for (const g of state.supernodes) for (let j = 1; j < g.length; j++) keep.add(g[j]);  // outlines need them
    const nodeCut = influenceCut(state.nodeThreshold);
    for (let i = 0; i < N; i++) {
      const t = state.types[i], infl = state.nodes[i].influence;
      nodeVisible[i] = t === EMBED || t === LOGIT || infl == null || infl <= nodeCut ||
        i === state.selected || keep.has(state.nodes[i].node_id) ? 1 : 0;
    }
    let cut = 0;
    if (state.edgeThreshold < 1 && M) {
      let lo = 0, hi = M - 1;  // first index whose cumulative share reaches the threshold
      while (lo < hi) {
        const mid = (lo + hi) >> 1;
        if (state.cumShare[mid] >= state.edgeThreshold) hi = mid; else lo = mid + 1;
      }
      cut = state.sortedAbs[lo];
    }
    state.edgeCut = cut;
    const linkVisible = new Uint8Array(M);
    let shownLinks = 0;
    for (let k = 0; k < M; k++) {
      if (nodeVisible[state.src[k]] && nodeVisible[state.tgt[k]] && Math.abs(state.w[k]) >= cut) {
        linkVisible[k] = 1;
        shownLinks++;
      }
    }
    if (cut > 0 || state.nodeThreshold < state.nodeMax) {
      // a feature or error whose every link the sliders hide is hidden too (tokens, logits, pins stay)
      const touched = new Uint8Array(N);
      for (let k = 0; k < M; k++) if (linkVisible[k]) { touched[state.src[k]] = 1; touched[state.tgt[k]] = 1; }
      for (let i = 0; i < N; i++) {
        const t = state.types[i];
        if (nodeVisible[i] && !touched[i] && (t === FEATURE || t === ERROR) && i !== state.selected &&
            !keep.has(state.nodes[i].node_id)) nodeVisible[i] = 0;
      }
    }
    state.nodeVisible = nodeVisible;
    state.linkVisible = linkVisible;
    let shownNodes = 0;
    for (let i = 0; i < N; i++) shownNodes += nodeVisible[i];
    $('counts').textContent = `${shownNodes}/${N} nodes · ${shownLinks}/${M} edges`;
  }

  // ---------------------------------------------------------------------------------------------------
  // Drawing

  function resize() {
    const wrap = $('canvas-wrap');
    state.width = wrap.clientWidth;
    state.height = wrap.clientHeight;
    for (const c of [$('graph-canvas'), $('overlay-canvas')]) {
      c.width = Math.round(state.width * dpr());
      c.height = Math.round(state.height * dpr());
    }
    if (state.doc) layout();
  }

  let pending = 0;
  function scheduleRender() {
    if (!pending) pending = requestAnimationFrame(() => { pending = 0; render(); });
  }

  function render() {
    if (!state.doc) return;
    const t0 = performance.now();
    const ctx = $('graph-canvas').getContext('2d');
    ctx.setTransform(dpr(), 0, 0, dpr(), 0, 0);
    ctx.clearRect(0, 0, state.width, state.height);
    drawGrid(ctx);
    const groups = supernodeGeometry();
    drawSupernodeFills(ctx, groups);
    drawEdges(ctx, groups);
    drawNodes(ctx);
    drawLabels(ctx);
    drawNodeLabels(ctx);
    drawSupernodeOutlines(ctx, groups);
    drawOverlay();
    state.renders++;
    state.lastRenderMs = performance.now() - t0;
  }

  function drawGrid(ctx) {
    ctx.strokeStyle = '#eef0f3';
    ctx.lineWidth = 1;
    ctx.fillStyle = '#8a94a3';
    ctx.font = '11px system-ui, sans-serif';
    ctx.textAlign = 'right';
    ctx.textBaseline = 'middle';
    for (let r = 0; r < state.nRows; r++) {
      const y = sy(rowY(r));
      ctx.beginPath();
      ctx.moveTo(sx(MARGIN.left), y);
      ctx.lineTo(sx(state.width - MARGIN.right), y);
      ctx.stroke();
      const name = r === 0 ? 'Emb' : r === state.nRows - 1 ? 'Logit' : `L${r - 1}`;
      ctx.fillText(name, MARGIN.left - 8, y);
    }
    for (let p = 0; p <= state.nPos; p++) {
      const x = sx(MARGIN.left + state.colX[p]);
      ctx.beginPath();
      ctx.moveTo(x, sy(MARGIN.top));
      ctx.lineTo(x, sy(state.height - MARGIN.bottom));
      ctx.stroke();
    }
  }

  function drawEdges(ctx, groups) {
    const M = state.nLinks, vis = state.linkVisible, w = state.w, src = state.src, tgt = state.tgt;
    const hidden = state.snHidden;
    const aggregates = collapsedEdges();
    let maxAbs = 0;
    for (let k = 0; k < M; k++) if (vis[k]) maxAbs = Math.max(maxAbs, Math.abs(w[k]));
    for (const a of aggregates) maxAbs = Math.max(maxAbs, Math.abs(a.w));
    if (!maxAbs) return;
    const sel = state.selected;
    const paths = [];
    for (let b = 0; b < 2 * LEVELS; b++) paths.push(new Path2D());
    const faint = new Path2D();
    // links into or out of a collapsed supernode are drawn once per partner, summed, from its box
    const selGroup = sel >= 0 && hidden[sel] ? state.snGroupOf[sel] : -1;
    const endX = (e) => (e.group >= 0 ? groups[e.group].cx : sx(state.x[e.node]));
    const endY = (e) => (e.group >= 0 ? groups[e.group].cy : sy(state.y[e.node]));
    for (const a of aggregates) {
      const touches = (e) => (e.group >= 0 ? e.group === selGroup : e.node === sel);
      if (sel >= 0 && !touches(a.from) && !touches(a.to)) {
        faint.moveTo(endX(a.from), endY(a.from));
        faint.lineTo(endX(a.to), endY(a.to));
        continue;
      }
      const level = Math.min(LEVELS - 1, Math.floor(LEVELS * Math.sqrt(Math.abs(a.w) / maxAbs)));
      const path = paths[(a.w < 0 ? LEVELS : 0) + level];
      path.moveTo(endX(a.from), endY(a.from));
      path.lineTo(endX(a.to), endY(a.to));
    }
    for (let k = 0; k < M; k++) {
      if (!vis[k]) continue;
      const s = src[k], t = tgt[k];
      if (hidden[s] | hidden[t]) continue;
      if (sel >= 0 && s !== sel && t !== sel) {
        linkPath(faint, k);
        continue;
      }
      const level = Math.min(LEVELS - 1, Math.floor(LEVELS * Math.sqrt(Math.abs(w[k]) / maxAbs)));
      linkPath(paths[(w[k] < 0 ? LEVELS : 0) + level], k);
    }
    if (sel >= 0) {
      ctx.strokeStyle = 'rgba(120, 130, 145, 0.07)';
      ctx.lineWidth = 0.6;
      ctx.stroke(faint);
    }
    for (let level = 0; level < LEVELS; level++) {
      const alpha = sel >= 0 ? 0.35 + 0.1 * level : 0.07 + 0.13 * level;
      ctx.lineWidth = 0.5 + 0.45 * level;
      ctx.strokeStyle = `rgba(43, 108, 176, ${alpha})`;
      ctx.stroke(paths[level]);
      ctx.strokeStyle = `rgba(197, 48, 48, ${alpha})`;
      ctx.stroke(paths[LEVELS + level]);
    }
  }

  // Link k into `path`: a straight line, or, between two nodes of one column, an arc bowed sideways by an
  // amount that grows with the rows it spans, so links stacked in a column stay apart.
  function linkPath(path, k) {
    const s = state.src[k], t = state.tgt[k];
    const x1 = sx(state.x[s]), y1 = sy(state.y[s]), x2 = sx(state.x[t]), y2 = sy(state.y[t]);
    path.moveTo(x1, y1);
    if (!state.sameCol[k]) { path.lineTo(x2, y2); return; }
    const p = state.nodes[s].ctx_idx;
    const colW = (state.colX[p + 1] - state.colX[p]) * state.view.scale;
    const bow = Math.min(0.22 * Math.abs(y2 - y1), 0.45 * colW) * (state.cellSlot[s] + state.cellSlot[t] > 0 ? 1 : -1);
    path.quadraticCurveTo((x1 + x2) / 2 + bow, (y1 + y2) / 2, x2, y2);
  }

  // feature nodes by influence: the most influential quarter largest and darkest
  const INFL_BINS = [0.25, 0.5, 0.75, Infinity];
  const INFL_SIZE = [1.4, 1.15, 0.95, 0.8];
  const INFL_FILL = ['#e8a33d', '#f1c27d', '#f7dfb5', '#fbf4e6'];
  const inflBin = (v) => (v == null ? 3 : INFL_BINS.findIndex((b) => v <= b));

  function nodeShape(path, t, x, y, r) {
    if (t === FEATURE) {
      path.moveTo(x + r, y);
      path.arc(x, y, r, 0, 2 * Math.PI);
    } else if (t === ERROR) {
      path.rect(x - r * 0.85, y - r * 0.85, 1.7 * r, 1.7 * r);
    } else if (t === EMBED) {
      path.rect(x - r * 1.1, y - r * 0.75, 2.2 * r, 1.5 * r);
    } else {
      path.moveTo(x, y - r * 1.2);
      path.lineTo(x + r * 1.2, y);
      path.lineTo(x, y + r * 1.2);
      path.lineTo(x - r * 1.2, y);
      path.closePath();
    }
  }

  const FILLS = ['#fbf4e6', '#d5d9df', '#d7f0dd', '#e8defa'];
  const STROKES = ['#8c6d3f', '#7b8794', '#3f7d50', '#6b46c1'];

  function drawNodes(ctx) {
    const r = nodeRadius();
    const pinned = new Set(state.pinned.map((id) => state.ids.get(id)));
    const byType = [0, 1, 2, 3].map(() => new Path2D());
    const byInfl = INFL_BINS.map(() => new Path2D());
    const pinPath = new Path2D();
    for (let i = 0; i < state.nodes.length; i++) {
      if (!state.nodeVisible[i] || state.snHidden[i]) continue;
      const t = state.types[i];
      const bin = t === FEATURE ? inflBin(state.nodes[i].influence) : -1;
      const path = pinned.has(i) ? pinPath : bin >= 0 ? byInfl[bin] : byType[t];
      nodeShape(path, t, sx(state.x[i]), sy(state.y[i]), bin >= 0 ? r * INFL_SIZE[bin] : r);
    }
    ctx.lineWidth = 1;
    ctx.strokeStyle = STROKES[FEATURE];
    for (let b = 0; b < INFL_BINS.length; b++) {
      ctx.fillStyle = INFL_FILL[b];
      ctx.fill(byInfl[b]);
      ctx.stroke(byInfl[b]);
    }
    for (let t = 1; t < 4; t++) {
      ctx.fillStyle = FILLS[t];
      ctx.strokeStyle = STROKES[t];
      ctx.fill(byType[t]);
      ctx.stroke(byType[t]);
    }
    ctx.fillStyle = '#f6c744';
    ctx.strokeStyle = '#8a6a00';
    ctx.fill(pinPath);
    ctx.stroke(pinPath);
  }

  function drawLabels(ctx) {
    ctx.fillStyle = '#1f2933';
    ctx.font = '12px system-ui, sans-serif';
    ctx.textAlign = 'center';
    ctx.textBaseline = 'top';
    const tokens = state.doc.metadata.prompt_tokens;
    for (let p = 0; p < state.nPos; p++) {
      const x0 = sx(MARGIN.left + state.colX[p]), x1 = sx(MARGIN.left + state.colX[p + 1]);
      const text = tokenText(tokens[p] ?? '');
      ctx.fillText(text, (x0 + x1) / 2, sy(state.height - MARGIN.bottom) + 8, Math.max(x1 - x0 - 4, 8));
    }
    ctx.textBaseline = 'bottom';
    ctx.font = '11px system-ui, sans-serif';
    const r = nodeRadius();
    for (let i = 0; i < state.nodes.length; i++) {
      if (state.types[i] !== LOGIT || !state.nodeVisible[i] || state.snHidden[i]) continue;
      const n = state.nodes[i];
      const m = /^Output "(.*)" \(p=([0-9.]+)\)$/s.exec(n.clerp || '');
      const text = m ? `${tokenText(m[1])} ${m[2]}` : (n.clerp || n.node_id);
      // rotated 60° up and right, flatter where the canvas top would cut it
      const x0 = sx(state.x[i]), y0 = sy(state.y[i]) - r - 4, w = ctx.measureText(text).width;
      const angle = Math.min(Math.PI / 3, Math.asin(Math.min(1, Math.max(0, y0 - 14) / Math.max(w, 1))));  // 14: glyph height
      ctx.save();
      ctx.translate(x0, y0);
      ctx.rotate(-angle);
      ctx.textAlign = 'left';
      ctx.fillText(text, 0, 0);
      ctx.restore();
    }
  }

  // Labels beside nodes: a person's label, else the feature's automatic one. Placed most influential first and
  // only where they overlap no label already placed (a grid of 64-px buckets), so zooming in shows more.
  const labelWidths = new Map();
  function drawNodeLabels(ctx) {
    const drawn = [];
    state.drawnLabels = drawn;
    const r = nodeRadius();
    if (r < 2.5) return;  // zoomed far out: nodes are dots, labels would be noise
    ctx.font = '11px system-ui, sans-serif';
    ctx.textAlign = 'left';
    ctx.textBaseline = 'middle';
    ctx.lineJoin = 'round';
    const grid = new Map(), B = 64;
    const free = (x0, y0, x1, y1) => {
      for (let gx = Math.floor(x0 / B); gx <= Math.floor(x1 / B); gx++) {
        for (let gy = Math.floor(y0 / B); gy <= Math.floor(y1 / B); gy++) {
          for (const b of grid.get(gx * 4096 + gy) || []) {
            if (x0 < b[2] && b[0] < x1 && y0 < b[3] && b[1] < y1) return false;
          }
        }
      }
      return true;
    };
    const take = (box) => {
      for (let gx = Math.floor(box[0] / B); gx <= Math.floor(box[2] / B); gx++) {
        for (let gy = Math.floor(box[1] / B); gy <= Math.floor(box[3] / B); gy++) {
          const key = gx * 4096 + gy;
          if (!grid.has(key)) grid.set(key, []);
          grid.get(key).push(box);
        }
      }
    };
    const bottom = sy(state.height - MARGIN.bottom) + 4;
    for (let i = 0; i < state.nodes.length; i++) {  // labels do not cover other nodes
      if (!state.nodeVisible[i] || state.snHidden[i]) continue;
      const x = sx(state.x[i]), y = sy(state.y[i]);
      if (x >= -r && x <= state.width + r && y >= -r && y <= state.height + r) take([x - r, y - r, x + r, y + r]);
    }
    for (const i of state.labelOrder) {
      if (drawn.length >= MAX_CANVAS_LABELS) break;
      const t = state.types[i];
      if ((t !== FEATURE && t !== ERROR) || !state.nodeVisible[i] || state.snHidden[i]) continue;
      const text0 = shortLabel(i);
      if (!text0) continue;
      const x = sx(state.x[i]), y = sy(state.y[i]);
      if (x < 0 || x > state.width || y < 0 || y > Math.min(state.height, bottom)) continue;
      const text = text0.length > 30 ? `${text0.slice(0, 29)}…` : text0;
      let w = labelWidths.get(text);
      if (w === undefined) { w = ctx.measureText(text).width; labelWidths.set(text, w); }
      // right of the node, else left of it
      let x0 = x + 1.4 * r + 3, box = [x0 - 1, y - 7, x0 + w + 1, y + 7];
      if (box[2] > state.width || !free(...box)) {
        x0 = x - 1.4 * r - 3 - w;
        box = [x0 - 1, y - 7, x0 + w + 1, y + 7];
        if (box[0] < 0 || !free(...box)) continue;
      }
      take(box);
      drawn.push({id: state.nodes[i].node_id, text, x: x0, y, w});
    }
    ctx.lineWidth = 3;
    ctx.strokeStyle = 'rgba(255, 255, 255, 0.9)';
    for (const d of drawn) ctx.strokeText(d.text, d.x, d.y);
    ctx.fillStyle = '#1f2933';
    for (const d of drawn) ctx.fillText(d.text, d.x, d.y);
  }

  function drawOverlay() {
    const c = $('overlay-canvas');
    const ctx = c.getContext('2d');
    ctx.setTransform(dpr(), 0, 0, dpr(), 0, 0);
    ctx.clearRect(0, 0, state.width, state.height);
    const r = nodeRadius();
    const ring = (i, color, width) => {
      if (i < 0) return;
      ctx.beginPath();
      ctx.arc(sx(state.x[i]), sy(state.y[i]), r + 3, 0, 2 * Math.PI);
      ctx.strokeStyle = color;
      ctx.lineWidth = width;
      ctx.stroke();
    };
    const h = state.hovered;
    if (h >= 0 && h !== state.selected && !state.snHidden[h]) {
      // preview the hovered node's strongest links (those the sliders show first)
      const links = strongest(state.inStart, state.inIdx, h, state.src, 8)
        .concat(strongest(state.outStart, state.outIdx, h, state.tgt, 8))
        .filter(({k}) => !state.snHidden[state.src[k]] && !state.snHidden[state.tgt[k]]);
      const maxW = Math.max(...links.map(({w}) => Math.abs(w)), 1e-12);
      for (const {k, node, w} of links) {
        const path = new Path2D();
        linkPath(path, k);
        ctx.strokeStyle = w < 0 ? 'rgba(197, 48, 48, 0.85)' : 'rgba(43, 108, 176, 0.85)';
        ctx.lineWidth = 1 + 3 * Math.abs(w) / maxW;
        ctx.stroke(path);
        ring(node, w < 0 ? '#c53030' : '#2b6cb0', 1.5);
      }
      state.previewLinks = links.map(({node, w}) => ({node: state.nodes[node].node_id, weight: w}));
    } else state.previewLinks = [];
    if (state.selected < 0 || !state.snHidden[state.selected]) ring(state.selected, '#111827', 2.5);
    if (state.hovered !== state.selected) ring(state.hovered, '#2563eb', 2);
    const box = state.drawnSupernodes.find((b) => b.index === state.hoveredGroup && b.collapsed);
    if (box) {
      ctx.strokeStyle = '#2563eb';
      ctx.lineWidth = 2;
      ctx.strokeRect(box.x0 - 3, box.y0 - 3, box.x1 - box.x0 + 6, box.y1 - box.y0 + 6);
    }
  }

  // ---------------------------------------------------------------------------------------------------
  // Supernodes on the main canvas: a padded convex hull around the members with the label on top, or, when
  // collapsed, one labelled box at the members' centroid whose links are the members' links summed per partner.
  // Padding, line widths and text are in screen pixels, so outlines and labels stay legible at every zoom.

  const SN_COLORS = ['#d97706', '#7c3aed', '#0d9488', '#db2777', '#0369a1', '#65a30d'];
  const SN_FONT = '600 12px system-ui, sans-serif';
  const snColor = (gi) => SN_COLORS[gi % SN_COLORS.length];

  // Rebuild the node -> supernode index and the hidden (collapsed member) mask; O(N + members).
  function indexSupernodes() {
    const N = state.nodes.length;
    const groupOf = new Int32Array(N).fill(-1);
    const hidden = new Uint8Array(N);
    state.supernodes.forEach((g, gi) => {
      for (let j = 1; j < g.length; j++) {
        const i = state.ids.get(g[j]);
        if (i === undefined) continue;
        groupOf[i] = gi;
        if (state.snCollapsed[gi]) hidden[i] = 1;
      }
    });
    state.snGroupOf = groupOf;
    state.snHidden = hidden;
    if (state.hoveredGroup >= state.supernodes.length) state.hoveredGroup = -1;
  }

  function groupMembers(gi) {
    // members named twice or claimed by a later supernode count once, where the index puts them
    return [...new Set(state.supernodes[gi].slice(1).map((id) => state.ids.get(id)))]
      .filter((i) => i !== undefined && state.snGroupOf[i] === gi);
  }

  // Andrew's monotone chain; points are [x, y] pairs, the hull comes back counter-clockwise.
  function convexHull(points) {
    const pts = [...points].sort((a, b) => a[0] - b[0] || a[1] - b[1]);
    if (pts.length < 3) return pts;
    const cross = (o, a, b) => (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0]);
    const lower = [], upper = [];
    for (const p of pts) {
      while (lower.length >= 2 && cross(lower[lower.length - 2], lower[lower.length - 1], p) <= 0) lower.pop();
      lower.push(p);
    }
    for (let k = pts.length - 1; k >= 0; k--) {
      const p = pts[k];
      while (upper.length >= 2 && cross(upper[upper.length - 2], upper[upper.length - 1], p) <= 0) upper.pop();
      upper.push(p);
    }
    return lower.slice(0, -1).concat(upper.slice(0, -1));
  }

  // Screen geometry of every supernode for this frame (index gi -> {cx, cy, hull, box, ...}).
  function supernodeGeometry() {
    const r = nodeRadius();
    const pad = r + 7;
    const ctx = $('graph-canvas').getContext('2d');
    ctx.font = SN_FONT;
    return state.supernodes.map((g, gi) => {
      const members = groupMembers(gi);
      const collapsed = !!state.snCollapsed[gi];
      const label = g[0];
      if (!members.length) return {gi, label, members, collapsed, cx: NaN, cy: NaN, hull: [], empty: true};
      let cx = 0, cy = 0;
      const pts = [];
      for (const i of members) {
        const x = sx(state.x[i]), y = sy(state.y[i]);
        cx += x;
        cy += y;
        for (let a = 0; a < 8; a++) {
          pts.push([x + pad * Math.cos(a * Math.PI / 4), y + pad * Math.sin(a * Math.PI / 4)]);
        }
      }
      cx /= members.length;
      cy /= members.length;
      const text = label.length > 40 ? `${label.slice(0, 39)}…` : label;
      const textW = ctx.measureText(text).width;
      let box;
      let hull = [];
      if (collapsed) {
        const w = Math.max(textW + 14, 28), h = 20;
        box = {x0: cx - w / 2, y0: cy - h / 2, x1: cx + w / 2, y1: cy + h / 2};
      } else {
        hull = convexHull(pts);
        box = {x0: Infinity, y0: Infinity, x1: -Infinity, y1: -Infinity};
        for (const [x, y] of hull) {
          box.x0 = Math.min(box.x0, x); box.y0 = Math.min(box.y0, y);
          box.x1 = Math.max(box.x1, x); box.y1 = Math.max(box.y1, y);
        }
      }
      const onScreen = box.x1 >= 0 && box.x0 <= state.width && box.y1 >= 0 && box.y0 <= state.height;
      return {gi, label, text, textW, members, collapsed, cx, cy, hull, box, onScreen, color: snColor(gi)};
    });
  }

  function tracePolygon(ctx, hull) {
    ctx.beginPath();
    hull.forEach(([x, y], k) => (k ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
    ctx.closePath();
  }

  function drawSupernodeFills(ctx, groups) {
    ctx.globalAlpha = 0.12;
    for (const g of groups) {
      if (g.empty || g.collapsed || !g.onScreen) continue;
      ctx.fillStyle = g.color;
      tracePolygon(ctx, g.hull);
      ctx.fill();
    }
    ctx.globalAlpha = 1;
  }

  function drawSupernodeOutlines(ctx, groups) {
    const drawn = [];
    ctx.font = SN_FONT;
    ctx.lineJoin = 'round';
    for (const g of groups) {
      if (g.empty || !g.onScreen) continue;
      const {box} = g;
      let lx, ly;
      if (g.collapsed) {
        ctx.fillStyle = '#ffffff';
        ctx.strokeStyle = g.color;
        ctx.lineWidth = 2;
        ctx.beginPath();
        ctx.roundRect(box.x0, box.y0, box.x1 - box.x0, box.y1 - box.y0, 5);
        ctx.fill();
        ctx.globalAlpha = 0.2;
        ctx.fillStyle = g.color;
        ctx.fill();
        ctx.globalAlpha = 1;
        ctx.stroke();
        lx = g.cx;
        ly = g.cy;
        ctx.textBaseline = 'middle';
      } else {
        ctx.strokeStyle = g.color;
        ctx.lineWidth = 2;
        ctx.setLineDash([6, 3]);
        tracePolygon(ctx, g.hull);
        ctx.stroke();
        ctx.setLineDash([]);
        // label centred above the outline, kept inside the canvas when the outline runs off it
        lx = Math.min(Math.max(g.cx, g.textW / 2 + 3), state.width - g.textW / 2 - 3);
        ly = Math.min(Math.max(box.y0 - 3, 16), state.height - 3);
        ctx.textBaseline = 'bottom';
      }
      ctx.textAlign = 'center';
      ctx.lineWidth = 3;
      ctx.strokeStyle = 'rgba(255, 255, 255, 0.9)';
      ctx.strokeText(g.text, lx, ly);
      ctx.fillStyle = g.collapsed ? '#1f2933' : g.color;
      ctx.fillText(g.text, lx, ly);
      drawn.push({
        index: g.gi, label: g.label, collapsed: g.collapsed, color: g.color,
        members: g.members.map((i) => state.nodes[i].node_id),
        x0: box.x0, y0: box.y0, x1: box.x1, y1: box.y1, labelX: lx, labelY: ly,
      });
    }
    state.drawnSupernodes = drawn;
  }

  // The links between collapsed supernodes and everything else that is visible, summed per (from, to) pair.
  // Each member link is read once: out-links of members, and in-links whose source is not itself collapsed
  // (a link between two collapsed supernodes is counted from its source's side). Links inside one supernode
  // are dropped. The edge slider applies to the sums, as to single links.
  function collapsedEdges() {
    const hidden = state.snHidden, groupOf = state.snGroupOf, vis = state.nodeVisible;
    const sums = new Map();
    const add = (from, to, w) => {
      const key = `${from.group}:${from.node}>${to.group}:${to.node}`;
      const cur = sums.get(key);
      if (cur) cur.w += w; else sums.set(key, {from, to, w});
    };
    const end = (i) => (hidden[i] ? {group: groupOf[i], node: -1} : {group: -1, node: i});
    state.supernodes.forEach((_, gi) => {
      if (!state.snCollapsed[gi]) return;
      const me = {group: gi, node: -1};
      for (const m of groupMembers(gi)) {
        for (let c = state.outStart[m]; c < state.outStart[m + 1]; c++) {
          const k = state.outIdx[c], t = state.tgt[k];
          if (!vis[t] || (hidden[t] && groupOf[t] === gi)) continue;
          add(me, end(t), state.w[k]);
        }
        for (let c = state.inStart[m]; c < state.inStart[m + 1]; c++) {
          const k = state.inIdx[c], s = state.src[k];
          if (!vis[s] || hidden[s]) continue;
          add(end(s), me, state.w[k]);
        }
      }
    });
    const out = [...sums.values()].filter((a) => a.w !== 0 && Math.abs(a.w) >= state.edgeCut);
    const name = (e) => (e.group >= 0
      ? {node: null, supernode: state.supernodes[e.group][0]}
      : {node: state.nodes[e.node].node_id, supernode: null});
    state.drawnAggregates = out.map((a) => ({from: name(a.from), to: name(a.to), weight: a.w}));
    return out;
  }

  function hitSupernode(px, py) {
    for (const b of state.drawnSupernodes) {
      if (b.collapsed && px >= b.x0 && px <= b.x1 && py >= b.y0 && py <= b.y1) return b.index;
    }
    return -1;
  }

  // ---------------------------------------------------------------------------------------------------
  // Node text

  const tokenText = (s) => String(s).replace(/\n/g, '⏎').replace(/\t/g, '→').replace(/\r/g, '↵');

  function tokenAt(n) {
    const t = state.doc.metadata.prompt_tokens[n.ctx_idx];
    return t === undefined ? `#${n.ctx_idx}` : tokenText(t);
  }

  // which occurrence of a repeated token a position is: ' (2nd of 2)', or '' for a token seen once
  function occurrenceAt(n) {
    const t = state.doc.metadata.prompt_tokens[n.ctx_idx];
    const total = state.tokenCount.get(t) || 1;
    if (total < 2) return '';
    const k = state.occurrence[n.ctx_idx];
    const nth = k % 10 === 1 && k !== 11 ? 'st' : k % 10 === 2 && k !== 12 ? 'nd' : k % 10 === 3 && k !== 13 ? 'rd' : 'th';
    return ` (${k}${nth} of ${total})`;
  }

  const ORDINAL = (n) => `${tokenAt(n)}"${occurrenceAt(n) ? ` #${state.occurrence[n.ctx_idx]}` : ''}`;

  function featureIndex(n) {
    const parts = n.node_id.split('_');
    return parts.length === 3 ? parts[1] : String(n.feature);
  }

  const featureKey = (i) => `${state.nodes[i].layer}/${featureIndex(state.nodes[i])}`;

  // what a node is called: a person's label (clerp), else a feature's automatic label, else its place
  function nodeLabel(i) {
    const n = state.nodes[i];
    if (n.clerp) return n.clerp;
    const auto = state.types[i] === FEATURE ? features.labels.get(featureKey(i)) : undefined;
    switch (state.types[i]) {
      case ERROR: return `error L${n.layer} @ "${ORDINAL(n)}`;
      case EMBED: return `token "${ORDINAL(n)}`;
      case LOGIT: return n.node_id;
      default: return auto || `L${n.layer} F${featureIndex(n)} @ "${ORDINAL(n)}`;
    }
  }

  // the label drawn beside a node on the canvas ('' for none): people's, else automatic
  function shortLabel(i) {
    const n = state.nodes[i];
    if (n.clerp) return n.clerp;
    return state.types[i] === FEATURE ? features.labels.get(featureKey(i)) || '' : '';
  }

  const KIND_NAMES = {plt: 'per-layer transcoder', clt: 'cross-layer transcoder'};

  function nodeFacts(i) {
    const n = state.nodes[i];
    const t = state.types[i];
    // the graph JSON does not say which kind of transcoder it traced; the dashboards' store does
    const kind = KIND_NAMES[features.kind];
    const typeName = t === FEATURE ? `feature (${kind || 'transcoder'})` : t === ERROR
      ? `error (${kind || 'transcoder'} reconstruction error)` : TYPE_NAMES[t];
    const lastLayer = state.nRows - 3;  // rows: embeddings, L0 … L(n-1), logits
    const facts = [['id', n.node_id], ['type', typeName],
      t === LOGIT ? ['row', `logits (output, after L${lastLayer})`] : ['layer', t === EMBED ? 'embedding' : `L${n.layer}`],
      ['position', `${n.ctx_idx} "${tokenAt(n)}"${occurrenceAt(n)}`]];
    if (state.types[i] === FEATURE) facts.push(['feature', featureIndex(n)]);
    if (n.activation != null) facts.push(['activation', n.activation.toPrecision(4)]);
    if (n.influence != null) facts.push(['influence', n.influence.toPrecision(4)]);
    if (state.types[i] === LOGIT) facts.push(['probability', Number(n.token_prob).toPrecision(4)]);
    facts.push(['inputs / outputs', `${state.inStart[i + 1] - state.inStart[i]} / ${state.outStart[i + 1] - state.outStart[i]}`]);
    return facts;
  }

  // ---------------------------------------------------------------------------------------------------
  // Feature dashboards: one record per feature, fetched on first hover or click and kept; labels for the
  // whole graph in one request after it loads. `features.note` says why there are none (shown in the panel).

  const features = {slug: null, labels: new Map(), cache: new Map(), note: '', kind: null};

  // the graph's transcoder set under the name the server matches (export.scan_name: runs of characters outside
  // [A-Za-z0-9_.-] become one '-'), so files written before names were made Neuronpedia-safe still match
  function featureScan() {
    return String(state.doc.metadata.scan || '').replace(/[^A-Za-z0-9_.-]+/g, '-').replace(/^-+|-+$/g, '');
  }

  async function postJson(url, body) {
    const res = await fetch(url, {method: 'POST', headers: {'Content-Type': 'application/json'},
      body: JSON.stringify(body)});
    const reply = await res.json().catch(() => ({}));
    if (!res.ok) throw new Error(reply.error || `HTTP ${res.status}`);
    return reply;
  }

  async function loadFeatureLabels(slug) {
    features.slug = slug;
    features.labels = new Map();
    features.cache = new Map();
    features.note = '';
    features.kind = SHARED ? SHARED.transcoder_kind || null : null;
    const keys = [];
    for (let i = 0; i < state.nodes.length; i++) if (state.types[i] === FEATURE) keys.push(featureKey(i));
    if (!keys.length) return;
    let labels;
    try {
      if (SHARED) {
        labels = {};
        for (const [k, v] of Object.entries(SHARED.features || {})) if (v && v.label) labels[k] = v.label;
        if (!SHARED.features || !Object.keys(SHARED.features).length) features.note = 'this file holds no feature dashboards';
      } else {
        const pairs = keys.map((k) => k.split('/').map(Number));
        const reply = await postJson('features/labels.json', {scan: featureScan(), features: pairs});
        labels = reply.labels;
        features.kind = reply.kind || null;
      }
    } catch (e) {
      features.note = e.message;
      return;
    }
    if (features.slug !== slug) return;  // another graph was opened meanwhile
    features.labels = new Map(Object.entries(labels));
    scheduleRender();
    renderDetails();
    renderPinnedList();
  }

  // The dashboard of feature node i: a promise of {record, label, label_source} (or of {error}).
  function featureDashboard(i) {
    const key = featureKey(i);
    if (!features.cache.has(key)) {
      const [layer, index] = key.split('/');
      const p = SHARED
        ? Promise.resolve((SHARED.features || {})[key] || {error: 'this file holds no dashboard for this feature'})
        : fetchJson(`features/${layer}/${index}.json?scan=${encodeURIComponent(featureScan())}`)
          .catch((e) => ({error: e.message.replace(/^features\/\S+: /, '')}));
      features.cache.set(key, p.then((d) => { features.cache.set(key, Promise.resolve(d)); d.key = key; return d; }));
    }
    return features.cache.get(key);
  }

  const h = (tag, cls, text) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  };

  // One example context: each token shaded by its activation relative to the feature's maximum.
  function exampleLine(ex, actMax) {
    const line = h('div', 'fp-example');
    const acts = ex.tokens_acts_list || [];
    // word-level vocabularies store words without their spaces: put one between tokens for them
    const spaced = !ex.tokens.some((t) => /^[\s▁Ġ]|\s$/.test(t));
    ex.tokens.forEach((tok, j) => {
      if (spaced && j) line.append(' ');
      const span = h('span', j === ex.train_token_ind ? 'tok max' : 'tok', tokenText(tok));
      const a = Math.max(0, Math.min(1, (acts[j] || 0) / (actMax || 1)));
      if (a > 0) span.style.background = `rgba(234, 128, 20, ${(0.12 + 0.75 * a).toFixed(3)})`;
      span.title = `activation ${(acts[j] || 0).toPrecision(3)}`;
      span.dataset.act = String(acts[j] || 0);
      line.append(span);
    });
    return line;
  }

  function histogram(rec) {
    const counts = rec.histogram || [];
    const ns = 'http://www.w3.org/2000/svg';
    const svg = document.createElementNS(ns, 'svg');
    svg.setAttribute('class', 'fp-hist');
    svg.setAttribute('viewBox', '0 0 300 48');
    svg.setAttribute('preserveAspectRatio', 'none');
    const top = Math.max(...counts, 1);
    counts.forEach((c, b) => {
      const r = document.createElementNS(ns, 'rect');
      const hgt = c ? Math.max(1, 40 * Math.log1p(c) / Math.log1p(top)) : 0;
      r.setAttribute('x', String(b * 300 / counts.length));
      r.setAttribute('width', String(Math.max(300 / counts.length - 1, 0.5)));
      r.setAttribute('y', String(40 - hgt));
      r.setAttribute('height', String(hgt));
      r.setAttribute('fill', '#e8a33d');
      const title = document.createElementNS(ns, 'title');
      title.textContent = `${c} activations`;
      r.append(title);
      svg.append(r);
    });
    return svg;
  }

  // The feature panel of the details pane: label, frequency, histogram, logits, top and quantile examples.
  function fillFeaturePanel(panel, i, d) {
    panel.textContent = '';
    if (d.error) {
      panel.append(h('div', 'fp-note', `no dashboard: ${d.error}`));
      return;
    }
    const rec = d.record, n = state.nodes[i];
    const title = h('div', 'fp-label', n.clerp || d.label || '(no label)');
    title.append(h('span', 'fp-source', n.clerp ? '  (your label)' : d.label ? `  (${d.label_source === 'human' ? 'label' : 'automatic label'})` : ''));
    panel.append(title);
    const freq = Number(rec.activation_frequency || 0);
    panel.append(h('div', 'fp-stats', `active on ${(100 * freq).toPrecision(2)}% of tokens · max activation ${Number(rec.act_max).toPrecision(3)}` +
      (n.activation != null ? ` · here ${n.activation.toPrecision(3)}` : '')));
    panel.append(h('h4', '', 'activation histogram (log counts)'), histogram(rec),
      h('div', 'fp-note', `${Number(rec.act_min).toPrecision(3)} … ${Number(rec.act_max).toPrecision(3)}, equal bins`));
    const logits = h('div', 'fp-logits');
    for (const [cls, name, toks] of [['up', 'promotes (top logits)', rec.top_logits], ['down', 'suppresses (bottom logits)', rec.bottom_logits]]) {
      const col = h('div', cls);
      col.append(h('h4', '', name));
      const ol = h('ol', cls === 'up' ? 'fp-top-logits' : 'fp-bottom-logits');
      for (const t of (toks || []).slice(0, 8)) ol.append(h('li', '', tokenText(t)));
      col.append(ol);
      logits.append(col);
    }
    panel.append(logits);
    (rec.examples_quantiles || []).forEach((q, qi) => {
      if (!q.examples || !q.examples.length) return;
      const box = qi === 0 ? h('div', 'fp-quantile fp-top') : h('details', 'fp-quantile');
      const head = qi === 0 ? h('h4', '', q.quantile_name) : h('summary', '', `${q.quantile_name} · ${q.examples.length} examples`);
      box.append(head);
      for (const ex of q.examples) box.append(exampleLine(ex, rec.act_max));
      panel.append(box);
    });
  }

  function showFeaturePanel(i) {
    const panel = $('feature-panel');
    if (i < 0 || state.types[i] !== FEATURE) { panel.hidden = true; return; }
    panel.hidden = false;
    if (features.note && !SHARED) { panel.textContent = ''; panel.append(h('div', 'fp-note', `no dashboards: ${features.note}`)); return; }
    panel.textContent = 'loading the feature dashboard…';
    featureDashboard(i).then((d) => { if (state.selected === i) fillFeaturePanel(panel, i, d); });
  }

  // Under the tooltip: the feature's label, its strongest context and what it promotes.
  function tooltipFeature(tip, i, d) {
    if (d.error || !d.record) return;
    const rec = d.record, box = h('div', 'tip-feature');
    if (!state.nodes[i].clerp && d.label) box.append(h('div', 'tip-label', d.label));
    const top = (rec.examples_quantiles || []).find((q) => q.examples && q.examples.length);
    if (top) box.append(exampleLine(top.examples[0], rec.act_max));
    if ((rec.top_logits || []).length) {
      box.append(h('div', 'tip-logits', `promotes: ${rec.top_logits.slice(0, 5).map(tokenText).join(', ')}`));
    }
    tip.append(box);
  }

  // ---------------------------------------------------------------------------------------------------
  // Tooltip, details, pins, supernodes

  function supernodeFacts(gi) {
    const members = groupMembers(gi);
    let inW = 0, outW = 0;
    for (const a of state.drawnAggregates) {
      if (a.to.supernode === state.supernodes[gi][0]) inW += a.weight;
      if (a.from.supernode === state.supernodes[gi][0]) outW += a.weight;
    }
    return [['type', 'supernode (collapsed)'], ['members', members.length],
      ['summed input / output', `${inW.toPrecision(3)} / ${outW.toPrecision(3)}`],
      ['', 'expand it in the Subgraph panel']];
  }

  function renderTooltip(ev) {
    const tip = $('tooltip');
    const group = state.hovered < 0 ? state.hoveredGroup : -1;
    if (state.hovered < 0 && group < 0) { tip.hidden = true; tip.dataset.node = ''; return; }
    const nodeId = group >= 0 ? `sn:${group}` : state.nodes[state.hovered].node_id;
    if (!tip.hidden && tip.dataset.node === nodeId) {  // same node: only follow the pointer
      const box = $('canvas-wrap').getBoundingClientRect();
      tip.style.left = `${Math.max(0, Math.min(ev.clientX - box.left + 14, state.width - tip.offsetWidth - 4))}px`;
      tip.style.top = `${Math.max(0, Math.min(ev.clientY - box.top + 14, state.height - tip.offsetHeight - 4))}px`;
      return;
    }
    tip.dataset.node = nodeId;
    tip.textContent = '';
    const title = document.createElement('div');
    title.textContent = group >= 0 ? `◆ ${state.supernodes[group][0]}` : nodeLabel(state.hovered);
    title.style.fontWeight = '600';
    tip.append(title);
    for (const [k, v] of group >= 0 ? supernodeFacts(group) : nodeFacts(state.hovered)) {
      const row = document.createElement('div');
      const key = document.createElement('span');
      key.className = 'kind';
      key.textContent = k ? `${k}: ` : '';
      row.append(key, String(v));
      tip.append(row);
    }
    const place = () => {
      const box = $('canvas-wrap').getBoundingClientRect();
      const x = ev.clientX - box.left + 14, y = ev.clientY - box.top + 14;
      tip.style.left = `${Math.max(0, Math.min(x, state.width - tip.offsetWidth - 4))}px`;
      tip.style.top = `${Math.max(0, Math.min(y, state.height - tip.offsetHeight - 4))}px`;
    };
    tip.hidden = false;
    place();
    const i = state.hovered;
    if (group < 0 && state.types[i] === FEATURE && !(features.note && !SHARED)) {
      featureDashboard(i).then((d) => {
        if (state.hovered !== i || tip.hidden || tip.dataset.node !== state.nodes[i].node_id) return;
        if (!tip.querySelector('.tip-feature')) { tooltipFeature(tip, i, d); place(); }
      });
    }
  }

  function strongest(start, index, i, other, limit = 12) {
    const ks = Array.from(index.subarray(start[i], start[i + 1]));
    ks.sort((a, b) => Math.abs(state.w[b]) - Math.abs(state.w[a]));
    return ks.slice(0, limit).map((k) => ({k, node: other[k], w: state.w[k]}));
  }

  function fillLinks(list, items) {
    list.textContent = '';
    for (const {node, w} of items) {
      const li = document.createElement('li');
      const ws = document.createElement('span');
      ws.className = `w ${w < 0 ? 'neg' : 'pos'}`;
      ws.textContent = w.toPrecision(3);
      li.append(ws, nodeLabel(node));
      li.dataset.nodeId = state.nodes[node].node_id;
      li.addEventListener('click', () => select(node));
      list.append(li);
    }
    if (!items.length) {
      const li = document.createElement('li');
      li.textContent = '(none)';
      list.append(li);
    }
  }

  function renderDetails() {
    const i = state.selected;
    $('details').querySelector('.empty').hidden = i >= 0;
    $('details-body').hidden = i < 0;
    if (i < 0) { $('feature-panel').hidden = true; return; }
    $('details-title').textContent = nodeLabel(i);
    const table = $('details-table');
    table.textContent = '';
    for (const [k, v] of nodeFacts(i)) {
      const tr = table.insertRow();
      tr.insertCell().textContent = k;
      tr.insertCell().textContent = String(v);
    }
    $('clerp-input').value = state.nodes[i].clerp || '';
    $('clerp-input').placeholder = state.types[i] === FEATURE ? features.labels.get(featureKey(i)) || '' : '';
    showFeaturePanel(i);
    $('pin-toggle').textContent = state.pinned.includes(state.nodes[i].node_id) ? 'Unpin' : 'Pin';
    fillLinks($('inputs'), strongest(state.inStart, state.inIdx, i, state.src));
    fillLinks($('outputs'), strongest(state.outStart, state.outIdx, i, state.tgt));
  }

  function select(i) {
    state.selected = i;
    computeVisibility();  // a selected node stays visible whatever the sliders say
    renderDetails();
    scheduleRender();
    syncUrl(true);
  }

  function markDirty() {
    syncUrl(true);
    if (SHARED) { setStatus('read-only file: Copy link keeps these edits'); return; }
    state.dirty = true;
    $('save').disabled = false;
    setStatus('unsaved changes');
  }

  function setStatus(text, cls = '') {
    const s = $('status');
    s.textContent = text;
    s.className = cls;
  }

  function togglePin(i) {
    if (i < 0) return;
    const id = state.nodes[i].node_id;
    const at = state.pinned.indexOf(id);
    if (at >= 0) {
      state.pinned.splice(at, 1);
      dropFromSupernodes(new Set([id]));
    } else state.pinned.push(id);
    writeSgPos();  // dragged positions of the nodes that stay are kept
    indexSupernodes();
    markDirty();
    computeVisibility();
    renderDetails();
    renderSubgraph();
    scheduleRender();
  }

  // Remove node ids from every supernode, dropping supernodes left without members (collapse flags follow).
  function dropFromSupernodes(ids) {
    const groups = [], collapsed = [];
    state.supernodes.forEach((g, gi) => {
      const kept = g.filter((x, j) => j === 0 || !ids.has(x));
      if (kept.length > 1) { groups.push(kept); collapsed.push(state.snCollapsed[gi]); }
    });
    state.supernodes = groups;
    state.snCollapsed = collapsed;
  }

  // Redraw everything a supernode edit touches; `membership` says whether nodes joined or left a supernode.
  function supernodesEdited(membership) {
    if (membership) writeSgPos();
    indexSupernodes();
    markDirty();
    computeVisibility();
    renderSubgraph();
    scheduleRender();
  }

  function renameSupernode(gi, label) {
    const name = label.trim();
    if (!name) { setStatus('a supernode needs a non-empty name', 'bad'); return false; }
    if (name !== state.supernodes[gi][0]) {
      state.supernodes[gi][0] = name;
      supernodesEdited(false);
    }
    return true;
  }

  function startRename(li, gi) {
    const name = li.querySelector('.name');
    const input = document.createElement('input');
    input.type = 'text';
    input.className = 'sn-rename-input';
    input.value = state.supernodes[gi][0];
    input.setAttribute('aria-label', 'supernode name');
    let done = false;
    const finish = (commit) => {
      if (done) return;
      done = true;
      if (commit) renameSupernode(gi, input.value);
      renderPinnedList();  // back to the name (renameSupernode already redrew it if the name changed)
    };
    input.addEventListener('keydown', (ev) => {
      if (ev.key === 'Enter') { ev.preventDefault(); finish(true); }
      if (ev.key === 'Escape') finish(false);
    });
    input.addEventListener('blur', () => finish(true));
    name.replaceWith(input);
    input.focus();
    input.select();
  }

  function supernodeOf(id) {
    return state.supernodes.findIndex((g) => g.indexOf(id) > 0);
  }

  function renderPinnedList() {
    const list = $('pinned-list');
    list.textContent = '';
    for (const id of state.pinned) {
      const i = state.ids.get(id);
      const li = document.createElement('li');
      li.dataset.nodeId = id;
      const box = document.createElement('input');
      box.type = 'checkbox';
      box.className = 'group-check';
      box.value = id;
      const name = document.createElement('span');
      name.className = 'name';
      const g = supernodeOf(id);
      name.textContent = nodeLabel(i) + (g >= 0 ? `  [${state.supernodes[g][0]}]` : '');
      name.title = id;
      name.addEventListener('click', () => select(i));
      const un = document.createElement('button');
      un.type = 'button';
      un.className = 'small';
      un.textContent = 'unpin';
      un.addEventListener('click', () => togglePin(i));
      li.append(box, name, un);
      list.append(li);
    }
    $('pinned-count').textContent = state.pinned.length ? `(${state.pinned.length} pinned)` : '';
    renderSteer();
    const sl = $('supernode-list');
    sl.textContent = '';
    const button = (cls, text, title, onClick) => {
      const b = document.createElement('button');
      b.type = 'button';
      b.className = `small ${cls}`;
      b.textContent = text;
      b.title = title;
      b.addEventListener('click', onClick);
      return b;
    };
    state.supernodes.forEach((g, gi) => {
      const li = document.createElement('li');
      li.className = 'supernode';
      li.dataset.index = String(gi);
      const swatch = document.createElement('span');
      swatch.className = 'swatch';
      swatch.style.background = snColor(gi);
      const name = document.createElement('span');
      name.className = 'name';
      name.textContent = `${g[0]} (${g.length - 1} nodes)`;
      name.title = `${g[0]}: double-click to rename`;
      name.addEventListener('dblclick', () => startRename(li, gi));
      const collapsed = state.snCollapsed[gi];
      li.classList.toggle('collapsed', !!collapsed);
      li.append(swatch, name,
        button('sn-collapse', collapsed ? 'expand' : 'collapse',
          collapsed ? 'draw the members again' : 'draw the members as one node on the graph', () => {
            state.snCollapsed[gi] = !state.snCollapsed[gi];
            indexSupernodes();
            state.hoveredGroup = -1;
            renderPinnedList();
            scheduleRender();
          }),
        button('sn-rename', 'rename', 'rename this supernode', () => startRename(li, gi)),
        button('sn-ungroup', 'ungroup', 'remove the supernode (its nodes stay pinned)', () => {
          state.supernodes.splice(gi, 1);
          state.snCollapsed.splice(gi, 1);
          supernodesEdited(true);
        }));
      sl.append(li);
    });
  }

  // sg_pos as this viewer writes it -> Map(item key -> [fx, fy]); anything else (Neuronpedia's) -> empty
  function parseSgPos(text) {
    try {
      const v = JSON.parse(text);
      if (v && v.jcircuits === 1 && v.pos && typeof v.pos === 'object') {
        return new Map(Object.entries(v.pos).filter(([, xy]) => Array.isArray(xy) && xy.length === 2 &&
          xy.every((c) => Number.isFinite(c) && c >= 0 && c <= 1)));
      }
    } catch (_) { /* not ours: kept verbatim, not used */ }
    return new Map();
  }

  // The pinned nodes, with supernodes merged: rows are the layers they sit in (logits on top), columns are
  // their positions in order among the pinned positions only, so a few pins fill the pane wherever they are in
  // the prompt. Nodes can be dragged; dragged positions are saved as sg_pos. Links show their summed weights.
  function renderSubgraph() {
    renderPinnedList();
    const svg = $('subgraph-svg');
    svg.textContent = '';
    state.sgItems = [];
    svg.style.display = state.pinned.length ? '' : 'none';  // nothing pinned: no empty box, the hint says why
    $('subgraph-hint').hidden = state.pinned.length > 0;
    if (!state.doc) return;
    const grouped = new Map();  // node index -> item index
    const items = [];
    state.supernodes.forEach((g) => {
      const members = g.slice(1).map((id) => state.ids.get(id)).filter((m) => m !== undefined);
      members.forEach((m) => grouped.set(m, items.length));
      items.push({key: `supernode:${g[0]}`, label: g[0], members, supernode: true});
    });
    for (const id of state.pinned) {
      const i = state.ids.get(id);
      if (grouped.has(i)) continue;
      grouped.set(i, items.length);
      items.push({key: id, label: nodeLabel(i), members: [i], supernode: false});
    }
    if (!items.length) return;
    const W = svg.clientWidth || 380, H = svg.clientHeight || 260, pad = 16;
    svg.setAttribute('viewBox', `0 0 ${W} ${H}`);
    for (const it of items) {
      const mean = (f) => it.members.reduce((a, m) => a + f(m), 0) / it.members.length;
      it.row = Math.round(mean((m) => state.rows[m]));
      it.col = Math.round(mean((m) => state.nodes[m].ctx_idx));
    }
    const rows = [...new Set(items.map((it) => it.row))].sort((a, b) => b - a);
    const cols = [...new Set(items.map((it) => it.col))].sort((a, b) => a - b);
    const cellW = (W - 2 * pad) / cols.length, cellH = (H - 2 * pad - 14) / rows.length;
    const cells = new Map();
    for (const it of items) {
      const key = `${it.row}:${it.col}`;
      if (!cells.has(key)) cells.set(key, []);
      cells.get(key).push(it);
    }
    for (const members of cells.values()) {
      members.forEach((it, k) => {
        const c = cols.indexOf(it.col), r = rows.indexOf(it.row);
        const step = cellW / members.length;
        it.x = pad + c * cellW + (k + 0.5) * step;
        it.y = pad + (r + 0.5) * cellH;
        it.maxLabelW = Math.max(step - 4, 30);
        const saved = state.sgOverride.get(it.key);
        if (saved) { it.x = saved[0] * W; it.y = saved[1] * H; }
      });
    }
    // summed weights between items
    const sums = new Map();
    for (const [m, a] of grouped) {
      for (let c = state.outStart[m]; c < state.outStart[m + 1]; c++) {
        const k = state.outIdx[c];
        const b = grouped.get(state.tgt[k]);
        if (b === undefined || b === a) continue;
        const key = `${a}>${b}`;
        sums.set(key, (sums.get(key) || 0) + state.w[k]);
      }
    }
    const maxW = Math.max(...[...sums.values()].map(Math.abs), 1e-12);
    const ns = 'http://www.w3.org/2000/svg';
    const el = (name, attrs, parent = svg) => {
      const e = document.createElementNS(ns, name);
      for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
      parent.append(e);
      return e;
    };
    const strongestKeys = new Set([...sums.entries()].sort((x, y) => Math.abs(y[1]) - Math.abs(x[1]))
      .slice(0, 16).map(([key]) => key));
    const labelsLayer = [];
    for (const [key, w] of sums) {
      const [a, b] = key.split('>').map(Number);
      const A = items[a], B = items[b];
      el('line', {x1: A.x, y1: A.y, x2: B.x, y2: B.y, stroke: w < 0 ? '#c53030' : '#2b6cb0',
        'stroke-width': 0.8 + 3.5 * Math.abs(w) / maxW, 'stroke-opacity': 0.7, class: 'sg-link',
        'data-from': A.key, 'data-to': B.key, 'data-weight': String(w)});
      if (strongestKeys.has(key)) labelsLayer.push([A, B, w]);
    }
    for (const [A, B, w] of labelsLayer) {  // weights at 40% of the way, so two opposite links do not collide
      const t = el('text', {x: A.x + 0.4 * (B.x - A.x), y: A.y + 0.4 * (B.y - A.y) - 2, class: 'sg-weight',
        fill: w < 0 ? '#9b2c2c' : '#2c5282', 'text-anchor': 'middle'});
      t.textContent = w.toPrecision(2);
    }
    const pinned = new Set(state.pinned);
    for (const it of items) {
      const g = el('g', {class: it.supernode ? 'sg-node sg-supernode' : 'sg-node', 'data-key': it.key,
        transform: `translate(${it.x.toFixed(1)},${it.y.toFixed(1)})`});
      if (it.supernode) el('rect', {x: -9, y: -7, width: 18, height: 14, rx: 4, fill: '#f6c744', stroke: '#8a6a00'}, g);
      else {
        const i = it.members[0];
        el('circle', {r: 6, fill: pinned.has(state.nodes[i].node_id) ? '#f6c744' : '#fbf4e6', stroke: '#8c6d3f'}, g);
      }
      const text = el('text', {x: 0, y: 17, 'font-size': 10.5, fill: '#1f2933', 'text-anchor': 'middle'}, g);
      const maxChars = Math.max(6, Math.floor(it.maxLabelW / 5.6));
      text.textContent = it.label.length > maxChars ? `${it.label.slice(0, maxChars - 1)}…` : it.label;
      const title = document.createElementNS(ns, 'title');
      title.textContent = it.label;
      g.append(title);
      bindSubgraphDrag(svg, g, it, W, H);
    }
    // row names on the left edge
    rows.forEach((r, k) => {
      const t = el('text', {x: 2, y: pad + (k + 0.5) * cellH - 9, 'font-size': 9, fill: '#8a94a3'});
      t.textContent = r === 0 ? 'Emb' : r === state.nRows - 1 ? 'Logit' : `L${r - 1}`;
    });
    state.sgItems = items;
  }

  // Drag a subgraph node (pointer events); a press without movement selects it.
  function bindSubgraphDrag(svg, g, it, W, H) {
    g.addEventListener('pointerdown', (ev) => {
      ev.preventDefault();
      const box = svg.getBoundingClientRect();
      const sx0 = W / box.width, sy0 = H / box.height;
      const start = {x: ev.clientX, y: ev.clientY, ix: it.x, iy: it.y};
      let moved = false;
      g.setPointerCapture(ev.pointerId);
      const move = (e) => {
        const dx = (e.clientX - start.x) * sx0, dy = (e.clientY - start.y) * sy0;
        if (!moved && Math.abs(dx) + Math.abs(dy) < 3) return;
        moved = true;
        it.x = Math.min(Math.max(start.ix + dx, 4), W - 4);
        it.y = Math.min(Math.max(start.iy + dy, 4), H - 4);
        g.setAttribute('transform', `translate(${it.x.toFixed(1)},${it.y.toFixed(1)})`);
      };
      const up = () => {
        g.removeEventListener('pointermove', move);
        g.removeEventListener('pointerup', up);
        g.removeEventListener('pointercancel', up);
        if (!moved) {
          if (!it.supernode) select(it.members[0]);
          return;
        }
        state.sgOverride.set(it.key, [+(it.x / W).toFixed(4), +(it.y / H).toFixed(4)]);
        writeSgPos();
        markDirty();
        renderSubgraph();  // links follow
      };
      g.addEventListener('pointermove', move);
      g.addEventListener('pointerup', up);
      g.addEventListener('pointercancel', up);
    });
  }

  // sg_pos from the dragged positions of items still in the subgraph
  function writeSgPos() {
    const live = new Set(state.supernodes.map((g) => `supernode:${g[0]}`).concat(state.pinned));
    const pos = {};
    for (const [key, xy] of state.sgOverride) if (live.has(key)) pos[key] = xy;
    state.sgPos = Object.keys(pos).length ? JSON.stringify({jcircuits: 1, pos}) : '';
  }

  // ---------------------------------------------------------------------------------------------------
  // Steering with the server's model (jcircuits serve --model …, attribute --serve): pinned features edited,
  // the top next tokens and a greedy continuation before and after, computed on the server by
  // jcircuits.intervention. Row settings are kept per node while it stays pinned.

  const steer = {info: null, rows: new Map()};

  async function loadSteerInfo() {
    if (SHARED) return;
    try { steer.info = await fetchJson('steer/info.json'); } catch (_) { steer.info = null; }
    renderSteer();
  }

  function steerUsable() {
    const info = steer.info;
    if (!info || !info.available || !state.doc) return false;
    const scan = featureScan();
    return !info.scan || !scan || scan === 'local' || scan === info.scan;
  }

  // token ids of the prompt, read from the embedding nodes' ids (E_{token id}_{position})
  function promptTokenIds() {
    const ids = new Array(state.doc.metadata.prompt_tokens.length).fill(null);
    for (let i = 0; i < state.nodes.length; i++) {
      if (state.types[i] !== EMBED) continue;
      const m = /^E_(\d+)_(\d+)$/.exec(state.nodes[i].node_id);
      if (m) ids[Number(m[2])] = Number(m[1]);
    }
    return ids.includes(null) ? null : ids;
  }

  function renderSteer() {
    const box = $('steer');
    box.hidden = !steerUsable();
    if (box.hidden) return;
    $('steer-model').textContent = `(${steer.info.model})`;
    const table = $('steer-table');
    table.textContent = '';
    const feats = state.pinned.map((id) => state.ids.get(id)).filter((i) => state.types[i] === FEATURE);
    for (const [id] of steer.rows) if (!state.pinned.includes(id)) steer.rows.delete(id);
    if (!feats.length) {
      table.insertRow().insertCell().textContent = 'Pin features (shift-click) to steer them.';
      $('steer-run').disabled = true;
      return;
    }
    $('steer-run').disabled = false;
    for (const i of feats) {
      const id = state.nodes[i].node_id;
      if (!steer.rows.has(id)) steer.rows.set(id, {use: false, mode: 'multiplier', x: '0', from: false});
      const row = steer.rows.get(id);
      const tr = table.insertRow();
      tr.dataset.nodeId = id;
      const use = h('input', 'steer-use');
      use.type = 'checkbox';
      use.checked = row.use;
      use.addEventListener('change', () => { row.use = use.checked; });
      const mode = h('select', 'steer-mode');
      for (const [v, t] of [['multiplier', '×'], ['value', '=']]) {
        const o = h('option', '', t);
        o.value = v;
        mode.append(o);
      }
      mode.value = row.mode;
      const x = h('input', 'steer-x');
      x.type = 'number';
      x.step = 'any';
      x.value = row.x;
      x.addEventListener('input', () => { row.x = x.value; });
      const from = h('input', 'steer-from');
      from.type = 'checkbox';
      from.checked = row.from;
      from.title = 'also at every later position, generated tokens included (values only)';
      from.disabled = row.mode !== 'value';
      from.addEventListener('change', () => { row.from = from.checked; });
      mode.addEventListener('change', () => { row.mode = mode.value; from.disabled = row.mode !== 'value'; });
      const g = supernodeOf(id);
      const name = h('td', 'name', nodeLabel(i) + (g >= 0 ? ` [${state.supernodes[g][0]}]` : ''));
      name.title = `${id}: ${nodeLabel(i)}`;
      tr.insertCell().append(use);
      tr.append(name);
      tr.insertCell().append(mode);
      tr.insertCell().append(x);
      const fc = tr.insertCell();
      fc.append(from, ' →');
    }
  }

  async function runSteer() {
    const tokens = promptTokenIds();
    const result = $('steer-result');
    if (!tokens) { result.textContent = 'this graph does not hold every prompt token id (E_… nodes); cannot steer'; return; }
    const edits = [];
    for (const [id, row] of steer.rows) {
      if (!row.use) continue;
      const n = state.nodes[state.ids.get(id)];
      const x = Number(row.x);
      if (row.x === '' || !Number.isFinite(x)) { result.textContent = `give a number for ${nodeLabel(state.ids.get(id))}`; return; }
      const e = {layer: Number(n.layer), position: n.ctx_idx, feature: Number(featureIndex(n))};
      e[row.mode] = x;
      if (row.mode === 'value' && row.from) e.from_position = true;
      edits.push(e);
    }
    if (!edits.length) { result.textContent = 'tick the features to edit'; return; }
    const n = Math.max(0, Math.min(32, Math.round(Number($('steer-n').value) || 0)));
    result.textContent = 'running…';
    $('steer-run').disabled = true;
    try {
      const reply = await postJson('steer.json', {tokens, scan: featureScan(), edits, generate: n, top_k: 10});
      state.lastSteer = reply;
      showSteer(result, reply);
    } catch (e) {
      result.textContent = `steering failed: ${e.message}`;
    } finally {
      $('steer-run').disabled = false;
    }
  }

  function showSteer(box, reply) {
    box.textContent = '';
    const table = h('table', 'steer-top');
    const head = table.insertRow();
    for (const t of ['before', 'p', 'after', 'p']) head.append(h('th', '', t));
    const b = reply.before.top, a = reply.after.top;
    for (let k = 0; k < Math.max(b.length, a.length); k++) {
      const tr = table.insertRow();
      tr.insertCell().textContent = b[k] ? tokenText(b[k].token) : '';
      tr.insertCell().textContent = b[k] ? b[k].prob.toFixed(4) : '';
      const ac = tr.insertCell();
      ac.textContent = a[k] ? tokenText(a[k].token) : '';
      if (a[k] && b[k] && a[k].id !== b[k].id) ac.className = 'changed';
      tr.insertCell().textContent = a[k] ? a[k].prob.toFixed(4) : '';
    }
    box.append(table);
    if (reply.before.generated) {
      const join = (toks) => toks.map(tokenText).join(/^[\s▁Ġ]/.test(toks[1] || '') ? '' : ' ');
      box.append(h('div', 'gen before', `before: … ${join(reply.before.generated)}`));
      box.append(h('div', 'gen after', `after:  … ${join(reply.after.generated)}`));
    }
  }

  // A new graph of a prompt on the server's model, added to the list and opened.
  async function tracePrompt(ev) {
    ev.preventDefault();
    const prompt = $('trace-prompt').value.trim(), slug = $('trace-slug').value.trim();
    const status = $('trace-status');
    if (!prompt || !slug) { status.textContent = 'give a prompt and a name for the graph'; return; }
    if (state.dirty && !window.confirm('Discard unsaved changes?')) { status.textContent = 'not traced: save first'; return; }
    status.textContent = 'tracing… (the first trace compiles the model: a few seconds to a minute)';
    try {
      const reply = await postJson('trace.json', {prompt, slug});
      status.textContent = reply.summary;
      await loadIndex();
      $('graph-select').value = reply.slug;
      await loadGraph(reply.slug);
    } catch (e) {
      status.textContent = `trace failed: ${e.message}`;
    }
  }

  // ---------------------------------------------------------------------------------------------------
  // The view in the URL (as Neuronpedia's graph page): ?graph=slug&pinnedIds=a,b&supernodes=[[label,a,b]]
  // &clerps=[[id,label]]&clickedId=a&nodeThreshold=0.5&edgeThreshold=0.9. Opening such a URL restores the view;
  // the file on disk is not touched (Save writes it). clerps carries only labels that differ from the file's.

  function readUrlState(url) {
    const p = url.searchParams, out = {};
    const json = (name) => {
      try { return JSON.parse(p.get(name)); } catch (_) { setStatus(`ignored a malformed ${name} in the URL`, 'bad'); return null; }
    };
    if (p.has('pinnedIds')) out.pinnedIds = p.get('pinnedIds').split(',').filter(Boolean);
    if (p.has('supernodes')) {
      const sn = json('supernodes');
      if (Array.isArray(sn)) out.supernodes = sn.filter((g) => Array.isArray(g) && g.every((x) => typeof x === 'string'));
    }
    if (p.has('clerps')) {
      const c = json('clerps');
      if (Array.isArray(c)) out.clerps = c.filter((e) => Array.isArray(e) && e.length === 2);
    }
    if (p.has('clickedId')) out.clickedId = p.get('clickedId');
    for (const key of ['nodeThreshold', 'edgeThreshold']) {
      const v = Number(p.get(key));
      if (p.has(key) && Number.isFinite(v)) out[key] = v;
    }
    return out;
  }

  function viewUrl() {
    const url = new URL(window.location.href);
    url.search = '';
    url.searchParams.set('graph', state.slug);
    if (state.pinned.length) url.searchParams.set('pinnedIds', state.pinned.join(','));
    if (state.supernodes.length) url.searchParams.set('supernodes', JSON.stringify(state.supernodes));
    const changed = state.nodes.filter((n) => (n.clerp || '') !== (state.fileClerps.get(n.node_id) || ''))
      .map((n) => [n.node_id, n.clerp || '']);
    if (changed.length) url.searchParams.set('clerps', JSON.stringify(changed));
    if (state.selected >= 0) url.searchParams.set('clickedId', state.nodes[state.selected].node_id);
    if (state.nodeThreshold !== state.nodeDefault) url.searchParams.set('nodeThreshold', state.nodeThreshold.toFixed(2));
    if (state.edgeThreshold < 1) url.searchParams.set('edgeThreshold', state.edgeThreshold.toFixed(2));
    return url;
  }

  // discrete edits write the URL at once (a reload right after keeps them); slider drags are debounced
  let urlTimer = 0;
  function syncUrl(now = false) {
    if (!state.doc) return;
    clearTimeout(urlTimer);
    const write = () => { window.history.replaceState(null, '', viewUrl()); };
    if (now) write(); else urlTimer = setTimeout(write, 120);
  }

  async function copyLink() {
    const url = viewUrl();
    window.history.replaceState(null, '', url);
    try {
      await navigator.clipboard.writeText(url.href);
      setStatus('link copied', 'ok');
    } catch (_) {
      window.prompt('Copy this link:', url.href);  // clipboard refused (file:// or no permission)
    }
  }

  // ---------------------------------------------------------------------------------------------------
  // Saving

  async function save() {
    if (!state.slug || SHARED) return;
    const body = {
      qParams: {
        pinnedIds: state.pinned, supernodes: state.supernodes, linkType: state.linkType,
        clickedId: state.selected >= 0 ? state.nodes[state.selected].node_id : '', sg_pos: state.sgPos,
      },
      clerps: state.clerps,
    };
    setStatus('saving…');
    try {
      const res = await fetch(`graphs/${encodeURIComponent(state.slug)}.json`, {
        method: 'POST', headers: {'Content-Type': 'application/json'}, body: JSON.stringify(body),
      });
      const reply = await res.json().catch(() => ({}));
      if (!res.ok) throw new Error(reply.error || `HTTP ${res.status}`);
      state.clerps = {};
      state.fileClerps = new Map(state.nodes.map((n) => [n.node_id, n.clerp || '']));
      syncUrl(true);
      state.dirty = false;
      $('save').disabled = true;
      setStatus('saved', 'ok');
    } catch (e) {
      setStatus(`save failed: ${e.message}`, 'bad');
    }
  }

  // ---------------------------------------------------------------------------------------------------
  // Events

  function hitTest(px, py) {
    const r = Math.max(nodeRadius() + 3, 6);
    let best = -1, bestD = r * r;
    for (let i = 0; i < state.nodes.length; i++) {
      if (!state.nodeVisible[i] || state.snHidden[i]) continue;
      const dx = sx(state.x[i]) - px, dy = sy(state.y[i]) - py;
      const d = dx * dx + dy * dy;
      if (d <= bestD) { bestD = d; best = i; }
    }
    return best;
  }

  function localPoint(ev) {
    const box = $('overlay-canvas').getBoundingClientRect();
    return [ev.clientX - box.left, ev.clientY - box.top];
  }

  function bindEvents() {
    const overlay = $('overlay-canvas');
    let drag = null;
    overlay.addEventListener('mousedown', (ev) => {
      const [x, y] = localPoint(ev);
      drag = {x, y, tx: state.view.tx, ty: state.view.ty, moved: false};
    });
    window.addEventListener('mouseup', (ev) => {
      if (!drag) return;
      const wasClick = !drag.moved;
      drag = null;
      if (!wasClick || !state.doc || ev.target !== overlay) return;
      const [x, y] = localPoint(ev);
      const i = hitTest(x, y);
      if (ev.shiftKey && i >= 0) togglePin(i);
      else select(i);
    });
    overlay.addEventListener('mousemove', (ev) => {
      if (!state.doc) return;
      const [x, y] = localPoint(ev);
      if (drag) {
        if (Math.abs(x - drag.x) + Math.abs(y - drag.y) > 3) drag.moved = true;
        if (drag.moved) {
          state.view.tx = drag.tx + x - drag.x;
          state.view.ty = drag.ty + y - drag.y;
          scheduleRender();
          return;
        }
      }
      const i = hitTest(x, y);
      const group = i < 0 ? hitSupernode(x, y) : -1;
      if (i !== state.hovered || group !== state.hoveredGroup) {
        state.hovered = i;
        state.hoveredGroup = group;
        drawOverlay();
      }
      renderTooltip(ev);
    });
    overlay.addEventListener('mouseleave', () => {
      state.hovered = -1;
      state.hoveredGroup = -1;
      $('tooltip').hidden = true;
      if (state.doc) drawOverlay();
    });
    overlay.addEventListener('wheel', (ev) => {
      if (!state.doc) return;
      ev.preventDefault();
      const [x, y] = localPoint(ev);
      const v = state.view;
      const scale = Math.min(Math.max(v.scale * Math.exp(-ev.deltaY * 0.0015), 0.5), 60);
      v.tx = x - (x - v.tx) * (scale / v.scale);
      v.ty = y - (y - v.ty) * (scale / v.scale);
      v.scale = scale;
      scheduleRender();
    }, {passive: false});
    overlay.addEventListener('dblclick', () => {
      state.view = {scale: 1, tx: 0, ty: 0};
      scheduleRender();
    });
    window.addEventListener('keydown', (ev) => {
      if (ev.target instanceof HTMLInputElement) return;
      if (ev.key === 'p' || ev.key === 'P') togglePin(state.selected);
      if (ev.key === 'Escape') select(-1);
    });
    window.addEventListener('resize', () => { resize(); scheduleRender(); renderSubgraph(); });

    for (const [id, key] of [['node-threshold', 'nodeThreshold'], ['edge-threshold', 'edgeThreshold']]) {
      $(id).addEventListener('input', (ev) => {
        state[key] = Number(ev.target.value);
        $(`${id}-value`).textContent = state[key].toFixed(2);
        if (!state.doc) return;
        computeVisibility();
        scheduleRender();
        syncUrl();
      });
    }
    $('graph-select').addEventListener('change', (ev) => {
      if (state.dirty && !window.confirm('Discard unsaved changes?')) {
        ev.target.value = state.slug;
        return;
      }
      loadGraph(ev.target.value);
    });
    $('pin-toggle').addEventListener('click', () => togglePin(state.selected));
    $('clerp-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      const i = state.selected;
      if (i < 0) return;
      const label = $('clerp-input').value.trim();
      state.nodes[i].clerp = label;
      state.clerps[state.nodes[i].node_id] = label;
      markDirty();
      renderDetails();
      renderSubgraph();
      scheduleRender();  // the label is drawn beside the node
    });
    $('supernode-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      const ids = [...document.querySelectorAll('#pinned-list .group-check:checked')].map((b) => b.value);
      if (!ids.length) { setStatus('check pinned nodes to group first', 'bad'); return; }
      const label = $('supernode-label').value.trim() || 'supernode';
      dropFromSupernodes(new Set(ids));  // a node belongs to one supernode at most
      state.supernodes.push([label, ...ids]);
      state.snCollapsed.push(false);
      $('supernode-label').value = '';
      supernodesEdited(true);
    });
    $('clear-pins').addEventListener('click', () => {
      state.pinned = [];
      state.supernodes = [];
      state.snCollapsed = [];
      state.sgOverride = new Map();
      state.sgPos = '';
      indexSupernodes();
      markDirty();
      computeVisibility();
      renderSubgraph();
      renderDetails();
      scheduleRender();
    });
    $('save').addEventListener('click', save);
    $('copy-link').addEventListener('click', copyLink);
    $('steer-run').addEventListener('click', runSteer);
    $('trace-form').addEventListener('submit', tracePrompt);
    window.addEventListener('beforeunload', (ev) => {
      if (state.dirty) { ev.preventDefault(); ev.returnValue = ''; }
    });
  }

  // A small read-only handle for scripts and tests: state, timings, and where a node is on screen.
  window.jcViewer = {
    state,
    nodeScreenPos(id) {
      const i = state.ids.get(id);
      return i === undefined ? null : {x: sx(state.x[i]), y: sy(state.y[i])};
    },
    // supernode outlines / collapsed boxes of the last frame, in canvas CSS pixels, and the summed links drawn
    // for collapsed supernodes ({from, to: {node, supernode}, weight})
    supernodeBoxes: () => state.drawnSupernodes.map((b) => ({...b, members: [...b.members]})),
    collapsedLinks: () => state.drawnAggregates.map((a) => ({...a})),
    // node labels the last frame drew ({id, text, x, y, w}, canvas CSS pixels)
    drawnLabels: () => state.drawnLabels.map((d) => ({...d})),
    // subgraph pane items as laid out ({key, label, x, y} in the pane's pixels)
    subgraphItems: () => (state.sgItems || []).map(({key, label, x, y}) => ({key, label, x, y})),
    viewUrl: () => viewUrl().href,
    loadGraph,
  };

  async function main() {
    bindEvents();
    if (window.innerHeight < 900) $('legend').open = false;  // small screens: the legend opens on a click
    if (SHARED) {  // a file from `jcircuits share`: no server to save to
      $('save').hidden = true;
      document.title = `${SHARED.graph.metadata.slug} · jcircuits`;
    }
    let slugs;
    try {
      slugs = await loadIndex();
    } catch (e) {
      showError(`cannot read the graph index: ${e.message}`);
      return;
    }
    loadSteerInfo();
    const wanted = new URL(window.location.href).searchParams.get('graph');
    const slug = wanted || slugs[0];
    if (!slug) {
      showError('no graphs in this directory yet: write one with `jcircuits attribute … --slug NAME --graph-dir DIR`');
      return;
    }
    if (wanted && !slugs.includes(wanted)) {
      const opt = document.createElement('option');
      opt.value = opt.textContent = wanted;
      $('graph-select').append(opt);
    }
    $('graph-select').value = slug;
    await loadGraph(slug);
  }

  main();
})();
