"""Train per-layer (PLT) and cross-layer (CLT) transcoders with optax, data-parallel, with orbax resume.

A transcoder set is trained on harvested pairs ``x [N, L, D]`` (feature input at every layer) and
``y [N, L, D]`` (MLP output at every layer). In the normalised space the optimiser sees (each layer's ``x`` and
``y`` scaled to unit RMS per dimension, so hyperparameters do not depend on the model's scale)::

    pre[l]  = x[l] @ W_enc[l] + b_enc[l]                              [B, F]
    a[l]    = act(pre[l])        ReLU | JumpReLU (threshold θ = exp(log θ)) | TopK
    PLT: ŷ[l] = a[l] @ W_dec[l] + b_dec[l]      CLT: ŷ[m] = Σ_{l ≤ m} a[l] @ W_dec[l, :, m] + b_dec[m]
    loss    = mean_l FVU[l] + λ(t) · mean_l Σ_f penalty(a[l, f], ‖d_f‖)

Penalties: ``l1`` (``a‖d‖``), ``tanh`` (``tanh(c·a‖d‖)``, Anthropic's), ``l0`` (JumpReLU only: the step
``H(pre − θ)`` with a straight-through threshold gradient), or ``none`` (TopK). ``‖d_f‖`` is the decoder norm of
feature ``f`` (for a CLT, over all the layers it writes); with ``decoder_norm="unit"`` decoder rows are instead
renormalised to 1 after every step. JumpReLU's threshold gradients use the rectangle-kernel pseudo-derivative of
Rajamanoharan et al. (2024), implemented with ``jax.custom_vjp``: it is the exact gradient of the loss with each
pre-activation smeared over a window of width ``bandwidth`` (the test checks this against finite differences).

λ ramps linearly from 0 over the first ``sparsity_warmup`` of training; the learning rate warms up linearly and
decays with a cosine. Batches are drawn from ``(seed, step)``; every ``checkpoint_every`` steps the whole state
(params, optimiser state, per-feature last-fired step) is saved with orbax, and ``resume=True`` continues from the
newest checkpoint, giving the same parameters as an uninterrupted run. The batch is sharded over a 1-D mesh of
all devices (``"data"`` axis) and the parameters replicated; XLA inserts the gradient all-reduce.

``to_transcoder_set`` folds the normalisation back into the weights and returns a ``TranscoderSet`` that
``jcircuits.transcoders.io.save_transcoders`` writes in circuit-tracer's format.

Letters: N tokens, B batch, L layers, D model, F features.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import shutil
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jcircuits.common.pytree import pytree_dataclass
from jcircuits.transcoders import TranscoderSet
from jcircuits.transcoders.core import DenseDecoders, TranscoderConfig, Transcoders

__all__ = [
    "TrainConfig",
    "TrainParams",
    "TrainResult",
    "ResumeMismatch",
    "jumprelu",
    "step_fn",
    "init_train_params",
    "loss_fn",
    "make_mesh",
    "train_transcoders",
    "to_transcoder_set",
    "evaluate_transcoders",
]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything static about one transcoder training run (hashable; a jit static argument)."""

    kind: str = "plt"  # "plt" | "clt"
    n_features: int = 1024
    activation: str = "jumprelu"  # "relu" | "jumprelu" | "topk"
    top_k: int | None = None
    sparsity: str = "l0"  # "l1" | "tanh" | "l0" | "none"
    sparsity_coeff: float = 1e-3
    tanh_scale: float = 4.0
    sparsity_warmup: float = 0.2  # fraction of steps over which λ ramps up from 0
    bandwidth: float = 0.2  # JumpReLU straight-through window, in normalised pre-activation units
    init_threshold: float = 1.0
    decoder_norm: str = "penalty"  # "penalty": ‖d‖ inside the penalty; "unit": rows renormalised to 1
    lr: float = 1e-2
    warmup: int = 100
    steps: int = 2000
    batch_size: int = 1024
    seed: int = 0
    log_every: int = 100
    checkpoint_every: int = 500
    dead_after: int = 500  # a feature that has not fired for this many steps counts as dead
    input_hook: str = "mlp.hook_in"
    output_hook: str = "mlp.hook_out"

    def __post_init__(self):
        checks = [
            (self.kind in ("plt", "clt"), f"kind must be 'plt' or 'clt', got {self.kind!r}"),
            (
                self.activation in ("relu", "jumprelu", "topk"),
                f"activation must be relu|jumprelu|topk, got {self.activation!r}",
            ),
            (
                self.sparsity in ("l1", "tanh", "l0", "none"),
                f"sparsity must be l1|tanh|l0|none, got {self.sparsity!r}",
            ),
            (
                self.sparsity != "l0" or self.activation == "jumprelu",
                "sparsity='l0' needs activation='jumprelu' (the step function has a threshold to train)",
            ),
            (
                self.activation != "topk" or (self.top_k or 0) > 0,
                "activation='topk' needs top_k >= 1",
            ),
            (
                not (self.activation == "topk" and self.kind == "clt"),
                "training TopK cross-layer transcoders is not implemented (they load and trace); use relu or jumprelu",
            ),
            (
                self.decoder_norm in ("penalty", "unit"),
                f"decoder_norm must be penalty|unit, got {self.decoder_norm!r}",
            ),
            (self.steps > 0 and self.batch_size > 0, "steps and batch_size must be positive"),
            (self.n_features > 0, f"n_features must be positive, got {self.n_features}"),
            (
                self.top_k is None or 0 < self.top_k <= self.n_features,
                f"top_k must be between 1 and n_features ({self.n_features}), got {self.top_k}",
            ),
            (math.isfinite(self.lr) and self.lr > 0, f"lr must be a positive finite number, got {self.lr}"),
            (
                math.isfinite(self.sparsity_coeff) and self.sparsity_coeff >= 0,
                f"sparsity_coeff must be a finite number >= 0, got {self.sparsity_coeff}",
            ),
            (self.log_every > 0, f"log_every must be positive, got {self.log_every}"),
            (self.checkpoint_every > 0, f"checkpoint_every must be positive, got {self.checkpoint_every}"),
            (self.warmup >= 0, f"warmup must be >= 0, got {self.warmup}"),
            (self.dead_after > 0, f"dead_after must be positive, got {self.dead_after}"),
            (
                0 <= self.sparsity_warmup <= 1,
                f"sparsity_warmup must be in [0, 1], got {self.sparsity_warmup}",
            ),
            *(
                (math.isfinite(v) and v > 0, f"{name} must be a positive finite number, got {v}")
                for name, v in (
                    ("tanh_scale", self.tanh_scale),
                    ("bandwidth", self.bandwidth),
                    ("init_threshold", self.init_threshold),
                )
            ),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)


@pytree_dataclass
class TrainParams:
    """Trainable arrays in the normalised space. ``W_dec``: PLT ``[L, F, D]``; CLT ``[L, F, L, D]`` (source
    layer, feature, output layer; entries with output < source are masked to zero)."""

    W_enc: jax.Array  # [L, D, F]
    b_enc: jax.Array  # [L, F]
    W_dec: jax.Array
    b_dec: jax.Array  # [L, D]
    log_threshold: jax.Array | None = None  # [L, F] (JumpReLU)


class ResumeMismatch(ValueError):
    """A resume whose settings differ from the run in the checkpoint directory. ``differences`` holds
    ``(setting, in the checkpoint, now)`` for each one that differs."""

    def __init__(self, directory: Path, differences: list[tuple[str, Any, Any]]):
        self.directory = directory
        self.differences = differences
        diffs = "; ".join(f"{k}: {old!r} in the checkpoint, {new!r} now" for k, old, new in differences)
        super().__init__(
            f"{directory} holds a run with other settings ({diffs}); resume with the same settings, "
            "or pass resume=False to start over"
        )


# Settings that change nothing the run computes: a resume may change them.
_RESUMABLE = ("log_every", "checkpoint_every")
_SETTINGS_FILE = "run_settings.json"


def _run_settings(cfg: TrainConfig, n_tokens: int, n_layers: int, d_model: int) -> dict[str, Any]:
    """What defines a run (its config and the shape of its data), as stored next to its checkpoints."""
    d = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _RESUMABLE}
    d.update(tokens=n_tokens, layers=n_layers, d_model=d_model)
    return d


def _check_resume_settings(ckpt_dir: Path, now: dict[str, Any]) -> None:
    path = ckpt_dir / _SETTINGS_FILE
    if not path.is_file():
        return  # checkpoints written before settings were stored: nothing to compare
    try:
        saved = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); start over (resume=False) or repair it") from None
    diffs = [(k, saved.get(k), v) for k, v in now.items() if saved.get(k) != v]
    if diffs:
        raise ResumeMismatch(ckpt_dir, diffs)


def _check_finite_data(name: str, arr: np.ndarray) -> None:
    """Refuse non-finite harvested activations, naming the first (token row, layer, dimension)."""
    bad = ~np.isfinite(arr)
    if bad.any():
        n, layer, d = (int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"the harvested {name} hold {int(bad.sum())} non-finite values, the first ({arr[n, layer, d]}) at "
            f"token row {n}, layer {layer}, dimension {d}; the model produces them on this data, so no "
            "transcoder can be trained on it"
        )


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


def _truncate_metrics(out: Path, step: int) -> None:
    """Drop logged rows after ``step`` (written after the checkpoint a resume continues from), so a resumed
    run logs each step once; a half-written last line (a kill mid-write) goes too."""
    path = out / "metrics.csv"
    if path.is_file():
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            fields, rows = reader.fieldnames, []
            for r in reader:
                try:
                    if None not in r and None not in r.values() and int(r["step"]) <= step:
                        rows.append(r)
                except (KeyError, ValueError):
                    pass
        if fields and rows:
            tmp = path.with_suffix(".csv.tmp")
            with open(tmp, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=fields)
                w.writeheader()
                w.writerows(rows)
            tmp.replace(path)
        else:
            path.unlink()
    path = out / "metrics.jsonl"
    if path.is_file():
        keep = []
        for ln in path.read_text().splitlines():
            try:
                if int(json.loads(ln)["step"]) <= step:
                    keep.append(ln + "\n")
            except (ValueError, KeyError, TypeError):
                pass
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(keep))
        tmp.replace(path)


@dataclasses.dataclass
class TrainResult:
    """What ``train_transcoders`` returns: trained params, the normalisation scales ``x_scale``/``y_scale``
    ``[L]`` (normalised = raw / scale), and the metrics logged every ``log_every`` steps."""

    params: TrainParams
    x_scale: np.ndarray
    y_scale: np.ndarray
    history: list[dict]
    config: TrainConfig


# ------------------------------------------------------------------------------ JumpReLU straight-through


def _rect(u):
    return (jnp.abs(u) < 0.5).astype(u.dtype)


def _reduce_to(g, shape):
    """Sum a broadcast cotangent down to ``shape`` (leading axes)."""
    return g.reshape((-1,) + tuple(shape)).sum(0)


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def jumprelu(z, theta, bandwidth: float):
    """``z · H(z − θ)``; ``θ`` broadcasts over the leading axes of ``z``. Gradients: ``H(z − θ)`` for ``z``, and the
    pseudo-derivative ``−(θ/ε) · rect((z − θ)/ε)`` for ``θ`` (ε = ``bandwidth``)."""
    return z * (z > theta)


def _jr_fwd(z, theta, bandwidth):
    return z * (z > theta), (z, theta)


def _jr_bwd(bandwidth, res, g):
    z, theta = res
    dz = g * (z > theta)
    dtheta = g * (-(theta / bandwidth) * _rect((z - theta) / bandwidth))
    return dz, _reduce_to(dtheta, theta.shape)


jumprelu.defvjp(_jr_fwd, _jr_bwd)


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def step_fn(z, theta, bandwidth: float):
    """``H(z − θ)`` (the L0 count). Gradients: 0 for ``z``; ``−(1/ε) · rect((z − θ)/ε)`` for ``θ``."""
    return (z > theta).astype(z.dtype)


def _st_fwd(z, theta, bandwidth):
    return (z > theta).astype(z.dtype), (z, theta)


def _st_bwd(bandwidth, res, g):
    z, theta = res
    dtheta = g * (-(1.0 / bandwidth) * _rect((z - theta) / bandwidth))
    return jnp.zeros_like(z), _reduce_to(dtheta, theta.shape)


step_fn.defvjp(_st_fwd, _st_bwd)


# ------------------------------------------------------------------------------------------- the model


def init_train_params(cfg: TrainConfig, n_layers: int, d_model: int, key: jax.Array) -> TrainParams:
    """Seeded init: decoder rows random with norm 0.1, encoder = decoder transposed scaled to unit-variance
    pre-activations, zero biases, thresholds at ``init_threshold``."""
    L, D, F = n_layers, d_model, cfg.n_features
    k1, _ = jax.random.split(key)
    d = jax.random.normal(k1, (L, F, D))
    d = d / jnp.linalg.norm(d, axis=-1, keepdims=True)
    W_enc = jnp.swapaxes(d, 1, 2)  # unit columns: pre ~ N(0, 1) for unit-RMS inputs
    if cfg.kind == "plt":
        W_dec = 0.1 * d
    else:
        W_dec = 0.1 * jnp.broadcast_to(d[:, :, None, :], (L, F, L, D)) / np.sqrt(L) * _clt_mask(L)
    log_t = jnp.full((L, F), np.log(cfg.init_threshold)) if cfg.activation == "jumprelu" else None
    return TrainParams(W_enc, jnp.zeros((L, F)), W_dec, jnp.zeros((L, D)), log_t)


def _clt_mask(L: int) -> np.ndarray:
    """``[L, 1, L, 1]``: 1 where output layer ≥ source layer."""
    return (np.arange(L)[None, :] >= np.arange(L)[:, None]).astype(np.float32)[:, None, :, None]


def _decoder_norms(cfg: TrainConfig, W_dec) -> jax.Array:
    """``[L, F]`` decoder norm of each feature (a CLT's over every layer it writes)."""
    if cfg.kind == "plt":
        return jnp.linalg.norm(W_dec, axis=-1)
    return jnp.sqrt(jnp.sum((W_dec * _clt_mask(W_dec.shape[0])) ** 2, axis=(2, 3)) + 1e-12)


def _activations(cfg: TrainConfig, p: TrainParams, x_BLD):
    pre = jnp.einsum("bld,ldf->blf", x_BLD, p.W_enc) + p.b_enc
    if cfg.activation == "relu":
        return pre, jax.nn.relu(pre)
    if cfg.activation == "jumprelu":
        return pre, jumprelu(pre, jnp.exp(p.log_threshold), cfg.bandwidth)
    vals, _ = jax.lax.top_k(pre, cfg.top_k)
    kth = vals[..., -1:]
    # Ties at the k-th value are measure-zero for float data; gradients flow to the kept entries only.
    return pre, jnp.where(pre >= kth, pre, 0.0)


def _decode(cfg: TrainConfig, p: TrainParams, a_BLF):
    if cfg.kind == "plt":
        return jnp.einsum("blf,lfd->bld", a_BLF, p.W_dec) + p.b_dec
    L = p.W_dec.shape[0]
    return jnp.einsum("blf,lfmd->bmd", a_BLF, p.W_dec * _clt_mask(L)) + p.b_dec


def loss_fn(p: TrainParams, cfg: TrainConfig, x_BLD, y_BLD, y_var_L, coeff):
    """Scalar loss and aux metrics for one batch (normalised space); ``y_var_L`` is each layer's total
    variance of ``y`` (the FVU denominator, from the whole dataset)."""
    pre, a = _activations(cfg, p, x_BLD)
    y_hat = _decode(cfg, p, a)
    sq = jnp.sum((y_hat - y_BLD) ** 2, axis=-1)  # [B, L]
    fvu_L = sq.mean(0) / y_var_L
    norms = _decoder_norms(cfg, p.W_dec) if cfg.decoder_norm == "penalty" else 1.0
    if cfg.sparsity == "l1":
        pen = (a * norms).sum(-1)
    elif cfg.sparsity == "tanh":
        pen = jnp.tanh(cfg.tanh_scale * a * norms).sum(-1)
    elif cfg.sparsity == "l0":
        pen = step_fn(pre, jnp.exp(p.log_threshold), cfg.bandwidth).sum(-1)
    else:
        pen = jnp.zeros(sq.shape)
    loss = fvu_L.mean() + coeff * pen.mean(0).mean()
    fired = a != 0
    aux = {"fvu_L": fvu_L, "l0_L": fired.sum(-1).mean(0).astype(jnp.float32), "fired_LF": fired.any(0)}
    return loss, aux


def _normalise_unit(cfg: TrainConfig, p: TrainParams) -> TrainParams:
    n = _decoder_norms(cfg, p.W_dec)
    scale = (
        (1.0 / jnp.maximum(n, 1e-8))[:, :, None]
        if cfg.kind == "plt"
        else (1.0 / jnp.maximum(n, 1e-8))[..., None, None]
    )
    return dataclasses.replace(p, W_dec=p.W_dec * scale)


def _optimizer(cfg: TrainConfig):
    sched = optax.warmup_cosine_decay_schedule(
        0.0, cfg.lr, cfg.warmup, max(cfg.steps, cfg.warmup + 1), cfg.lr * 0.1
    )
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adam(sched)), sched


def _coeff(cfg: TrainConfig, step):
    ramp = jnp.maximum(cfg.sparsity_warmup * cfg.steps, 1.0)
    return cfg.sparsity_coeff * jnp.minimum(1.0, (step + 1) / ramp)


def make_mesh(devices=None) -> Mesh:
    """A 1-D ``("data",)`` mesh over ``devices`` (default: all)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.array(devices), ("data",))


def _make_step(cfg: TrainConfig, mesh: Mesh):
    opt, _ = _optimizer(cfg)
    rep, data = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))

    def step(state, x, y, y_var, step_i, first_bad):
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state["params"], cfg, x, y, y_var, _coeff(cfg, step_i)
        )
        updates, opt_state = opt.update(grads, state["opt"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        if cfg.decoder_norm == "unit":
            params = _normalise_unit(cfg, params)
        last = jnp.where(aux["fired_LF"], step_i, state["last_fired"])
        metrics = {"loss": loss, "fvu_L": aux["fvu_L"], "l0_L": aux["l0_L"]}
        finite = jnp.isfinite(loss)
        for leaf in jax.tree_util.tree_leaves(params):
            finite &= jnp.all(jnp.isfinite(leaf))
        # The first step whose loss or updated parameters are not finite (-1 while all are).
        first_bad = jnp.where((first_bad < 0) & ~finite, step_i, first_bad)
        return {"params": params, "opt": opt_state, "last_fired": last}, metrics, first_bad

    return jax.jit(
        step,
        in_shardings=(rep, data, data, rep, rep, rep),
        out_shardings=(rep, rep, rep),
        donate_argnums=(0,),
    )


def _batch_indices(seed: int, step: int, n: int, batch: int) -> np.ndarray:
    return np.random.default_rng([seed, step]).integers(0, n, batch)


# -------------------------------------------------------------------------------------------- training


def train_transcoders(
    x_NLD: np.ndarray,
    y_NLD: np.ndarray,
    cfg: TrainConfig,
    *,
    out_dir: str | Path | None = None,
    resume: bool = True,
    mesh: Mesh | None = None,
    stop_after: int | None = None,
    log: Callable[[str], None] | None = print,
    warn: Callable[[str], None] | None = _stderr,
) -> TrainResult:
    """Train a transcoder set on harvested pairs; see the module docstring.

    ``out_dir`` receives ``metrics.csv``, ``metrics.jsonl`` and orbax checkpoints under ``checkpoints/``
    (``resume`` continues from the newest). ``mesh`` defaults to all devices; the batch size must divide by
    its size. ``stop_after`` ends the run early after that many steps (as an interruption would), leaving its
    checkpoint for a later resume.

    The run's settings are stored next to the checkpoints; resuming with different ones raises
    ``ResumeMismatch``. On resume the metrics files are cut back to the restored step, and a newest checkpoint
    that does not restore is moved aside (reported through ``warn``, stderr by default) for the next older one.
    ``resume=False`` deletes earlier checkpoints. Non-finite activations are refused before training, and a
    loss or parameters that become non-finite stop training with a ``ValueError`` naming the step (no
    checkpoint of the broken state is written).
    """
    x_NLD, y_NLD = np.asarray(x_NLD, np.float32), np.asarray(y_NLD, np.float32)
    if x_NLD.ndim != 3 or x_NLD.shape != y_NLD.shape:
        raise ValueError(
            f"x and y must both be [tokens, layers, d_model]; got {x_NLD.shape} and {y_NLD.shape}"
        )
    N, L, D = x_NLD.shape
    if N == 0:
        raise ValueError("no training tokens: x and y are empty")
    _check_finite_data("inputs x", x_NLD)
    _check_finite_data("outputs y", y_NLD)
    mesh = make_mesh() if mesh is None else mesh
    if cfg.batch_size % mesh.size:
        raise ValueError(
            f"batch_size {cfg.batch_size} must be a multiple of the {mesh.size} devices in the mesh"
        )
    # Per-layer unit-RMS normalisation (scale-free hyperparameters); folded back in to_transcoder_set.
    x_scale = np.sqrt((x_NLD**2).mean(axis=(0, 2))).astype(np.float32)
    y_scale = np.sqrt((y_NLD**2).mean(axis=(0, 2))).astype(np.float32)
    for name, sc in (("inputs x", x_scale), ("outputs y", y_scale)):
        if not (np.isfinite(sc).all() and (sc > 0).all()):
            layer = int(np.argmax(~(np.isfinite(sc) & (sc > 0))))
            raise ValueError(
                f"the harvested {name} of layer {layer} are all zero or overflow float32 (RMS {sc[layer]}): "
                "nothing to normalise and train on"
            )
    xn, yn = x_NLD / x_scale[:, None], y_NLD / y_scale[:, None]
    y_var = jnp.asarray(((yn - yn.mean(0)) ** 2).sum(-1).mean(0))

    rep, data = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    params = init_train_params(cfg, L, D, jax.random.key(cfg.seed))
    opt, sched = _optimizer(cfg)
    state = {
        "params": params,
        "opt": opt.init(params),
        "last_fired": jnp.zeros((L, cfg.n_features), jnp.int32),
    }
    state = jax.device_put(state, rep)
    step_jit = _make_step(cfg, mesh)

    start, ckpt, history = 0, None, []
    out = None if out_dir is None else Path(out_dir)
    if out is not None:
        from jcircuits.training.checkpoint import Checkpointer

        out.mkdir(parents=True, exist_ok=True)
        ckpt_dir = out / "checkpoints"
        if not resume and ckpt_dir.exists():
            shutil.rmtree(ckpt_dir)
        settings = _run_settings(cfg, N, L, D)
        ckpt = Checkpointer(ckpt_dir)
        try:
            if resume and ckpt.latest_step() is not None:
                _check_resume_settings(ckpt_dir, settings)
                if (got := ckpt.restore_latest(state, on_broken=warn)) is not None:
                    start, state = got
                    if log:
                        log(f"resumed from step {start} ({ckpt.directory})")
                elif warn:
                    warn(f"no checkpoint in {ckpt_dir} restores: starting over")
        except BaseException:
            ckpt.close()
            raise
        (ckpt_dir / _SETTINGS_FILE).write_text(json.dumps(settings, indent=1) + "\n")
        if start == 0:
            for name in ("metrics.csv", "metrics.jsonl"):
                (out / name).unlink(missing_ok=True)
        else:
            _truncate_metrics(out, start)
    end = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
    t0 = time.perf_counter()
    first_bad = jax.device_put(jnp.int32(-1), rep)

    def check_finite(saved: int) -> None:
        bad = int(first_bad)
        if bad >= 0:
            kept = f"the newest checkpoint is step {saved}" if saved else "no checkpoint was written"
            raise ValueError(
                f"training diverged: the loss or parameters became non-finite at step {bad + 1} (lr {cfg.lr}); "
                f"nothing was written ({kept}); start over with a lower learning rate"
            )

    try:
        saved = start
        for s in range(start, end):
            idx = _batch_indices(cfg.seed, s, N, cfg.batch_size)
            xb, yb = jax.device_put(xn[idx], data), jax.device_put(yn[idx], data)
            state, m, first_bad = step_jit(state, xb, yb, y_var, jnp.int32(s), first_bad)
            if (s + 1) % cfg.log_every == 0 or s + 1 == cfg.steps:
                check_finite(saved)
                row = _metrics_row(cfg, s, m, state["last_fired"], sched, time.perf_counter() - t0, y_scale)
                history.append(row)
                if out is not None:
                    _append_log(out, row)
                if log:
                    log(
                        f"step {row['step']:>6}  loss {row['loss']:.4f}  fvu {row['fvu']:.4f}  "
                        f"l0 {row['l0']:.1f}  dead {row['dead_frac']:.3f}  lr {row['lr']:.2e}  {row['s']:.0f}s"
                    )
            if ckpt is not None and ((s + 1) % cfg.checkpoint_every == 0 or s + 1 == end):
                check_finite(saved)
                ckpt.save(s + 1, state)
                saved = s + 1
        check_finite(saved)
    finally:
        if ckpt is not None:
            ckpt.close()
    p = jax.tree_util.tree_map(np.asarray, state["params"])
    return TrainResult(p, x_scale, y_scale, history, cfg)


def _metrics_row(cfg, s, m, last_fired, sched, secs, y_scale) -> dict[str, Any]:
    fvu_L, l0_L = np.asarray(m["fvu_L"]), np.asarray(m["l0_L"])
    dead = np.asarray((s - last_fired) >= cfg.dead_after) if s + 1 >= cfg.dead_after else np.zeros(1, bool)
    row = {
        "step": s + 1,
        "loss": float(m["loss"]),
        "fvu": float(fvu_L.mean()),
        "l0": float(l0_L.mean()),
        "dead_frac": float(dead.mean()),
        "lr": float(sched(s)),
        "sparsity_coeff": float(_coeff(cfg, s)),
        "s": secs,
    }
    row.update({f"fvu_{l}": float(v) for l, v in enumerate(fvu_L)})
    row.update({f"l0_{l}": float(v) for l, v in enumerate(l0_L)})
    return row


def _append_log(out: Path, row: dict) -> None:
    new = not (out / "metrics.csv").exists()
    with open(out / "metrics.csv", "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(row))
        if new:
            w.writeheader()
        w.writerow(row)
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")


# ---------------------------------------------------------------------------------------------- export


def to_transcoder_set(result: TrainResult, *, scan: str | None = None) -> TranscoderSet:
    """The trained set in raw (un-normalised) units as a ``TranscoderSet`` (dense decoders), ready for
    ``save_transcoders``. Folding: ``W_enc /= x_scale`` (pre-activations unchanged, so thresholds are too);
    decoders and ``b_dec`` of output layer ``m`` ``*= y_scale[m]``."""
    cfg, p = result.config, result.params
    sx, sy = result.x_scale, result.y_scale
    L, D, F = p.W_enc.shape
    W_enc = np.asarray(p.W_enc) / sx[:, None, None]
    b_dec = np.asarray(p.b_dec) * sy[:, None]
    if cfg.kind == "plt":
        dec = DenseDecoders("plt", (np.asarray(p.W_dec) * sy[:, None, None]).astype(np.float32))
    else:
        W = np.asarray(p.W_dec) * sy[None, None, :, None]
        dec = DenseDecoders("clt", [np.ascontiguousarray(W[l, :, l:], np.float32) for l in range(L)])
    tcfg = TranscoderConfig(
        kind=cfg.kind,
        n_layers=L,
        d_model=D,
        n_features=F,
        activation=cfg.activation,
        top_k=cfg.top_k,
        input_hook=cfg.input_hook,
        output_hook=cfg.output_hook,
        scan=scan,
    )
    thr = None if p.log_threshold is None else jnp.asarray(np.exp(np.asarray(p.log_threshold)), jnp.float32)
    params = Transcoders(
        W_enc=jnp.asarray(W_enc, jnp.float32),
        b_enc=jnp.asarray(p.b_enc, jnp.float32),
        b_dec=jnp.asarray(b_dec, jnp.float32),
        threshold=thr,
    )
    return TranscoderSet(tcfg, params, dec)


def evaluate_transcoders(ts: TranscoderSet, x_NLD: np.ndarray, y_NLD: np.ndarray, batch: int = 4096) -> dict:
    """FVU and L0 per layer of an exported set on raw pairs (the same encode path attribution uses), plus the
    fraction of features that never fire on this data. FVU = Σ‖y − ŷ‖² / Σ‖y − ȳ‖² per layer."""
    from jcircuits.transcoders.core import activate

    cfg, p = ts.cfg, ts.params
    dec = jnp.asarray(ts.decoders.padded())  # [L, F, L_out or 1, D]
    L = cfg.n_layers
    sse, l0, fired = np.zeros(L), np.zeros(L), np.zeros((L, cfg.n_features), bool)
    for i in range(0, x_NLD.shape[0], batch):
        xb = jnp.asarray(x_NLD[i : i + batch])
        pre = jnp.einsum("bld,ldf->blf", xb, p.W_enc) + p.b_enc
        thr = None if p.threshold is None else p.threshold
        a = activate(cfg, pre, thr)
        if cfg.kind == "plt":
            y_hat = jnp.einsum("blf,lfd->bld", a, dec[:, :, 0]) + p.b_dec
        else:
            y_hat = jnp.einsum("blf,lfmd->bmd", a, dec) + p.b_dec
        sse += np.asarray(jnp.sum((y_hat - y_NLD[i : i + batch]) ** 2, axis=(0, 2)))
        l0 += np.asarray((a != 0).sum((0, 2)))
        fired |= np.asarray((a != 0).any(0))
    y = np.asarray(y_NLD, np.float64)
    var = ((y - y.mean(0)) ** 2).sum(axis=(0, 2))
    n = x_NLD.shape[0]
    return {
        "fvu": (sse / var).tolist(),
        "l0": (l0 / n).tolist(),
        "dead_frac": (~fired).mean(1).tolist(),
        "n_tokens": int(n),
    }
