"""Seeded tiny random models and transcoders built in-process (no files, no torch), shared by unit tests."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jcircuits.models import Model, ModelConfig, RopeScaling, init_params
from jcircuits.transcoders import TranscoderSet
from jcircuits.transcoders.core import DenseDecoders, TranscoderConfig, Transcoders, encode_layer


def tiny_config(arch: str = "llama", **kw) -> ModelConfig:
    base = dict(
        vocab_size=97,
        d_model=32,
        n_layers=3,
        n_heads=4,
        n_kv_heads=2,
        head_dim=8,
        d_mlp=64,
        max_position_embeddings=256,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        bos_token_id=1,
        pad_token_id=0,
        eos_token_id=2,
    )
    if arch == "gemma2":
        base.update(
            rope_scaling=None,
            tie_embeddings=True,
            activation="gelu_tanh",
            attn_scale=12**-0.5,
            attn_softcap=20.0,
            final_softcap=15.0,
            embed_scale=True,
            post_norms=True,
            norm_offset=1.0,
            layer_windows=tuple(4 if i % 2 == 0 else None for i in range(kw.get("n_layers", 3))),
        )
    elif arch == "gemma3":  # QK-norm, head_dim 12 != 32 / 4, local layers on their own unscaled RoPE base
        base.update(
            head_dim=12,
            rope_scaling=RopeScaling(4.0, rope_type="linear"),
            local_rope_theta=1000.0,
            qk_norm=True,
            tie_embeddings=True,
            activation="gelu_tanh",
            attn_scale=10**-0.5,
            attn_softcap=None,
            final_softcap=15.0,
            embed_scale=True,
            post_norms=True,
            norm_offset=1.0,
            layer_windows=tuple(None if i % 3 == 2 else 4 for i in range(kw.get("n_layers", 3))),
        )
    elif arch == "qwen3":  # QK-norm, head_dim 12 != 32 / 4, the middle layer slides
        base.update(
            head_dim=12,
            rope_scaling=None,
            qk_norm=True,
            tie_embeddings=False,
            activation="silu",
            attn_scale=12**-0.5,
            attn_softcap=None,
            final_softcap=None,
            embed_scale=False,
            post_norms=False,
            norm_offset=0.0,
            layer_windows=tuple(5 if i % 2 else None for i in range(kw.get("n_layers", 3))),
        )
    else:
        base.update(
            rope_scaling=RopeScaling(8.0, 1.0, 4.0, 16),
            tie_embeddings=False,
            activation="silu",
            attn_scale=8**-0.5,
            attn_softcap=None,
            final_softcap=None,
            embed_scale=False,
            post_norms=False,
            norm_offset=0.0,
            layer_windows=(None,) * kw.get("n_layers", 3),
        )
    base.update(kw)
    return ModelConfig(arch=arch, **base)


_NORMS = ("ln1", "ln2", "post_attn_norm", "post_mlp_norm", "q_norm", "k_norm")


def tiny_model(arch: str = "llama", seed: int = 0, **kw) -> Model:
    cfg = tiny_config(arch, **kw)
    params = init_params(cfg, jax.random.key(seed), scale=1.0)
    # non-trivial norm gains so frozen scales and gains are exercised
    rng = np.random.default_rng(seed)
    lay = params.layers
    jitter = lambda a: a + jnp.asarray(rng.normal(0, 0.2, a.shape), a.dtype)  # noqa: E731
    lay = type(lay)(
        **{
            k: (jitter(v) if k in _NORMS and v is not None else v)
            for k, v in vars(lay).items()
        }
    )
    params = type(params)(
        embed=params.embed, layers=lay, final_norm=jitter(params.final_norm), unembed=params.unembed
    )
    return Model(params=params, cfg=cfg, name=f"tiny-{arch}")


def tiny_transcoders(
    cfg: ModelConfig,
    kind: str = "plt",
    activation: str = "jumprelu",
    skip: bool = False,
    n_features: int = 96,
    input_hook: str = "mlp.hook_in",
    output_hook: str = "mlp.hook_out",
    seed: int = 1,
    top_k: int | None = None,
) -> TranscoderSet:
    rng = np.random.default_rng(seed)
    L, D, F = cfg.n_layers, cfg.d_model, n_features
    W_enc = rng.normal(0, 1 / np.sqrt(D), (L, D, F)).astype(np.float32)
    b_enc = rng.normal(-0.6, 0.2, (L, F)).astype(np.float32)
    threshold = np.abs(rng.normal(0.1, 0.05, (L, F))).astype(np.float32) if activation == "jumprelu" else None
    b_dec = rng.normal(0, 0.05, (L, D)).astype(np.float32)
    W_skip = rng.normal(0, 0.1 / np.sqrt(D), (L, D, D)).astype(np.float32) if skip else None
    if kind == "plt":
        W_dec = rng.normal(0, 0.3 / np.sqrt(D), (L, F, D)).astype(np.float32)
    else:
        W_dec = [rng.normal(0, 0.3 / np.sqrt(D), (F, L - l, D)).astype(np.float32) for l in range(L)]
    tcfg = TranscoderConfig(
        kind=kind,
        n_layers=L,
        d_model=D,
        n_features=F,
        activation=activation,
        top_k=top_k,
        input_hook=input_hook,
        output_hook=output_hook,
        skip=skip,
    )
    j = lambda a: None if a is None else jnp.asarray(a)  # noqa: E731
    return TranscoderSet(
        tcfg, Transcoders(j(W_enc), j(b_enc), j(b_dec), j(threshold), j(W_skip)), DenseDecoders(kind, W_dec)
    )


def pre_activations(ts, rep) -> np.ndarray:
    """Every feature's pre-activation ``[L, T, F]`` at the replacement's feature inputs."""
    return np.stack(
        [
            np.asarray(encode_layer(ts.cfg, ts.params, l, rep.feature_inputs[l], pre=True))
            for l in range(ts.cfg.n_layers)
        ]
    )


def forced_node_set(ts, rep):
    """The own active set plus one inactive feature (pre-activation below its threshold, at a kept position),
    sorted as ``replace`` sorts; returns ``(given, index of the forced feature in it, its pre-activation)``."""
    pre = pre_activations(ts, rep)
    theta = np.asarray(ts.params.threshold)[:, None, :]
    below = (pre < theta) & (pre > 0.5 * theta)  # inactive but not far off, so its edges are not negligible
    below[:, : rep.zero_positions] = False
    l, t, f = np.argwhere(below)[len(np.argwhere(below)) // 2]
    given = np.concatenate([rep.active_features, [[l, t, f]]]).astype(np.int32)
    order = np.lexsort((given[:, 2], given[:, 1], given[:, 0]))
    given = given[order]
    return given, int(np.flatnonzero(order == len(given) - 1)[0]), float(pre[l, t, f])


def bf16_stored(model: Model, ts: TranscoderSet):
    """``(model32, ts32, model16, ts16)``: every weight rounded to bfloat16 ("a bfloat16 checkpoint"), held once as
    bfloat16 and once upcast to float32 (exact), so a float32 run is the reference for the very same model."""
    import dataclasses

    import ml_dtypes

    round16 = lambda t: jax.tree.map(lambda a: a.astype(jnp.bfloat16), t)  # noqa: E731
    up = lambda t: jax.tree.map(lambda a: a.astype(jnp.float32), t)  # noqa: E731
    p16, e16 = round16(model.params), round16(ts.params)
    W = ts.decoders.W_dec
    d16 = W.astype(ml_dtypes.bfloat16) if isinstance(W, np.ndarray) else [w.astype(ml_dtypes.bfloat16) for w in W]
    d32 = d16.astype(np.float32) if isinstance(W, np.ndarray) else [w.astype(np.float32) for w in d16]
    return (
        dataclasses.replace(model, params=up(p16)),
        dataclasses.replace(ts, params=up(e16), decoders=DenseDecoders(ts.cfg.kind, d32)),
        dataclasses.replace(model, params=p16),
        dataclasses.replace(ts, params=e16, decoders=DenseDecoders(ts.cfg.kind, d16)),
    )
