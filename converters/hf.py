"""Hugging Face Gemma-2 / Gemma-3 / Llama-3 / Qwen3 safetensors checkpoints <-> our plain nested dict of numpy
arrays.

Our layout (the ``jcircuits.models.transformer.Params`` tree, as nested dicts, layers stacked on a leading
``L``)::

    embed [V, D]
    layers: ln1 [L, D], wq [L, D, H, E], wk/wv [L, D, K, E], wo [L, H, E, D], ln2 [L, D],
            w_gate/w_up [L, D, F], w_down [L, F, D], (Gemma-2/3) post_attn_norm/post_mlp_norm [L, D],
            (Qwen3, Gemma-3) q_norm/k_norm [L, E]
    final_norm [D]
    unembed [D, V]            (absent when the embeddings are tied)

Each architecture is one table of ``Rule``s: an HF key regex, our path, the HF shape the config implies, and
the transforms both ways. torch ``Linear`` weights are ``[out, in]``, ours are ``[in, …out]``, hence the
transposes. Norm weights are copied raw (Gemma's ``1 + w`` is applied by the model). Note the norm names: in
Gemma-2 ``post_attention_layernorm`` is the norm *after attention* (our ``post_attn_norm``) and
``pre_feedforward_layernorm`` is the MLP's input norm (our ``ln2``); in Llama ``post_attention_layernorm`` is
the MLP's input norm. Gemma-3 uses Gemma-2's names plus ``self_attn.q_norm``/``k_norm``; Qwen3 uses Llama's
plus the same two.

A multimodal ``Gemma3ForConditionalGeneration`` checkpoint (``model_type: gemma3``) holds the text tower under
``language_model.model.*`` (as ``save_pretrained`` writes it) or ``model.language_model.*`` (transformers>=5
module names), beside the vision tower and projector: ``TextTower`` shows only the text tower under the
``Gemma3ForCausalLM`` names, so the same rules read it; the vision weights are never read. Writing such a model
back gives a text-only ``Gemma3ForCausalLM`` checkpoint (``text_only_config``).

Loading streams tensor by tensor from memory-mapped files into preallocated stacked arrays, so peak host
memory is about one copy of the model plus one tensor. This module never imports jcircuits, jax or torch.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .safetensors_io import open_checkpoint, save_file, save_sharded

__all__ = [
    "ConversionError",
    "GEMMA3_TEXT_DEFAULTS",
    "TextTower",
    "text_config",
    "text_only_config",
    "text_view",
    "check_finite",
    "Dims",
    "check_checkpoint",
    "Rule",
    "RULES",
    "expected_shapes",
    "hf_to_params",
    "load_hf_checkpoint",
    "params_to_hf",
    "save_hf_checkpoint",
]

# Buffers some older checkpoints carry that the model recomputes; skipped silently.
_IGNORED = re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq")


class ConversionError(ValueError):
    """A checkpoint that does not match the layout its config implies."""


@dataclasses.dataclass(frozen=True)
class Dims:
    """The sizes a checkpoint's tensors must have, read from an HF ``config.json`` dict."""

    arch: str
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_mlp: int
    vocab_size: int
    tied: bool

    @classmethod
    def from_hf(cls, hf: Mapping[str, Any]) -> Dims:
        hf = text_config(hf)
        arch = _ARCH_OF.get(hf.get("model_type"), hf.get("model_type"))
        if arch not in RULES:
            raise ConversionError(f"unsupported model_type {arch!r}; converters know {sorted(RULES)}")
        if arch == "gemma3":
            hf = {**GEMMA3_TEXT_DEFAULTS, **hf}
        d = int(hf["hidden_size"])
        h = int(hf["num_attention_heads"])
        return cls(
            arch=arch,
            n_layers=int(hf["num_hidden_layers"]),
            d_model=d,
            n_heads=h,
            n_kv_heads=int(hf.get("num_key_value_heads") or h),
            head_dim=int(hf.get("head_dim") or d // h),
            d_mlp=int(hf["intermediate_size"]),
            vocab_size=int(hf["vocab_size"]),
            tied=bool(hf.get("tie_word_embeddings", arch in ("gemma2", "gemma3"))),
        )


Transform = Callable[[np.ndarray, Dims], np.ndarray]


@dataclasses.dataclass(frozen=True)
class Rule:
    """One HF tensor family. ``pattern`` matches the full key (group 1 = layer index for per-layer keys);
    ``path`` is our (nested) location; ``hf_shape(dims)`` is the HF shape; ``to_ours``/``to_hf`` convert one
    (un-stacked) tensor."""

    pattern: str
    path: tuple[str, ...]
    hf_shape: Callable[[Dims], tuple[int, ...]]
    to_ours: Transform
    to_hf: Transform

    @property
    def per_layer(self) -> bool:
        return self.path[0] == "layers"

    def key(self, layer: int | None = None) -> str:
        """The HF key (for layer ``layer`` when per-layer)."""
        k = self.pattern.replace(r"(\d+)", str(layer)) if self.per_layer else self.pattern
        return k.replace("\\", "")


def _same(w: np.ndarray, d: Dims) -> np.ndarray:
    return w


def _t(w: np.ndarray, d: Dims) -> np.ndarray:
    return w.T


# attention projections: torch [heads*E, D] <-> ours [D, heads, E]; o_proj torch [D, H*E] <-> ours [H, E, D]
def _q_in(w, d):
    return w.T.reshape(d.d_model, d.n_heads, d.head_dim)


def _kv_in(w, d):
    return w.T.reshape(d.d_model, d.n_kv_heads, d.head_dim)


def _qkv_out(w, d):
    return w.reshape(d.d_model, -1).T


def _o_in(w, d):
    return w.T.reshape(d.n_heads, d.head_dim, d.d_model)


def _o_out(w, d):
    return w.reshape(d.n_heads * d.head_dim, d.d_model).T


def _vec(d: Dims) -> tuple[int, ...]:
    return (d.d_model,)


def _head_vec(d: Dims) -> tuple[int, ...]:
    return (d.head_dim,)


_LAYER = r"model\.layers\.(\d+)\."


def _common(mlp_norm_key: str) -> list[Rule]:
    return [
        Rule(r"model\.embed_tokens\.weight", ("embed",), lambda d: (d.vocab_size, d.d_model), _same, _same),
        Rule(_LAYER + r"input_layernorm\.weight", ("layers", "ln1"), _vec, _same, _same),
        Rule(
            _LAYER + r"self_attn\.q_proj\.weight",
            ("layers", "wq"),
            lambda d: (d.n_heads * d.head_dim, d.d_model),
            _q_in,
            _qkv_out,
        ),
        Rule(
            _LAYER + r"self_attn\.k_proj\.weight",
            ("layers", "wk"),
            lambda d: (d.n_kv_heads * d.head_dim, d.d_model),
            _kv_in,
            _qkv_out,
        ),
        Rule(
            _LAYER + r"self_attn\.v_proj\.weight",
            ("layers", "wv"),
            lambda d: (d.n_kv_heads * d.head_dim, d.d_model),
            _kv_in,
            _qkv_out,
        ),
        Rule(
            _LAYER + r"self_attn\.o_proj\.weight",
            ("layers", "wo"),
            lambda d: (d.d_model, d.n_heads * d.head_dim),
            _o_in,
            _o_out,
        ),
        Rule(_LAYER + mlp_norm_key, ("layers", "ln2"), _vec, _same, _same),
        Rule(
            _LAYER + r"mlp\.gate_proj\.weight", ("layers", "w_gate"), lambda d: (d.d_mlp, d.d_model), _t, _t
        ),
        Rule(_LAYER + r"mlp\.up_proj\.weight", ("layers", "w_up"), lambda d: (d.d_mlp, d.d_model), _t, _t),
        Rule(
            _LAYER + r"mlp\.down_proj\.weight", ("layers", "w_down"), lambda d: (d.d_model, d.d_mlp), _t, _t
        ),
        Rule(r"model\.norm\.weight", ("final_norm",), _vec, _same, _same),
        Rule(r"lm_head\.weight", ("unembed",), lambda d: (d.vocab_size, d.d_model), _t, _t),
    ]


_GEMMA_POST = [
    Rule(_LAYER + r"post_attention_layernorm\.weight", ("layers", "post_attn_norm"), _vec, _same, _same),
    Rule(_LAYER + r"post_feedforward_layernorm\.weight", ("layers", "post_mlp_norm"), _vec, _same, _same),
]
_QK_NORM = [
    Rule(_LAYER + r"self_attn\.q_norm\.weight", ("layers", "q_norm"), _head_vec, _same, _same),
    Rule(_LAYER + r"self_attn\.k_norm\.weight", ("layers", "k_norm"), _head_vec, _same, _same),
]
RULES: dict[str, list[Rule]] = {
    "gemma2": _common(r"pre_feedforward_layernorm\.weight") + _GEMMA_POST,
    "gemma3": _common(r"pre_feedforward_layernorm\.weight") + _GEMMA_POST + _QK_NORM,
    "llama": _common(r"post_attention_layernorm\.weight"),
    "qwen3": _common(r"post_attention_layernorm\.weight") + _QK_NORM,
}
_ARCH_OF = {"gemma3_text": "gemma3"}  # HF model_type -> our rules table, where the names differ
# Gemma3TextConfig's defaults: published Gemma-3 configs omit the keys they leave at these values (the sizes are
# needed here, the rest by ``jcircuits.models.config``).
GEMMA3_TEXT_DEFAULTS = {
    "vocab_size": 262_208,
    "hidden_size": 2304,
    "intermediate_size": 9216,
    "num_hidden_layers": 26,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "head_dim": 256,
    "max_position_embeddings": 131_072,
    "rms_norm_eps": 1e-6,
    "query_pre_attn_scalar": 256,
    "sliding_window": 4096,
    "bos_token_id": 2,
    "eos_token_id": 1,
    "pad_token_id": 0,
    "tie_word_embeddings": True,
}


def text_config(hf: Mapping[str, Any]) -> Mapping[str, Any]:
    """The text tower's config: ``hf``, or a multimodal Gemma-3 config's ``text_config`` (inheriting the
    wrapper's ``tie_word_embeddings`` when it sets none; ``model_type`` defaults to ``gemma3_text``)."""
    if hf.get("model_type") != "gemma3":
        return hf
    text = hf.get("text_config")
    if not isinstance(text, Mapping):
        raise ConversionError("gemma3 (multimodal) config has no text_config")
    text = {"model_type": "gemma3_text", **text}
    if "tie_word_embeddings" not in text and "tie_word_embeddings" in hf:
        text["tie_word_embeddings"] = hf["tie_word_embeddings"]
    return text


def text_only_config(hf: Mapping[str, Any]) -> dict[str, Any]:
    """The config a text-only checkpoint of this model carries: ``hf`` itself, or for a multimodal Gemma-3
    its ``text_config`` as a ``Gemma3ForCausalLM`` config."""
    if hf.get("model_type") != "gemma3":
        return dict(hf)
    return {**text_config(hf), "architectures": ["Gemma3ForCausalLM"]}


# text-tower prefixes of a multimodal Gemma-3 checkpoint -> the Gemma3ForCausalLM names
_TOWER_PREFIXES = (
    ("language_model.model.", "model."),
    ("language_model.lm_head.", "lm_head."),
    ("model.language_model.", "model."),
)
_NOT_TEXT = ("vision_tower.", "multi_modal_projector.", "model.vision_tower.", "model.multi_modal_projector.")


class TextTower(Mapping):
    """A multimodal checkpoint's text tower under the ``Gemma3ForCausalLM`` tensor names, over an open
    ``SafeFile``/``ShardedCheckpoint``: the methods the loaders use (``shape``, ``get``, ``get_slice``,
    ``dtype_name``) are forwarded under the file's own names; vision and projector tensors are hidden.
    Tensors of neither kind keep their names, so ``check_checkpoint`` reports them as unexpected."""

    def __init__(self, ckpt: Any):
        self.ckpt = ckpt
        self.where = getattr(ckpt, "where", None) or getattr(ckpt, "path", "checkpoint")
        self._names: dict[str, str] = {}
        for key in ckpt:
            if key.startswith(_NOT_TEXT):
                continue
            ours = next((new + key[len(old) :] for old, new in _TOWER_PREFIXES if key.startswith(old)), key)
            if ours in self._names:
                raise ConversionError(f"{self.where}: {key} and {self._names[ours]} are the same text-tower tensor")
            self._names[ours] = key

    def __getitem__(self, name: str) -> np.ndarray:
        return self.ckpt[self._names[name]]

    def __iter__(self):
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def shape(self, name: str) -> tuple[int, ...]:
        return self.ckpt.shape(self._names[name])

    def dtype_name(self, name: str) -> str:
        return self.ckpt.dtype_name(self._names[name])

    def get_slice(self, name: str):
        return self.ckpt.get_slice(self._names[name])

    def get(self, name: str, **kwargs) -> np.ndarray:
        return self.ckpt.get(self._names[name], **kwargs)

    def close(self) -> None:
        self.ckpt.close()


def text_view(ckpt: Any, hf: Mapping[str, Any]) -> Any:
    """``ckpt`` as the rules read it: itself, or its ``TextTower`` for a multimodal Gemma-3 config."""
    return TextTower(ckpt) if hf.get("model_type") == "gemma3" else ckpt


def _our_shape(rule: Rule, dims: Dims) -> tuple[int, ...]:
    return rule.to_ours(np.empty(rule.hf_shape(dims), np.uint8), dims).shape


def expected_shapes(dims: Dims) -> dict[str, tuple[int, ...]]:
    """Every HF key the checkpoint must contain, with its shape (``lm_head.weight`` only when untied)."""
    out = {}
    for rule in RULES[dims.arch]:
        if rule.path == ("unembed",) and dims.tied:
            continue
        layers = range(dims.n_layers) if rule.per_layer else [None]
        for i in layers:
            out[rule.key(i)] = rule.hf_shape(dims)
    return out


def _match(rules: list[Rule], key: str) -> tuple[Rule, int | None] | None:
    for rule in rules:
        m = re.fullmatch(rule.pattern, key)
        if m:
            return rule, (int(m.group(1)) if rule.per_layer else None)
    return None


def _set(tree: dict, path: tuple[str, ...], value: Any) -> None:
    for p in path[:-1]:
        tree = tree.setdefault(p, {})
    tree[path[-1]] = value


def _get(tree: Mapping, path: tuple[str, ...]) -> Any:
    for p in path:
        tree = tree[p]
    return tree


def check_checkpoint(ckpt: Any, dims: Dims, where: Any = None) -> bool:
    """Refuse a checkpoint that does not match ``dims``: missing tensors, unexpected tensors, mis-shaped
    tensors (both shapes named), and in a tied checkpoint an ``lm_head.weight`` that differs from the
    embeddings. Reads only headers, except that last comparison (row blocks of both tensors, through
    ``get_slice``). Returns whether a tied checkpoint carries an (equal, to be dropped) ``lm_head.weight``.
    Both loaders call it: ``hf_to_params`` on the host and ``jcircuits.scale.sharded_loading``."""
    where = where or getattr(ckpt, "where", None) or getattr(ckpt, "path", "checkpoint")
    expected = expected_shapes(dims)
    present = set(ckpt)
    extra_lm_head = dims.tied and "lm_head.weight" in present
    missing = sorted(set(expected) - present)
    unexpected = sorted(
        k
        for k in present - set(expected)
        if not _IGNORED.fullmatch(k) and not (extra_lm_head and k == "lm_head.weight")
    )
    if missing:
        raise ConversionError(
            f"{where}: missing tensors for {dims.arch} with {dims.n_layers} layers: {missing}"
        )
    if unexpected:
        raise ConversionError(f"{where}: unexpected tensors (not part of a {dims.arch} model): {unexpected}")
    bad = [
        f"{k}: expected {tuple(shape)}, got {tuple(ckpt.shape(k))}"
        for k, shape in expected.items()
        if tuple(ckpt.shape(k)) != tuple(shape)
    ]
    if extra_lm_head and tuple(ckpt.shape("lm_head.weight")) != expected["model.embed_tokens.weight"]:
        want, got = expected["model.embed_tokens.weight"], tuple(ckpt.shape("lm_head.weight"))
        bad.append(f"lm_head.weight: expected {want}, got {got}")
    if bad:
        raise ConversionError(f"{where}: tensors with the wrong shape for this config: " + "; ".join(bad))
    if extra_lm_head:
        head, embed = ckpt.get_slice("lm_head.weight"), ckpt.get_slice("model.embed_tokens.weight")
        step = max(1, (1 << 24) // max(1, dims.d_model))  # about 64 MB of float32 per block
        for a in range(0, dims.vocab_size, step):
            b = min(a + step, dims.vocab_size)  # (the package's slices do not clip)
            if not np.array_equal(head[a:b], embed[a:b]):
                raise ConversionError(
                    f"{where}: tie_word_embeddings is true but lm_head.weight differs from "
                    "model.embed_tokens.weight"
                )
    return extra_lm_head


def check_finite(name: str, value: np.ndarray) -> np.ndarray:
    """``value`` unchanged, or ``ConversionError`` naming tensor ``name`` and where its first NaN/Inf is: a
    model with non-finite weights computes NaN logits, and every graph of it would be silently meaningless."""
    bad = ~np.isfinite(value)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ConversionError(
            f"tensor {name!r} holds {int(bad.sum())} non-finite values (first at index {where}: "
            f"{value[where]}); the checkpoint is corrupt or was saved after a diverged run"
        )
    return value


def hf_to_params(ckpt: Any, hf_config: Mapping[str, Any], *, dtype: Any = np.float32) -> dict[str, Any]:
    """Convert an open checkpoint (``SafeFile``/``ShardedCheckpoint`` from ``open_checkpoint``) into our
    nested dict, validating it first (``check_checkpoint``: before any tensor but a tied ``lm_head`` is read).

    Raises ``ConversionError`` naming missing keys, unexpected keys, and mis-shaped tensors (with both
    shapes). A tied checkpoint may still carry ``lm_head.weight``; it must then equal the embeddings and is
    dropped.
    """
    dims = Dims.from_hf(hf_config)
    rules = RULES[dims.arch]
    ckpt = text_view(ckpt, hf_config)
    check_checkpoint(ckpt, dims)
    out: dict[str, Any] = {}
    for rule in rules:
        if rule.path == ("unembed",) and dims.tied:
            continue
        shape = _our_shape(rule, dims)
        _set(out, rule.path, np.empty(((dims.n_layers,) if rule.per_layer else ()) + shape, dtype))
    for key in expected_shapes(dims):
        rule, layer = _match(rules, key)
        # one tensor read at a time, converted as a view and copied into the stacked array
        value = check_finite(key, rule.to_ours(ckpt.get(key), dims))
        target = _get(out, rule.path)
        if layer is None:
            target[...] = value
        else:
            target[layer] = value
    return out


def params_to_hf(params: Mapping[str, Any], hf_config: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Our nested dict -> HF state dict (numpy, HF layout). ``lm_head.weight`` only when untied."""
    dims = Dims.from_hf(hf_config)
    out = {}
    for rule in RULES[dims.arch]:
        if rule.path == ("unembed",) and dims.tied:
            continue
        try:
            value = np.asarray(_get(params, rule.path))
        except KeyError:
            raise ConversionError(f"params lack {'.'.join(rule.path)} needed for {rule.key(0)}") from None
        if rule.per_layer:
            for i in range(dims.n_layers):
                out[rule.key(i)] = np.ascontiguousarray(rule.to_hf(value[i], dims))
        else:
            out[rule.key()] = np.ascontiguousarray(rule.to_hf(value, dims))
    for k, shape in expected_shapes(dims).items():
        if out[k].shape != shape:
            raise ConversionError(f"params give {k} shape {out[k].shape}, the config implies {shape}")
    return out


def read_hf_config(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if p.is_dir():
        p = p / "config.json"
    if not p.is_file():
        raise FileNotFoundError(f"no config.json at {p}")
    with open(p) as f:
        return json.load(f)


def load_hf_checkpoint(path: str | Path, *, dtype: Any = np.float32) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read an HF model directory (``config.json`` + single or sharded safetensors). Returns
    ``(params, hf_config)`` with ``params`` our nested dict of numpy arrays in ``dtype``."""
    hf_config = read_hf_config(path)
    with open_checkpoint(path) as ckpt:
        return hf_to_params(ckpt, hf_config, dtype=dtype), hf_config


def save_hf_checkpoint(
    params: Mapping[str, Any],
    hf_config: Mapping[str, Any],
    directory: str | Path,
    *,
    dtype: str | None = None,
    max_shard_bytes: int | None = None,
) -> Path:
    """Write ``params`` as an HF checkpoint directory (``config.json`` + safetensors, sharded with an index
    when ``max_shard_bytes`` is given and exceeded). ``dtype`` ("F32", "BF16", …) converts floating tensors.
    A multimodal Gemma-3 config gives a text-only ``Gemma3ForCausalLM`` checkpoint (``text_only_config``)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = params_to_hf(params, hf_config)
    meta = {"format": "pt"}
    if max_shard_bytes is None:
        save_file(state, directory / "model.safetensors", metadata=meta, dtype=dtype)
    else:
        save_sharded(state, directory, max_shard_bytes=max_shard_bytes, metadata=meta, dtype=dtype)
    with open(directory / "config.json", "w") as f:
        json.dump(text_only_config(hf_config), f, indent=2, sort_keys=True)
    return directory
