"""Interventions: set transcoder features to chosen values and see what the model does.

An intervention is ``(layer, position, feature, value)``: at ``layer``, make ``feature`` take ``value`` at
``position`` (an int — negative counts from the end of the prompt —, a ``slice`` or a sequence of ints). The edit is
applied the way circuit-tracer 0.5.0's ``ReplacementModel.feature_intervention`` applies it, so results agree
number for number (tests/test_intervention.py checks this on its reference cases):

* The model runs with its real MLPs. At an edited layer, the feature's current activation ``a`` (encoded from the
  feature-input hook of *this* run, post-activation, position 0 — the attention sink — counted as 0) is read and
  ``(value − a) · W_dec[feature]`` is added at the transcoder's output hook. A cross-layer transcoder's edit at
  layer ``l`` writes into every slot ``l' ≥ l`` through its per-layer decoders. Setting a feature to its current
  value therefore changes nothing.
* ``freeze_attention=True`` (default) freezes every attention pattern at its clean value, nothing else: later
  layers and their MLPs respond to the edit (effects propagate; activations are re-encoded).
* ``constrained_layers=C`` also freezes, for layers in ``C``, the output hook at its clean value (plus the live
  change of a skip connection's ``x @ W_skip``), computes ``value − a`` from the *clean* activation, and writes CLT
  edits only into slots in ``C``. When ``C`` covers every layer all norm scales (ln1, ln2, Gemma's post-norms, the
  final norm) are frozen too: only direct effects pass, the setting in which attribution edges are exact. Doubling
  a feature then moves every feature pre-activation and demeaned (pre-soft-cap) logit by exactly its edge.
* Returned activations ``[L, T, F]`` are the transcoders' encodings of this run's feature inputs (post-activation,
  or pre-activation with ``apply_activation_function=False``), with the first ``zero_positions`` zeroed.

Generation (``generate``) runs the prompt once with the edits and freezes above (the prefill; its key/value
vectors fill a fixed-size cache), then a jitted ``lax.scan`` of KV-cache decode steps. In decode steps nothing is
frozen (as in circuit-tracer): interventions whose positions cover a generated position — open-ended slices
``slice(k, None)``, or explicit positions past the prompt — are applied there against the new token's own live
activation. Error nodes are never materialised: an edit is a delta on top of the true MLP output, which is the same
as running the replacement model (features + *live* errors, ``error = MLP(x) − reconstruction(x)``) at every layer.
Unlike circuit-tracer (which maps every open-ended slice to "each new token"), positions are absolute: a slice
starting past the prompt starts applying at that generated position.

Letters: L layers, T prompt positions, S = T + new tokens, D model, F features, V vocabulary, n interventions.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable, Sequence
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jcircuits.common.pytree import pytree_dataclass
from jcircuits.common.runtime import use_compilation_cache
from jcircuits.models import Intermediates, Model, encode_prompt, forward, forward_fn
from jcircuits.models.decode import (
    check_sampling,
    decode_loop_fn,
    kv_cache_from_intermediates,
    sample_token,
)
from jcircuits.models.decode import generate as generate_plain
from jcircuits.models.hooks import input_field, output_field
from jcircuits.models.transformer import check_finite_logits, check_tokens
from jcircuits.transcoders import TranscoderSet, check_compatible
from jcircuits.transcoders.core import TranscoderConfig, Transcoders, activate, encode_layer

__all__ = [
    "Intervention",
    "InterventionSpec",
    "Generation",
    "feature_intervention",
    "generate",
    "parse_intervention",
    "specs_to_interventions",
    "resolve_interventions",
]

Intervention = tuple[int, "int | slice | Sequence[int]", int, float]

# ------------------------------------------------------------------------------------------ validation


@dataclasses.dataclass(frozen=True)
class Plan:
    """Interventions resolved against a model, a transcoder set and a length ``S``: one row per intervention,
    ``mask [n, S]`` the absolute positions it covers (a later intervention on the same layer/feature/position
    overrides an earlier one, as in circuit-tracer)."""

    layers: np.ndarray  # [n] int32
    feats: np.ndarray  # [n] int32
    values: np.ndarray  # [n] float32
    mask: np.ndarray  # [n, S] bool

    @property
    def n(self) -> int:
        return len(self.layers)


def _as_int(x, what: str, where: str) -> int:
    if isinstance(x, bool | np.bool_):
        raise TypeError(f"{where}: {what} must be an integer, got {x!r}")
    if isinstance(x, int | np.integer):
        return int(x)
    arr = np.asarray(x)
    if arr.ndim == 0 and np.issubdtype(arr.dtype, np.integer):
        return int(arr)
    raise TypeError(f"{where}: {what} must be an integer, got {x!r}")


def _position_mask(pos, n_prompt: int, n_total: int, where: str) -> np.ndarray:
    """Absolute positions ``[n_total]`` covered by ``pos``; negatives count from the end of the prompt."""
    mask = np.zeros(n_total, bool)

    def absolute(p: int) -> int:
        q = p + n_prompt if p < 0 else p
        if not 0 <= q < n_total:
            extra = f" (prompt {n_prompt} + generated {n_total - n_prompt})" if n_total > n_prompt else ""
            raise ValueError(
                f"{where}: position {p} is out of range for a sequence of {n_total} positions{extra}"
            )
        return q

    if isinstance(pos, slice):
        step = 1 if pos.step is None else _as_int(pos.step, "slice step", where)
        if step <= 0:
            raise ValueError(f"{where}: slice step must be positive, got {step}")
        bound = lambda b, default: default if b is None else _as_int(b, "slice bound", where)  # noqa: E731
        start, stop = bound(pos.start, 0), bound(pos.stop, n_total)
        start, stop = (s + n_prompt if s < 0 else s for s in (start, stop))
        idx = np.arange(max(start, 0), min(stop, n_total), step)
        if idx.size == 0:
            raise ValueError(
                f"{where}: position slice {pos} covers no position of the {n_total}-long sequence"
            )
        mask[idx] = True
        return mask
    if isinstance(pos, int | np.integer) and not isinstance(pos, bool | np.bool_):
        mask[absolute(int(pos))] = True
        return mask
    arr = np.asarray(pos)
    if arr.ndim == 0:
        mask[absolute(_as_int(pos, "position", where))] = True
        return mask
    if arr.ndim != 1 or arr.size == 0 or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(
            f"{where}: position must be an int, a slice or a non-empty sequence of ints, got {pos!r}"
        )
    for p in arr.tolist():
        mask[absolute(int(p))] = True
    return mask


_MAX_VALUE = float(np.finfo(np.float32).max)


def resolve_interventions(
    interventions: Iterable[Intervention],
    n_layers: int,
    n_features: int,
    n_prompt: int,
    n_total: int | None = None,
) -> Plan:
    """Validate ``interventions`` and resolve their positions over ``n_total`` (default ``n_prompt``) positions.

    Raises ``ValueError``/``TypeError`` naming the offending intervention for: a malformed tuple, a layer or
    feature out of range, a position out of range or covering nothing, a non-finite or non-numeric value."""
    n_total = n_prompt if n_total is None else n_total
    rows = []
    for i, iv in enumerate(interventions):
        where = f"intervention #{i} {iv!r}"
        if isinstance(iv, str) or not isinstance(iv, Sequence) or len(iv) != 4:
            raise TypeError(f"{where}: an intervention is a 4-tuple (layer, position, feature, value)")
        layer, pos, feat, value = iv
        layer = _as_int(layer, "layer", where)
        if not 0 <= layer < n_layers:
            raise ValueError(f"{where}: layer {layer} is out of range [0, {n_layers})")
        feat = _as_int(feat, "feature", where)
        if not 0 <= feat < n_features:
            raise ValueError(
                f"{where}: feature {feat} is out of range [0, {n_features}) for this transcoder set"
            )
        try:
            v = float(np.asarray(value).item()) if not isinstance(value, bool) else None
        except (TypeError, ValueError):
            v = None
        if v is None:
            raise TypeError(f"{where}: value must be a real number, got {value!r}")
        if not math.isfinite(v):
            raise ValueError(f"{where}: value must be finite, got {v}")
        if abs(v) > _MAX_VALUE:
            raise ValueError(f"{where}: value {v:g} overflows float32 (|value| must be at most {_MAX_VALUE:g})")
        rows.append((layer, feat, v, _position_mask(pos, n_prompt, n_total, where)))
    # a later edit of the same (layer, feature) wins where positions overlap
    for i in range(len(rows)):
        for j in range(i + 1, len(rows)):
            if rows[i][:2] == rows[j][:2]:
                rows[i][3][rows[j][3]] = False
    rows = [r for r in rows if r[3].any()]
    return Plan(
        layers=np.asarray([r[0] for r in rows], np.int32),
        feats=np.asarray([r[1] for r in rows], np.int32),
        values=np.asarray([r[2] for r in rows], np.float32),
        mask=np.stack([r[3] for r in rows]) if rows else np.zeros((0, n_total), bool),
    )


def _constrained(constrained_layers, n_layers: int) -> tuple[int, ...] | None:
    if constrained_layers is None:
        return None
    try:
        layers = sorted({_as_int(c, "constrained layer", "constrained_layers") for c in constrained_layers})
    except TypeError as e:
        raise TypeError(
            f"constrained_layers must be an iterable of layer indices (e.g. range(L)): {e}"
        ) from None
    if not layers:
        raise ValueError("constrained_layers is empty: pass None for no constraint, or e.g. range(n_layers)")
    bad = [c for c in layers if not 0 <= c < n_layers]
    if bad:
        raise ValueError(f"constrained_layers {bad} out of range [0, {n_layers})")
    return tuple(layers)


def _decoder_rows(ts: TranscoderSet, plan: Plan) -> np.ndarray:
    """Decoder vectors of the edited features placed at the slots they write ``[n, L, D]`` (PLT: slot ``l``
    only; CLT: slots ``l…L-1``). Read from the host-side store, so lazy decoders work."""
    L, D = ts.cfg.n_layers, ts.cfg.d_model
    out = np.zeros((plan.n, L, D), np.float32)
    for l in np.unique(plan.layers):
        sel = np.flatnonzero(plan.layers == l)
        rows = ts.decoders.rows(int(l), plan.feats[sel])
        if ts.cfg.kind == "plt":
            out[sel, l] = rows
        else:
            out[sel, l:] = rows
    return out


# ---------------------------------------------------------------------------------------------- the model


@pytree_dataclass
class _Edit:
    """Device-side plan: the arrays every MLP slot needs to apply the edits."""

    layers: jax.Array  # [n]
    feats: jax.Array  # [n]
    values: jax.Array  # [n]
    mask: jax.Array  # [n, S]
    dec: jax.Array  # [n, L, D]


@pytree_dataclass
class _Clean:
    """Clean-run constants for constrained layers."""

    in_c: jax.Array  # [L] bool
    out: jax.Array  # [L, T, D] clean value at the output hook
    skip: jax.Array | None  # [L, T, D] clean skip(x)
    basis: jax.Array  # [n, T] clean activation of each edited feature


def _device_edit(plan: Plan, dec: np.ndarray) -> _Edit:
    """Pad the plan to a bucket of rows (4, 8, 16, …; padding rows cover no position) so that edits of a few
    different sizes share one compilation."""
    n = plan.n
    size = max(4, 1 << max(n - 1, 0).bit_length())
    pad = lambda a: np.concatenate([a, np.zeros((size - n, *a.shape[1:]), a.dtype)])  # noqa: E731
    return _Edit(*(jnp.asarray(pad(a)) for a in (plan.layers, plan.feats, plan.values, plan.mask, dec)))


def _mlp_fn(tcfg: TranscoderConfig, tc: Transcoders, edit: _Edit, cover_TN, keep_T, clean, record_pre: bool):
    """The MLP replacement applying ``edit`` at positions ``cover_TN [T, n]`` (bool); state = (pending CLT/PLT
    deltas ``[L, T, D]``, recorded activations ``[L, T, F]`` or None)."""
    read, write = input_field(tcfg.input_hook), output_field(tcfg.output_hook)

    def mlp_fn(layer, points, state):
        pending, acts = state
        x = getattr(points, read)[0]  # [T, D]
        pre = encode_layer(tcfg, tc, layer, x, pre=True)
        post = activate(tcfg, pre, None if tc.threshold is None else tc.threshold[layer]) * keep_T[:, None]
        if acts is not None:
            acts = acts.at[layer].set((pre * keep_T[:, None]) if record_pre else post)
        out = getattr(points, write)[0].astype(jnp.float32)
        if clean is None:
            base = post[:, edit.feats]  # [T, n] this run's activations
            applies = True
        else:
            frozen_out = clean.out[layer]
            if clean.skip is not None:  # the skip path stays live under the freeze (a linear map of x)
                frozen_out = frozen_out + (x.astype(jnp.float32) @ tc.W_skip[layer] - clean.skip[layer])
            out = jnp.where(clean.in_c[layer], frozen_out, out)
            base = clean.basis.T
            applies = clean.in_c[layer]
        sel = cover_TN & (edit.layers == layer)[None, :]
        delta = jnp.where(sel, edit.values[None, :] - base, 0.0)
        pending = pending + jnp.einsum("tn,nld->ltd", delta, edit.dec)
        out = out + jnp.where(applies, pending[layer], 0.0)
        return out[None], (pending.at[layer].set(0.0), acts)

    return mlp_fn


def _frozen(inter: Intermediates, patterns: bool, scales: bool) -> Intermediates | None:
    if not patterns and not scales:
        return None
    none = {f.name: None for f in dataclasses.fields(Intermediates)}
    keep = {}
    if patterns:
        keep["attn_pattern"] = inter.attn_pattern
    if scales:
        for k in ("ln1_scale", "ln2_scale", "post_attn_scale", "post_mlp_scale", "final_scale"):
            keep[k] = getattr(inter, k)
    return Intermediates(**{**none, **keep})


def _edited_forward(
    params, cfg, tcfg, tc, tokens, frozen, edit, clean, zero_positions, record_pre, want_acts, capture=False
):
    """Un-jitted edited prompt forward. Returns ``(logits [T, V], acts or None, intermediates or None)``;
    ``capture=True`` (generation's prefill) keeps the intermediates the KV cache is built from."""
    T = tokens.shape[0]
    L, D, F = cfg.n_layers, cfg.d_model, tcfg.n_features
    keep = (jnp.arange(T) >= zero_positions).astype(jnp.float32)
    cover = edit.mask[:, :T].T
    acts0 = jnp.zeros((L, T, F), jnp.float32) if want_acts else None
    state0 = (jnp.zeros((L, T, D), jnp.float32), acts0)
    fn = _mlp_fn(tcfg, tc, edit, cover, keep, clean, record_pre)
    mlp_at = output_field(tcfg.output_hook)
    logits, inter, (_, acts) = forward_fn(
        params, cfg, tokens[None], frozen=frozen, capture=capture, mlp_fn=fn, mlp_state=state0, mlp_at=mlp_at
    )
    return logits[0], acts, inter


@partial(jax.jit, static_argnames=("cfg", "tcfg", "zero_positions", "record_pre", "want_acts"))
def _intervene_jit(
    params, tc, tokens, frozen, edit, clean, *, cfg, tcfg, zero_positions, record_pre, want_acts
):
    logits, acts, _ = _edited_forward(
        params, cfg, tcfg, tc, tokens, frozen, edit, clean, zero_positions, record_pre, want_acts
    )
    return logits, acts


@partial(jax.jit, static_argnames=("tcfg",))
def _clean_consts(tc, x_in, out, layers, feats, zero_positions, *, tcfg):
    """Clean-run constants from the clean feature inputs/outputs ``[L, T, D]``: each edited feature's clean
    activation ``[n, T]`` (post-activation, first ``zero_positions`` zeroed) and the clean ``skip(x)``."""
    keep = jnp.arange(x_in.shape[1]) >= zero_positions

    def one(l, f):
        return encode_layer(tcfg, tc, l, x_in[l])[:, f] * keep

    basis = jax.vmap(one)(layers, feats)
    skip = None
    if tc.W_skip is not None:
        skip = jnp.einsum("ltd,lde->lte", x_in.astype(tc.W_skip.dtype), tc.W_skip).astype(jnp.float32)
    return out.astype(jnp.float32), skip, basis


def _prepare(
    model, transcoders, prompt, interventions, n_new, constrained_layers, freeze_attention, zero_pos
):
    """Shared set-up of ``feature_intervention`` and ``generate``: tokens, plan, frozen constants."""
    _check_zero_positions(zero_pos)
    cfg, tcfg = model.cfg, transcoders.cfg
    check_compatible(cfg, tcfg)
    tokens = encode_prompt(model, prompt)
    T = len(tokens)
    check_tokens(cfg, tokens[None])
    C = _constrained(constrained_layers, cfg.n_layers)
    plan = resolve_interventions(interventions, cfg.n_layers, tcfg.n_features, T, T + n_new)
    edit = _device_edit(plan, _decoder_rows(transcoders, plan))
    frozen, clean = None, None
    # circuit-tracer freezes only when there is something to edit; constraints imply frozen patterns
    if plan.n and (freeze_attention or C is not None):
        # the clean run is the model's own jitted forward (usually compiled already)
        _, inter = forward(model.params, cfg, tokens[None], capture=True)
        x_in, out = inter.hook(tcfg.input_hook)[:, 0], inter.hook(tcfg.output_hook)[:, 0]
        out, skip, basis = _clean_consts(
            transcoders.params, x_in, out, edit.layers, edit.feats, zero_pos, tcfg=tcfg
        )
        frozen = _frozen(inter, patterns=True, scales=C is not None and len(C) == cfg.n_layers)
        if C is not None:
            in_c = jnp.asarray(np.isin(np.arange(cfg.n_layers), C))
            clean = _Clean(in_c, out, skip, basis)
    return tokens, plan, edit, frozen, clean


def feature_intervention(
    model: Model,
    transcoders: TranscoderSet,
    prompt,
    interventions: Sequence[Intervention],
    *,
    constrained_layers: Iterable[int] | None = None,
    freeze_attention: bool = True,
    apply_activation_function: bool = True,
    return_activations: bool = True,
    zero_positions: int = 1,
):
    """Run ``prompt`` (text, or token ids ``[T]`` used as given) with ``interventions`` applied.

    Returns ``(logits [T, V] float32 after any final soft-cap, activations [L, T, F] or None)``; see the module
    docstring for what is frozen and what the activations are. ``constrained_layers`` is an iterable of layer
    indices (``range(model.cfg.n_layers)`` for direct effects only). ``zero_positions`` leading positions count as
    attention sinks (their activations are 0). Raises ``ValueError``/``TypeError`` for bad interventions."""
    use_compilation_cache()
    tokens, plan, edit, frozen, clean = _prepare(
        model, transcoders, prompt, interventions, 0, constrained_layers, freeze_attention, zero_positions
    )
    logits, acts = _intervene_jit(
        model.params,
        transcoders.params,
        jnp.asarray(tokens),
        frozen,
        edit,
        clean,
        cfg=model.cfg,
        tcfg=transcoders.cfg,
        zero_positions=zero_positions,
        record_pre=not apply_activation_function,
        want_acts=return_activations,
    )
    check_finite_logits(logits, what="the intervened forward pass")
    return logits, acts


def _check_zero_positions(z) -> None:
    if isinstance(z, bool) or not isinstance(z, int) or z < 0:
        raise ValueError(f"zero_positions must be a non-negative integer, got {z!r}")


# --------------------------------------------------------------------------------------------- generation


@dataclasses.dataclass
class Generation:
    """Result of ``generate``: ``tokens [N]`` the new token ids; ``logits [N, V]`` the distribution each was drawn
    from (``logits[0]`` is the edited prompt's last position); ``text`` the decoded continuation (``None``
    without a tokenizer); ``activations [L, T + N - 1, F]`` over prompt and processed new tokens, or ``None``."""

    tokens: np.ndarray
    logits: np.ndarray
    text: str | None
    activations: np.ndarray | None = None


@partial(
    jax.jit,
    static_argnames=("cfg", "tcfg", "n_new", "greedy", "zero_positions", "record_pre", "want_acts"),
)
def _generate_jit(
    params,
    tc,
    tokens,
    frozen,
    edit,
    clean,
    key,
    temperature,
    *,
    cfg,
    tcfg,
    n_new,
    greedy,
    zero_positions,
    record_pre,
    want_acts,
):
    T = tokens.shape[0]
    logits, acts, inter = _edited_forward(
        params,
        cfg,
        tcfg,
        tc,
        tokens,
        frozen,
        edit,
        clean,
        zero_positions,
        record_pre,
        want_acts,
        capture=True,
    )
    first = sample_token(logits[-1:], jax.random.fold_in(key, 0), temperature, greedy)
    if n_new == 1:
        return first, logits[-1:], acts
    cache = kv_cache_from_intermediates(params, cfg, inter, T + n_new)
    L, D, F = cfg.n_layers, cfg.d_model, tcfg.n_features
    state0 = (jnp.zeros((L, 1, D), jnp.float32), jnp.zeros((L, 1, F), jnp.float32) if want_acts else None)

    def mlp_fn_for(pos):
        cover = jax.lax.dynamic_index_in_dim(edit.mask, pos, axis=1, keepdims=False)[None, :]  # [1, n]
        keep = (pos >= zero_positions).astype(jnp.float32)[None]
        return _mlp_fn(tcfg, tc, edit, cover, keep, None, record_pre)  # new tokens: nothing frozen

    mlp_at = output_field(tcfg.output_hook)
    toks, step_logits, states, _ = decode_loop_fn(
        params, cfg, cache, first, T, n_new - 1, key, temperature,
        greedy=greedy, mlp_fn_for=mlp_fn_for, mlp_state0=state0, mlp_at=mlp_at,
    )  # fmt: skip
    tokens_out = jnp.concatenate([first, toks[:, 0]])
    logits_out = jnp.concatenate([logits[-1:], step_logits[:, 0]])
    if want_acts:
        acts = jnp.concatenate([acts, jnp.moveaxis(states[1][:, :, 0], 0, 1)], axis=1)
    return tokens_out, logits_out, acts


def generate(
    model: Model,
    transcoders: TranscoderSet,
    prompt,
    interventions: Sequence[Intervention] = (),
    max_new_tokens: int = 16,
    temperature: float = 0.0,
    rng: jax.Array | None = None,
    *,
    constrained_layers: Iterable[int] | None = None,
    freeze_attention: bool = True,
    apply_activation_function: bool = True,
    return_activations: bool = False,
    zero_positions: int = 1,
) -> Generation:
    """Generate ``max_new_tokens`` tokens after ``prompt`` with ``interventions`` applied (see module docstring).

    Positions are absolute over prompt + generated tokens (negative ints count from the end of the prompt), so
    ``slice(k, None)`` also edits every generated token. ``constrained_layers``/``freeze_attention`` apply to the
    prompt pass only (as in circuit-tracer). ``temperature=0`` is greedy and deterministic; otherwise ``rng`` (a
    ``jax.random.key``) is required and the same key reproduces the same tokens. Exactly ``max_new_tokens`` are
    produced (no stop at EOS; callers trim). One compilation per (prompt length, max_new_tokens, #edits)."""
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    tokens, plan, edit, frozen, clean = _prepare(
        model,
        transcoders,
        prompt,
        interventions,
        max_new_tokens,
        constrained_layers,
        freeze_attention,
        zero_positions,
    )
    temperature = check_sampling(model.cfg, len(tokens), max_new_tokens, temperature, rng)
    use_compilation_cache()
    key = jax.random.key(0) if rng is None else rng
    if plan.n == 0 and not return_activations:
        new, logits = generate_plain(
            model.params, model.cfg, tokens[None], max_new_tokens, temperature=temperature, key=key
        )
        new, logits, acts = new[0], logits[0], None
    else:
        new, logits, acts = _generate_jit(
            model.params,
            transcoders.params,
            jnp.asarray(tokens),
            frozen,
            edit,
            clean,
            key,
            temperature,
            cfg=model.cfg,
            tcfg=transcoders.cfg,
            n_new=max_new_tokens,
            greedy=temperature == 0.0,
            zero_positions=zero_positions,
            record_pre=not apply_activation_function,
            want_acts=return_activations,
        )
    new = np.asarray(new)
    check_finite_logits(logits, what="generation")
    text = None if model.tokenizer is None else model.tokenizer.decode(new)
    return Generation(
        tokens=new,
        logits=np.asarray(logits),
        text=text,
        activations=None if acts is None else np.asarray(acts),
    )


# ------------------------------------------------------------------------------------------------ specs


class InterventionSpec(NamedTuple):
    """A parsed ``--set`` spec: ``value`` is the new activation, or a factor when ``scale`` is true."""

    layer: int
    position: Any  # int | slice
    feature: int
    value: float
    scale: bool = False


_SPEC = re.compile(r"^\s*(-?\d+)\s*:\s*([^:]+?)\s*:\s*(\d+)\s*(\*?=)\s*(\S+)\s*$")


def parse_intervention(spec: str) -> InterventionSpec:
    """Parse ``L:POS:FEAT=VALUE`` (set) or ``L:POS:FEAT*=FACTOR`` (scale the clean activation).

    ``POS`` is an int (negative counts from the end of the prompt) or a range ``START..STOP`` with either end
    optional: ``3..`` is open-ended (every later position, generated tokens included), ``..`` is every position.
    Raises ``ValueError`` with the expected syntax on anything else (including non-finite values)."""
    syntax = "expected L:POS:FEAT=VALUE or L:POS:FEAT*=FACTOR, POS an int or START..STOP (e.g. 1:5:42=0, 2:3..:7*=2)"
    m = _SPEC.match(spec)
    if not m:
        raise ValueError(f"cannot parse intervention {spec!r}: {syntax}")
    layer, pos_s, feat, op, val_s = m.groups()
    if ".." in pos_s:
        a, b = pos_s.split("..", 1)
        try:
            pos = slice(int(a) if a.strip() else None, int(b) if b.strip() else None)
        except ValueError:
            raise ValueError(f"bad position range {pos_s!r} in {spec!r}: {syntax}") from None
    else:
        try:
            pos = int(pos_s)
        except ValueError:
            raise ValueError(f"bad position {pos_s!r} in {spec!r}: {syntax}") from None
    try:
        value = float(val_s)
    except ValueError:
        raise ValueError(f"bad value {val_s!r} in {spec!r}: {syntax}") from None
    if not math.isfinite(value):
        raise ValueError(f"value in {spec!r} must be finite, got {val_s}")
    return InterventionSpec(int(layer), pos, int(feat), value, op == "*=")


def _end(x) -> str:
    return "" if x is None else str(x)


def specs_to_interventions(specs: Sequence[InterventionSpec], clean_activations, n_prompt: int) -> list:
    """Turn parsed specs into interventions; a scale spec ``*=k`` becomes one ``set`` per covered prompt position
    with ``k ×`` the clean activation ``clean_activations [L, T, F]`` there (which must be given). Scaling needs
    positions inside the prompt (generated tokens have no clean activation)."""
    out = []
    for s in specs:
        if not s.scale:
            out.append((s.layer, s.position, s.feature, s.value))
            continue
        pos = s.position
        pos_s = pos if isinstance(pos, int) else f"{_end(pos.start)}..{_end(pos.stop)}"
        where = f"intervention {s.layer}:{pos_s}:{s.feature}*={s.value:g}"
        if isinstance(s.position, slice) and s.position.stop is None:
            raise ValueError(
                f"{where}: scaling needs positions inside the prompt; give START..STOP, not START.."
            )
        if clean_activations is None:
            raise ValueError(f"{where}: scaling needs the clean activations")
        acts = np.asarray(clean_activations)
        L, T, F = acts.shape
        if not 0 <= s.layer < L:
            raise ValueError(f"{where}: layer {s.layer} is out of range [0, {L})")
        if not 0 <= s.feature < F:
            raise ValueError(f"{where}: feature {s.feature} is out of range [0, {F}) for this transcoder set")
        for p in np.flatnonzero(_position_mask(s.position, n_prompt, n_prompt, where)):
            out.append((s.layer, int(p), s.feature, float(s.value * acts[s.layer, p, s.feature])))
    return out
