"""``attribute``: one prompt → an attribution ``Graph``.

Phases: (0) replacement step (features, errors, frozen constants); (1) targets; (2) logit rows; (3) feature rows,
grouped by the layer they read from so each batch's backward stops at that layer, with influence-ordered selection
when ``max_feature_nodes`` is smaller than the number of active features; (4) the square adjacency over
``[selected features | errors | tokens | logits]``.

Shapes are kept static: the prompt length fixes T; feature batches are padded to a few bucket sizes so one
compilation serves every layer group (the start layer is a traced argument).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jcircuits.attribution.linear import (
    LinearContext,
    Static,
    pad_positions,
    rows_for_features,
    rows_for_logits,
    token_rows_for_layer0,
)
from jcircuits.attribution.targets import Targets, resolve_targets
from jcircuits.common import buckets
from jcircuits.common.buckets import length_bucket, size_bucket
from jcircuits.graph import Graph
from jcircuits.models import Model, encode_prompt, single_token_id
from jcircuits.models.transformer import unembed_matrix
from jcircuits.replacement import Replacement, replace
from jcircuits.scale.distributed import to_host
from jcircuits.scale.sharding import place_context
from jcircuits.transcoders import TranscoderSet

__all__ = ["attribute", "build_context"]


def _source_layout(active: np.ndarray, L: int, T: int, clt: bool):
    """Rank of each active feature within its (layer, position) and the padded width K (per layer for CLT) of
    the padded source-edge layout used by ``linear._finish``."""
    n = len(active)
    key = active[:, 0].astype(np.int64) * T + active[:, 1]
    first = np.searchsorted(key, key, side="left")  # active is sorted, so groups are contiguous
    rank = np.arange(n) - first
    counts = np.bincount(key, minlength=L * T).reshape(L, T)
    if not clt:
        return rank, size_bucket(int(counts.max()) if n else 0)
    return rank, [size_bucket(int(counts[l].max())) for l in range(L)]


def source_index(active: np.ndarray, rank: np.ndarray, K, L: int, n_pos: int, n_layers: int | None = None):
    """Flat column of each active feature in the padded source edges of the prefix of ``n_layers`` blocks (default
    all) and ``n_pos`` positions (``[n_layers, n_pos, K]`` flattened; per source layer ``[n_pos, K_l]`` blocks for
    a CLT). Sources outside the prefix, and the padding up to ``size_bucket(n_active)``, point one past the end
    (``_finish`` reads that as zero)."""
    m = L if n_layers is None else n_layers
    lay, pos = active[:, 0].astype(np.int64), active[:, 1].astype(np.int64)
    if isinstance(K, int):
        flat, width = (lay * n_pos + pos) * K + rank, m * n_pos * K
    else:
        Ks = np.asarray(K, np.int64)
        offsets = np.concatenate([[0], np.cumsum(n_pos * Ks)])
        flat, width = offsets[lay] + pos * Ks[lay] + rank, int(offsets[m])
    index = np.full(size_bucket(len(active)), width, np.int32)
    index[: len(active)] = np.where((pos < n_pos) & (lay < m), flat, width)
    return index


def build_context(model: Model, transcoders: TranscoderSet, rep: Replacement, dtype=jnp.float32):
    """The frozen linear model's constants for ``rep`` and the source layout. Returns
    ``(static, ctx, src_index)``: ``ctx`` is zero-padded to ``length_bucket(T)`` positions, and
    ``src_index(n_pos)`` gives the (cached, device) column map for a position prefix (see ``source_index``)."""
    cfg, tcfg = model.cfg, transcoders.cfg
    L, T, D = cfg.n_layers, len(rep.tokens), cfg.d_model
    inter = rep.inter
    clt = tcfg.kind == "clt"
    act = rep.active_features
    rank, K = _source_layout(act, L, T, clt)
    # decoder vectors of active features only, scaled by activations, padded by (layer, position)
    if clt:
        dec_clt = []
        for l in range(L):
            sel = act[:, 0] == l
            buf = np.zeros((T, K[l], L - l, D), np.float32)
            if sel.any():
                rows = transcoders.decoders.rows(l, act[sel, 2]) * rep.activation_values[sel, None, None]
                buf[act[sel, 1], rank[sel]] = rows
            dec_clt.append(jnp.asarray(buf, dtype))
        dec, dec_clt = None, tuple(dec_clt)
    else:
        buf = np.zeros((L, T, K, D), np.float32)
        for l in np.unique(act[:, 0]):
            sel = act[:, 0] == l
            rows = transcoders.decoders.rows(int(l), act[sel, 2]) * rep.activation_values[sel, None]
            buf[l, act[sel, 1], rank[sel]] = rows
        dec, dec_clt = jnp.asarray(buf, dtype), None
    errors = rep.errors.at[:, : rep.zero_positions].set(0.0)
    cast = lambda a: None if a is None else jnp.asarray(a).astype(dtype)  # noqa: E731
    sq = lambda a: None if a is None else cast(a[:, 0])  # noqa: E731  drop the batch axis
    ctx = LinearContext(
        layers=jax.tree.map(cast, model.params.layers),
        ln1_scale=sq(inter.ln1_scale),
        pattern=sq(inter.attn_pattern),
        ln2_scale=sq(inter.ln2_scale),
        errors=cast(errors),
        embeddings=cast(rep.embeddings),
        W_enc=cast(transcoders.params.W_enc),
        final_norm=cast(model.params.final_norm),
        final_scale=cast(inter.final_scale[0]),
        post_attn_scale=sq(inter.post_attn_scale),
        post_mlp_scale=sq(inter.post_mlp_scale),
        W_skip=cast(transcoders.params.W_skip),
        dec=dec,
        dec_clt=dec_clt,
    )
    ctx = pad_positions(ctx, length_bucket(T))  # one set of compiled shapes per length bucket
    static = Static(cfg=cfg, input_hook=tcfg.input_hook, output_hook=tcfg.output_hook)
    cache: dict[tuple[int, int], jax.Array] = {}

    def src_index(key) -> jax.Array:
        """``key``: ``n_pos``, or ``(n_pos, n_layers)`` for a prefix of the blocks."""
        n_pos, n_layers = (key, L) if isinstance(key, int) else key
        if (n_pos, n_layers) not in cache:
            cache[n_pos, n_layers] = jnp.asarray(source_index(act, rank, K, L, n_pos, n_layers))
        return cache[n_pos, n_layers]

    return static, ctx, src_index


def plan_batches(
    idx: np.ndarray, act: np.ndarray, batch_size: int, small: int, pos_buckets: list[int]
) -> list[tuple[int, int, np.ndarray]]:
    """Split feature targets ``idx`` into device batches ``(B, n_pos, members)``.

    A target read at layer ``s`` needs the blocks below ``s``, so targets are sorted by (layer, position),
    highest first, and cut in order: a full ``batch_size`` chunk where the next ``batch_size`` targets share one
    layer, else a ``small`` chunk (which may straddle two layers; its lower rows then ride along through a block
    or two they do not need). Only the last chunk is padded. Each chunk is truncated to the smallest position
    bucket covering its targets.
    """
    order = np.lexsort((-act[idx, 1], -act[idx, 0]))
    idx = idx[order]
    lay = act[idx, 0]
    plan, j = [], 0
    while j < len(idx):
        full = j + batch_size <= len(idx) and lay[j] == lay[j + batch_size - 1]
        B = batch_size if full else small
        part = idx[j : j + B]
        need = int(act[part, 1].max()) + 1
        plan.append((B, next(n for n in pos_buckets if n >= need), part))
        j += B
    return plan


def _launch(fn, *args, counter: dict):
    """Call a jitted ``fn`` without waiting for the result (dispatch is asynchronous, so the host can store the
    previous batch meanwhile). Compilation happens inside the call, so when the jit cache grew the call's wall
    time is compile time and is added to ``counter['compile_s']``."""
    size = getattr(fn, "_cache_size", lambda: 0)
    before = size()
    tc = time.perf_counter()
    out = fn(*args)
    if size() > before:
        counter["compile_s"] += time.perf_counter() - tc
    return out


def _normalize_abs_rows(raw: np.ndarray, out: np.ndarray) -> None:
    """``out = |raw| / max(Σ|raw|, 1e-8)`` row-wise, in place (the reference's row normalisation of the rows
    ``[features | errors | tokens]``)."""
    np.abs(raw, out=out)
    out /= np.maximum(out.sum(axis=1, keepdims=True), 1e-8)


def _partial_influence(
    rows_hat: np.ndarray, row_nodes: np.ndarray, logit_p: np.ndarray, n_cols: int
) -> np.ndarray:
    """Influence on the logits of every column node from the rows computed so far, as the reference computes it:
    ``rows_hat`` holds the rows already made absolute and row-normalised (clamp 1e-8); seeded with the logit
    probabilities on the logit nodes; iterate ``x ← x[row_nodes] @ Â`` until it vanishes, summing. Rows whose
    weight is zero are skipped (the first steps touch only a few)."""
    prod = np.zeros(n_cols + len(logit_p), np.float32)
    prod[n_cols:] = logit_p
    influence = np.zeros(n_cols, np.float32)
    for _ in range(128):
        w = prod[row_nodes]
        nz = np.flatnonzero(w)
        if not len(nz):
            break
        prod_cols = w[nz] @ rows_hat[nz] if 2 * len(nz) < len(w) else w @ rows_hat
        influence += prod_cols
        prod = np.concatenate([prod_cols, np.zeros(len(logit_p), np.float32)])
    else:
        raise RuntimeError("influence did not converge in 128 iterations (is the graph cyclic?)")
    return influence


def attribute(
    model: Model,
    transcoders: TranscoderSet,
    prompt: str | Sequence[int] | np.ndarray,
    *,
    attribution_targets=None,
    max_n_logits: int = 10,
    desired_logit_prob: float = 0.95,
    batch_size: int = 256,
    max_feature_nodes: int | None = None,
    update_interval: int = 4,
    dtype=jnp.float32,
    zero_positions: int = 1,
    position_buckets: int = 3,
    verbose: bool = False,
    mesh=None,
) -> Graph:
    """Compute the attribution graph of ``prompt`` (text or token ids, BOS included for ids).

    Returns a ``Graph`` whose ``adjacency_matrix [N, N]`` (rows = targets, columns = sources) covers
    ``[selected features | error nodes (L·T) | token nodes (T) | logit nodes (K)]``; error and token rows are
    zero. Edges into features are in units of the target's pre-activation; edges into logits are direct effects
    on ``logit − mean logit``. See ``docs``/ALGORITHM for the exact conventions (they match circuit-tracer).

    Feature batches are truncated to the smallest of ``position_buckets`` prefix lengths covering their targets
    (exact: attention is causal); more buckets mean less work per row and one more compiled shape each.

    ``mesh`` (a ``(data, model)`` mesh from ``jcircuits.scale.sharding.make_mesh``) shards the row computation: weights
    and decoder vectors over ``model``, each batch of target rows over ``data`` (batch sizes are rounded up to a
    multiple of the data axis); rows come back to the host in order, so the graph equals the single-device one to
    float32 round-off. With several processes, pass process-local params: the replacement step runs on each
    process, the rows on the global mesh.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if position_buckets < 1:
        raise ValueError(f"position_buckets must be >= 1, got {position_buckets}")
    if update_interval < 1:
        raise ValueError(f"update_interval must be >= 1, got {update_interval}")
    if max_feature_nodes is not None and max_feature_nodes < 0:
        raise ValueError(f"max_feature_nodes must be >= 0 or None, got {max_feature_nodes}")
    dtype = jnp.dtype(dtype)
    if dtype not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16)):
        raise ValueError(f"dtype must be float32 or bfloat16, got {dtype}")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    tokens = encode_prompt(model, prompt)
    rep = replace(model, transcoders, tokens, zero_positions=zero_positions)
    cfg = model.cfg
    L, T = cfg.n_layers, len(tokens)
    n_active = rep.n_active
    tok = model.tokenizer
    targets: Targets = resolve_targets(
        attribution_targets,
        np.asarray(rep.logits[-1]),
        np.asarray(unembed_matrix(model.params), np.float32),
        max_n_logits=max_n_logits,
        desired_logit_prob=desired_logit_prob,
        decode=(lambda i: tok.decode([i])) if tok is not None else None,
        encode_token=(lambda s: single_token_id(tok, s)) if tok is not None else None,
    )
    static, ctx, src_index = build_context(model, transcoders, rep, dtype)
    on_mesh, d = (lambda x: x), 1
    if mesh is not None:  # weights/decoders split over the model axis, each batch of rows over the data axis
        ctx, src_index, on_mesh = place_context(ctx, cfg, src_index, mesh)
        d = mesh.shape["data"]
    dev_batch = -(-batch_size // d) * d  # device batches split evenly over data (selection keeps batch_size)
    jax.block_until_ready(ctx)
    timings["precompute_s"] = time.perf_counter() - t0

    n_err, n_cols = L * T, n_active + L * T + T  # columns of the working matrix: all active features
    n_feat_rows = n_active if max_feature_nodes is None else min(max_feature_nodes, n_active)
    K = len(targets)
    rows = np.zeros((K + n_feat_rows, n_cols), np.float32)
    selecting = n_feat_rows < n_active  # influence-ordered selection needs normalised |rows| as they arrive
    rows_hat = np.zeros(rows.shape, np.float32) if selecting else None  # calloc: pages appear as rows land
    row_nodes = np.zeros(K + n_feat_rows, np.int64)  # working-matrix node index of each row's target

    Tb = ctx.embeddings.shape[0]  # padded length

    def store(at, out):
        feats, errs, toks = (to_host(o) for o in out)  # in order; gathered across processes if needed
        m = at.stop - at.start
        errs, toks = errs.reshape(-1, L, Tb)[:, :, :T].reshape(-1, L * T), toks[:, :T]
        rows[at, :n_active] = feats[:m, :n_active]
        rows[at, n_active : n_active + n_err] = errs[:m]
        rows[at, n_active + n_err :] = toks[:m]
        if selecting:
            _normalize_abs_rows(rows[at], rows_hat[at])

    # ---- logit rows
    t1 = time.perf_counter()
    counter = {"compile_s": 0.0}
    vec = on_mesh(targets.vectors) if mesh is not None else jnp.asarray(targets.vectors)
    for i in tqdm(range(0, K, batch_size), desc="logit rows", disable=not verbose, unit="batch"):
        args = (static, ctx, vec[i : i + batch_size], src_index(Tb), jnp.int32(T - 1))
        out = _launch(rows_for_logits, *args, counter=counter)
        store(slice(i, min(i + batch_size, K)), out)
    row_nodes[:K] = n_cols + np.arange(K)
    timings["logit_rows_s"] = time.perf_counter() - t1

    # ---- feature rows
    t2 = time.perf_counter()
    act = rep.active_features
    small = -(-max(1, dev_batch // 4) // d) * d
    pos_buckets = buckets.position_buckets(Tb, position_buckets)
    layer_buckets = buckets.position_buckets(L, 3)  # a batch transposes only the first n_layers blocks it needs
    visited = np.zeros(n_active, bool)
    st = K
    bar = tqdm(total=n_feat_rows, desc="feature rows", disable=not verbose, unit="row")

    def store_tokens(at: slice, toks) -> None:
        """Rows of layer-0 targets: token edges only (every other column stays zero)."""
        toks = to_host(toks)[: at.stop - at.start, :T]
        rows[at, n_active + n_err :] = toks
        if selecting:
            _normalize_abs_rows(rows[at, n_active + n_err :], rows_hat[at, n_active + n_err :])

    def finish(part: np.ndarray, out) -> None:
        nonlocal st
        (store_tokens if act[part[0], 0] == 0 else store)(slice(st, st + len(part)), out)
        row_nodes[st : st + len(part)] = part
        visited[part] = True
        st += len(part)
        bar.update(len(part))

    def run_batch(idx: np.ndarray):
        pending = None  # the batch in flight: its rows are stored while the next one computes
        first = act[idx, 0] == 0  # layer-0 targets only see tokens: their own cheap batches
        plan = plan_batches(idx[~first], act, dev_batch, small, pos_buckets)
        plan += plan_batches(idx[first], act, dev_batch, small, [Tb])
        for B, n_pos, part in plan:
            pad = B - len(part)
            start = np.pad(act[part, 0], (0, pad), mode="edge").astype(np.int32)  # padding adds no layers
            pos = np.pad(act[part, 1], (0, pad)).astype(np.int32)
            feat = np.pad(act[part, 2], (0, pad)).astype(np.int32)
            valid = np.arange(B) < len(part)
            start, pos, feat, valid = on_mesh(start), on_mesh(pos), on_mesh(feat), on_mesh(valid)
            if act[part[0], 0] == 0:
                out = _launch(token_rows_for_layer0, static, ctx, pos, feat, valid, counter=counter)
            else:
                n_layers = next(m for m in layer_buckets if m > act[part, 0].max())
                args = (static, ctx, start, pos, feat, valid, src_index((n_pos, n_layers)), n_pos, n_layers)
                out = _launch(rows_for_features, *args, counter=counter)
            if pending is not None:
                finish(*pending)
            pending = (part, out)
        if pending is not None:
            finish(*pending)

    if not selecting:
        run_batch(np.arange(n_active))
    else:
        while st - K < n_feat_rows:
            influence = _partial_influence(rows_hat[:st], row_nodes[:st], targets.probabilities, n_cols)
            rank = np.argsort(-influence[:n_active], kind="stable")
            queue = rank[~visited[rank]][: min(update_interval * batch_size, n_feat_rows - (st - K))]
            run_batch(queue)  # sorted by layer across the whole queue, then chunked
    bar.close()
    timings["feature_rows_s"] = time.perf_counter() - t2
    compile_s = timings["compile_s"] = counter["compile_s"]

    # ---- assemble the square adjacency
    selected = np.flatnonzero(visited)
    keep_cols = np.concatenate([selected, np.arange(n_active, n_cols)])
    N = len(selected) + n_err + T + K
    adj = np.zeros((N, N), np.float32)
    feat_rows = np.flatnonzero(row_nodes[K:st] < n_active) + K
    order = np.argsort(row_nodes[feat_rows])
    adj[: len(selected), : N - K] = rows[np.ix_(feat_rows[order], keep_cols)]
    adj[N - K :, : N - K] = rows[np.ix_(np.arange(K), keep_cols)]
    timings["total_s"] = time.perf_counter() - t0
    n_rows = K + n_feat_rows
    timings["rows_per_s"] = n_rows / max(
        timings["logit_rows_s"] + timings["feature_rows_s"] - compile_s, 1e-9
    )
    return Graph(
        input_string=tok.decode(tokens.tolist()) if tok is not None else " ".join(map(str, tokens.tolist())),
        input_tokens=tokens.astype(np.int64),
        active_features=act.astype(np.int64),
        activation_values=rep.activation_values,
        selected_features=selected.astype(np.int64),
        adjacency_matrix=adj,
        logit_token_ids=targets.ids,
        logit_probabilities=targets.probabilities,
        logit_labels=targets.labels,
        n_layers=L,
        vocab_size=cfg.vocab_size,
        scan=transcoders.cfg.scan,
        model_name=model.name,
        settings=dict(
            max_n_logits=max_n_logits,
            desired_logit_prob=desired_logit_prob,
            batch_size=batch_size,
            max_feature_nodes=max_feature_nodes,
            update_interval=update_interval,
            dtype=str(dtype),
            zero_positions=zero_positions,
            position_buckets=position_buckets,
            n_active=n_active,
            timings=timings,
        ),
    )
