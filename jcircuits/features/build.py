"""Feature dashboards computed in JAX: what makes each transcoder feature fire, over a corpus of token ids.

``build_dashboards`` runs one jitted step per batch of sequences: the model's forward pass (capturing the
transcoders' input hook), every layer's encoder, and an update of running per-feature statistics that stay on
the device and never grow with the corpus:

- the top ``n_top`` activations with their global position (``sequence * seq_len + position``), merged with the
  batch by one ``lax.top_k`` over ``[running | batch]``;
- a sample of at most ``n_reservoir`` active occurrences, from which the quantile bands take their examples: each
  occurrence hashes (its layer, feature, global position and ``seed``) to one of ``n_reservoir`` buckets of its
  feature and to a key, and a bucket keeps the occurrence of largest key. The sample is the same for any batch size,
  and for a resumed run; each occurrence is equally likely to be kept (a bucket's occurrences are equally likely to
  win it). A feature with ``n`` occurrences keeps about ``R (1 - (1 - 1/R)^n)`` of them (``R = n_reservoir``;
  two that share a bucket keep one: ``0.89 n`` at ``n = 16``, ``R = 64``), plenty for bands that show a few each.
  (An exact uniform reservoir merges by a top-k over keys every batch, which cost more than the statistics' whole
  budget here);
- the number of active positions (activation frequency = active / counted positions), the min and max activation;
- a histogram of the active values over ``n_bins`` equal bins of ``[0, 2^e)``, ``e`` per feature growing as the
  maximum does (bins are merged by powers of two, so the counts stay exact for those edges).

The update works from each feature's first ``kc`` active positions of the batch, found from bit-packed masks with
popcounts (``_first_set``; no sort, which XLA's CPU backend is slow at), which hold every active entry of a feature
that fired at most ``kc`` times (transcoders fire on well under 1 % of their features per token), and from the
columns of the features that fired more, taken whole; a batch with more busy features than that takes the dense
update over every ``(feature, position)`` instead, which gives the same state. What a batch costs on the medium
CPU case is in ``experiments/results/bench_features_cpu.md``.

Counted positions: every position but 0 (the BOS, excluded as in attribution) and, with ``ignore_pad``, those
holding the model's pad token. After the pass, one more forward over just the sequences the kept examples come from
gives each example's context window (``context`` tokens around its position) with the feature's activation at each
token. Host memory after the pass is ``layers × features × examples × context`` floats, whatever the corpus size.

Top and bottom logits: the feature's decoder direction through the unembedding, ``W_dec[f] @ W_U`` (no final
norm or soft-cap). For a cross-layer transcoder the direction is the decoder slot of the last layer (the write
that reaches the unembedding without further transcoder decoding): ``W_dec[l][f, -1]``.

``quantile_values`` (100 percentiles of the active values) and the band edges are read from the histogram
(linear inside a bin), so they are estimates at the histogram's resolution; the top activations, contexts,
frequencies, extremes and logits are exact.

Resumable: the state is written to ``out_dir/state.npz`` at most every ``save_every_s`` seconds and whenever the
loop stops (an exception or Ctrl-C included) after a completed batch; ``resume=True`` continues from it when it was
made from the same corpus, model and settings (a fingerprint says so) and refuses otherwise.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import time
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jcircuits.features.format import (
    AUTO_LABELS_NAME,
    META_NAME,
    layer_filename,
    write_index,
    write_layer,
)
from jcircuits.features.labels import auto_label, token_text
from jcircuits.models import forward_fn
from jcircuits.models.model import Model
from jcircuits.models.transformer import check_tokens, unembed_matrix
from jcircuits.transcoders.core import TranscoderConfig, encode_layer
from jcircuits.transcoders.transcoder_set import TranscoderSet, check_compatible

__all__ = ["DashboardSettings", "build_dashboards", "decoder_logit_directions", "top_bottom_logits"]

STATE_NAME = "state.npz"
_E_MIN = -60  # smallest histogram range 2^e


@dataclasses.dataclass(frozen=True)
class DashboardSettings:
    """What a dashboard keeps (static for the jitted step)."""

    n_top: int = 16
    n_quantiles: int = 4
    n_per_quantile: int = 4
    n_reservoir: int = 64
    n_bins: int = 64
    n_logits: int = 10
    context: int = 64
    seed: int = 0
    ignore_pad: bool = True
    digits: int = 6

    def __post_init__(self):
        for k in ("n_top", "n_quantiles", "n_per_quantile", "n_reservoir", "n_bins", "n_logits", "context", "digits"):
            v = getattr(self, k)
            if not isinstance(v, int | np.integer) or v < 1:
                raise ValueError(f"{k} must be a whole number >= 1, got {v!r}")


def _init_state(L: int, F: int, s: DashboardSettings) -> dict:
    f32, i32 = jnp.float32, jnp.int32
    return dict(
        top_v=jnp.full((L, F, s.n_top), -jnp.inf, f32),
        top_i=jnp.full((L, F, s.n_top), -1, i32),
        res_k=jnp.full((L, F, s.n_reservoir), -jnp.inf, f32),
        res_v=jnp.zeros((L, F, s.n_reservoir), f32),
        res_i=jnp.full((L, F, s.n_reservoir), -1, i32),
        count=jnp.zeros((L, F), i32),
        amax=jnp.full((L, F), -jnp.inf, f32),
        amin=jnp.full((L, F), jnp.inf, f32),
        hist=jnp.zeros((L, F, s.n_bins), i32),
        hexp=jnp.full((L, F), _E_MIN, i32),
    )


def _merge_topk(vals_FK, idx_FK, new_FP, new_idx_FP, k):
    v = jnp.concatenate([vals_FK, new_FP], axis=1)
    i = jnp.concatenate([idx_FK, new_idx_FP], axis=1)
    top, pos = jax.lax.top_k(v, k)
    return top, jnp.take_along_axis(i, pos, axis=1), pos


def _occurrence_hash(seed, layer, f, g):
    """A uint32 hash of an occurrence (feature ``f`` at global position ``g`` of ``layer``): counter-based
    (murmur3's finaliser), so it depends on nothing but the occurrence and the seed: not on the batch size, the
    batch it falls in or the order occurrences are visited (the dense and sparse updates agree)."""
    u32 = jnp.uint32
    x = (g.astype(u32) * u32(0x9E3779B1)) ^ (f.astype(u32) * u32(0x85EBCA77)) ^ (layer.astype(u32) * u32(0xC2B2AE3D))
    x = x ^ seed.astype(u32)
    for shift, mul in ((16, 0x85EBCA6B), (13, 0xC2B2AE35)):
        x = (x ^ (x >> shift)) * u32(mul)
    return x ^ (x >> 16)


def _sample_merge(res: tuple, rows, gidx, vals, real, seed, layer):
    """The running sample ``res = (key, value, position)``, each ``[F, R]``, updated with candidate occurrences
    ``[X, C]`` (``rows [X, 1]``: their features; ``real``: which are occurrences at all). Each occurrence hashes to
    one of the ``R`` buckets of its feature and to a key in ``[0, 1)``; a bucket keeps the occurrence of largest key
    (ties: the earliest position), so the sample is the same whatever the batches, their order or the update that
    made it. Three scatters over the candidates: no sort."""
    res_k, res_v, res_i = res
    F, R = res_k.shape
    h = _occurrence_hash(seed, layer, rows, gidx)
    key = jnp.where(real, (h >> 8).astype(jnp.float32) * jnp.float32(2.0**-24), -jnp.inf)
    # the bucket from a second round of the hash over the first (independent of the key's bits)
    bucket = (_occurrence_hash(seed, layer, h, jnp.uint32(0x27D4EB2F)) % jnp.uint32(R)).astype(jnp.int32)
    r = jnp.broadcast_to(rows, key.shape)
    best = jnp.full((F, R), -jnp.inf, jnp.float32).at[r, bucket].max(key)
    wins = (key == best[r, bucket]) & (key > res_k[r, bucket])
    big = jnp.iinfo(jnp.int32).max
    g_win = jnp.full((F, R), big, jnp.int32).at[r, bucket].min(jnp.where(wins, gidx, big))
    v_win = jnp.full((F, R), -jnp.inf, jnp.float32).at[r, bucket].max(
        jnp.where(wins & (gidx == g_win[r, bucket]), vals, -jnp.inf)
    )
    take = best > res_k
    return jnp.where(take, best, res_k), jnp.where(take, v_win, res_v), jnp.where(take, g_win, res_i)


def _stream_stats(st, a_FP, valid_P, active):
    """The dense update's per-feature reductions: counts, extremes and the histogram's new range (``hist`` re-binned
    to it); and the bins' widths."""
    count = st["count"] + active.sum(axis=1, dtype=jnp.int32)
    amax = jnp.maximum(st["amax"], jnp.where(valid_P[None, :], a_FP, -jnp.inf).max(axis=1))
    amin = jnp.minimum(st["amin"], jnp.where(valid_P[None, :], a_FP, jnp.inf).min(axis=1))
    bmax = jnp.where(active, a_FP, 0.0).max(axis=1)
    _, ex = jnp.frexp(jnp.maximum(bmax, 2.0**_E_MIN))  # bmax < 2^ex
    e_new = jnp.maximum(st["hexp"], ex.astype(jnp.int32))
    hist, width = _rebin(st["hist"], st["hexp"], e_new)
    return dict(count=count, amax=amax, amin=amin, hexp=e_new, hist=hist), width


def _rebin(hist, e_old, e_new):
    """The histograms over ``[0, 2^e_old)`` re-binned to ``[0, 2^e_new)`` (bins merged by ``2^(e_new - e_old)``, so
    the counts stay exact), and the new bins' widths."""
    shift = jnp.minimum(e_new - e_old, 31)
    n_bins = hist.shape[1]
    src = jnp.right_shift(jnp.arange(n_bins, dtype=jnp.int32)[None, :], shift[:, None])  # [F, NB]
    hist = jax.vmap(lambda h, ix: jnp.zeros_like(h).at[ix].add(h))(hist, src)
    return hist, jnp.exp2(e_new.astype(jnp.float32)) / n_bins


def _bins(v, width, n_bins):
    return jnp.clip(jnp.floor(v / width).astype(jnp.int32), 0, n_bins - 1)


def _layer_update_dense(st: dict, a_FP, valid_P, gidx_P, seed, layer, s: DashboardSettings):
    """One layer's statistics updated with a batch's activations ``a [F, P]`` (P = batch positions) over every
    ``(feature, position)``: the reference ``_layer_update_sparse`` agrees with, and its fallback."""
    F, P = a_FP.shape
    active = valid_P[None, :] & (a_FP > 0)
    out, width = _stream_stats(st, a_FP, valid_P, active)
    gi = jnp.broadcast_to(gidx_P[None, :], (F, P))
    top_v, top_i, _ = _merge_topk(st["top_v"], st["top_i"], jnp.where(active, a_FP, -jnp.inf), gi, s.n_top)
    res = _sample_merge((st["res_k"], st["res_v"], st["res_i"]), jnp.arange(F)[:, None], gi, a_FP, active, seed, layer)
    rows = jnp.broadcast_to(jnp.arange(F)[:, None], (F, P))
    hist = out["hist"].at[rows, _bins(a_FP, width[:, None], s.n_bins)].add(active.astype(jnp.int32))
    return dict(out, top_v=top_v, top_i=top_i, res_k=res[0], res_v=res[1], res_i=res[2], hist=hist)


_WORD = 32  # mask entries packed into one uint32


def _first_set(mask_NX, k: int):
    """``(index [k, X], count [X])``: along axis 0 of ``mask [N, X]``, each column's first ``k`` True entries in
    order (``N`` where a column has fewer) and its number of True entries. The mask is packed 32 entries a word;
    the ``j``-th entry is found from the words' running popcounts and a binary search inside its word: passes over
    the mask and ``[k, X]`` arrays, with no sort (a ``top_k`` along ``N`` costs far more on XLA's CPU backend)."""
    N, X = mask_NX.shape
    W = (N + _WORD - 1) // _WORD
    m = jnp.pad(mask_NX, ((0, W * _WORD - N), (0, 0)))
    bit = jnp.left_shift(jnp.uint32(1), jnp.arange(_WORD, dtype=jnp.uint32))[None, :, None]
    words = jnp.sum(jnp.where(m.reshape(W, _WORD, X), bit, jnp.uint32(0)), axis=1, dtype=jnp.uint32)  # [W, X]
    per_word = jax.lax.population_count(words).astype(jnp.int32)
    upto = jnp.cumsum(per_word, axis=0)  # set entries in words 0..w
    j = jnp.arange(k, dtype=jnp.int32)[:, None]
    w = jnp.sum(upto[None] <= j[:, None], axis=1, dtype=jnp.int32)  # [k, X]: the word holding entry j
    wc = jnp.minimum(w, W - 1)
    word = jnp.take_along_axis(words, wc, axis=0)
    r = (j - jnp.take_along_axis(upto - per_word, wc, axis=0)).astype(jnp.uint32)  # its rank inside the word
    at = jnp.zeros(word.shape, jnp.uint32)
    for width in (16, 8, 4, 2, 1):  # binary search for the r-th set bit
        below = jax.lax.population_count((word >> at) & jnp.uint32((1 << width) - 1))
        up = r >= below
        at, r = jnp.where(up, at + jnp.uint32(width), at), jnp.where(up, r - below, r)
    idx = wc * _WORD + at.astype(jnp.int32)
    return jnp.where(w < W, idx, N), upto[-1]


def _layer_update_sparse(st: dict, a_PF, valid_P, gidx_P, seed, layer, s: DashboardSettings, kc: int, m: int):
    """The same update as ``_layer_update_dense`` from the batch's active entries, for activations ``a [P, F]``
    (positions first, as the encoder writes them):

    - each feature's first ``kc`` active positions and its count (``_first_set``: bit-packed masks, no sort), which
      hold every active entry of a feature that fired ``kc`` times or fewer (nearly every feature: transcoders fire
      on well under 1 % of their features per token);
    - the features with more (full tables) are taken whole from their columns, as long as there are at most ``m``
      (the caller checks, and takes the dense update otherwise);
    - the running top activations merge with these entries by one ``top_k`` over ``[running | table]``, the sample
      by scatters (``_sample_merge``), the histogram by a scatter-add.

    Needs activations >= 0 (inactive entries are then exactly 0, so the extremes follow from the active ones).
    Returns the state and the number of full tables."""
    P, F = a_PF.shape
    pos, n_b = _first_set(valid_P[:, None] & (a_PF > 0), kc)  # [kc, F], [F]
    real = pos < P
    pc = jnp.minimum(pos, P - 1)
    tv = jnp.where(real, jnp.take_along_axis(a_PF, pc, axis=0), -jnp.inf).T  # [F, kc], position order
    tg = jnp.where(real, gidx_P[pc], -1).T
    real = real.T
    full = n_b > kc
    n_full = full.sum(dtype=jnp.int32)
    _, sel = jax.lax.top_k(full.astype(jnp.int32), m)  # the full tables first (lowest feature first)
    pick = full[sel]
    a_m = a_PF[:, sel].T  # [m, P]
    act_m = valid_P[None, :] & (a_m > 0)

    def set_full(x, y):  # rows ``sel`` of ``x`` from ``y`` where those are full tables
        p = pick.reshape((-1,) + (1,) * (x.ndim - 1))
        return x.at[sel].set(jnp.where(p, y, x[sel]))

    # counts and extremes (inactive valid entries are 0)
    n_valid = valid_P.sum(dtype=jnp.int32)
    hi = set_full(jnp.max(tv, axis=1), jnp.max(jnp.where(act_m, a_m, -jnp.inf), axis=1))
    lo = set_full(jnp.min(jnp.where(real, tv, jnp.inf), axis=1), jnp.min(jnp.where(act_m, a_m, jnp.inf), axis=1))
    top1 = jnp.maximum(hi, 0.0)
    b_max = jnp.where(n_valid > 0, top1, -jnp.inf)
    b_min = jnp.where(n_valid == 0, jnp.inf, jnp.where(n_b < n_valid, 0.0, lo))
    _, ex = jnp.frexp(jnp.maximum(top1, 2.0**_E_MIN))
    e_new = jnp.maximum(st["hexp"], ex.astype(jnp.int32))
    hist, width = _rebin(st["hist"], st["hexp"], e_new)
    out = dict(
        count=st["count"] + n_b, amax=jnp.maximum(st["amax"], b_max), amin=jnp.minimum(st["amin"], b_min),
        hexp=e_new,
    )

    # top activations and sample: from the tables, and for the full tables from their columns
    g_m = jnp.broadcast_to(gidx_P[None, :], (m, P))
    top_v, top_i, _ = _merge_topk(st["top_v"], st["top_i"], tv, tg, s.n_top)
    mv, mi, _ = _merge_topk(st["top_v"][sel], st["top_i"][sel], jnp.where(act_m, a_m, -jnp.inf), g_m, s.n_top)
    top_v, top_i = set_full(top_v, mv), set_full(top_i, mi)
    f_col = jnp.arange(F)[:, None]
    fits = real & ~full[:, None]
    res = _sample_merge((st["res_k"], st["res_v"], st["res_i"]), f_col, tg, tv, fits, seed, layer)
    res_k, res_v, res_i = _sample_merge(res, sel[:, None], g_m, a_m, act_m & pick[:, None], seed, layer)

    # histogram: the tables' entries, then the full tables' columns
    hist = hist.at[jnp.broadcast_to(f_col, (F, kc)), _bins(tv, width[:, None], s.n_bins)].add(fits.astype(jnp.int32))
    rows_m = jnp.broadcast_to(sel[:, None], (m, P))
    hist = hist.at[rows_m, _bins(a_m, width[sel][:, None], s.n_bins)].add((act_m & pick[:, None]).astype(jnp.int32))
    new = dict(out, top_v=top_v, top_i=top_i, res_k=res_k, res_v=res_v, res_i=res_i, hist=hist)
    return new, n_full


def _layer_update(st: dict, a_PF, valid_P, gidx_P, seed, layer, s: DashboardSettings, kc: int, m: int):
    """One layer's statistics updated with a batch's activations ``a [P, F]``: the sparse update when at most ``m``
    features fired more than ``kc`` times in the batch, else the dense one (the two give the same state;
    ``kc == 0``: always dense). Returns ``(state, number of full tables)``."""
    if kc <= 0:
        return _layer_update_dense(st, a_PF.T, valid_P, gidx_P, seed, layer, s), jnp.int32(0)
    new, n_full = _layer_update_sparse(st, a_PF, valid_P, gidx_P, seed, layer, s, kc, m)
    new = jax.lax.cond(
        n_full <= m,
        lambda: new,
        lambda: _layer_update_dense(st, a_PF.T, valid_P, gidx_P, seed, layer, s),
    )
    return new, n_full


@partial(jax.jit, static_argnums=(0, 1, 2, 3, 4), donate_argnums=(7,))
def _step(cfg, tcfg, s, kc, m, params, tc, state, tokens_BS, valid_BS, gidx_BS, seed):
    """One batch: forward, every layer's encoder, the statistics merged. Returns ``(state, the most full tables of
    one layer)`` (features that fired more than ``kc`` times)."""
    _, inter, _ = forward_fn(params, cfg, tokens_BS, capture=True)
    x_L = inter.hook(tcfg.input_hook)  # [L, B, S, D]
    B, S = tokens_BS.shape
    valid, gidx = valid_BS.reshape(-1), gidx_BS.reshape(-1)

    def one(args):
        l, st = args
        a = encode_layer(tcfg, tc, l, x_L[l].reshape(B * S, -1))  # [P, F]
        return _layer_update(st, a, valid, gidx, seed, l, s, kc, m)

    state, n_full = jax.lax.map(one, (jnp.arange(tcfg.n_layers), state))
    return state, n_full.max()


@partial(jax.jit, static_argnums=(0, 1, 2))
def _windows(cfg, tcfg, C, params, tc, tokens_BS, valid_BS, req_l, req_b, req_f, req_start):
    """``[n, C]`` activations of feature ``req_f`` of layer ``req_l`` in row ``req_b`` at ``req_start + 0..C-1``
    (zero at positions that are not counted)."""
    _, inter, _ = forward_fn(params, cfg, tokens_BS, capture=True)
    x_L = inter.hook(tcfg.input_hook)
    acts = jax.lax.map(lambda l: encode_layer(tcfg, tc, l, x_L[l]), jnp.arange(tcfg.n_layers))  # [L, B, S, F]
    acts = acts * valid_BS[None, :, :, None]
    pos = req_start[:, None] + jnp.arange(C)[None, :]
    return acts[req_l[:, None], req_b[:, None], pos, req_f[:, None]]


# ------------------------------------------------------------------------------------------------ logits


def decoder_logit_directions(transcoders: TranscoderSet, layer: int) -> np.ndarray:
    """``[F, D]`` decoder directions whose unembedding gives a feature's logits: PLT ``W_dec[l]``; CLT the
    decoder slot of the last layer, ``W_dec[l][:, -1]``."""
    F = transcoders.cfg.n_features
    rows = transcoders.decoders.rows(layer, np.arange(F))
    return rows[:, -1, :] if transcoders.cfg.kind == "clt" else rows


@partial(jax.jit, static_argnums=(2,))
def _top_bottom(dirs_FD, W_U, k):
    lg = dirs_FD.astype(jnp.float32) @ W_U.astype(jnp.float32)
    top_v, top = jax.lax.top_k(lg, k)
    bot_v, bot = jax.lax.top_k(-lg, k)
    return top, top_v, bot, -bot_v


def top_bottom_logits(model: Model, transcoders: TranscoderSet, layer: int, k: int = 10, chunk: int = 4096):
    """``(top_ids [F, k], top_values, bottom_ids [F, k], bottom_values)`` of ``dir @ W_U`` (largest first;
    smallest first for the bottom)."""
    W_U = unembed_matrix(model.params)
    dirs = decoder_logit_directions(transcoders, layer)
    k = min(k, model.cfg.vocab_size)
    outs = [_top_bottom(jnp.asarray(dirs[i : i + chunk]), W_U, k) for i in range(0, dirs.shape[0], chunk)]
    return tuple(np.concatenate([np.asarray(o[j]) for o in outs]) for j in range(4))


# ------------------------------------------------------------------------------------------------ helpers


def _fingerprint(model: Model, tcfg: TranscoderConfig, tokens: np.ndarray, s: DashboardSettings, B: int) -> str:
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(tokens).tobytes())
    h.update(str(tokens.shape).encode())
    h.update(json.dumps(["state v3", model.name, repr(model.cfg), repr(tcfg), dataclasses.asdict(s), B]).encode())
    return h.hexdigest()[:24]


def _save_state(out_dir: Path, state: dict, meta: dict) -> None:
    host = {k: np.asarray(v) for k, v in state.items()}
    tmp = out_dir / (STATE_NAME + ".tmp.npz")
    np.savez(tmp, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8), **host)
    os.replace(tmp, out_dir / STATE_NAME)


def _load_state(out_dir: Path):
    p = out_dir / STATE_NAME
    if not p.is_file():
        return None
    with np.load(p) as z:
        meta = json.loads(bytes(z["meta"]).decode())
        return meta, {k: z[k] for k in z.files if k != "meta"}


def _quantiles_rows(hist_FB: np.ndarray, e_F: np.ndarray, probs: np.ndarray, amax_F: np.ndarray) -> np.ndarray:
    """``[F, len(probs)]``: per feature, the values at cumulative probabilities ``probs`` of its histogram over
    ``[0, 2^e)`` (linear inside bins, as ``np.interp`` of the cumulative counts over the bin edges), at most its
    ``amax``; 0 for a feature with an empty histogram."""
    F, nb = hist_FB.shape
    n = hist_FB.sum(axis=1)
    safe = np.where(n > 0, n, 1).astype(np.float64)
    cdf = np.concatenate([np.zeros((F, 1)), np.cumsum(hist_FB, axis=1) / safe[:, None]], axis=1)  # [F, nb + 1]
    edges = np.linspace(0.0, 1.0, nb + 1)[None, :] * np.exp2(e_F.astype(np.float64))[:, None]
    p = probs[None, :]
    j = (cdf[:, None, :] <= p[:, :, None]).sum(axis=2) - 1  # the bin each probability falls in
    last = j >= nb
    jc = np.minimum(j, nb - 1)
    x0, x1 = np.take_along_axis(cdf, jc, 1), np.take_along_axis(cdf, jc + 1, 1)
    y0, y1 = np.take_along_axis(edges, jc, 1), np.take_along_axis(edges, jc + 1, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        inner = (y1 - y0) / (x1 - x0) * (p - x0) + y0
    val = np.where(last, edges[:, -1:], np.where(x0 == p, y0, inner))
    return np.where(n[:, None] > 0, np.minimum(val, amax_F[:, None]), 0.0)


class _Strings:
    def __init__(self, model: Model):
        self.tok, self.cache = model.tokenizer, {}

    def __call__(self, i: int) -> str:
        i = int(i)
        if i not in self.cache:
            self.cache[i] = str(i) if self.tok is None else self.tok.decode([i])
        return self.cache[i]


def _round_sig(x, digits: int) -> np.ndarray:
    """``x`` rounded to ``digits`` significant digits, elementwise, as float64 (whose shortest repr, the JSON the
    records hold, then has at most ``digits`` digits): the records' activations and quantile values."""
    x = np.asarray(x, np.float64)
    out = x.copy()
    nz = np.isfinite(x) & (x != 0)
    v = x[nz]
    k = int(digits) - 1 - np.floor(np.log10(np.abs(v))).astype(np.int64)  # decimals to keep
    up = k >= 0
    scale = 10.0 ** np.abs(k)  # exact for |k| <= 22
    y = np.where(up, v * scale, v / scale)
    r = np.round(y)
    r = np.where(up, r / scale, r * scale)
    # near a half the scaled product's own round-off can decide: those few go through Python's correctly rounded
    # formatting, so that every value is the one ``format(x, ".{digits}g")`` gives
    near = np.nonzero(np.abs(np.abs(y - np.floor(y)) - 0.5) < 1e-6)[0]
    fmt = f".{int(digits)}g"
    for i in near.tolist():
        r[i] = float(format(float(v[i]), fmt))
    out[nz] = r
    return out


# ------------------------------------------------------------------------------------------------ main


def build_dashboards(
    model: Model,
    transcoders: TranscoderSet,
    tokens_NS,
    *,
    n_top: int = 16,
    n_quantiles: int = 4,
    n_per_quantile: int = 4,
    n_reservoir: int = 64,
    n_bins: int = 64,
    context: int = 64,
    batch_size: int = 32,
    mesh=None,
    progress: bool | None = None,
    out_dir: str | os.PathLike = "features",
    resume: bool = True,
    seed: int = 0,
    ignore_pad: bool = True,
    digits: int = 6,
    scan: str | None = None,
    save_every_s: float = 60.0,
    on_batch=None,
) -> Path:
    """Compute every feature's dashboard over ``tokens_NS [n_sequences, seq_len]`` (int, BOS at position 0) and
    write them to ``out_dir`` in circuit-tracer's layout (``jcircuits.features.format``). Returns ``out_dir``.

    ``mesh``: a ``(data, model)`` mesh; each batch's rows are split over ``data`` (``batch_size`` must divide by
    it). ``digits``: significant digits of the activations written in the records (4 keeps the records small and
    is plenty to read a dashboard). ``on_batch(i)`` is called after batch ``i`` is merged (a test's way to stop a run part way).
    """
    from jcircuits.common.runtime import show_progress

    cfg, tcfg = model.cfg, transcoders.cfg
    check_compatible(cfg, tcfg)
    s = DashboardSettings(
        n_top, n_quantiles, n_per_quantile, n_reservoir, n_bins, 10, context, seed, ignore_pad, digits
    )
    if not isinstance(batch_size, int | np.integer) or batch_size < 1:
        raise ValueError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
    tokens = np.asarray(tokens_NS)
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be [n_sequences, seq_len], got shape {tokens.shape}")
    if tokens.shape[0] == 0:
        raise ValueError("tokens holds no sequences")
    if tokens.shape[1] < 2:
        raise ValueError(f"sequences need at least 2 tokens (BOS + one counted position), got {tokens.shape[1]}")
    check_tokens(cfg, tokens)
    tokens = tokens.astype(np.int32)
    if cfg.bos_token_id is not None and not np.all(tokens[:, 0] == cfg.bos_token_id):
        bad = int(np.argmax(tokens[:, 0] != cfg.bos_token_id))
        raise ValueError(
            f"sequence {bad} starts with token {int(tokens[bad, 0])}, not the BOS {cfg.bos_token_id}: every "
            "sequence must start with BOS (position 0 is excluded from the statistics)"
        )
    N, S = tokens.shape
    if N * S >= 2**31:
        raise ValueError(f"{N} x {S} positions is more than int32 global indices hold; split the corpus")
    B = int(batch_size)
    if mesh is not None:
        d = int(mesh.shape[_data_axis(mesh)])
        if B % d:
            raise ValueError(f"batch_size {B} must be a multiple of the mesh's data axis ({d})")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} is a file; give a directory for the dashboards")
    out.mkdir(parents=True, exist_ok=True)

    pad = cfg.pad_token_id
    valid_all = np.ones((N, S), bool)
    valid_all[:, 0] = False
    if ignore_pad and pad is not None and pad != cfg.bos_token_id:
        valid_all &= tokens != pad
    n_batches = -(-N // B)
    fp = _fingerprint(model, tcfg, tokens, s, B)
    L, F = tcfg.n_layers, tcfg.n_features

    state, start, n_counted = _init_state(L, F, s), 0, 0
    if resume:
        got = _load_state(out)
        if got is not None:
            meta, arrays = got
            if meta.get("fingerprint") != fp:
                raise ValueError(
                    f"{out / STATE_NAME} was made from another corpus, model or settings; pass resume=False "
                    "(--no-resume) to start over, or another output directory"
                )
            state = {k: jnp.asarray(v) for k, v in arrays.items()}
            start, n_counted = int(meta["next_batch"]), int(meta["n_counted"])
    elif (out / STATE_NAME).exists():
        (out / STATE_NAME).unlink()

    params, tc = model.params, transcoders.params
    def put(x):
        return x

    if mesh is not None:
        from jax.sharding import NamedSharding
        from jax.sharding import PartitionSpec as P

        rows, rep = NamedSharding(mesh, P(_data_axis(mesh), None)), NamedSharding(mesh, P())

        def on_mesh(tree):
            def leaf(x):
                sh = getattr(x, "sharding", None)
                if sh is not None and set(sh.device_set) == set(mesh.devices.flat):
                    return x
                return jax.device_put(x, rep)

            return jax.tree.map(leaf, tree)

        params, tc, state = on_mesh(params), on_mesh(tc), jax.device_put(state, rep)

        def put(x):
            return jax.device_put(x, rows)

    seed_u32 = jnp.uint32(int(seed) % 2**32)
    (kc, m), prev_n = _sparse_shape(B * S, F, transcoders), None
    from tqdm.auto import tqdm

    bar = tqdm(
        total=N * S, initial=start * B * S, unit="tok", unit_scale=True, desc="feature dashboards",
        disable=not show_progress(progress), file=sys.stderr,
    )
    last_save, done = time.monotonic(), start

    def save():
        meta = dict(fingerprint=fp, next_batch=done, n_counted=n_counted, n_batches=n_batches)
        _save_state(out, state, meta)

    try:
        for i in range(start, n_batches):
            lo, hi = i * B, min(N, (i + 1) * B)
            tb = np.full((B, S), cfg.bos_token_id if cfg.bos_token_id is not None else 0, np.int32)
            vb = np.zeros((B, S), bool)
            tb[: hi - lo], vb[: hi - lo] = tokens[lo:hi], valid_all[lo:hi]
            gb = (np.arange(lo, lo + B, dtype=np.int64)[:, None] * S + np.arange(S)[None, :])
            gb = np.where(vb, gb, -1).astype(np.int32)
            state, n_full = _step(
                cfg, tcfg, s, kc, m, params, tc, state, put(jnp.asarray(tb)), put(jnp.asarray(vb)),
                put(jnp.asarray(gb)), seed_u32,
            )
            if prev_n is not None:  # the batch before's count (read one batch late, so the device never waits)
                kc = _next_kc(kc, m, int(prev_n), B * S)
            prev_n = n_full
            n_counted += int(vb.sum())
            done = i + 1
            bar.update((hi - lo) * S)
            if on_batch is not None:
                on_batch(i)
            if time.monotonic() - last_save > save_every_s:
                save()
                last_save = time.monotonic()
    except BaseException:  # stopped part way (Ctrl-C included): keep what the completed batches gathered
        bar.close()
        if done > start or not (out / STATE_NAME).exists():
            jax.block_until_ready(state)
            save()
        raise
    bar.close()

    host = {k: np.asarray(v) for k, v in state.items()}
    try:
        _finish(model, transcoders, tokens, valid_all, host, n_counted, s, B, out, scan, mesh)
    except BaseException:  # the pass is done: a rerun with resume goes straight to the records
        save()
        raise
    (out / STATE_NAME).unlink(missing_ok=True)
    return out


def _sparse_shape(P: int, F: int, transcoders: TranscoderSet) -> tuple[int, int]:
    """``(kc, m)`` of the sparse update for ``P`` positions a batch and ``F`` features: each feature's 32 largest
    entries and the 256 busiest features whole; ``(0, 0)`` (the dense update) where activations can be negative (a
    JumpReLU threshold below 0, TopK), which the sparse update's extremes assume they cannot."""
    c = transcoders.cfg
    th = transcoders.params.threshold
    nonneg = c.activation == "relu" or (c.activation == "jumprelu" and th is not None and float(jnp.min(th)) >= 0)
    return (min(P, 32), min(F, 256)) if nonneg else (0, 0)


def _next_kc(kc: int, m: int, n_full: int, P: int) -> int:
    """``kc`` for the next batches after one with ``n_full`` full tables in a layer (features that fired more
    than ``kc`` times): doubled when they were more than ``m`` (so the dense fallback runs once rather than every
    batch); 0 (always dense) once it would pass a quarter of the positions, where the dense update is as cheap."""
    if kc <= 0 or n_full <= m:
        return kc
    return 0 if 2 * kc > P // 4 else 2 * kc


def _data_axis(mesh) -> str:
    """The mesh axis a batch's rows are split over: ``"data"`` of ``jcircuits.scale.make_mesh``'s ``(data, model)``
    mesh (named here rather than imported, so that this package sits below ``default``, which ships dashboards)."""
    return "data" if "data" in mesh.axis_names else mesh.axis_names[0]


def _context_start(p: int, length: int, C: int) -> int:
    """First position of a ``C``-token window around ``p`` inside ``[0, length)`` (clipped at the ends)."""
    return int(max(0, min(p - C // 2, length - C)))


def _finish(model, transcoders, tokens, valid_all, st, n_counted, s: DashboardSettings, B, out, scan, mesh):
    cfg, tcfg = model.cfg, transcoders.cfg
    L, F = tcfg.n_layers, tcfg.n_features
    N, S = tokens.shape
    C = min(s.context, S)
    pad = cfg.pad_token_id
    # a sequence's length: up to its last counted or BOS position (trailing pads dropped when they are ignored)
    lengths = np.where(valid_all.any(axis=1), S - np.argmax(valid_all[:, ::-1], axis=1), 1)
    if not (s.ignore_pad and pad is not None):
        lengths[:] = S

    # examples per feature: the top activations, then reservoir samples grouped into bands of the estimated
    # distribution of active values (highest band first)
    probs = np.linspace(0, 1, s.n_quantiles + 1)
    pct = np.arange(1, 101) / 100
    plan: dict[tuple[int, int], list] = {}
    quantile_values = np.zeros((L, F, 100))
    for l in range(L):
        hist, hexp, amax = st["hist"][l], st["hexp"][l], np.maximum(st["amax"][l], 0.0)
        quantile_values[l] = _quantiles_rows(hist, hexp, pct, amax)
        edges = _quantiles_rows(hist, hexp, probs, amax)  # [F, n_quantiles + 1]
        tv, ti = st["top_v"][l], st["top_i"][l]
        n_top = (ti >= 0).sum(axis=1).tolist()
        tv_l, ti_l = tv.tolist(), ti.tolist()  # a feature's kept entries come first (largest first)
        rv, ri = st["res_v"][l], st["res_i"][l]
        ok = ri >= 0
        order = np.argsort(np.where(ok, -rv, np.inf), axis=1, kind="stable")  # largest first; empty slots last
        rv_s, ri_s, ok_s = (np.take_along_axis(x, order, 1) for x in (rv, ri, ok))
        bands = []  # per band, highest first: (values, indices, counts) of its first n_per_quantile samples
        for q in range(s.n_quantiles - 1, -1, -1):
            lo_e, hi_e = edges[:, q : q + 1], edges[:, q + 1 : q + 2]
            m = ok_s & (rv_s >= lo_e) & ((rv_s < hi_e) if q < s.n_quantiles - 1 else True)
            rank = np.cumsum(m, axis=1) - 1
            take = m & (rank < s.n_per_quantile)
            cnt = take.sum(axis=1)
            pos = np.argsort(~take, axis=1, kind="stable")[:, : s.n_per_quantile]  # the taken, in order
            bands.append((q, np.take_along_axis(rv_s, pos, 1).tolist(), np.take_along_axis(ri_s, pos, 1).tolist(),
                          cnt.tolist(), edges[:, q].tolist(), edges[:, q + 1].tolist()))
        for f in range(F):
            k = n_top[f]
            groups = [("Top activations", list(zip(tv_l[f][:k], ti_l[f][:k], strict=True)))]
            for q, bv, bi, cnt, lo_q, hi_q in bands:
                c = cnt[f]
                if not c:
                    continue
                name = f"Quantile {q + 1}/{s.n_quantiles} ({lo_q[f]:.3g} to {hi_q[f]:.3g})"
                groups.append((name, list(zip(bv[f][:c], bi[f][:c], strict=True))))
            plan[(l, f)] = groups

    # one more forward over the sequences the examples come from: their windows of activations
    reqs = sorted({(g // S, l, f, g % S) for (l, f), groups in plan.items() for _, ex in groups for _, g in ex})
    windows: dict[tuple[int, int, int, int], np.ndarray] = {}
    if reqs:
        seqs = np.unique([r[0] for r in reqs])
        by_seq: dict[int, list] = {}
        for r in reqs:
            by_seq.setdefault(r[0], []).append(r)
        params, tc = model.params, transcoders.params
        for j in range(0, len(seqs), B):
            chunk = seqs[j : j + B]
            tb = np.full((B, S), tokens[chunk[0], 0], np.int32)
            vb = np.zeros((B, S), bool)
            tb[: len(chunk)], vb[: len(chunk)] = tokens[chunk], valid_all[chunk]
            rows = [(bi, r) for bi, sq in enumerate(chunk) for r in by_seq[int(sq)]]
            n = len(rows)
            n_pad = 1 << max(0, (n - 1).bit_length())
            rl, rb, rf, rs = (np.zeros(n_pad, np.int32) for _ in range(4))
            for k, (bi, (sq, l, f, p)) in enumerate(rows):
                rl[k], rb[k], rf[k], rs[k] = l, bi, f, _context_start(p, int(lengths[sq]), C)
            args = map(jnp.asarray, (tb, vb, rl, rb, rf, rs))
            got = _round_sig(np.asarray(_windows(cfg, tcfg, C, params, tc, *args)), s.digits)
            for k, (_, r) in enumerate(rows):
                windows[r] = (int(rs[k]), got[k])

    tok_str = _Strings(model)
    tok_arr = np.empty(max(cfg.vocab_size, int(tokens.max()) + 1), dtype=object)  # id -> text, for the ids used
    for i in np.unique(tokens).tolist():
        tok_arr[i] = tok_str(i)

    fmt = f".{int(s.digits)}g"

    def _r(x: float) -> float:  # one number (the extremes); arrays go through _round_sig, which gives the same
        return float(format(float(x), fmt))
    name = scan or tcfg.scan or model.name
    # each token's share of the counted positions, by its text (the automatic labels' sense of a common token)
    ids, n_ids = np.unique(tokens[valid_all], return_counts=True)
    token_frequency: dict[str, float] = {}
    for i, c in zip(ids.tolist(), n_ids.tolist(), strict=True):
        t = token_text(tok_str(i))
        token_frequency[t] = token_frequency.get(t, 0.0) + c / max(1, n_counted)
    for special in (cfg.bos_token_id, cfg.pad_token_id):  # never a label's context
        if special is not None:
            token_frequency[token_text(tok_str(special))] = 1.0
    entries, auto_labels = [], {}
    for l in range(L):
        top_ids, _, bot_ids, _ = top_bottom_logits(model, transcoders, l, s.n_logits)

        qv_r = _round_sig(quantile_values[l], s.digits)

        def records(l=l, top_ids=top_ids, bot_ids=bot_ids, qv_r=qv_r):
            for f in range(F):
                seen: set[int] = set()
                eq = []
                for qname, ex in plan[(l, f)]:
                    exs = []
                    for _, g in ex:
                        sq, p = g // S, g % S
                        st0, acts = windows[(sq, l, f, p)]
                        end = min(st0 + C, int(lengths[sq]))
                        exs.append(
                            dict(
                                tokens_acts_list=acts[: end - st0].tolist(),
                                train_token_ind=int(p - st0),
                                is_repeated_datapoint=bool(sq in seen),
                                tokens=tok_arr[tokens[sq, st0:end]].tolist(),
                            )
                        )
                        seen.add(sq)
                    eq.append(dict(quantile_name=qname, examples=exs))
                count = int(st["count"][l, f])
                amax, amin = float(st["amax"][l, f]), float(st["amin"][l, f])
                hist, e = st["hist"][l, f], int(st["hexp"][l, f])
                nb = len(hist)
                if count:  # trim the bins above the max, so the histogram spans about [0, act_max]
                    used = min(nb, int(np.floor(amax / (2.0**e / nb))) + 1)
                    hist = hist[:used]
                rec = dict(
                    transcoder_id=f"{name}/{l}",
                    index=f,
                    examples_quantiles=eq,
                    top_logits=[tok_str(t) for t in top_ids[f]],
                    bottom_logits=[tok_str(t) for t in bot_ids[f]],
                    act_min=_r(amin if np.isfinite(amin) else 0.0),
                    act_max=_r(amax if np.isfinite(amax) else 0.0),
                    quantile_values=qv_r[f].tolist(),
                    histogram=[int(h) for h in hist],
                    activation_frequency=float(count / n_counted) if n_counted else 0.0,
                )
                auto_labels[f"{l}/{f}"] = {"label": auto_label(rec, token_frequency=token_frequency), "label_source": "auto"}
                yield rec

        offsets = write_layer(out / layer_filename(l), records())
        entries.append(dict(filename=layer_filename(l), offsets=offsets))
    write_index(out, entries)
    (out / AUTO_LABELS_NAME).write_text(json.dumps(auto_labels, separators=(",", ":"), ensure_ascii=False))
    meta = dict(
        format="circuit-tracer features (index.json.gz + length-prefixed zlib JSON records)",
        model=model.name,
        scan=name,
        kind=tcfg.kind,
        n_layers=L,
        n_features=F,
        n_sequences=int(N),
        seq_len=int(S),
        n_counted_positions=int(n_counted),
        settings=dataclasses.asdict(s),
        histogram="counts of active values over equal bins of [0, 2^e), trimmed above act_max",
        logits="W_dec[f] @ W_U" if tcfg.kind == "plt" else "W_dec[l][f, last layer] @ W_U",
    )
    (out / META_NAME).write_text(json.dumps(meta, indent=1))
