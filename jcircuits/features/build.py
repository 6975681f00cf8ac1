"""Feature dashboards computed in JAX: what makes each transcoder feature fire, over a corpus of token ids.

``build_dashboards`` runs one jitted step per batch of sequences: the model's forward pass (capturing the
transcoders' input hook), every layer's encoder, and an update of running per-feature statistics that stay on
the device and never grow with the corpus:

- the top ``n_top`` activations with their global position (``sequence * seq_len + position``), merged with the
  batch by one ``lax.top_k`` over ``[running | batch]``;
- a uniform reservoir of ``n_reservoir`` active occurrences (a top-k over random keys drawn per batch and layer
  from ``seed``; so a resumed run draws the same keys), from which the quantile bands take their examples;
- the number of active positions (activation frequency = active / counted positions), the min and max activation;
- a histogram of the active values over ``n_bins`` equal bins of ``[0, 2^e)``, ``e`` per feature growing as the
  maximum does (bins are merged by powers of two, so the counts stay exact for those edges).

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
from jcircuits.features.labels import auto_label
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


def _layer_update(st: dict, a_PF, valid_P, gidx_P, key, s: DashboardSettings):
    """One layer's statistics updated with a batch's activations ``a [P, F]`` (P = batch positions)."""
    P, F = a_PF.shape
    active = valid_P[:, None] & (a_PF > 0)
    aT = jnp.where(active, a_PF, -jnp.inf).T  # [F, P]
    gi = jnp.broadcast_to(gidx_P[None, :], (F, P))
    top_v, top_i, _ = _merge_topk(st["top_v"], st["top_i"], aT, gi, s.n_top)
    u = jax.random.uniform(key, (F, P), jnp.float32)
    keys = jnp.where(active.T, u, -jnp.inf)
    kk = jnp.concatenate([st["res_k"], keys], axis=1)
    res_k, pos = jax.lax.top_k(kk, s.n_reservoir)
    res_v = jnp.take_along_axis(jnp.concatenate([st["res_v"], jnp.where(active.T, a_PF.T, 0.0)], 1), pos, 1)
    res_i = jnp.take_along_axis(jnp.concatenate([st["res_i"], gi], 1), pos, 1)
    count = st["count"] + active.sum(axis=0, dtype=jnp.int32)
    amax = jnp.maximum(st["amax"], jnp.where(valid_P[:, None], a_PF, -jnp.inf).max(axis=0))
    amin = jnp.minimum(st["amin"], jnp.where(valid_P[:, None], a_PF, jnp.inf).min(axis=0))
    # histogram over [0, 2^e): grow e to cover the new max, merging bins by 2^(e_new - e_old)
    bmax = jnp.where(active, a_PF, 0.0).max(axis=0)
    _, ex = jnp.frexp(jnp.maximum(bmax, 2.0**_E_MIN))  # bmax < 2^ex
    e_new = jnp.maximum(st["hexp"], ex.astype(jnp.int32))
    shift = jnp.minimum(e_new - st["hexp"], 31)
    src = jnp.right_shift(jnp.arange(s.n_bins, dtype=jnp.int32)[None, :], shift[:, None])  # [F, NB]
    hist = jax.vmap(lambda h, ix: jnp.zeros_like(h).at[ix].add(h))(st["hist"], src)
    width = jnp.exp2(e_new.astype(jnp.float32)) / s.n_bins
    b = jnp.clip(jnp.floor(a_PF / width[None, :]).astype(jnp.int32), 0, s.n_bins - 1)  # [P, F]
    hist = hist.at[jnp.broadcast_to(jnp.arange(F)[None, :], (P, F)), b].add(active.astype(jnp.int32))
    return dict(
        top_v=top_v, top_i=top_i, res_k=res_k, res_v=res_v, res_i=res_i, count=count,
        amax=amax, amin=amin, hist=hist, hexp=e_new,
    )


@partial(jax.jit, static_argnums=(0, 1, 2), donate_argnums=(5,))
def _step(cfg, tcfg, s, params, tc, state, tokens_BS, valid_BS, gidx_BS, key):
    _, inter, _ = forward_fn(params, cfg, tokens_BS, capture=True)
    x_L = inter.hook(tcfg.input_hook)  # [L, B, S, D]
    B, S = tokens_BS.shape
    valid, gidx = valid_BS.reshape(-1), gidx_BS.reshape(-1)

    def one(args):
        l, st = args
        a = encode_layer(tcfg, tc, l, x_L[l].reshape(B * S, -1))
        return _layer_update(st, a, valid, gidx, jax.random.fold_in(key, l), s)

    return jax.lax.map(one, (jnp.arange(tcfg.n_layers), state))


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
    h.update(json.dumps([model.name, repr(model.cfg), repr(tcfg), dataclasses.asdict(s), B]).encode())
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


def _quantiles_from_hist(hist: np.ndarray, e: int, probs: np.ndarray, amax: float) -> np.ndarray:
    """Values at cumulative probabilities ``probs`` of the histogram over ``[0, 2^e)`` (linear inside bins)."""
    n = hist.sum()
    if n == 0:
        return np.zeros(len(probs))
    edges = np.linspace(0.0, 2.0**e, len(hist) + 1)
    cdf = np.concatenate([[0.0], np.cumsum(hist) / n])
    return np.minimum(np.interp(probs, cdf, edges), amax)


class _Strings:
    def __init__(self, model: Model):
        self.tok, self.cache = model.tokenizer, {}

    def __call__(self, i: int) -> str:
        i = int(i)
        if i not in self.cache:
            self.cache[i] = str(i) if self.tok is None else self.tok.decode([i])
        return self.cache[i]


def _rounder(digits: int):
    """Floats written with ``digits`` significant digits (the records' activations and quantile values)."""
    fmt = f".{int(digits)}g"

    def r(x: float) -> float:
        return float(format(float(x), fmt))

    return r


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

    root_key = jax.random.key(seed)
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
            state = _step(
                cfg, tcfg, s, params, tc, state, put(jnp.asarray(tb)), put(jnp.asarray(vb)),
                put(jnp.asarray(gb)), jax.random.fold_in(root_key, i),
            )
            n_counted += int(vb.sum())
            done = i + 1
            bar.update((hi - lo) * S)
            if on_batch is not None:
                on_batch(i)
            if time.monotonic() - last_save > save_every_s:
                save()
                last_save = time.monotonic()
    finally:
        bar.close()
        if done > start or not (out / STATE_NAME).exists():
            jax.block_until_ready(state)
            save()

    host = {k: np.asarray(v) for k, v in state.items()}
    _finish(model, transcoders, tokens, valid_all, host, n_counted, s, B, out, scan, mesh)
    (out / STATE_NAME).unlink(missing_ok=True)
    return out


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
        for f in range(F):
            tv, ti = st["top_v"][l, f], st["top_i"][l, f]
            keep = ti >= 0
            groups = [("Top activations", list(zip(tv[keep].tolist(), ti[keep].tolist(), strict=True)))]
            amax = float(st["amax"][l, f])
            qv = _quantiles_from_hist(st["hist"][l, f], int(st["hexp"][l, f]), pct, max(amax, 0.0))
            quantile_values[l, f] = qv
            edges = _quantiles_from_hist(st["hist"][l, f], int(st["hexp"][l, f]), probs, max(amax, 0.0))
            rv, ri = st["res_v"][l, f], st["res_i"][l, f]
            rk = ri >= 0
            rv, ri = rv[rk], ri[rk]
            for q in range(s.n_quantiles - 1, -1, -1):
                lo_e, hi_e = edges[q], edges[q + 1]
                m = (rv >= lo_e) & ((rv < hi_e) if q < s.n_quantiles - 1 else (rv <= np.inf))
                if not m.any():
                    continue
                order = np.argsort(-rv[m], kind="stable")[: s.n_per_quantile]
                pairs = list(zip(rv[m][order].tolist(), ri[m][order].tolist(), strict=True))
                name = f"Quantile {q + 1}/{s.n_quantiles} ({lo_e:.3g} to {hi_e:.3g})"
                groups.append((name, pairs))
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
            got = np.asarray(_windows(cfg, tcfg, C, params, tc, *args))
            for k, (_, r) in enumerate(rows):
                windows[r] = (int(rs[k]), got[k])

    tok_str = _Strings(model)
    _r = _rounder(s.digits)
    name = scan or tcfg.scan or model.name
    entries, auto_labels = [], {}
    for l in range(L):
        top_ids, _, bot_ids, _ = top_bottom_logits(model, transcoders, l, s.n_logits)

        def records(l=l, top_ids=top_ids, bot_ids=bot_ids):
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
                                tokens_acts_list=[_r(a) for a in acts[: end - st0]],
                                train_token_ind=int(p - st0),
                                is_repeated_datapoint=bool(sq in seen),
                                tokens=[tok_str(t) for t in tokens[sq, st0:end]],
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
                    quantile_values=[_r(v) for v in quantile_values[l, f]],
                    histogram=[int(h) for h in hist],
                    activation_frequency=float(count / n_counted) if n_counted else 0.0,
                )
                auto_labels[f"{l}/{f}"] = {"label": auto_label(rec), "label_source": "auto"}
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
