"""Loading models: HF checkpoints (local directories or the Hub) and orbax checkpoints of our own params.

``load_model("google/gemma-2-2b")`` returns a complete ``Model`` (params, config, tokenizer, name);
``load_params`` the ``(params, cfg)`` pair alone. Both resolve the repository through ``huggingface_hub.snapshot_download``
(only config, safetensors and tokenizer files; the cache and ``HF_HUB_OFFLINE`` are respected), reads the
config strictly (``config_from_hf``) and converts the weights with ``jcircuits_converters.hf`` (pure numpy, streamed).
Orbax checkpoints store the params tree plus the ``ModelConfig`` as JSON beside it, so a checkpoint is
self-describing.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jcircuits.common import hub
from jcircuits.models.config import ConfigError, ModelConfig, config_from_hf
from jcircuits.models.model import Model
from jcircuits.models.tokenizer import Tokenizer
from jcircuits.models.transformer import LayerParams, Params, param_shapes
from jcircuits_converters import hf as hf_conv
from jcircuits_converters.transcoders import PICKLE_SUFFIXES as _PICKLE_SUFFIXES

__all__ = [
    "load_model",
    "load_params",
    "resolve_model_dir",
    "params_from_numpy",
    "params_to_numpy",
    "save_params_orbax",
    "load_params_orbax",
    "HUB_PATTERNS",
]

HUB_PATTERNS = [
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
]
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_CONFIG_NAME = "model_config.json"
_PARAMS_DIR = "params"


_FILE_SUFFIXES = _PICKLE_SUFFIXES + (".safetensors", ".json", ".npz", ".npy", ".yaml", ".yml")
_CONFIG_FILES = ["config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]


def resolve_model_dir(
    path_or_repo: str | os.PathLike, *, revision: str | None = None, config_only: bool = False
) -> Path:
    """A local directory for a model: the path itself, or a Hub snapshot for ``org/repo`` and
    ``hf://org/repo[/subdir]?revision=…`` (an explicit ``revision`` argument wins over the URI's).
    ``config_only`` fetches the config and tokenizer files alone (never the weights), for planning a run."""
    s = os.fspath(path_or_repo)
    p = Path(s).expanduser()
    if not s.startswith("hf://"):
        if p.exists():
            if p.is_dir():
                return p
            if p.suffix in _PICKLE_SUFFIXES:
                raise ValueError(
                    f"{p} is a PyTorch pickle file, and jcircuits never unpickles files; pass a Hugging Face "
                    "model directory (config.json + *.safetensors), e.g. one written by save_pretrained(), or "
                    f"convert it once with `jcircuits convert {p.parent} -o OUT_DIR` (needs torch)"
                )
            raise NotADirectoryError(f"{p} is a file; pass the model directory that holds config.json")
        if not _REPO_ID.match(s) or s.startswith((".", "/", "~")) or p.suffix in _FILE_SUFFIXES:
            raise FileNotFoundError(
                f"no such model directory: {s!r} is neither an existing directory nor an 'org/repo' Hub id"
            )
    ref = hub.parse_ref(s)
    patterns = _CONFIG_FILES if config_only else HUB_PATTERNS
    try:
        return hub.hub_snapshot(ref.repo_id, patterns, revision or ref.revision, ref.path)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{s!r} is not a local directory, so it was read as a Hub id: {e}") from None


def params_from_numpy(tree: dict[str, Any], cfg: ModelConfig, dtype: Any = jnp.float32) -> Params:
    """Our nested numpy dict (``converters`` layout) -> ``Params`` on device in ``dtype``, checking every
    shape
    against ``param_shapes(cfg)``."""
    expected = param_shapes(cfg)
    lay = tree["layers"]
    unembed = tree.get("unembed")
    if cfg.tie_embeddings and unembed is not None:
        raise ValueError("config ties the embeddings but the params carry an unembed matrix")
    params = Params(
        embed=tree["embed"],
        layers=LayerParams(**{k: lay.get(k) for k in LayerParams.__dataclass_fields__}),
        final_norm=tree["final_norm"],
        unembed=unembed,
    )
    got_paths = jax.tree_util.tree_flatten_with_path(params)[0]
    want = jax.tree_util.tree_flatten_with_path(expected)[0]
    got = {jax.tree_util.keystr(p): np.shape(x) for p, x in got_paths}
    exp = {jax.tree_util.keystr(p): tuple(x.shape) for p, x in want}
    if got.keys() != exp.keys():
        raise ValueError(
            f"params tree mismatch: missing {sorted(exp.keys() - got.keys())}, "
            f"unexpected {sorted(got.keys() - exp.keys())}"
        )
    bad = [f"{k}: expected {exp[k]}, got {got[k]}" for k in exp if tuple(got[k]) != exp[k]]
    if bad:
        raise ValueError("params with the wrong shape for this config: " + "; ".join(bad))
    return jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype=dtype), params)


def params_to_numpy(params: Params) -> dict[str, Any]:
    """``Params`` -> our nested numpy dict (the inverse of ``params_from_numpy``; ``None`` fields omitted)."""
    lay = {k: np.asarray(v) for k, v in vars(params.layers).items() if v is not None}
    out = {"embed": np.asarray(params.embed), "layers": lay, "final_norm": np.asarray(params.final_norm)}
    if params.unembed is not None:
        out["unembed"] = np.asarray(params.unembed)
    return out


def load_params(
    path_or_repo: str | os.PathLike, *, dtype: Any = jnp.float32, revision: str | None = None
) -> tuple[Params, ModelConfig]:
    """Load an HF Gemma-2 / Gemma-3 / Llama-3 / Qwen3 checkpoint from a local directory, ``org/repo`` or
    ``hf://org/repo?revision=``.

    Returns ``(params, cfg)``. Weights are converted tensor by tensor into ``dtype`` on the host (bf16 checkpoints
    read exactly), then moved to the default device.
    """
    model_dir = resolve_model_dir(path_or_repo, revision=revision)
    cfg = config_from_hf(model_dir)
    # Convert straight into the target dtype (jnp.bfloat16 is ml_dtypes' numpy bfloat16): one host copy.
    tree, _ = hf_conv.load_hf_checkpoint(model_dir, dtype=np.dtype(dtype))
    if cfg.tie_embeddings != ("unembed" not in tree):
        raise ConfigError("config and converter disagree on tied embeddings")
    return params_from_numpy(tree, cfg, dtype), cfg


def load_model(
    path_or_repo: str | os.PathLike,
    *,
    dtype: Any = jnp.float32,
    revision: str | None = None,
    name: str | None = None,
) -> Model:
    """A complete ``Model`` from a local HF checkpoint directory, ``org/repo`` or ``hf://org/repo?revision=``:
    params and config as ``load_params``, the tokenizer when the checkpoint has a ``tokenizer.json`` (else
    ``None``: pass token ids), and ``name`` (default: what was asked for)."""
    model_dir = resolve_model_dir(path_or_repo, revision=revision)
    params, cfg = load_params(model_dir, dtype=dtype)
    tok = Tokenizer.from_file(model_dir) if (model_dir / "tokenizer.json").is_file() else None
    return Model(params=params, cfg=cfg, tokenizer=tok, name=name or os.fspath(path_or_repo))


def save_params_orbax(path: str | os.PathLike, params: Params, cfg: ModelConfig) -> Path:
    """Save ``params`` with orbax under ``path/params`` and ``cfg`` as ``path/model_config.json``."""
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    path.mkdir(parents=True, exist_ok=True)
    dtypes = {str(np.dtype(x.dtype)) for x in jax.tree_util.tree_leaves(params)}
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(path / _PARAMS_DIR, params_to_numpy(params), force=True)
    meta = {"model_config": cfg.to_dict(), "dtype": sorted(dtypes)[0] if len(dtypes) == 1 else None}
    (path / _CONFIG_NAME).write_text(json.dumps(meta, indent=2))
    return path


def load_params_orbax(path: str | os.PathLike) -> tuple[Params, ModelConfig]:
    """Load what ``save_params_orbax`` wrote. Returns ``(params, cfg)`` with the saved dtypes."""
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    cfg_file = path / _CONFIG_NAME
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{cfg_file} not found: not a jcircuits orbax checkpoint")
    meta = json.loads(cfg_file.read_text())
    cfg = ModelConfig.from_dict(meta["model_config"])
    with ocp.StandardCheckpointer() as ckptr:
        tree = ckptr.restore(path / _PARAMS_DIR)
    params = params_from_numpy(jax.tree_util.tree_map(np.asarray, tree), cfg, dtype=None)
    return params, cfg
