"""Memory estimates for one attribution run, before anything is loaded: peak bytes per device and on the host.

``estimate_attribution(cfg, tcfg, n_tokens=…, batch_size=…, mesh=(data, model), …)`` adds up, per device, the
arrays that are alive at the peak of a run, each divided by how ``jcircuits.scale.sharding.RULES`` splits it on the mesh:

* resident: model params and the transcoders' encoder arrays (``param_specs``/``transcoder_specs``) in their
  storage dtype ``params_dtype`` (default ``dtype``);
* the replacement step, always float32: the captured intermediates (kept for the whole run), attention patterns
  ``[L, H, T, T]`` (the capture's, twice while it is trimmed, and dropped once the frozen model holds its own),
  the encoder pre-activations/activations ``[L, C, F]`` of ``C = buckets.encode_chunk`` positions at a time (all
  ``T`` on short prompts), and one layer's float32 copy of bfloat16-stored weights
  and encoders (they are upcast layer by layer);
* the frozen linear model of the prompt (``LinearContext``): its patterns, or on long prompts
  (``buckets.recomputes_patterns``) what defines them (attention inputs ``[L, T, D]``, query/key weights) plus one
  block's recomputed ``[H, T, T]`` in the batch term; decoder vectors of active features padded by
  (layer, position) ``[L, T, K, D]``, or on long prompts *gathered* (each layer's distinct active rows plus an
  index and an activation per slot, ``buckets.gathers_decoders``; a CLT keeps one ``[T, K, L-l, D]`` block per
  source layer), errors, patterns, and a cast copy of the weights when ``dtype`` differs from the params' dtype;
* one batch of rows (the engine's largest buffers, split over ``data``): the per-layer source edges stacked by the
  backward scan ``[L, B, T, K]`` (CLT: slot gradients and contracted edges), the gathered rows ``[B, n_active]``
  in float32, and the batch of residual-stream gradients and attention intermediates of one block. Gradients and
  contraction outputs are float32 in both precision modes, so a bfloat16 (mixed) batch costs the float32 bytes
  plus the bfloat16 copies of each matmul's cotangent input (``mixed=True``); only the context halves. ``B`` is
  the engine's device batch (``buckets.device_batch``: ``batch_size``, cut on long prompts so a batch stays near
  ``ROW_BATCH_BYTES``). ``batch_bytes`` is this term alone; ``tests/test_sharding.py`` checks it against XLA's own
  ``compiled.memory_analysis()``.

On the host: the working rows — dense ``[rows, columns]`` float32 (twice while selecting) and the final square
adjacency when they fit ``DENSE_LIMIT_BYTES`` (``buckets.dense_rows_fit``, as ``adjacency="auto"`` decides), else
exact sparse rows with ``ROW_DENSITY`` of the columns non-zero (a stated assumption: a target row
reaches the features below its layer and up to its position) at 4 bytes a non-zero, their columns kept as runs
(``graph.sparse.ColumnRuns``: at most ``2L + 1`` a row, one per source layer's features and errors, one for the
tokens, 8 bytes each) — the dense activations the replacement step copies to the host (a chunk of positions at
a time), the host decoder buffer, and (without sharded loading) one host copy of the model while it is
converted. ``single_memory_peak`` is the peak when devices and host share one memory (CPU runs).

Every array with a position axis is sized at the padded length ``length_bucket(T)`` the engine runs at (the
replacement step's forward pass, the frozen model and the batches of rows), the graph's rows and columns at ``T``.

The number of active features is not known before the replacement step runs; it is ``l0 × L × (T − 1)`` with ``l0``
the mean active features per layer and position (default 64; pass the ``n_active`` of an earlier run's graph for an
exact figure) and the padded width ``K`` is ``2 × l0`` unless given.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import numpy as np

from jcircuits.common.arrays import array_leaves
from jcircuits.common.buckets import (  # the engine's padded sizes and memory rules
    dense_rows_fit,
    device_batch,
    encode_chunk,
    gathers_decoders,
    length_bucket,
    recomputes_patterns,
    row_bytes,
    size_bucket,
)
from jcircuits.models.config import ModelConfig
from jcircuits.models.transformer import param_specs
from jcircuits.scale.sharding import RULES, human, mesh_shape, shard_bytes, spec_for
from jcircuits.transcoders.core import TranscoderConfig, transcoder_specs

__all__ = [
    "MemoryEstimate",
    "estimate_attribution",
    "batch_bytes",
    "device_capacity",
    "host_capacity",
    "human",
]

DEFAULT_L0 = 64
ROW_DENSITY = 0.25  # non-zero share of a sparse-layout row's columns (measured 0.20 on the medium case, T=256)


@dataclasses.dataclass
class MemoryEstimate:
    """Peak bytes per device and on the host, with the terms that make them up (``device``/``host`` dicts)."""

    device: dict[str, int]
    host: dict[str, int]
    settings: dict[str, Any]

    @property
    def device_peak(self) -> int:
        """The largest of: the replacement step (the capture and its trimmed copy, both with their attention
        patterns), building the frozen model (the capture's patterns and the context's), and the rows (the
        context and one batch; the capture's patterns are dropped by then)."""
        d = self.device
        resident = d["params"] + d["transcoders"] + d["intermediates"]
        p = d["patterns"]
        return resident + max(2 * p + d["replacement"], p + d["context"], d["context"] + d["batch"])

    @property
    def single_memory_peak(self) -> int:
        """Peak bytes when devices and host share one memory (a CPU run): the device peak plus what the host
        holds beside it (the rows and the final matrix while the rows run, the replacement's copies before)."""
        h = self.host
        return max(self.device_peak + h["rows"] + h["adjacency"], self.device_peak + h["replacement"], h["loading"])

    @property
    def host_peak(self) -> int:
        h = self.host
        return max(h["loading"], h["replacement"] + h["rows"] + h["adjacency"])

    def report(self) -> str:
        """A short human-readable breakdown."""
        s = self.settings
        lines = [
            f"mesh {s['mesh'][0]}x{s['mesh'][1]} (data x model), T={s['n_tokens']}, batch {s['batch_size']}, "
            f"{s['dtype']}, ~{s['n_active']:,} active features (K={s['k_pad']}), "
            f"{s['n_feature_rows']:,} feature rows",
            f"  per device: peak {human(self.device_peak)} = "
            + ", ".join(f"{k} {human(v)}" for k, v in self.device.items()),
            f"  host:       peak {human(self.host_peak)} = "
            + ", ".join(f"{k} {human(v)}" for k, v in self.host.items()),
            f"  one memory for both (CPU devices): peak {human(self.single_memory_peak)}; rows kept "
            f"{s['layout']}, decoder vectors {s['decoders']}, attention patterns {s['patterns']}",
        ]
        return "\n".join(lines)

    def problems(self, device_capacity: int | None, host_capacity: int | None) -> list[str]:
        """Why the run cannot fit, each with the setting to change; empty when it fits."""
        s = self.settings
        out = []
        if device_capacity is not None and self.device_peak > device_capacity:
            d = self.device
            fixed = self.device_peak - d["batch"] if d["context"] + d["batch"] >= d["replacement"] else None
            msg = f"needs ~{human(self.device_peak)} per device but {human(device_capacity)} is available: "
            fixes = []
            if fixed is not None and fixed < device_capacity and d["batch"] > 0:
                per_row = d["batch"] / s["batch_size"]
                b = int((device_capacity - fixed) // per_row) // s["mesh"][0] * s["mesh"][0]
                if b >= max(1, s["mesh"][0]):
                    fixes.append(f"lower --batch-size to {b}")
            if s["dtype"] == "float32":
                fixes.append("use --dtype bfloat16 (halves the stored weights and the frozen model; rows stay float32)")
            fixes.append(
                "use a larger mesh (--mesh DATAxMODEL with a bigger model axis: weights and decoders split)"
            )
            out.append(msg + "; or ".join(fixes))
        if host_capacity is not None and self.host_peak > host_capacity:
            h = self.host
            msg = f"needs ~{human(self.host_peak)} of host memory but {human(host_capacity)} is available: "
            other = h["replacement"]
            per_row = 4 * s["n_columns"]
            room = host_capacity - other - h["adjacency"]
            if h["loading"] > host_capacity:
                msg += "load the model with sharded loading (one shard at a time) or use --dtype bfloat16"
            elif room > 0:
                n = max(0, int(room // per_row) - s["n_logits"])
                msg += f"lower --max-feature-nodes to {n}"
            else:
                msg += "use a shorter prompt or lower --max-feature-nodes"
            out.append(msg)
        return out


def _tree_bytes(specs: Any, mesh, dtype) -> int:
    """Bytes one device holds of the ``ArrayInfo`` tree ``specs`` in ``dtype`` on a ``(data, model)`` mesh."""
    return sum(
        shard_bytes(a.shape, dtype, spec_for(a.axes, a.shape, mesh, RULES), mesh) for a in array_leaves(specs)
    )


def _split(n: int, parts: int) -> int:
    return -(-n // parts)


def batch_bytes(
    cfg: ModelConfig,
    *,
    n_tokens: int,
    batch: int,
    k_pad: int,
    n_active: int,
    itemsize: int,
    clt: bool = False,
    mixed: bool = False,
) -> int:
    """The engine's largest buffers for one batch of ``batch`` target rows on one device (no sharding): stacked
    per-layer source edges ``[L, B, T, K]`` (a CLT: slot gradients ``[L, B, T, D]`` and the contracted edges), the
    gathered float32 rows ``[B, n_active]``, error/token edges, and the gradients and attention intermediates of
    one block's vmapped vjp ``[B, T, 4·D + 3·H·E]``, ``itemsize`` bytes each (4: the engine's gradients are
    float32). ``mixed``: plus the bfloat16 copies of those intermediates that mixed precision feeds its matmuls."""
    L, T, D, H, E = cfg.n_layers, n_tokens, cfg.d_model, cfg.n_heads, cfg.head_dim
    B, s = batch, itemsize
    if clt:  # slot gradients [L, B, T, D], per-layer edges [B, T, K_l], and XLA's transposed decoder copy
        src = L * B * T * D * s + L * B * T * k_pad * s + T * k_pad * D * s * L * (L + 1) // 2
    else:
        src = L * B * T * k_pad * s

    rows = B * size_bucket(n_active) * 4 + B * (L * T + T) * 4
    block = B * T * (4 * D + 3 * H * E) * s
    casts = B * T * (4 * D + 3 * H * E) * 2 if mixed else 0
    return src + rows + block + casts


def estimate_attribution(
    cfg: ModelConfig,
    tcfg: TranscoderConfig,
    *,
    n_tokens: int,
    batch_size: int = 256,
    max_feature_nodes: int | None = None,
    max_n_logits: int = 10,
    dtype: Any = "float32",
    params_dtype: Any = None,
    mesh: Any = (1, 1),
    l0: float | None = None,
    n_active: int | None = None,
    k_pad: int | None = None,
    sharded_loading: bool = False,
) -> MemoryEstimate:
    """Estimate peak memory of ``attribute`` for a model ``cfg``, transcoders ``tcfg`` and a prompt of ``n_tokens``
    tokens on a ``(data, model)`` mesh (a ``Mesh`` or a pair). See the module docstring for the terms."""
    dtype = np.dtype(jax.numpy.dtype(dtype))
    params_dtype = dtype if params_dtype is None else np.dtype(jax.numpy.dtype(params_dtype))
    sizes = mesh_shape(mesh)
    d, m = sizes["data"], sizes["model"]
    L, T, D, H, F, V = cfg.n_layers, n_tokens, cfg.d_model, cfg.n_heads, tcfg.n_features, cfg.vocab_size
    Tb = length_bucket(T)  # what the engine's position axes are padded to
    l0 = min(DEFAULT_L0 if l0 is None else l0, F)
    if n_active is None:
        n_active = int(round(l0 * L * max(T - 1, 1)))
    if k_pad is None:
        k_pad = max(1, int(math.ceil(2 * l0)))
    n_rows = n_active if max_feature_nodes is None else min(max_feature_nodes, n_active)
    selecting = n_rows < n_active
    s, sp = dtype.itemsize, params_dtype.itemsize
    clt = tcfg.kind == "clt"
    # the engine's device batch: batch_size rounded up to the data axis, cut by memory on long prompts
    per_row = row_bytes(L, Tb, D, D if clt else k_pad, n_active)
    B = device_batch(batch_size, d, per_row)

    params = _tree_bytes(param_specs(cfg), (d, m), params_dtype)
    transcoders = _tree_bytes(transcoder_specs(tcfg), (d, m), params_dtype)

    heads = _split(H, m) if H % m == 0 else H
    recompute = recomputes_patterns(L, H, Tb, 4)  # as the engine decides: too large to store, recomputed
    # the replacement step's forward is float32 whatever the storage
    patterns = 0 if recompute else L * heads * Tb * Tb * 4
    intermediates = (L + 1 + 5 * L) * Tb * D * 4 + 4 * Tb * _split(V, m if V % m == 0 else 1)
    feats_dev = _split(F, m) if F % m == 0 else F
    upcast = 0 if sp == 4 else (params + transcoders) * 4 // sp // L  # one layer's float32 copy at a time
    chunk = encode_chunk(L, Tb, F)  # positions encoded at a time (all of them on short prompts)
    replacement = 2 * L * chunk * feats_dev * 4 + 3 * Tb * cfg.d_mlp * 4 + upcast

    k_dev = _split(k_pad, m) if k_pad % m == 0 else k_pad
    U = min(F, size_bucket(max(1, math.ceil(n_active / L))))  # distinct active features of a layer, at most
    gathered = not clt and gathers_decoders(L, Tb, k_pad, D, U, s)
    if clt:
        dec = Tb * k_dev * D * s * L * (L + 1) // 2
    elif gathered:  # each layer's distinct rows (float32, whole) + a row index and an activation per slot
        dec = L * U * D * 4 + L * Tb * k_dev * 8
    else:
        dec = L * Tb * k_dev * D * s
    cast = 0 if dtype == params_dtype else params * s // sp + transcoders * s // sp
    if recompute:  # attention inputs and float32 query/key weights instead of [L, H, T, T]
        kv = _split(cfg.n_kv_heads, m) if cfg.n_kv_heads % m == 0 else cfg.n_kv_heads
        frozen_attn = L * Tb * D * 4 + L * D * (heads + kv) * cfg.head_dim * 4
    else:
        frozen_attn = L * heads * Tb * Tb * s
    context = dec + frozen_attn + 2 * L * Tb * D * s + cast
    batch = batch_bytes(
        cfg,
        n_tokens=Tb,
        batch=_split(B, d),
        k_pad=k_dev,
        n_active=n_active,
        itemsize=4,
        clt=clt,
        mixed=s < 4,
    )
    if gathered:  # the scan builds one layer's [T, K, D] source vectors at a time
        batch += Tb * k_dev * D * s
    if recompute:  # and one block's pattern (scores and softmax, float32)
        batch += 2 * heads * Tb * Tb * 4

    n_cols = n_active + L * T + T
    n_logits = max_n_logits
    N = n_rows + L * T + T + n_logits
    leaves = array_leaves(param_specs(cfg))
    if sharded_loading:  # one shard of one layer's tensor at a time
        loading = max(
            math.prod(x.shape[1:]) if x.ndim == 3 or x.ndim == 4 else math.prod(x.shape) for x in leaves
        )
        loading = loading * 4 // max(1, m)
    else:  # load_model converts the whole checkpoint on the host, then copies it to the devices
        loading = sum(math.prod(x.shape) * sp for x in leaves) + L * D * F * sp
    dense = dense_rows_fit(n_logits + n_rows, n_cols, N, selecting)
    decoders_host = L * U * D * 4 + L * T * k_pad * 8 if gathered else L * T * k_pad * D * 4
    if dense:  # [rows, columns] float32 (and its normalised copy while selecting), then the [N, N] matrix
        rows = (n_logits + n_rows) * n_cols * 4 * (2 if selecting else 1)
        adjacency = N * N * 4
    else:  # a value per non-zero, columns as runs; one arriving batch's dense block and its CSR transients
        nnz = int((n_logits + n_rows) * n_cols * ROW_DENSITY)
        runs = (n_logits + n_rows) * (2 * L + 1) * 8
        rows = nnz * 4 + runs + B * n_cols * 4 + int(B * n_cols * ROW_DENSITY) * 16
        adjacency = int((n_logits + n_rows) * (N - n_logits) * ROW_DENSITY) * 8
    host = dict(
        loading=loading,
        replacement=L * chunk * F * 4 + decoders_host + n_active * 36,
        rows=rows,
        adjacency=adjacency,
    )
    device = dict(
        params=params,
        transcoders=transcoders,
        intermediates=intermediates,
        patterns=patterns,
        replacement=replacement,
        context=context,
        batch=batch,
    )
    settings = dict(
        mesh=(d, m),
        n_tokens=T,
        batch_size=B,
        dtype=str(dtype),
        n_active=n_active,
        k_pad=k_pad,
        n_feature_rows=n_rows,
        n_columns=n_cols,
        n_logits=n_logits,
        layout="dense" if dense else "sparse",
        decoders="gathered" if gathered else "padded",
        patterns="recomputed" if recompute else "stored",
    )
    return MemoryEstimate(device=device, host=host, settings=settings)


def device_capacity(override: int | None = None, n_devices: int | None = None) -> tuple[int | None, str]:
    """Bytes one device can hold and where the number came from: ``override``, the device's own
    ``memory_stats()['bytes_limit']`` (GPU/TPU), or, for CPU devices, the available host RAM shared by the
    ``n_devices`` devices a run uses (default: all local devices)."""
    if override is not None:
        return override, "--device-memory"
    dev = jax.local_devices()[0]
    stats = None
    try:
        stats = dev.memory_stats()
    except Exception:  # some backends raise instead of returning None
        stats = None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"]), f"{dev.platform} memory_stats"
    ram = host_capacity()
    if ram is None:
        return None, "unknown"
    n = jax.local_device_count() if n_devices is None else n_devices
    return ram // max(1, n), f"host RAM / {n} device{'s' if n > 1 else ''}"


def host_capacity() -> int | None:
    """Available host RAM in bytes (``psutil``, else ``/proc/meminfo``), or ``None`` when unknown."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def parse_bytes(text: str) -> int:
    """``"16GiB"``, ``"80GB"``, ``"512M"`` or a plain number of bytes → bytes."""
    t = text.strip().replace(" ", "")
    units = {"": 1, "B": 1, "K": 2**10, "KB": 10**3, "KIB": 2**10, "M": 2**20, "MB": 10**6, "MIB": 2**20}
    units |= {"G": 2**30, "GB": 10**9, "GIB": 2**30, "T": 2**40, "TB": 10**12, "TIB": 2**40}
    i = len(t)
    while i and not t[i - 1].isdigit() and t[i - 1] != ".":
        i -= 1
    num, unit = t[:i], t[i:].upper()
    if not num or unit not in units:
        raise ValueError(f"memory size must look like 16GiB, 80GB or 512MiB, got {text!r}")
    return int(float(num) * units[unit])
