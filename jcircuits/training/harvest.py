"""Activation harvesting: run a model over a token stream and collect (feature input, MLP output) pairs.

For every layer, the transcoder's input hook (``mlp.hook_in``, ``ln2.hook_normalized`` or ``hook_resid_mid``) and
output hook (``mlp.hook_out`` or ``hook_mlp_out``) are read from one captured forward pass per batch. Positions
below ``skip_positions`` (the attention-sink start token, which attribution never gives features) and padding
are dropped, so every kept row is one real token. Results go to memory (``[N, L, D]`` arrays) or to sharded
safetensors files on disk (``shard_{k:05d}.safetensors`` with ``x``/``y``), read back with ``load_shards``.

Letters: N tokens kept, B batch, T positions, L layers, D model.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jcircuits.models import ModelConfig
from jcircuits.models.transformer import Params, forward_fn

__all__ = ["harvest", "load_shards"]


@partial(jax.jit, static_argnums=(1, 3, 4))
def _points(params, cfg, tokens_BT, input_hook, output_hook):
    _, inter, _ = forward_fn(params, cfg, tokens_BT, capture=True)
    # [L, B, T, D] -> [B, T, L, D]: one row per token holds every layer, as transcoder training wants.
    x = jnp.moveaxis(inter.hook(input_hook), 0, 2).astype(jnp.float32)
    y = jnp.moveaxis(inter.hook(output_hook), 0, 2).astype(jnp.float32)
    return x, y


def harvest(
    params: Params,
    cfg: ModelConfig,
    tokens_NT: np.ndarray,
    *,
    input_hook: str = "mlp.hook_in",
    output_hook: str = "mlp.hook_out",
    batch_size: int = 64,
    pad_id: int | None = None,
    skip_positions: int = 1,
    out_dir: str | Path | None = None,
    shard_rows: int = 65536,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray] | list[Path]:
    """Collect ``(x, y)`` pairs for every non-pad token at position ``>= skip_positions`` of ``tokens [S, T]``.

    Returns ``(x [N, L, D], y [N, L, D])`` float32 in memory, or, with ``out_dir``, the list of shard files
    written there (each at most ``shard_rows`` tokens). ``pad_id`` defaults to the config's pad token. The last
    batch is padded to ``batch_size`` with pad rows so one compiled shape serves the whole stream.
    """
    from tqdm.auto import tqdm

    tokens_NT = np.asarray(tokens_NT, np.int32)
    if tokens_NT.ndim != 2:
        raise ValueError(f"tokens must be [sequences, positions], got shape {tokens_NT.shape}")
    pad = cfg.pad_token_id if pad_id is None else pad_id
    if pad is None:
        raise ValueError("no pad id: pass pad_id= (the config defines no pad_token_id)")
    S, T = tokens_NT.shape
    keep_pos = np.arange(T) >= skip_positions
    xs, ys, shards, buf_rows = [], [], [], 0
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)

    def flush():
        nonlocal xs, ys, buf_rows
        if not xs:
            return
        from jcircuits_converters.safetensors_io import save_file

        path = out_dir / f"shard_{len(shards):05d}.safetensors"
        save_file({"x": np.concatenate(xs), "y": np.concatenate(ys)}, path)
        shards.append(path)
        xs, ys, buf_rows = [], [], 0

    for start in tqdm(range(0, S, batch_size), desc="harvest", unit="batch", disable=not progress):
        chunk = tokens_NT[start : start + batch_size]
        n = chunk.shape[0]
        if n < batch_size:
            chunk = np.concatenate([chunk, np.full((batch_size - n, T), pad, np.int32)])
        x, y = _points(params, cfg, jnp.asarray(chunk), input_hook, output_hook)
        mask = (chunk[:n] != pad) & keep_pos[None]
        x, y = np.asarray(x)[:n][mask], np.asarray(y)[:n][mask]
        xs.append(x)
        ys.append(y)
        buf_rows += x.shape[0]
        if out_dir is not None and buf_rows >= shard_rows:
            flush()
    if out_dir is not None:
        flush()
        return shards
    return np.concatenate(xs), np.concatenate(ys)


def load_shards(paths_or_dir: str | Path | list[str | Path]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate harvested shards (a directory of ``shard_*.safetensors`` or a list of files)."""
    from jcircuits_converters.safetensors_io import load_file

    if isinstance(paths_or_dir, (str, Path)):
        paths = sorted(Path(paths_or_dir).glob("shard_*.safetensors"))
        if not paths:
            raise FileNotFoundError(f"no shard_*.safetensors files in {paths_or_dir}")
    else:
        paths = [Path(p) for p in paths_or_dir]
    parts = [load_file(str(p)) for p in paths]
    return np.concatenate([p["x"] for p in parts]), np.concatenate([p["y"] for p in parts])
