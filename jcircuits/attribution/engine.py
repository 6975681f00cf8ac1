"""``attribute``: one prompt → an attribution ``Graph``.

``attribute`` is a sequence of phases, each a function whose inputs and outputs are in its signature:

0. ``_replacement_phase`` → ``_Frozen``: features, errors and the frozen constants (``build_context``), on device;
1. ``_targets_phase`` → ``Targets``: the logits to explain;
2. ``_logit_rows``: their rows, the first rows of the working matrix ``_Rows`` (dense) or ``_SparseRows``
   (CSR chunks, ``adjacency="sparse"``: exact non-zeros, or sparsified as asked);
3. ``_feature_rows``: feature rows, grouped by the layer they read from so each batch's backward stops at that
   layer (``_BatchPlan``), with influence-ordered selection when ``max_feature_nodes`` is smaller than the number
   of active features; each batch is dispatched before the previous one is stored (``_run_features``);
4. ``work.adjacency()`` / ``_assemble`` → ``Graph``: the square adjacency over
   ``[selected features | errors | tokens | logits]`` (a dense array, or a ``SparseAdjacency`` with the same values).

``attribute_batch`` runs these phases for many prompts in one process; every compiled shape is keyed by the
padded sizes below, so prompts of one length bucket share them.

Shapes are kept static: the frozen model is padded to ``length_bucket(T)`` positions; feature batches are padded
to a few bucket sizes so one compilation serves every layer group (the start layer is a traced argument).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse
from tqdm.auto import tqdm

from jcircuits.attribution.linear import (
    LinearContext,
    QKContext,
    Static,
    pad_positions,
    rows_for_features,
    rows_for_logits,
    token_rows_for_layer0,
)
from jcircuits.attribution.targets import Targets, targets_at
from jcircuits.attribution.targets import target_positions as positions_of
from jcircuits.common import buckets
from jcircuits.common.buckets import length_bucket, size_bucket
from jcircuits.common.runtime import show_progress, use_compilation_cache
from jcircuits.graph import Graph
from jcircuits.graph.sparse import (
    SparseAdjacency,
    assemble_rows,
    column_indices,
    compact_columns,
    csr_rows,
    sparsify_rows,
)
from jcircuits.models import Model, encode_prompt, single_token_id
from jcircuits.models.layers import apply_rms
from jcircuits.models.transformer import check_tokens, unembed_matrix
from jcircuits.replacement import Replacement, replace
from jcircuits.scale.distributed import to_host
from jcircuits.scale.sharding import data_slices, place_context
from jcircuits.transcoders import TranscoderSet

__all__ = ["attribute", "attribute_batch", "build_context"]


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


ROW_BATCH_BYTES = buckets.ROW_BATCH_BYTES  # the budget of one device batch of rows (``buckets.device_batch``)
PADDED_DECODER_BYTES = buckets.PADDED_DECODER_BYTES  # see ``buckets.gathers_decoders``
PATTERN_BYTES = buckets.PATTERN_BYTES  # see ``buckets.recomputes_patterns``


def _source_vectors(transcoders: TranscoderSet, rep: Replacement, rank: np.ndarray, K, dtype, layout="auto"):
    """Decoder vectors of the active features only, scaled by their activations and padded by (layer, position)
    to the source layout ``(rank, K)``: ``dict(dec=[L, T, K, D])`` for a PLT, ``dict(dec_clt=…)`` for a CLT
    (``dec_clt[l]`` ``[T, K_l, L-l, D]``).

    A PLT whose padded vectors would take more than ``PADDED_DECODER_BYTES`` (long prompts: ``L·T·K·D``) is kept
    gathered when that is smaller: ``dict(dec_rows, dec_idx, dec_val)``, each layer's distinct active decoder
    rows plus, per padded slot, which row and which activation (``layout``: ``"auto"``, ``"padded"`` or
    ``"gathered"`` to force one)."""
    act, vals = rep.active_features, rep.activation_values
    L, T, D = transcoders.cfg.n_layers, len(rep.tokens), transcoders.cfg.d_model
    if transcoders.cfg.kind == "clt":
        dec_clt = []
        for l in range(L):
            sel = act[:, 0] == l
            buf = np.zeros((T, K[l], L - l, D), np.float32)
            if sel.any():
                rows = transcoders.decoders.rows(l, act[sel, 2]) * vals[sel, None, None]
                buf[act[sel, 1], rank[sel]] = rows
            dec_clt.append(jnp.asarray(buf, dtype))
        return dict(dec_clt=tuple(dec_clt))
    uniq = [np.unique(act[act[:, 0] == l, 2]) for l in range(L)]
    U = size_bucket(max(len(u) for u in uniq))
    if layout == "auto":
        big = buckets.gathers_decoders(L, T, K, D, U, jnp.dtype(dtype).itemsize, PADDED_DECODER_BYTES)
        layout = "gathered" if big else "padded"
    if layout == "gathered":
        dec_rows = np.zeros((L, U, D), np.float32)
        dec_idx = np.zeros((L, T, K), np.int32)
        dec_val = np.zeros((L, T, K), np.float32)
        for l, u in enumerate(uniq):
            sel = act[:, 0] == l
            if len(u):
                dec_rows[l, : len(u)] = transcoders.decoders.rows(l, u)
            dec_idx[l, act[sel, 1], rank[sel]] = np.searchsorted(u, act[sel, 2])
            dec_val[l, act[sel, 1], rank[sel]] = vals[sel]
        return dict(dec_rows=jnp.asarray(dec_rows), dec_idx=jnp.asarray(dec_idx), dec_val=jnp.asarray(dec_val))
    if layout != "padded":
        raise ValueError(f"decoder layout must be 'auto', 'padded' or 'gathered', got {layout!r}")
    buf = np.zeros((L, T, K, D), np.float32)
    for l in np.unique(act[:, 0]):
        sel = act[:, 0] == l
        rows = transcoders.decoders.rows(int(l), act[sel, 2]) * vals[sel, None]
        buf[l, act[sel, 1], rank[sel]] = rows
    return dict(dec=jnp.asarray(buf, dtype))


def _qk_context(model: Model, inter) -> QKContext:
    """What defines the patterns of a capture made without them (``replace(capture_patterns=False)``): each
    block's normalised attention input, recomputed in float32 from the captured residual stream and ln1 scale as
    the forward pass computes it, and the float32 query/key weights."""
    cfg, lp = model.cfg, model.params.layers
    f32 = lambda a: None if a is None else jnp.asarray(a, jnp.float32)  # noqa: E731
    attn_in = jax.vmap(lambda x, s, w: apply_rms(x, s, w, cfg.norm_offset))(
        inter.resid[:-1, 0], inter.ln1_scale[:, 0], f32(lp.ln1)
    )
    return QKContext(attn_in=attn_in, wq=f32(lp.wq), wk=f32(lp.wk), q_norm=f32(lp.q_norm), k_norm=f32(lp.k_norm))


def build_context(
    model: Model, transcoders: TranscoderSet, rep: Replacement, dtype=jnp.float32, decoders: str = "auto"
):
    """The frozen linear model's constants for ``rep`` and the source layout. Returns
    ``(static, ctx, src_index)``: the matrices of ``ctx`` (weights, patterns, decoders, errors, embeddings) are
    stored in ``dtype`` and contracted in it (``linear.contract``: bfloat16 inputs accumulate in float32), its norm
    scales stay float32; ``ctx`` is zero-padded to ``length_bucket(T)`` positions (``decoders``: the PLT sources'
    layout, see ``_source_vectors``), and
    ``src_index(n_pos)`` gives the (cached, device) column map for a position prefix (see ``source_index``)."""
    cfg, tcfg = model.cfg, transcoders.cfg
    L, T = cfg.n_layers, len(rep.tokens)
    inter = rep.inter
    clt = tcfg.kind == "clt"
    act = rep.active_features
    rank, K = _source_layout(act, L, T, clt)
    sources = _source_vectors(transcoders, rep, rank, K, dtype, decoders)
    errors = rep.errors.at[:, : rep.zero_positions].set(0.0)
    cast = lambda a: None if a is None else jnp.asarray(a).astype(dtype)  # noqa: E731
    sq = lambda a: None if a is None else cast(a[:, 0])  # noqa: E731  drop the batch axis
    scale = lambda a: None if a is None else jnp.asarray(a[:, 0], jnp.float32)  # noqa: E731  norm scales: f32
    qk = None if inter.attn_pattern is not None else _qk_context(model, inter)
    ctx = LinearContext(
        layers=jax.tree.map(cast, model.params.layers),
        ln1_scale=scale(inter.ln1_scale),
        pattern=sq(inter.attn_pattern),
        qk=qk,
        ln2_scale=scale(inter.ln2_scale),
        errors=cast(errors),
        embeddings=cast(rep.embeddings),
        W_enc=cast(transcoders.params.W_enc),
        final_norm=cast(model.params.final_norm),
        final_scale=jnp.asarray(inter.final_scale[0], jnp.float32),
        post_attn_scale=scale(inter.post_attn_scale),
        post_mlp_scale=scale(inter.post_mlp_scale),
        W_skip=cast(transcoders.params.W_skip),
        **sources,
    )
    ctx = pad_positions(ctx, length_bucket(T))  # one set of compiled shapes per length bucket
    static = Static(cfg=cfg, input_hook=tcfg.input_hook, output_hook=tcfg.output_hook, compute=str(jnp.dtype(dtype)))
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


@dataclasses.dataclass(frozen=True)
class _LazyBlock:
    """``rows`` consecutive rows of ``_partial_influence``'s matrix, built by ``make()`` only when one of their
    weights is non-zero (and dropped after use)."""

    rows: int
    make: Callable[[], Any]

    @property
    def shape(self) -> tuple[int]:
        return (self.rows,)


def _partial_influence(rows_hat, row_nodes: np.ndarray, logit_p: np.ndarray, n_cols: int) -> np.ndarray:
    """Influence on the logits of every column node from the rows computed so far, as the reference computes it:
    ``rows_hat`` (a numpy array, a scipy CSR array, or a list of blocks of consecutive rows, CSR or
    ``_LazyBlock``, ``[rows, n_cols]`` in all) holds the rows already made absolute and row-normalised (clamp 1e-8); seeded
    with the logit probabilities on the logit nodes; iterate ``x ← x[row_nodes] @ Â`` until it vanishes,
    summing. Rows whose weight is zero are skipped (the first steps touch only a few)."""
    prod = np.zeros(n_cols + len(logit_p), np.float32)
    prod[n_cols:] = logit_p
    influence = np.zeros(n_cols, np.float32)
    blocks = rows_hat if isinstance(rows_hat, list) else [rows_hat]
    for _ in range(128):
        w = prod[row_nodes]
        if not w.any():
            break
        prod_cols, at = np.zeros(n_cols, np.float32), 0
        for blk in blocks:  # block by block: no copy of all the rows is ever made
            wb = w[at : at + blk.shape[0]]
            at += blk.shape[0]
            nz = np.flatnonzero(wb)
            if len(nz):
                blk = blk.make() if isinstance(blk, _LazyBlock) else blk
                prod_cols += wb[nz] @ blk[nz] if 2 * len(nz) < len(wb) else wb @ blk
        influence += prod_cols
        prod = np.concatenate([prod_cols, np.zeros(len(logit_p), np.float32)])
    else:
        raise RuntimeError("influence did not converge in 128 iterations (is the graph cyclic?)")
    return influence


# --------------------------------------------------------------------------------------------- the phases


@dataclasses.dataclass(frozen=True)
class _Frozen:
    """Phase 0's output: the prompt's replacement step and its frozen linear model, placed on device(s)."""

    tokens: np.ndarray
    rep: Replacement  # node set, values, logits, round-off; its capture and [L, T, D] arrays dropped (in ctx)
    static: Static
    ctx: LinearContext  # zero-padded to Tb positions
    src_index: Callable[..., jax.Array]  # see ``build_context``
    mesh: Any  # None: one device
    on_mesh: Callable[[Any], Any]  # places one batch array (split over the data axis with a mesh)

    @property
    def T(self) -> int:
        return len(self.tokens)

    @property
    def Tb(self) -> int:  # padded length
        return self.ctx.embeddings.shape[0]

    @property
    def data(self) -> int:  # device batches are split evenly over this many devices
        return 1 if self.mesh is None else self.mesh.shape["data"]


@dataclasses.dataclass
class _Rows:
    """The working matrix that phases 2 and 3 fill: one row per target computed so far (``filled``; logits first,
    then features in the order they were computed), columns ``[all active features | errors (L·T) | tokens (T)]``.
    ``row_nodes`` is each row's target as a column node (logit ``k`` is ``n_cols + k``); ``rows_hat`` holds the
    rows made absolute and row-normalised, kept only when influence-ordered selection needs them."""

    rows: np.ndarray
    rows_hat: np.ndarray | None
    row_nodes: np.ndarray
    visited: np.ndarray  # [n_active] bool: features whose row is computed
    n_logits: int
    L: int
    T: int
    Tb: int
    filled: int = 0

    @classmethod
    def empty(cls, n_logits: int, n_feat_rows: int, n_active: int, L: int, T: int, Tb: int, selecting: bool):
        rows = np.zeros((n_logits + n_feat_rows, n_active + L * T + T), np.float32)
        rows_hat = np.zeros(rows.shape, np.float32) if selecting else None  # calloc: pages appear as rows land
        row_nodes = np.zeros(len(rows), np.int64)
        return cls(rows, rows_hat, row_nodes, np.zeros(n_active, bool), n_logits, L, T, Tb)

    @property
    def n_active(self) -> int:
        return len(self.visited)

    @property
    def n_cols(self) -> int:
        return self.rows.shape[1]

    def store(self, at: slice, out) -> None:
        """Rows ``at`` from a device batch ``(features, errors, tokens)`` (padded rows and positions dropped)."""
        feats, errs, toks = (to_host(o) for o in out)  # in order; gathered across processes if needed
        m, L, T, n_active = at.stop - at.start, self.L, self.T, self.n_active
        errs, toks = errs.reshape(-1, L, self.Tb)[:, :, :T].reshape(-1, L * T), toks[:, :T]
        self.rows[at, :n_active] = feats[:m, :n_active]
        self.rows[at, n_active : n_active + L * T] = errs[:m]
        self.rows[at, n_active + L * T :] = toks[:m]
        if self.rows_hat is not None:
            _normalize_abs_rows(self.rows[at], self.rows_hat[at])

    def store_tokens(self, at: slice, toks) -> None:
        """Rows of layer-0 targets: token edges only (every other column stays zero)."""
        toks = to_host(toks)[: at.stop - at.start, : self.T]
        c = self.n_active + self.L * self.T
        self.rows[at, c:] = toks
        if self.rows_hat is not None:
            _normalize_abs_rows(self.rows[at, c:], self.rows_hat[at, c:])

    def add_features(self, part: np.ndarray, out, layer0: bool) -> None:
        """The next rows: feature targets ``part`` (a device batch's output; token edges only for layer 0)."""
        at = slice(self.filled, self.filled + len(part))
        (self.store_tokens if layer0 else self.store)(at, out)
        self.row_nodes[at] = part
        self.visited[part] = True
        self.filled += len(part)

    @property
    def selecting(self) -> bool:
        return self.rows_hat is not None

    def influence(self, logit_p: np.ndarray) -> np.ndarray:
        """``[n_cols]``: each column node's influence on the logits through the rows so far."""
        f = self.filled
        return _partial_influence(self.rows_hat[:f], self.row_nodes[:f], logit_p, self.n_cols)

    def adjacency(self) -> tuple[np.ndarray, np.ndarray, None]:
        """``(selected, [N, N] adjacency, dropped = None)``; see ``_adjacency``."""
        return (*_adjacency(self), None)


@dataclasses.dataclass(frozen=True)
class _Sparsify:
    """A stated sparsification of each row as it arrives (``attribute(edge_tolerance=, top_k_edges=)``)."""

    edge_tolerance: float | None
    top_k_edges: int | None


@dataclasses.dataclass
class _SparseRows:
    """``_Rows`` for ``adjacency="sparse"``: the same rows (same columns, same order, same float32 values) kept
    as CSR chunks, one per stored batch — exact non-zeros, or sparsified as asked with the |weight| each row
    lost in ``dropped``. For selection a chunk keeps each row's normaliser ``max(Σ|row|, 1e-8)`` (``denom``) and
    ``influence`` rebuilds the normalised rows from it one chunk at a time, bit for bit what ``_normalize_abs_rows``
    gives. A chunk's columns are kept as runs of consecutive columns (`ColumnRuns`) where that is smaller — an
    exact row's non-zeros are a few spans, so about 4 bytes a non-zero (its value) instead of 8 — and expanded
    only while a chunk is used; no array is ever ``[rows, n_active]``."""

    row_nodes: np.ndarray
    visited: np.ndarray
    n_logits: int
    L: int
    T: int
    Tb: int
    n_cols: int
    selecting: bool
    sparsify: _Sparsify | None
    chunks: list = dataclasses.field(default_factory=list)  # (lengths [m], columns, data, denom [m], dropped)
    stored: int = 0  # rows in chunks
    filled: int = 0

    @classmethod
    def empty(cls, n_logits, n_feat_rows, n_active, L, T, Tb, selecting, sparsify):
        rows = n_logits + n_feat_rows
        n_cols = n_active + L * T + T
        nodes, visited = np.zeros(rows, np.int64), np.zeros(n_active, bool)
        return cls(nodes, visited, n_logits, L, T, Tb, n_cols, selecting, sparsify)

    @property
    def n_active(self) -> int:
        return len(self.visited)

    def _append(self, at: slice, block: np.ndarray, col_offset: int) -> None:
        if at.start != self.stored:
            raise AssertionError(f"rows must be stored in order: got {at.start}, expected {self.stored}")
        lengths, indices, data = csr_rows(block, col_offset)
        dropped = None
        if self.sparsify is not None:
            sp = self.sparsify
            lengths, indices, data, dropped = sparsify_rows(
                lengths, indices, data, edge_tolerance=sp.edge_tolerance, top_k_edges=sp.top_k_edges
            )
        denom = None
        if self.selecting:  # max(Σ|row|, 1e-8) of the stored entries, as _normalize_abs_rows
            sums = np.bincount(np.repeat(np.arange(len(lengths)), lengths), weights=np.abs(data),
                               minlength=len(lengths))
            denom = np.maximum(sums.astype(np.float32), np.float32(1e-8))
        self.chunks.append((lengths, compact_columns(lengths, indices), data, denom, dropped))
        self.stored = at.stop

    def store(self, at: slice, out) -> None:
        """Rows ``at`` from a device batch ``(features, errors, tokens)`` (padded rows and positions dropped)."""
        feats, errs, toks = (to_host(o) for o in out)
        m, L, T = at.stop - at.start, self.L, self.T
        errs = errs.reshape(-1, L, self.Tb)[:m, :, :T].reshape(m, L * T)
        self._append(at, np.concatenate([feats[:m, : self.n_active], errs, toks[:m, :T]], axis=1), 0)

    def store_tokens(self, at: slice, toks) -> None:
        """Rows of layer-0 targets: token edges only."""
        self._append(at, to_host(toks)[: at.stop - at.start, : self.T], self.n_active + self.L * self.T)

    add_features = _Rows.add_features

    def influence(self, logit_p: np.ndarray) -> np.ndarray:
        """``[n_cols]``: as ``_Rows.influence``, with sparse mat-vecs over the stored chunks, each normalised
        (``|data| / denom``) only while it is used: no concatenated or normalised copy of all rows."""

        def block(lengths, cols, data, denom, indptr):
            hat = np.abs(data) / np.repeat(denom, lengths)
            return scipy.sparse.csr_array((hat, column_indices(cols), indptr), shape=(len(lengths), self.n_cols))

        blocks = []
        for lengths, cols, data, denom, _ in self.chunks:  # a chunk's row pointers once, its values per use
            indptr = np.concatenate([[0], np.cumsum(lengths)])
            indptr = indptr.astype(np.int32 if indptr[-1] < 2**31 else np.int64)
            blocks.append(_LazyBlock(len(lengths), functools.partial(block, lengths, cols, data, denom, indptr)))
        return _partial_influence(blocks, self.row_nodes[: self.filled], logit_p, self.n_cols)

    def adjacency(self) -> tuple[np.ndarray, SparseAdjacency, np.ndarray | None]:
        """``(selected, SparseAdjacency over [selected | errors | tokens | logits], dropped [N] or None)``, the
        same rows and columns as ``_adjacency`` gives densely."""
        K, n_active, f = self.n_logits, self.n_active, self.filled
        selected = np.flatnonzero(self.visited)
        col_map = np.full(self.n_cols, -1, np.int64)
        col_map[selected] = np.arange(len(selected))
        col_map[n_active:] = len(selected) + np.arange(self.n_cols - n_active)
        N = len(selected) + self.L * self.T + self.T + K
        feat_rows = np.flatnonzero(self.row_nodes[K:f] < n_active) + K
        feat_rows = feat_rows[np.argsort(self.row_nodes[feat_rows])]
        order = np.concatenate([feat_rows, np.full(self.L * self.T + self.T, -1), np.arange(K)])
        adj = assemble_rows([c[:3] for c in self.chunks], order, col_map, N)
        dropped = None
        if self.sparsify is not None:
            lost = np.concatenate([c[4] for c in self.chunks])
            dropped = np.where(order >= 0, lost[np.maximum(order, 0)], np.float32(0)).astype(np.float32)
        return selected, adj, dropped


@contextlib.contextmanager
def _timed(timings: dict, key: str):
    t = time.perf_counter()
    yield
    timings[key] = time.perf_counter() - t


def _check_arguments(batch_size, position_buckets, update_interval, max_feature_nodes, dtype):
    """Validate ``attribute``'s knobs; returns the dtype."""
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
    return dtype


DENSE_LIMIT_BYTES = buckets.DENSE_LIMIT_BYTES  # adjacency="auto" is dense up to this (``buckets.dense_rows_fit``)


def _check_adjacency(adjacency: str, edge_tolerance, top_k_edges) -> _Sparsify | None:
    """Validate ``attribute``'s adjacency knobs; returns the sparsification asked for, if any."""
    if adjacency not in ("auto", "dense", "sparse"):
        raise ValueError(f"adjacency must be 'auto', 'dense' or 'sparse', got {adjacency!r}")
    if edge_tolerance is not None and not 0.0 <= float(edge_tolerance) < 1.0:
        raise ValueError(f"edge_tolerance must be in [0, 1), got {edge_tolerance}")
    if top_k_edges is not None and (
        isinstance(top_k_edges, bool) or int(top_k_edges) != top_k_edges or top_k_edges < 1
    ):
        raise ValueError(f"top_k_edges must be a positive integer, got {top_k_edges}")
    if edge_tolerance is None and top_k_edges is None:
        return None
    if adjacency == "dense":
        raise ValueError(
            "edge_tolerance / top_k_edges sparsify rows as they are stored: use adjacency='sparse' (or 'auto')"
        )
    return _Sparsify(
        None if edge_tolerance is None else float(edge_tolerance),
        None if top_k_edges is None else int(top_k_edges),
    )


def _layout(
    adjacency: str, sparsify, K: int, n_feat_rows: int, n_active: int, L: int, T: int, selecting: bool
) -> str:
    """``"dense"`` or ``"sparse"``: ``adjacency`` unless ``"auto"``, which is sparse when sparsifying or when the
    dense working rows (twice with selection: raw and normalised) and the final matrix exceed
    ``DENSE_LIMIT_BYTES``."""
    if adjacency != "auto":
        return adjacency
    if sparsify is not None:
        return "sparse"
    N = n_feat_rows + L * T + T + K
    fit = buckets.dense_rows_fit(K + n_feat_rows, n_active + L * T + T, N, selecting, DENSE_LIMIT_BYTES)
    return "dense" if fit else "sparse"


def _given_node_set(active_features, tokens: np.ndarray):
    """``attribute``'s ``active_features``: ``None``, an int ``[n, 3]`` array, or a ``Graph`` (its node set, which
    must come from the same tokens)."""
    if not isinstance(active_features, Graph):
        return active_features
    if not np.array_equal(np.asarray(active_features.input_tokens), tokens):
        raise ValueError(
            "active_features: the graph was computed on other tokens "
            f"({len(active_features.input_tokens)} tokens, {active_features.input_string!r}); its node set does "
            "not apply to this prompt"
        )
    return active_features.active_features


def _precision(model: Model, transcoders: TranscoderSet, dtype) -> dict:
    """What the graph was computed in: the mode (``"float32"`` or ``"mixed bfloat16"``), the dtype of the rows'
    matmul inputs (``compute``; sums and rows are float32 either way), the stored weights' and encoders' dtypes,
    and whether bfloat16 entered the computation or the storage anywhere. The node set, the logit targets and the
    selection arithmetic are float32 in both modes."""
    weights = str(jax.tree.leaves(model.params)[0].dtype)
    encoders = str(transcoders.params.W_enc.dtype)
    mixed = str(dtype) == "bfloat16"
    return {
        "mode": "mixed bfloat16" if mixed else "float32",
        "compute": str(dtype),
        "accumulate": "float32",
        "replacement": "float32",
        "weights": weights,
        "transcoders": encoders,
        "bf16_compute": mixed,
        "bf16_storage": "bfloat16" in (weights, encoders),
    }


def _replacement_phase(
    model: Model, transcoders: TranscoderSet, prompt, zero_positions: int, dtype, mesh, active_features=None
):
    """Phase 0: features, errors and the frozen constants of ``prompt``, on device (sharded with a mesh:
    weights and decoder vectors over ``model``, each batch of rows over ``data``). The replacement step (forward,
    encoders, node set, errors) runs in float32 whatever the weights' storage dtype and ``dtype``."""
    tokens = encode_prompt(model, prompt)
    given = _given_node_set(active_features, tokens)
    cfg = model.cfg
    # the capture is float32 whatever ``dtype``: patterns too large to capture are recomputed per block
    store = not buckets.recomputes_patterns(cfg.n_layers, cfg.n_heads, length_bucket(len(tokens)), 4, PATTERN_BYTES)
    rep = replace(
        model, transcoders, tokens, zero_positions=zero_positions, active_features=given, capture_patterns=store
    )
    static, ctx, src_index = build_context(model, transcoders, rep, dtype)
    # the frozen model holds what the rows need (its own patterns, or what recomputes them; errors, embeddings):
    # the capture and the per-position arrays of the replacement step are not needed again (on a long prompt
    # they are several [L, T, D] arrays and the [L, H, T, T] patterns)
    rep = dataclasses.replace(
        rep, inter=None, reconstruction=None, errors=None, mlp_out=None, feature_inputs=None, embeddings=None
    )
    on_mesh = lambda x: x  # noqa: E731
    if mesh is not None:
        ctx, src_index, on_mesh = place_context(ctx, model.cfg, src_index, mesh)
    jax.block_until_ready(ctx)
    return _Frozen(tokens, rep, static, ctx, src_index, mesh, on_mesh)


def _targets_phase(
    model: Model, rep: Replacement, attribution_targets, max_n_logits, desired_logit_prob, positions=None
):
    """Phase 1: the logit targets (the top logits up to ``desired_logit_prob``, or the given ones) at each of
    the target ``positions`` (``target_positions``'s spec; default the last)."""
    tok = model.tokenizer
    return targets_at(
        attribution_targets,
        np.asarray(rep.logits),
        positions_of(positions, len(rep.tokens)),
        np.asarray(unembed_matrix(model.params), np.float32),
        max_n_logits=max_n_logits,
        desired_logit_prob=desired_logit_prob,
        decode=(lambda i: tok.decode([i])) if tok is not None else None,
        encode_token=(lambda s: single_token_id(tok, s)) if tok is not None else None,
    )


def _logit_rows(fz: _Frozen, targets: Targets, work: _Rows, batch_size: int, counter: dict, verbose: bool):
    """Phase 2: the rows of the logit targets (direct effects on ``logit − mean logit``), ``work``'s first rows;
    one batch run per target position (targets are sorted by position)."""
    K = len(targets)
    vectors = np.asarray(targets.vectors)
    chunks = []  # (position, first row, end row)
    for p in np.unique(targets.positions):
        a, b = np.searchsorted(targets.positions, p, side="left"), np.searchsorted(targets.positions, p, "right")
        chunks += [(int(p), i, min(i + batch_size, int(b))) for i in range(int(a), int(b), batch_size)]
    for p, i, j in tqdm(chunks, desc="logit rows", disable=not verbose, unit="batch"):
        # zero rows pad a batch to a size bucket, so prompts with other numbers of targets share compiled code
        vec = np.zeros((max(j - i, min(buckets.size_bucket(j - i), batch_size)), vectors.shape[1]), vectors.dtype)
        vec[: j - i] = vectors[i:j]
        vec = fz.on_mesh(vec) if fz.mesh is not None else jnp.asarray(vec)
        args = (fz.static, fz.ctx, vec, fz.src_index(fz.Tb), jnp.int32(p))
        out = _launch(rows_for_logits, *args, counter=counter)
        work.store(slice(i, j), out)
    work.row_nodes[:K] = work.n_cols + np.arange(K)
    work.filled = K


@dataclasses.dataclass(frozen=True)
class _BatchPlan:
    """How feature targets are cut into device batches (see ``plan_batches``)."""

    full: int  # batch_size rounded up to a multiple of the data axis, cut by memory (selection keeps batch_size)
    small: int
    pos_buckets: list[int]  # prefix lengths a batch is truncated to
    layer_buckets: list[int]  # a batch transposes only the first n_layers blocks it needs

    @classmethod
    def make(cls, fz: _Frozen, batch_size: int, position_buckets: int):
        d, ctx, cfg = fz.data, fz.ctx, fz.static.cfg
        K = cfg.d_model if ctx.dec_clt is not None else ctx.n_sources
        per_row = buckets.row_bytes(cfg.n_layers, fz.Tb, cfg.d_model, K, fz.rep.n_active)
        full = buckets.device_batch(batch_size, d, per_row, ROW_BATCH_BYTES)
        small = -(-max(1, full // 4) // d) * d
        pos = buckets.position_buckets(fz.Tb, position_buckets)
        return cls(full, small, pos, buckets.position_buckets(cfg.n_layers, 3))

    def batches(self, idx: np.ndarray, act: np.ndarray, Tb: int):
        """``(B, n_pos, members)`` for targets ``idx``; layer-0 targets only see tokens: own cheap batches."""
        first = act[idx, 0] == 0
        plan = plan_batches(idx[~first], act, self.full, self.small, self.pos_buckets)
        return plan + plan_batches(idx[first], act, self.full, self.small, [Tb])


def _dispatch(fz: _Frozen, plan: _BatchPlan, B: int, n_pos: int, part: np.ndarray, counter: dict):
    """Launch one batch of feature rows (asynchronously); its padding rows repeat the last start layer."""
    act = fz.rep.active_features
    pad = B - len(part)
    start = np.pad(act[part, 0], (0, pad), mode="edge").astype(np.int32)  # padding adds no layers
    pos = np.pad(act[part, 1], (0, pad)).astype(np.int32)
    feat = np.pad(act[part, 2], (0, pad)).astype(np.int32)
    valid = np.arange(B) < len(part)
    start, pos, feat, valid = (fz.on_mesh(a) for a in (start, pos, feat, valid))
    if act[part[0], 0] == 0:
        return _launch(token_rows_for_layer0, fz.static, fz.ctx, pos, feat, valid, counter=counter)
    n_layers = next(m for m in plan.layer_buckets if m > act[part, 0].max())
    args = (fz.static, fz.ctx, start, pos, feat, valid, fz.src_index((n_pos, n_layers)), n_pos, n_layers)
    return _launch(rows_for_features, *args, counter=counter)


def _run_features(fz: _Frozen, plan: _BatchPlan, work: _Rows, idx: np.ndarray, counter: dict, bar) -> None:
    """Compute and store the rows of feature targets ``idx`` (sorted by layer across all of ``idx``, then
    chunked). Each batch is dispatched before the previous one is stored, so the host copies rows while the
    device computes."""
    act = fz.rep.active_features
    pending = None  # the batch in flight
    for B, n_pos, part in plan.batches(idx, act, fz.Tb):
        out = _dispatch(fz, plan, B, n_pos, part, counter)
        if pending is not None:
            work.add_features(*pending)
            bar.update(len(pending[0]))
        pending = (part, out, act[part[0], 0] == 0)
    if pending is not None:
        work.add_features(*pending)
        bar.update(len(pending[0]))


def _influence_queue(work: _Rows | _SparseRows, logit_p: np.ndarray, n: int, eligible: np.ndarray) -> np.ndarray:
    """The ``n`` unvisited ``eligible`` features of highest influence on the logits through the rows so far."""
    influence = work.influence(logit_p)
    rank = np.argsort(-influence[: work.n_active], kind="stable")
    return rank[~work.visited[rank] & eligible[rank]][:n]


def _feature_rows(
    fz, targets, work: _Rows, n_feat_rows, batch_size, update_interval, plan, counter, verbose, eligible
):
    """Phase 3: ``n_feat_rows`` feature rows, of ``eligible`` features only (``[n_active]`` bool: those at or
    before the last target position; a later one cannot reach any target). All of them when every eligible
    feature gets a row; else, as the reference does, the ``update_interval · batch_size`` unvisited features of
    highest influence on the logits (from the rows so far) at a time."""
    bar = tqdm(total=n_feat_rows, desc="feature rows", disable=not verbose, unit="row")
    K = work.n_logits
    if not work.selecting:
        _run_features(fz, plan, work, np.flatnonzero(eligible), counter, bar)
    else:
        while work.filled - K < n_feat_rows:
            n = min(update_interval * batch_size, n_feat_rows - (work.filled - K))
            queue = _influence_queue(work, targets.probabilities, n, eligible)
            _run_features(fz, plan, work, queue, counter, bar)
    bar.close()


def _adjacency(work: _Rows) -> tuple[np.ndarray, np.ndarray]:
    """Phase 4: ``(selected features, the square adjacency)`` over ``[selected | errors | tokens | logits]``,
    feature rows in the order of their features (error and token rows stay zero)."""
    K, n_active = work.n_logits, work.n_active
    selected = np.flatnonzero(work.visited)
    keep_cols = np.concatenate([selected, np.arange(n_active, work.n_cols)])
    N = len(selected) + work.L * work.T + work.T + K
    adj = np.zeros((N, N), np.float32)
    feat_rows = np.flatnonzero(work.row_nodes[K : work.filled] < n_active) + K
    order = np.argsort(work.row_nodes[feat_rows])
    adj[: len(selected), : N - K] = work.rows[np.ix_(feat_rows[order], keep_cols)]
    adj[N - K :, : N - K] = work.rows[np.ix_(np.arange(K), keep_cols)]
    return selected, adj


def _assemble(
    model: Model, transcoders: TranscoderSet, fz: _Frozen, targets: Targets, selected, adj, settings, dropped=None
):
    """The ``Graph``: phase 4's adjacency (dense or sparse; ``dropped``: the |weight| each row lost to a
    sparsification) with the prompt, the features and the targets."""
    tok, tokens = model.tokenizer, fz.tokens
    return Graph(
        input_string=tok.decode(tokens.tolist()) if tok is not None else " ".join(map(str, tokens.tolist())),
        input_tokens=tokens.astype(np.int64),
        active_features=fz.rep.active_features.astype(np.int64),
        activation_values=fz.rep.activation_values,
        selected_features=selected.astype(np.int64),
        adjacency_matrix=adj,
        logit_token_ids=targets.ids,
        logit_probabilities=targets.probabilities,
        logit_labels=targets.labels,
        logit_positions=targets.positions,
        n_layers=model.cfg.n_layers,
        vocab_size=model.cfg.vocab_size,
        scan=transcoders.cfg.scan,
        model_name=model.name,
        settings=settings,
        adjacency_dropped=dropped,
    )


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
    verbose: bool | None = None,
    mesh=None,
    active_features=None,
    adjacency: str = "auto",
    edge_tolerance: float | None = None,
    top_k_edges: int | None = None,
    target_positions=None,
) -> Graph:
    """Compute the attribution graph of ``prompt`` (text or token ids, BOS included for ids).

    Returns a ``Graph`` whose ``adjacency_matrix [N, N]`` (rows = targets, columns = sources) covers
    ``[selected features | error nodes (L·T) | token nodes (T) | logit nodes (K)]``; error and token rows are
    zero. Edges into features are in units of the target's pre-activation; edges into logits are direct effects
    on ``logit − mean logit``. See ``docs/algorithm.md`` for the exact conventions (they match circuit-tracer).

    Feature batches are truncated to the smallest of ``position_buckets`` prefix lengths covering their targets
    (exact: attention is causal); more buckets mean less work per row and one more compiled shape each.

    ``verbose`` shows progress bars (default: in a terminal or a notebook). Compiled code is kept in the
    persistent cache (``jcircuits.common.runtime``; ``JCIRCUITS_CACHE_DIR=`` turns it off).

    ``mesh`` (a ``(data, model)`` mesh from ``jcircuits.scale.sharding.make_mesh``) shards the row computation: weights
    and decoder vectors over ``model``, each batch of target rows over ``data`` (batch sizes are rounded up to a
    multiple of the data axis); rows come back to the host in order, so the graph equals the single-device one to
    float32 round-off. With several processes, pass process-local params: the replacement step runs on each
    process, the rows on the global mesh.

    ``active_features`` (an int ``[n, 3]`` array of (layer, pos, feature), sorted as ``replace`` sorts them, or a
    ``Graph`` of the same tokens, whose ``active_features`` are taken) fixes the node set: each given feature is
    valued at its pre-activation as if active, the others are 0, and the errors follow (see ``replace``). Graphs
    computed elsewhere (circuit-tracer, another dtype or machine) can then be compared node for node even where
    round-off puts a feature on the other side of its threshold.

    ``dtype`` is the precision of the heavy part, the rows. ``float32``: everything in float32 (matmuls at
    ``Precision.HIGHEST``). ``bfloat16``: mixed precision — what decides the nodes (the forward pass, the
    replacement step's activations and error vectors, the logit targets) and the influence-ordered selection's
    arithmetic stay float32, so the node set is the float32 one bit for bit; the per-row transposes and the decoder
    contractions take bfloat16 inputs (weights, patterns, decoders, errors, and each cotangent on its way into a
    matmul) and accumulate in float32 (``linear.contract``), halving the frozen model's memory; each edge is then
    off by a few bfloat16 round-offs (``2^-8``) of the row's magnitude, and a selection near a tie may pick another
    feature. ``dtype`` never changes how the weights are stored: that is the dtype ``model`` and ``transcoders``
    were loaded in (bfloat16-stored weights are upcast, exactly, for the float32 replacement step).

    ``adjacency``: ``"dense"`` keeps the rows in dense arrays and gives an ``[N, N]`` matrix; ``"sparse"`` keeps
    each batch of rows, as it arrives, as its exact non-zeros (CSR chunks; the normalised rows that
    influence-ordered selection needs share their pattern) and gives a `SparseAdjacency` with the same values
    (``graph.dense_adjacency()`` equals the dense graph's matrix bit for bit when the same features are selected;
    selection itself ranks influences summed in another order, equal to float32 round-off). ``"auto"``
    (default) is dense while the dense working rows and the final matrix fit in ``DENSE_LIMIT_BYTES`` (1 GiB),
    else sparse. Only when asked, rows are sparsified as they arrive (sparse adjacency only):
    ``edge_tolerance = τ`` drops each row's weakest entries while their |weight| sums to at most ``τ`` of the
    row's total, ``top_k_edges = k`` keeps each row's ``k`` strongest (`jcircuits.graph.sparse.sparsify_rows`);
    ``graph.adjacency_dropped [N]`` then holds the |weight| each row lost (over every source the row was computed
    against, unselected features included).

    ``target_positions`` (an int or a sequence of ints, negative from the end; default the last position): read
    the targets there, ``attribution_targets`` at each (salient targets chosen from each position's own
    probabilities). ``graph.logit_positions [K]`` records where each logit node is read. A feature after the last
    target position cannot reach a target (attention is causal), so it gets no row and is no node; its errors
    and tokens stay nodes, with zero influence.

    ``graph.settings`` records the precision (``dtype`` of the rows; ``precision``: the mode, the matmul input and
    accumulation dtypes, the weights' and transcoders' storage dtypes), ``round_off``: the features whose presence
    round-off decides (``replacement.RoundOff``), and ``adjacency`` (the layout used) with ``edge_tolerance`` /
    ``top_k_edges``.
    """
    dtype = _check_arguments(batch_size, position_buckets, update_interval, max_feature_nodes, dtype)
    sparsify = _check_adjacency(adjacency, edge_tolerance, top_k_edges)
    tokens = encode_prompt(model, prompt)
    positions_of(target_positions, len(tokens))  # bad positions fail before any work
    use_compilation_cache()
    verbose = show_progress(verbose)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    with _timed(timings, "precompute_s"):
        fz = _replacement_phase(model, transcoders, tokens, zero_positions, dtype, mesh, active_features)
        targets = _targets_phase(
            model, fz.rep, attribution_targets, max_n_logits, desired_logit_prob, target_positions
        )
    n_active, K = fz.rep.n_active, len(targets)
    eligible = fz.rep.active_features[:, 1] <= targets.positions.max()  # later features reach no target
    n_eligible = int(eligible.sum())
    n_feat_rows = n_eligible if max_feature_nodes is None else min(max_feature_nodes, n_eligible)
    selecting = n_feat_rows < n_eligible  # influence-ordered selection needs normalised |rows| as they arrive
    L = model.cfg.n_layers
    layout = _layout(adjacency, sparsify, K, n_feat_rows, n_active, L, fz.T, selecting)
    if layout == "sparse":
        work = _SparseRows.empty(K, n_feat_rows, n_active, L, fz.T, fz.Tb, selecting, sparsify)
    else:
        work = _Rows.empty(K, n_feat_rows, n_active, L, fz.T, fz.Tb, selecting)
    counter = {"compile_s": 0.0}
    plan = _BatchPlan.make(fz, batch_size, position_buckets)
    with _timed(timings, "logit_rows_s"):
        _logit_rows(fz, targets, work, min(batch_size, plan.full), counter, verbose)
    with _timed(timings, "feature_rows_s"):
        _feature_rows(
            fz, targets, work, n_feat_rows, batch_size, update_interval, plan, counter, verbose, eligible
        )
    timings["compile_s"] = counter["compile_s"]
    selected, adj, dropped = work.adjacency()
    del work
    timings["total_s"] = time.perf_counter() - t0
    busy = timings["logit_rows_s"] + timings["feature_rows_s"] - timings["compile_s"]
    timings["rows_per_s"] = (K + n_feat_rows) / max(busy, 1e-9)
    settings = dict(
        max_n_logits=max_n_logits,
        desired_logit_prob=desired_logit_prob,
        batch_size=batch_size,
        max_feature_nodes=max_feature_nodes,
        update_interval=update_interval,
        dtype=str(dtype),
        zero_positions=zero_positions,
        position_buckets=position_buckets,
        target_positions=np.unique(targets.positions).tolist(),
        n_active=n_active,
        given_features=fz.rep.given_features,
        precision=_precision(model, transcoders, dtype),
        round_off=fz.rep.round_off.to_json(),
        adjacency=layout,
        edge_tolerance=edge_tolerance,
        top_k_edges=top_k_edges,
        timings=timings,
    )
    return _assemble(model, transcoders, fz, targets, selected, adj, settings, dropped)


def attribute_batch(
    model: Model,
    transcoders: TranscoderSet,
    prompts: Sequence[str | Sequence[int] | np.ndarray],
    *,
    target_positions=None,
    verbose: bool | None = None,
    mesh=None,
    split: str = "prompts",
    **kwargs,
) -> list[Graph]:
    """The attribution graphs of ``prompts`` (``P`` texts or token-id sequences), in order: ``[Graph] * P``,
    each equal bit for bit to ``attribute(model, transcoders, prompt, target_positions=…, **kwargs)``.

    Every prompt is tokenized and its target positions checked before any work, so a bad prompt fails at once
    (``ValueError`` naming its index). The prompts then run through ``attribute``'s phases: the frozen model of
    each is padded to its length bucket, and every row function is compiled per padded shape (length bucket,
    active-feature bucket, batch size), so prompts that share buckets share compiled code and only the first
    prompt of a bucket compiles. ``verbose`` shows one bar over the prompts. ``kwargs``: ``attribute``'s other
    keyword arguments.

    ``mesh`` (a ``(data, model)`` mesh): with ``split="prompts"`` (default) each row of the data axis runs whole
    prompts — ``D`` at a time, the prompts dealt to the slices in turn (longest first), each slice on its own
    ``(1, model)`` mesh (``scale.sharding.data_slices``; the weights are copied onto each slice and sharded over its
    model axis). A slice runs exactly the single call's program on its devices, so each graph equals
    ``attribute(…, mesh=<that slice>)`` bit for bit, and with ``model = 1`` (one device a slice) ``attribute(…)``
    without a mesh. With ``split="rows"`` the prompts run one after another, each batch of rows split over the
    data axis (``attribute(…, mesh=mesh)``). Rows of different prompts never share a device batch: their frozen
    constants differ, and stacking them would change the compiled shapes and with them float32 round-off.
    """
    if isinstance(prompts, (str, np.ndarray)):
        raise TypeError("attribute_batch takes a sequence of prompts; for one prompt call attribute")
    if split not in ("prompts", "rows"):
        raise ValueError(f"split must be 'prompts' or 'rows', got {split!r}")
    prompts = list(prompts)
    if not prompts:
        raise ValueError("attribute_batch: no prompts")
    tokens = []
    for i, prompt in enumerate(prompts):
        try:
            tokens.append(encode_prompt(model, prompt))
            check_tokens(model.cfg, tokens[-1][None])
            positions_of(target_positions, len(tokens[-1]))
        except (ValueError, TypeError) as e:
            raise type(e)(f"prompt {i}: {e}") from None
    kwargs = dict(kwargs, target_positions=target_positions, verbose=False)
    with tqdm(total=len(tokens), desc="prompts", disable=not show_progress(verbose), unit="graph") as bar:
        if mesh is None or split == "rows":
            graphs = []
            for t in tokens:
                graphs.append(attribute(model, transcoders, t, mesh=mesh, **kwargs))
                bar.update(1)
            return graphs
        return _split_prompts(model, transcoders, tokens, data_slices(mesh), bar, kwargs)


def _on_slice(model: Model, transcoders: TranscoderSet, sub) -> tuple[Model, TranscoderSet, Any, Any]:
    """``model`` and ``transcoders`` with their device arrays copied onto data slice ``sub``'s first device (the
    replacement step runs there), that device, and the mesh the rows run on (``None`` for a one-device slice)."""
    dev = sub.devices.flat[0]
    m = dataclasses.replace(model, params=jax.device_put(model.params, dev))
    t = dataclasses.replace(transcoders, params=jax.device_put(transcoders.params, dev))
    return m, t, dev, (sub if sub.devices.size > 1 else None)


def _split_prompts(model, transcoders, tokens: list[np.ndarray], slices: list, bar, kwargs: dict) -> list[Graph]:
    """``attribute_batch``'s prompt split: one worker thread per data slice (JAX and numpy release the GIL, so
    the slices' device work and host work overlap); the first failure stops every worker and is raised."""
    graphs: list[Graph | None] = [None] * len(tokens)
    # longest first, dealt in turn: even loads, and a prompt always lands on the same slice, so a second batch of
    # these prompts finds every shape already compiled there (executables are per device on CPU and TPU)
    order = sorted(range(len(tokens)), key=lambda i: (-len(tokens[i]), i))
    failed = threading.Event()

    def work(sub, mine: list[int]) -> None:
        try:
            m, t, dev, rows_mesh = _on_slice(model, transcoders, sub)
            with jax.default_device(dev):
                for i in mine:
                    if failed.is_set():
                        return
                    graphs[i] = attribute(m, t, tokens[i], mesh=rows_mesh, **kwargs)
                    bar.update(1)
        except BaseException:
            failed.set()
            raise

    D = len(slices)
    with concurrent.futures.ThreadPoolExecutor(D, thread_name_prefix="attribute-slice") as pool:
        futures = [pool.submit(work, sub, order[k::D]) for k, sub in enumerate(slices)]
        for f in futures:
            f.result()
    return graphs  # type: ignore[return-value]
