"""Static model configuration, read from a Hugging Face ``config.json``.

``ModelConfig`` is a frozen, hashable dataclass: it is passed to jitted functions as a static argument. Gemma-2,
Gemma-3, Llama-3 and Qwen3 differ only in the flags below (norm placement and gain offset, embedding scale,
soft-caps, attention scale, activation, RoPE bases and scaling, QK-norm), so one decoder implementation serves
all four; ``arch`` names the family for converters and for hook-point conventions.

Gemma-3 checkpoints come in two wrappers: ``Gemma3ForCausalLM`` (``model_type: gemma3_text``) and the multimodal
``Gemma3ForConditionalGeneration`` (``model_type: gemma3``), whose text tower is described by ``text_config``;
``text_config_of`` unwraps the latter, and only the text tower is modelled.

Reading a config is strict (as penzai's converters are): every key is either understood, a known piece of
metadata that does not change the computation, or an error naming it. Understood keys with values we do not
implement (an attention bias, a rope type other than ``llama3``, bidirectional attention…) are errors too, so a
model is never silently computed differently from its checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from jcircuits_converters import hf as hf_conv

__all__ = ["ModelConfig", "RopeScaling", "ConfigError", "config_from_hf", "load_hf_config", "text_config_of"]


class ConfigError(ValueError):
    """A model configuration the code does not understand or does not implement."""


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """RoPE frequency scaling: Llama-3 ``rope_type: llama3`` (NTK-by-parts, every field set) or ``linear``
    (Gemma-3's global layers: every inverse frequency divided by ``factor``)."""

    factor: float
    low_freq_factor: float | None = None
    high_freq_factor: float | None = None
    original_max_position_embeddings: int | None = None
    rope_type: str = "llama3"

    def __post_init__(self):
        if self.rope_type not in ("llama3", "linear"):
            raise ConfigError(f"rope scaling type must be 'llama3' or 'linear', got {self.rope_type!r}")
        llama3 = (self.low_freq_factor, self.high_freq_factor, self.original_max_position_embeddings)
        if self.rope_type == "llama3" and None in llama3:
            raise ConfigError("llama3 rope scaling needs low_freq_factor, high_freq_factor and "
                              "original_max_position_embeddings")
        if self.rope_type == "linear" and any(v is not None for v in llama3):
            raise ConfigError("linear rope scaling takes only a factor")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Everything static about a decoder-only transformer.

    ``layer_windows[l]`` is the sliding-window length of layer ``l`` (``None`` for global attention).
    ``attn_scale`` multiplies ``q·k`` (Gemma-2: ``query_pre_attn_scalar**-0.5``, Llama: ``head_dim**-0.5``).
    ``norm_offset`` is added to every RMSNorm weight to form its gain (Gemma stores ``w`` and multiplies by
    ``1 + w``; Llama and Qwen3 multiply by ``w``).
    ``qk_norm``: RMSNorm over ``head_dim`` of every query and key head before RoPE (Qwen3, Gemma-3), with the
    same ``norm_offset`` and ``rms_norm_eps`` as the other norms.
    ``local_rope_theta``: the RoPE base of sliding-window layers when it differs from the global layers'
    (Gemma-3's ``rope_local_base_freq``; never scaled); ``None``: every layer uses ``rope_theta`` +
    ``rope_scaling``.
    """

    arch: str  # "gemma2" | "gemma3" | "llama" | "qwen3"
    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_mlp: int
    max_position_embeddings: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: RopeScaling | None
    tie_embeddings: bool
    activation: str  # "gelu_tanh" | "silu"
    attn_scale: float
    attn_softcap: float | None
    final_softcap: float | None
    layer_windows: tuple[int | None, ...]
    embed_scale: bool  # multiply embeddings by sqrt(d_model) (Gemma)
    post_norms: bool  # RMSNorm after attention and after the MLP (Gemma-2)
    norm_offset: float
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    qk_norm: bool = False
    local_rope_theta: float | None = None

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise ConfigError(f"arch must be one of {list(ARCHS)}, got {self.arch!r}")
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(
                f"num_attention_heads={self.n_heads} is not a multiple of num_key_value_heads={self.n_kv_heads}"
            )
        if len(self.layer_windows) != self.n_layers:
            raise ConfigError(f"{len(self.layer_windows)} layer windows for {self.n_layers} layers")
        if self.activation not in ("gelu_tanh", "silu"):
            raise ConfigError(f"activation must be 'gelu_tanh' or 'silu', got {self.activation!r}")
        if self.head_dim % 2:
            raise ConfigError(f"head_dim must be even for RoPE, got {self.head_dim}")

    @property
    def rope_bases(self) -> tuple[tuple[float, RopeScaling | None], ...]:
        """The distinct RoPE tables: ``(theta, scaling)`` of the global layers, then (with ``local_rope_theta``)
        the unscaled local base. ``layer_rope_index`` says which one each layer uses."""
        main = ((self.rope_theta, self.rope_scaling),)
        return main if self.local_rope_theta is None else main + ((self.local_rope_theta, None),)

    @property
    def layer_rope_index(self) -> tuple[int, ...]:
        """Per layer, the index into ``rope_bases`` (1 for sliding layers when a local base is set, else 0)."""
        if self.local_rope_theta is None:
            return (0,) * self.n_layers
        return tuple(int(w is not None) for w in self.layer_windows)

    @property
    def n_rep(self) -> int:
        """Query heads per key/value head (GQA group size)."""
        return self.n_heads // self.n_kv_heads

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        d = dict(d)
        d.setdefault("qk_norm", False)  # configs saved before Qwen3 / Gemma-3 support
        d.setdefault("local_rope_theta", None)
        if d.get("rope_scaling") is not None:
            d["rope_scaling"] = RopeScaling(**d["rope_scaling"])
        d["layer_windows"] = tuple(d["layer_windows"])
        return cls(**d)


ARCHS = ("gemma2", "gemma3", "llama", "qwen3")

# Keys that describe the checkpoint or training but never change the forward pass.
_METADATA_KEYS = frozenset(
    {
        "architectures",
        "model_type",
        "torch_dtype",
        "dtype",
        "transformers_version",
        "_name_or_path",
        "use_cache",
        "initializer_range",
        "attention_dropout",
        "cache_implementation",
        "output_attentions",
        "output_hidden_states",
        "return_dict",
        "id2label",
        "label2id",
        "problem_type",
        "_attn_implementation",
        "_attn_implementation_autoset",
        "tokenizer_class",
        "bos_token_id",
        "eos_token_id",
        "pad_token_id",
        "tie_word_embeddings",
        "max_position_embeddings",
        "chunk_size_feed_forward",
        "is_encoder_decoder",
        "pruned_heads",
        "torchscript",
        "use_return_dict",
        "residual_dropout",
        "embedding_dropout",
    }
)

_COMMON_KEYS = frozenset(
    {
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "rms_norm_eps",
        "rope_theta",
        "rope_scaling",
        "rope_parameters",
        "attention_bias",
    }
)
_GEMMA2_KEYS = _COMMON_KEYS | {
    "hidden_activation",
    "hidden_act",
    "query_pre_attn_scalar",
    "sliding_window",
    "sliding_window_size",
    "layer_types",
    "final_logit_softcapping",
    "attn_logit_softcapping",
    "use_bidirectional_attention",
}
_LLAMA_KEYS = _COMMON_KEYS | {"hidden_act", "mlp_bias", "pretraining_tp"}
_QWEN3_KEYS = _COMMON_KEYS | {"hidden_act", "sliding_window", "use_sliding_window", "max_window_layers", "layer_types"}
_GEMMA3_KEYS = (_GEMMA2_KEYS - {"sliding_window_size"}) | {
    "rope_local_base_freq",
    "sliding_window_pattern",
    "_sliding_window_pattern",
}
# Keys of the multimodal ``Gemma3ForConditionalGeneration`` wrapper around ``text_config``: they describe the
# vision tower and the image tokens, which the text tower never reads.
_GEMMA3_WRAPPER_KEYS = frozenset(
    {
        "text_config",
        "vision_config",
        "mm_tokens_per_image",
        "boi_token_index",
        "eoi_token_index",
        "image_token_index",
        "image_token_id",
        "boi_token_id",
        "eoi_token_id",
    }
)
_LAYER_TYPES = ("sliding_attention", "full_attention")


def llama_config(
    *,
    vocab_size: int,
    d_model: int,
    n_layers: int,
    n_heads: int,
    n_kv_heads: int,
    head_dim: int,
    d_mlp: int,
    max_position_embeddings: int = 128,
    rope_theta: float = 10000.0,
    rope_scaling: RopeScaling | None = None,
) -> ModelConfig:
    """A plain Llama-3-style config built in code (models trained or generated here): SiLU gated MLP, untied
    embeddings, RMSNorm eps 1e-5, no soft-caps or sliding windows; special ids pad 0, bos 1, eos 2."""
    return ModelConfig(
        arch="llama",
        vocab_size=vocab_size,
        d_model=d_model,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        head_dim=head_dim,
        d_mlp=d_mlp,
        max_position_embeddings=max_position_embeddings,
        rms_norm_eps=1e-5,
        rope_theta=rope_theta,
        rope_scaling=rope_scaling,
        tie_embeddings=False,
        activation="silu",
        attn_scale=head_dim**-0.5,
        attn_softcap=None,
        final_softcap=None,
        layer_windows=(None,) * n_layers,
        embed_scale=False,
        post_norms=False,
        norm_offset=0.0,
        bos_token_id=1,
        pad_token_id=0,
        eos_token_id=2,
    )


def load_hf_config(path: str | Path) -> dict[str, Any]:
    """Read a ``config.json`` (a file, or a directory containing one)."""
    p = Path(path)
    if p.is_dir():
        p = p / "config.json"
    if not p.is_file():
        raise FileNotFoundError(f"no config.json at {p}: pass a model directory that contains one")
    with open(p) as f:
        return json.load(f)


def _first_id(v: Any) -> int | None:
    if isinstance(v, list):
        return int(v[0]) if v else None
    return None if v is None else int(v)


def _rope(
    hf: dict[str, Any], params: dict[str, Any] | None = None, default_theta: float = 10000.0
) -> tuple[float, RopeScaling | None]:
    """RoPE base and scaling from either the transformers<5 (``rope_theta`` + ``rope_scaling``) or the
    transformers>=5 (``rope_parameters``) spelling (``params``: one layer type's entry of a per-type
    ``rope_parameters``)."""
    params = (hf.get("rope_parameters") or {}) if params is None else params
    scaling = hf.get("rope_scaling") or {}
    theta = params.get("rope_theta", hf.get("rope_theta", default_theta))
    merged = {**scaling, **{k: v for k, v in params.items() if k != "rope_theta"}}
    rope_type = merged.get("rope_type", merged.get("type", "default"))
    if rope_type == "default":
        extra = set(merged) - {"rope_type", "type"}
        if extra:
            raise ConfigError(f"rope parameters {sorted(extra)} given for the default rope type")
        return float(theta), None
    if rope_type == "linear":
        extra = set(merged) - {"rope_type", "type", "factor"}
        if extra:
            raise ConfigError(f"rope parameters {sorted(extra)} are not part of linear rope scaling")
        if "factor" not in merged:
            raise ConfigError("linear rope scaling is missing 'factor'")
        return float(theta), RopeScaling(factor=float(merged["factor"]), rope_type="linear")
    if rope_type != "llama3":
        raise ConfigError(
            f"rope_type {rope_type!r} is not implemented (only the default, 'linear' and 'llama3'); "
            "this model would be computed wrongly"
        )
    try:
        return float(theta), RopeScaling(
            factor=float(merged["factor"]),
            low_freq_factor=float(merged["low_freq_factor"]),
            high_freq_factor=float(merged["high_freq_factor"]),
            original_max_position_embeddings=int(merged["original_max_position_embeddings"]),
        )
    except KeyError as e:
        raise ConfigError(f"llama3 rope scaling is missing {e.args[0]!r}") from None


def text_config_of(hf: dict[str, Any]) -> dict[str, Any]:
    """The text model's config: ``hf`` itself, or the ``text_config`` of a multimodal
    ``Gemma3ForConditionalGeneration`` config (whose other keys describe the vision tower and image tokens and
    are checked to be only those)."""
    if hf.get("model_type") != "gemma3":
        return hf
    unknown = sorted(k for k in hf if k not in _GEMMA3_WRAPPER_KEYS and k not in _METADATA_KEYS)
    if unknown:
        raise ConfigError(
            f"gemma3 (multimodal) config has attributes jcircuits does not understand: {unknown}. "
            "Refusing to guess what they change; remove them if they are metadata, or file an issue."
        )
    if not isinstance(hf.get("text_config"), dict):
        raise ConfigError("gemma3 (multimodal) config has no text_config: pass the checkpoint's config.json")
    text = dict(hf_conv.text_config(hf))
    if text["model_type"] != "gemma3_text":
        raise ConfigError(f"gemma3 text_config has model_type {text['model_type']!r}, expected 'gemma3_text'")
    if text.get("final_logit_softcapping") is not None:
        raise ConfigError(
            "gemma3 (multimodal) text_config sets final_logit_softcapping, which transformers' "
            "Gemma3ForConditionalGeneration ignores and Gemma3ForCausalLM applies: the checkpoint does not say "
            "which model it is; set it to null (as the published Gemma-3 configs do) or convert to Gemma3ForCausalLM"
        )
    return text


def _layer_types(types: Any, n_layers: int) -> list[str]:
    if len(types) != n_layers:
        raise ConfigError(f"layer_types has {len(types)} entries for {n_layers} layers")
    bad = sorted({t for t in types if t not in _LAYER_TYPES})
    if bad:
        raise ConfigError(f"unknown layer_types {bad}; known: {list(_LAYER_TYPES)}")
    return list(types)


def _gemma_activation(hf: dict[str, Any], family: str) -> None:
    act = hf.get("hidden_activation") or hf.get("hidden_act") or "gelu_pytorch_tanh"
    if act not in ("gelu_pytorch_tanh", "gelu_tanh"):
        raise ConfigError(f"{family} hidden_activation {act!r} is not implemented (expected gelu_pytorch_tanh)")
    if hf.get("use_bidirectional_attention"):
        raise ConfigError("use_bidirectional_attention=True is not implemented (decoder-only causal models)")


def _gemma3_ropes(hf: dict[str, Any]) -> tuple[float, RopeScaling | None, float]:
    """Gemma-3's two RoPE tables: ``(global theta, global scaling, local theta)``, from the transformers<5
    spelling (``rope_theta`` + ``rope_scaling`` for global layers, ``rope_local_base_freq`` for local ones) or the
    transformers>=5 ``rope_parameters`` keyed by layer type."""
    per_type = hf.get("rope_parameters")
    if per_type is not None and (not isinstance(per_type, dict) or set(per_type) - set(_LAYER_TYPES)):
        raise ConfigError(
            f"gemma3 rope_parameters must be keyed by layer type {list(_LAYER_TYPES)}, got {per_type!r}"
        )
    per_type = per_type or {}
    outer = {"rope_theta": hf.get("rope_theta", 1_000_000.0), "rope_scaling": hf.get("rope_scaling")}
    theta, scaling = _rope(outer, dict(per_type.get("full_attention") or {}), 1_000_000.0)
    local = {"rope_theta": hf.get("rope_local_base_freq", 10_000.0)}
    local_theta, local_scaling = _rope(local, dict(per_type.get("sliding_attention") or {}), 10_000.0)
    if local_scaling is not None:
        raise ConfigError("gemma3 rope scaling on the sliding (local) layers is not a known checkpoint layout")
    return theta, scaling, local_theta


def _common_fields(hf: dict[str, Any], rope: tuple[float, RopeScaling | None]) -> dict[str, Any]:
    """The ``ModelConfig`` fields every family reads the same way."""
    d_model, n_heads = int(hf["hidden_size"]), int(hf["num_attention_heads"])
    return dict(
        vocab_size=int(hf["vocab_size"]),
        d_model=d_model,
        n_layers=int(hf["num_hidden_layers"]),
        n_heads=n_heads,
        n_kv_heads=int(hf.get("num_key_value_heads") or n_heads),
        head_dim=int(hf.get("head_dim") or d_model // n_heads),
        d_mlp=int(hf["intermediate_size"]),
        max_position_embeddings=int(hf.get("max_position_embeddings", 8192)),
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        rope_theta=rope[0],
        rope_scaling=rope[1],
        bos_token_id=_first_id(hf.get("bos_token_id")),
        eos_token_id=_first_id(hf.get("eos_token_id")),
        pad_token_id=_first_id(hf.get("pad_token_id")),
    )


_GEMMA_FLAGS = dict(activation="gelu_tanh", embed_scale=True, post_norms=True, norm_offset=1.0)
_SILU_FLAGS = dict(
    activation="silu", attn_softcap=None, final_softcap=None, embed_scale=False, post_norms=False, norm_offset=0.0
)


def _gemma2(hf: dict[str, Any]) -> ModelConfig:
    _gemma_activation(hf, "gemma2")
    common = _common_fields(hf, _rope(hf))
    if common["rope_scaling"] is not None:
        raise ConfigError("gemma2 with rope scaling is not a known checkpoint layout")
    n_layers = common["n_layers"]
    window = hf.get("sliding_window", hf.get("sliding_window_size", 4096))
    types = _layer_types(hf.get("layer_types") or [_LAYER_TYPES[i % 2] for i in range(n_layers)], n_layers)
    return ModelConfig(
        arch="gemma2",
        **common,
        **_GEMMA_FLAGS,
        tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
        attn_scale=float(hf.get("query_pre_attn_scalar", common["head_dim"])) ** -0.5,
        attn_softcap=_opt_float(hf.get("attn_logit_softcapping")),
        final_softcap=_opt_float(hf.get("final_logit_softcapping")),
        layer_windows=tuple(int(window) if t == "sliding_attention" and window else None for t in types),
    )


def _gemma3(hf: dict[str, Any]) -> ModelConfig:
    hf = {**hf_conv.GEMMA3_TEXT_DEFAULTS, **hf}
    _gemma_activation(hf, "gemma3")
    if hf.get("attn_logit_softcapping") is not None:
        raise ConfigError(
            "gemma3 config sets attn_logit_softcapping, which transformers' Gemma-3 attention never applies "
            "(QK-norm replaced it): set it to null, as the published Gemma-3 configs do"
        )
    theta, scaling, local_theta = _gemma3_ropes(hf)
    common = _common_fields(hf, (theta, scaling))
    n_layers = common["n_layers"]
    pattern = int(hf.get("sliding_window_pattern", hf.get("_sliding_window_pattern", 6)))
    types = _layer_types(
        hf.get("layer_types") or [_LAYER_TYPES[int((i + 1) % pattern == 0)] for i in range(n_layers)], n_layers
    )
    window = hf.get("sliding_window")
    if "sliding_attention" in types and not window:
        raise ConfigError("gemma3 has sliding_attention layers but no sliding_window")
    return ModelConfig(
        arch="gemma3",
        **common,
        **_GEMMA_FLAGS,
        tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
        attn_scale=float(hf["query_pre_attn_scalar"]) ** -0.5,
        attn_softcap=None,
        final_softcap=_opt_float(hf.get("final_logit_softcapping")),
        layer_windows=tuple(int(window) if t == "sliding_attention" else None for t in types),
        qk_norm=True,
        local_rope_theta=local_theta,
    )


def _silu(hf: dict[str, Any], model_type: str) -> None:
    act = hf.get("hidden_act", "silu")
    if act != "silu":
        raise ConfigError(f"{model_type} hidden_act {act!r} is not implemented (expected silu)")


def _qwen3(hf: dict[str, Any]) -> ModelConfig:
    _silu(hf, "qwen3")
    common = _common_fields(hf, _rope(hf))
    n_layers = common["n_layers"]
    window = hf.get("sliding_window") if hf.get("use_sliding_window") else None
    first_sliding = int(hf.get("max_window_layers", 28)) if window is not None else n_layers
    types = _layer_types(
        hf.get("layer_types") or [_LAYER_TYPES[int(i < first_sliding)] for i in range(n_layers)], n_layers
    )
    return ModelConfig(
        arch="qwen3",
        **common,
        **_SILU_FLAGS,
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        attn_scale=common["head_dim"] ** -0.5,
        layer_windows=tuple(int(window) if t == "sliding_attention" and window else None for t in types),
        qk_norm=True,
    )


def _llama(hf: dict[str, Any]) -> ModelConfig:
    _silu(hf, "llama")
    if hf.get("mlp_bias"):
        raise ConfigError("mlp_bias=True is not implemented")
    if hf.get("pretraining_tp", 1) not in (1, None):
        raise ConfigError("pretraining_tp != 1 changes the numerics of the MLP and is not implemented")
    common = _common_fields(hf, _rope(hf))
    return ModelConfig(
        arch="llama",
        **common,
        **_SILU_FLAGS,
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        attn_scale=common["head_dim"] ** -0.5,
        layer_windows=(None,) * common["n_layers"],
    )


# HF model_type -> (the keys it may carry, its reader)
_FAMILIES = {
    "gemma2": (_GEMMA2_KEYS, _gemma2),
    "gemma3_text": (_GEMMA3_KEYS, _gemma3),
    "llama": (_LLAMA_KEYS, _llama),
    "qwen3": (_QWEN3_KEYS, _qwen3),
}


def config_from_hf(hf: dict[str, Any] | str | Path) -> ModelConfig:
    """Translate a Hugging Face config (dict, ``config.json`` path or model directory) into a ``ModelConfig``.

    Raises ``ConfigError`` naming any key that is neither understood nor known metadata, and any understood key
    whose value selects behaviour this library does not implement. A multimodal Gemma-3 config is read through
    its ``text_config`` (``text_config_of``).
    """
    if not isinstance(hf, dict):
        hf = load_hf_config(hf)
    hf = text_config_of(hf)
    model_type = hf.get("model_type")
    if model_type not in _FAMILIES:
        raise ConfigError(
            f"unsupported model_type {model_type!r}: jcircuits implements 'gemma2', 'gemma3' / 'gemma3_text', "
            "'llama' (Llama 3.x) and 'qwen3'"
        )
    known, read = _FAMILIES[model_type]
    unknown = sorted(k for k in hf if k not in known and k not in _METADATA_KEYS)
    if unknown:
        raise ConfigError(
            f"{model_type} config has attributes jcircuits does not understand: {unknown}. "
            "Refusing to guess what they change; remove them if they are metadata, or file an issue."
        )
    if hf.get("attention_bias"):
        raise ConfigError("attention_bias=True is not implemented")
    return read(hf)


def _opt_float(v: Any) -> float | None:
    return None if v is None else float(v)
