"""The attribution `Graph` container and its file formats (safetensors + JSON metadata; circuit-tracer's ``.pt``).

Legend: S selected features, L layers, T positions, K logit targets, N = S + L·T + T + K nodes, in the order
[selected features | errors, layer-major then position | tokens | logits]. ``A_NN[target, source]``.

The adjacency is a dense ``[N, N]`` float32 array or a `SparseAdjacency` (CSR, ``jcircuits.graph.sparse``).
Files: format version 1 holds a dense matrix (written exactly as before sparse graphs existed); version 2 is
written only for a sparse adjacency or a recorded ``adjacency_dropped``, with the CSR arrays as the tensors
``adjacency_indptr`` / ``adjacency_indices`` / ``adjacency_data``.

Pruning, influence and scores are in ``jcircuits.graph.prune``; pictures of a graph in ``jcircuits.view``.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jcircuits.graph.sparse import SparseAdjacency

__all__ = ["Graph", "logit_weight_vector"]

FORMAT = "jcircuits.graph"
FORMAT_VERSION = 2
_META_KEY = "jcircuits_graph"
_CSR_TENSORS = ("adjacency_indptr", "adjacency_indices", "adjacency_data")
_TENSORS = (
    "adjacency_matrix",
    "active_features",
    "activation_values",
    "selected_features",
    "input_tokens",
    "logit_token_ids",
    "logit_probabilities",
)
_INT_TENSORS = ("active_features", "selected_features", "input_tokens", "logit_token_ids")
_HI = jax.lax.Precision.HIGHEST


# ----------------------------------------------------------------------------------------------------
# The container


@dataclasses.dataclass(eq=False)
class Graph:
    """An attribution graph: direct-effect adjacency over features, errors, tokens and logits.

    ``active_features [n, 3]`` holds (layer, pos, feature) of every active feature and ``activation_values [n]``
    their activations; ``selected_features [S]`` (ascending) indexes the ones that are nodes. ``adjacency_matrix
    [N, N]`` is float32, rows = targets, columns = sources. ``logit_token_ids [K]`` uses virtual ids
    ``vocab_size + i`` for custom targets; ``logit_probabilities [K]`` are the target weights; ``logit_positions
[K]`` (int, default every one at the last position ``T - 1``) the position each target is read at. ``settings`` is a
    JSON-able record of the attribution arguments and timings. Arrays may be numpy or JAX arrays; shapes and
    index consistency are checked on construction.

    ``adjacency_matrix`` may instead be a `SparseAdjacency` (its exact non-zeros; pruning, influence, scores,
    files and the JSON export take either). ``adjacency_dropped [N]`` (float32, or None) is, for a graph whose
    rows were sparsified when asked (``attribute(edge_tolerance=…, top_k_edges=…)``), the sum of |weight| each
    row lost, over all the sources the row was computed against.
    """

    input_string: str
    input_tokens: Any  # int [T]
    active_features: Any  # int [n, 3]
    activation_values: Any  # f32 [n]
    selected_features: Any  # int [S]
    adjacency_matrix: Any  # f32 [N, N]
    logit_token_ids: Any  # int [K]
    logit_probabilities: Any  # f32 [K]
    logit_labels: list[str]
    n_layers: int
    vocab_size: int
    scan: str | list[str] | None = None
    model_name: str = ""
    settings: dict = dataclasses.field(default_factory=dict)
    adjacency_dropped: Any = None  # f32 [N] or None
    logit_positions: Any = None  # int [K]; None: every target at the last position

    def __post_init__(self) -> None:
        _validate(self)

    def __repr__(self) -> str:
        """A few lines a person can read (prompt, node counts, top logits, settings), not the arrays."""
        prompt = self.input_string if len(self.input_string) <= 80 else self.input_string[:77] + "..."
        top = ", ".join(
            f"{lab!r} {float(p):.3f}"
            for lab, p in list(zip(self.logit_labels, np.asarray(self.logit_probabilities), strict=True))[:5]
        )
        more = f" (+{self.n_logits - 5} more)" if self.n_logits > 5 else ""
        keys = ("max_feature_nodes", "batch_size", "dtype", "desired_logit_prob", "max_n_logits")
        shown = ", ".join(f"{k}={self.settings[k]}" for k in keys if k in self.settings)
        return (
            f"Graph({self.model_name or 'model'}: {prompt!r}, {self.n_pos} tokens\n"
            f"  nodes {self.n_nodes} = {self.n_selected} features (of {len(self.activation_values)} active) + "
            f"{self.n_errors} errors + {self.n_pos} tokens + {self.n_logits} logits\n"
            f"  top logits: {top}{more}\n"
            f"  settings: {shown or '-'})"
        )

    # sizes ----------------------------------------------------------------------------------------
    @property
    def n_pos(self) -> int:
        return int(self.input_tokens.shape[0])

    @property
    def n_selected(self) -> int:
        return int(self.selected_features.shape[0])

    @property
    def n_logits(self) -> int:
        return int(self.logit_token_ids.shape[0])

    @property
    def n_errors(self) -> int:
        return self.n_layers * self.n_pos

    @property
    def n_nodes(self) -> int:
        return self.n_selected + self.n_errors + self.n_pos + self.n_logits

    # node index helpers ---------------------------------------------------------------------------
    @property
    def feature_slice(self) -> slice:
        return slice(0, self.n_selected)

    @property
    def error_slice(self) -> slice:
        return slice(self.n_selected, self.n_selected + self.n_errors)

    @property
    def token_slice(self) -> slice:
        start = self.n_selected + self.n_errors
        return slice(start, start + self.n_pos)

    @property
    def logit_slice(self) -> slice:
        start = self.n_selected + self.n_errors + self.n_pos
        return slice(start, start + self.n_logits)

    def error_index(self, layer: int, pos: int) -> int:
        """Node index of the error node at (layer, pos)."""
        if not (0 <= layer < self.n_layers and 0 <= pos < self.n_pos):
            raise IndexError(
                f"error node ({layer}, {pos}) out of range for {self.n_layers} layers x {self.n_pos} pos"
            )
        return self.n_selected + layer * self.n_pos + pos

    def token_index(self, pos: int) -> int:
        """Node index of the token (embedding) node at ``pos``."""
        if not 0 <= pos < self.n_pos:
            raise IndexError(f"token position {pos} out of range for {self.n_pos} positions")
        return self.n_selected + self.n_errors + pos

    @property
    def is_sparse(self) -> bool:
        return isinstance(self.adjacency_matrix, SparseAdjacency)

    def dense_adjacency(self) -> np.ndarray:
        """``[N, N]`` float32 numpy: the adjacency as a dense array (a copy for a sparse graph)."""
        if self.is_sparse:
            return self.adjacency_matrix.toarray()
        return np.asarray(self.adjacency_matrix)

    def to_sparse(self) -> Graph:
        """The same graph with its adjacency's exact non-zeros in a `SparseAdjacency` (``self`` if sparse)."""
        if self.is_sparse:
            return self
        return dataclasses.replace(self, adjacency_matrix=SparseAdjacency.from_dense(self.adjacency_matrix))

    def to_dense(self) -> Graph:
        """The same graph with a dense ``[N, N]`` adjacency (``self`` if dense)."""
        return dataclasses.replace(self, adjacency_matrix=self.dense_adjacency()) if self.is_sparse else self

    def logit_weights(self) -> jax.Array:
        """``[N]`` float32: the logit probabilities on the logit slots, zero elsewhere."""
        return logit_weight_vector(jnp.asarray(self.logit_probabilities, jnp.float32), self.n_nodes)

    # files ----------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write a safetensors file: the seven arrays as tensors, everything else as JSON in ``__metadata__``.

        A dense graph without ``adjacency_dropped`` gives a format-1 file, byte for byte what jcircuits wrote
        before sparse graphs; otherwise format 2: a sparse adjacency as its three CSR arrays (int64 indptr,
        int32 indices, float32 data) in place of ``adjacency_matrix``, and ``adjacency_dropped`` when recorded."""
        from jcircuits_converters.safetensors_io import save_file

        names = [n for n in _TENSORS if not (self.is_sparse and n == "adjacency_matrix")]
        tensors = {name: np.ascontiguousarray(np.asarray(getattr(self, name))) for name in names}
        if self.is_sparse:
            a = self.adjacency_matrix
            tensors.update(adjacency_indptr=a.indptr, adjacency_indices=a.indices, adjacency_data=a.data)
        if self.adjacency_dropped is not None:
            tensors["adjacency_dropped"] = np.ascontiguousarray(np.asarray(self.adjacency_dropped, np.float32))
        version = 2 if self.is_sparse or self.adjacency_dropped is not None else 1
        values = "adjacency_data" if self.is_sparse else "adjacency_matrix"
        for name in (values, "activation_values", "logit_probabilities"):
            bad = int(np.count_nonzero(~np.isfinite(tensors[name])))
            if bad:
                raise ValueError(
                    f"Graph.save: {name} holds {bad} non-finite values (NaN/Inf); a graph computed from "
                    "non-finite weights or activations is not written"
                )
        meta = {
            "format": FORMAT,
            "format_version": version,
            **({"adjacency": "csr" if self.is_sparse else "dense"} if version > 1 else {}),
            "input_string": self.input_string,
            "logit_labels": list(self.logit_labels),
            "n_layers": int(self.n_layers),
            "vocab_size": int(self.vocab_size),
            "scan": self.scan,
            "model_name": self.model_name,
            "settings": self.settings,
            "logit_positions": np.asarray(self.logit_positions).tolist(),
        }
        try:
            meta_json = json.dumps(meta, allow_nan=True)
        except TypeError as e:
            raise TypeError(
                f"Graph.save: metadata (settings, scan, labels) must be JSON-serialisable: {e}"
            ) from e
        save_file(tensors, path, metadata={_META_KEY: meta_json})

    @classmethod
    def load(cls, path: str | os.PathLike) -> Graph:
        """Read a file written by `Graph.save`, checking it is one and that its shapes are consistent."""
        from safetensors import safe_open

        path = os.fspath(path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"Graph.load: no such file: {path}")
        try:
            with safe_open(path, framework="numpy") as f:
                metadata = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # safetensors raises its own error type for corrupt headers / truncated data
            raise ValueError(f"Graph.load: {path} is not a readable safetensors file ({e})") from e
        if _META_KEY not in metadata:
            raise ValueError(f"Graph.load: {path} is not a jcircuits graph file (no '{_META_KEY}' metadata)")
        try:
            meta = json.loads(metadata[_META_KEY])
        except ValueError as e:
            raise ValueError(f"Graph.load: {path}: corrupt '{_META_KEY}' metadata ({e})") from e
        if meta.get("format") != FORMAT:
            raise ValueError(
                f"Graph.load: {path} is not a jcircuits graph file (format={meta.get('format')!r})"
            )
        if int(meta.get("format_version", -1)) > FORMAT_VERSION:
            raise ValueError(
                f"Graph.load: {path} has format_version {meta['format_version']}, newer than this jcircuits "
                f"({FORMAT_VERSION}); upgrade jcircuits"
            )
        layout = meta.get("adjacency", "dense")
        if layout not in ("dense", "csr"):
            raise ValueError(f"Graph.load: {path}: unknown adjacency layout {layout!r} (dense or csr)")
        expected = [k for k in _TENSORS if not (layout == "csr" and k == "adjacency_matrix")]
        expected += list(_CSR_TENSORS) if layout == "csr" else []
        missing = [k for k in expected if k not in tensors]
        if missing:
            raise ValueError(f"Graph.load: {path} lacks tensor(s) {missing}")
        extra = sorted(set(tensors) - set(expected) - {"adjacency_dropped"})
        if extra:
            raise ValueError(f"Graph.load: {path} has unexpected tensor(s) {extra}")
        fields = ("input_string", "logit_labels", "n_layers", "vocab_size", "scan", "model_name", "settings")
        absent = [k for k in fields if k not in meta]
        if absent:
            raise ValueError(f"Graph.load: {path}: metadata lacks {absent}")
        arrays = {k: tensors[k] for k in _TENSORS if k != "adjacency_matrix"}
        if layout == "csr":
            indptr = tensors["adjacency_indptr"]
            try:
                adj = SparseAdjacency(indptr, *(tensors[k] for k in _CSR_TENSORS[1:]), n=len(indptr) - 1)
            except ValueError as e:
                raise ValueError(f"Graph.load: {path}: corrupt sparse adjacency ({e})") from e
        else:
            adj = tensors["adjacency_matrix"]
        dropped = tensors.get("adjacency_dropped")
        return cls(**arrays, adjacency_matrix=adj, **{k: meta[k] for k in fields}, adjacency_dropped=dropped,
                   logit_positions=meta.get("logit_positions"))  # absent in files before target positions

    def to_circuit_tracer(self, path: str | os.PathLike, cfg: Mapping[str, Any] | None = None) -> None:
        """Write circuit-tracer 0.5.0's ``.pt`` graph (what its ``Graph.to_pt`` writes; load with ``Graph.from_pt``).

        Its file is a ``torch.save`` pickle of the constructor arguments of ``circuit_tracer.graph.Graph``. Fields
        map one to one, except: ``logit_targets`` is a list of its ``LogitTarget(token_str, vocab_idx)`` built from
        ``logit_labels`` / ``logit_token_ids``; and ``cfg`` must be its ``UnifiedConfig`` (``n_layers`` is used by
        its scores and JSON export, ``tokenizer_name`` by its JSON export). We fill ``n_layers``, ``d_vocab``,
        ``model_name`` and ``tokenizer_name`` (= ``model_name``) from the graph and ``original_architecture`` from
        ``settings["architecture"]`` when present; the other dimensions (``d_model, d_head, n_heads, d_mlp``) are
        not part of a graph and are written as 0 unless given in ``cfg`` (a mapping of UnifiedConfig fields).

        The circuit-tracer classes are written by reference (module + name), so circuit-tracer need not be
        installed here, only where the file is read. Needs torch; it is imported here, not at module import.
        circuit-tracer's graphs are dense: a sparse adjacency is written as its dense ``[N, N]`` matrix.
        """
        off_last = sorted(set(np.asarray(self.logit_positions).tolist()) - {self.n_pos - 1})
        if off_last:
            raise ValueError(
                f"to_circuit_tracer: circuit-tracer reads every logit at the last position; this graph has targets "
                f"at position(s) {off_last} of {self.n_pos} (attribute with the default target_positions)"
            )
        try:
            import torch
        except ImportError as e:
            raise ImportError("Graph.to_circuit_tracer needs PyTorch: `pip install torch`") from e

        ucfg: dict[str, Any] = {
            "n_layers": int(self.n_layers),
            "d_model": 0,
            "d_head": 0,
            "n_heads": 0,
            "d_mlp": 0,
            "d_vocab": int(self.vocab_size),
            "tokenizer_name": self.model_name,
            "model_name": self.model_name,
            "original_architecture": str(self.settings.get("architecture", "")),
            "n_key_value_heads": None,
            "dtype": None,
        }
        if cfg:
            unknown = sorted(set(cfg) - set(ucfg))
            if unknown:
                raise ValueError(
                    f"to_circuit_tracer: unknown UnifiedConfig field(s) {unknown}; known: {list(ucfg)}"
                )
            ucfg.update(cfg)
        unified = _ByName("circuit_tracer.utils.tl_nnsight_mapping", "UnifiedConfig", "from_dict")
        target = _ByName("circuit_tracer.attribution.targets", "LogitTarget")

        def t(x, dtype):
            return torch.from_numpy(np.array(x, dtype=dtype, copy=True))

        d = {
            "input_string": self.input_string,
            "adjacency_matrix": t(self.dense_adjacency(), np.float32),
            "cfg": _Reduce(unified, (ucfg,)),
            "active_features": t(self.active_features, np.int64),
            "logit_targets": [
                _Reduce(target, (str(label), int(idx)))
                for label, idx in zip(
                    self.logit_labels, np.asarray(self.logit_token_ids).tolist(), strict=True
                )
            ],
            "logit_probabilities": t(self.logit_probabilities, np.float32),
            "vocab_size": int(self.vocab_size),
            "input_tokens": t(self.input_tokens, np.int64),
            "selected_features": t(self.selected_features, np.int64),
            "activation_values": t(self.activation_values, np.float32),
            "scan": self.scan,
        }
        torch.save(d, os.fspath(path))


def _validate(g: Graph) -> None:
    def shape(name):
        x = getattr(g, name)
        if not hasattr(x, "shape"):
            x = np.asarray(x)
            setattr(g, name, x)
        return tuple(x.shape)

    for name in _TENSORS:
        shape(name)
        if name in _INT_TENSORS and not np.issubdtype(np.dtype(getattr(g, name).dtype), np.integer):
            raise ValueError(f"Graph: {name} must be an integer array, got {getattr(g, name).dtype}")
    T, K, S = shape("input_tokens"), shape("logit_token_ids"), shape("selected_features")
    for name, s in (("input_tokens", T), ("logit_token_ids", K), ("selected_features", S)):
        if len(s) != 1:
            raise ValueError(f"Graph: {name} must be 1-D, got shape {s}")
    af, av, lp = shape("active_features"), shape("activation_values"), shape("logit_probabilities")
    if len(af) != 2 or af[1] != 3:
        raise ValueError(f"Graph: active_features must be [n, 3] (layer, pos, feature), got {af}")
    if av != (af[0],):
        raise ValueError(f"Graph: activation_values {av} must be [n] with n = {af[0]} active features")
    if lp != K:
        raise ValueError(f"Graph: logit_probabilities {lp} must match logit_token_ids {K}")
    if len(g.logit_labels) != K[0]:
        raise ValueError(f"Graph: {len(g.logit_labels)} logit_labels for {K[0]} logit targets")
    if g.logit_positions is None:
        g.logit_positions = np.full(K, T[0] - 1, np.int64)
    g.logit_positions = np.asarray(g.logit_positions)
    if g.logit_positions.shape != K or (K[0] and not np.issubdtype(g.logit_positions.dtype, np.integer)):
        raise ValueError(f"Graph: logit_positions {g.logit_positions.shape} must be ints matching logit_token_ids {K}")
    g.logit_positions = g.logit_positions.astype(np.int64)
    if K[0] and (g.logit_positions.min() < 0 or g.logit_positions.max() >= T[0]):
        raise ValueError(f"Graph: logit_positions must lie in the prompt's {T[0]} positions (0..{T[0] - 1})")
    if g.n_layers < 0 or g.vocab_size < 0:
        raise ValueError(
            f"Graph: n_layers ({g.n_layers}) and vocab_size ({g.vocab_size}) must be non-negative"
        )
    n_nodes = g.n_nodes
    adj = shape("adjacency_matrix")
    if isinstance(g.adjacency_matrix, SparseAdjacency) and g.adjacency_matrix.dtype != np.float32:
        raise ValueError(f"Graph: a sparse adjacency must hold float32 weights, got {g.adjacency_matrix.dtype}")
    if g.adjacency_dropped is not None:
        g.adjacency_dropped = np.asarray(g.adjacency_dropped, np.float32)
        if g.adjacency_dropped.shape != (n_nodes,):
            raise ValueError(f"Graph: adjacency_dropped must be [N] = [{n_nodes}], got {g.adjacency_dropped.shape}")
    if adj != (n_nodes, n_nodes):
        raise ValueError(
            f"Graph: adjacency_matrix is {adj} but S + L*T + T + K = {S[0]} + {g.n_layers}*{T[0]} + {T[0]} + {K[0]}"
            f" = {n_nodes} (wrong N)"
        )
    sel = np.asarray(g.selected_features)
    if sel.size and (sel.min() < 0 or sel.max() >= af[0]):
        raise ValueError(f"Graph: selected_features must index active_features (0..{af[0] - 1})")
    if sel.size > 1 and not np.all(np.diff(sel) > 0):
        raise ValueError("Graph: selected_features must be strictly ascending")


class _ByName:
    """A callable that pickles as ``getattr(import_module(module), name[, attr])``: a reference the reader
    resolves, so writing a file that holds another library's objects does not need that library installed."""

    def __init__(self, module: str, name: str, attr: str | None = None):
        self.module, self.name, self.attr = module, name, attr

    def __call__(self, *args, **kwargs):  # pickle only accepts callables as reduce functions
        raise TypeError(f"{self.module}.{self.name} is a pickling reference, not a live object")

    def __reduce__(self):
        cls = _Reduce(getattr, (_Reduce(importlib.import_module, (self.module,)), self.name))
        return (getattr, (cls, self.attr)) if self.attr else cls.__reduce__()


class _Reduce:
    """Pickles as the call ``fn(*args)``."""

    def __init__(self, fn, args: tuple):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return (self.fn, self.args)


def logit_weight_vector(logit_probabilities: jax.Array, n_nodes: int) -> jax.Array:
    """``[N]`` float32: the ``K`` logit probabilities on the last ``K`` slots (the logit nodes), zero elsewhere."""
    k = logit_probabilities.shape[0]
    return jnp.zeros((n_nodes,), jnp.float32).at[n_nodes - k :].set(logit_probabilities.astype(jnp.float32))
