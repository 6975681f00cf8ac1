"""Attribution graphs: the `Graph` container, its file formats, and pruning / scores.

Legend: S selected features, L layers, T positions, K logit targets, N = S + L·T + T + K nodes, in the order
[selected features | errors, layer-major then position | tokens | logits]. ``A_NN[target, source]``.

Pruning and scores follow circuit-tracer 0.5.0 (``circuit_tracer/graph.py``) definition for definition, in
float32, as jitted functions; every place where the reference does something a reader may not expect is noted in
the docstring of the function that reproduces it.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
from collections.abc import Mapping
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "Graph",
    "PruneResult",
    "normalize_matrix",
    "compute_influence",
    "compute_node_influence",
    "compute_edge_influence",
    "find_threshold",
    "prune_graph",
    "prune_matrix",
    "compute_graph_scores",
    "graph_scores",
]

FORMAT = "jcircuits.graph"
FORMAT_VERSION = 1
_META_KEY = "jcircuits_graph"
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
    ``vocab_size + i`` for custom targets; ``logit_probabilities [K]`` are the target weights. ``settings`` is a
    JSON-able record of the attribution arguments and timings. Arrays may be numpy or JAX arrays; shapes and
    index consistency are checked on construction.
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

    def __post_init__(self) -> None:
        _validate(self)

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

    def logit_weights(self) -> jax.Array:
        """``[N]`` float32: the logit probabilities on the logit slots, zero elsewhere."""
        return _logit_weights(jnp.asarray(self.logit_probabilities, jnp.float32), self.n_nodes)

    def show(
        self,
        node_threshold: float = 0.8,
        edge_threshold: float = 0.98,
        *,
        tokenizer=None,
        width: int = 1000,
        height: int = 600,
    ):
        """A picture of the pruned graph that a notebook displays inline (SVG, or PNG via ``_repr_png_``);
        ``.save("g.svg"|"g.png")`` writes it. Layout as ``jcircuits render`` and the viewer (`jcircuits.render`)."""
        from jcircuits.render import GraphPicture, load_document  # pictures sit above graphs; import late

        doc = load_document(self, node_threshold, edge_threshold, tokenizer=tokenizer)
        return GraphPicture(doc, width, height)

    # files ----------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write a safetensors file: the seven arrays as tensors, everything else as JSON in ``__metadata__``."""
        from safetensors.numpy import save_file

        tensors = {name: np.ascontiguousarray(np.asarray(getattr(self, name))) for name in _TENSORS}
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "input_string": self.input_string,
            "logit_labels": list(self.logit_labels),
            "n_layers": int(self.n_layers),
            "vocab_size": int(self.vocab_size),
            "scan": self.scan,
            "model_name": self.model_name,
            "settings": self.settings,
        }
        try:
            meta_json = json.dumps(meta, allow_nan=True)
        except TypeError as e:
            raise TypeError(
                f"Graph.save: metadata (settings, scan, labels) must be JSON-serialisable: {e}"
            ) from e
        save_file(tensors, os.fspath(path), metadata={_META_KEY: meta_json})

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
        missing = [k for k in _TENSORS if k not in tensors]
        if missing:
            raise ValueError(f"Graph.load: {path} lacks tensor(s) {missing}")
        extra = sorted(set(tensors) - set(_TENSORS))
        if extra:
            raise ValueError(f"Graph.load: {path} has unexpected tensor(s) {extra}")
        fields = ("input_string", "logit_labels", "n_layers", "vocab_size", "scan", "model_name", "settings")
        absent = [k for k in fields if k not in meta]
        if absent:
            raise ValueError(f"Graph.load: {path}: metadata lacks {absent}")
        return cls(**{k: tensors[k] for k in _TENSORS}, **{k: meta[k] for k in fields})

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
        """
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
            "adjacency_matrix": t(self.adjacency_matrix, np.float32),
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
    if g.n_layers < 0 or g.vocab_size < 0:
        raise ValueError(
            f"Graph: n_layers ({g.n_layers}) and vocab_size ({g.vocab_size}) must be non-negative"
        )
    n_nodes = g.n_nodes
    adj = shape("adjacency_matrix")
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


# ----------------------------------------------------------------------------------------------------
# Influence, pruning and scores (circuit-tracer 0.5.0 definitions)


def _logit_weights(logit_probabilities: jax.Array, n_nodes: int) -> jax.Array:
    k = logit_probabilities.shape[0]
    return jnp.zeros((n_nodes,), jnp.float32).at[n_nodes - k :].set(logit_probabilities.astype(jnp.float32))


@jax.jit
def normalize_matrix(A: jax.Array) -> jax.Array:
    """``[N, N] -> [N, N]``: ``|A|`` with each row divided by its sum (sums clamped below at 1e-10, so all-zero
    rows, e.g. error and token rows, stay zero)."""
    a = jnp.abs(A.astype(jnp.float32))
    return a / jnp.maximum(a.sum(axis=1, keepdims=True), 1e-10)


@partial(jax.jit, static_argnames="max_iter")
def _influence(A: jax.Array, w: jax.Array, max_iter: int = 1000) -> tuple[jax.Array, jax.Array]:
    """``w·A + w·A² + …`` until a term is exactly zero; returns (influence [N], converged)."""

    def cond(state):
        current, _, it = state
        return jnp.any(current != 0) & (it < max_iter)

    def body(state):
        current, total, it = state
        current = jnp.matmul(current, A, precision=_HI)
        return current, total + current, it + 1

    first = jnp.matmul(w.astype(jnp.float32), A.astype(jnp.float32), precision=_HI)
    current, total, _ = jax.lax.while_loop(cond, body, (first, first, jnp.int32(0)))
    return total, ~jnp.any(current != 0)


def _check_converged(converged, max_iter: int) -> None:
    if not bool(converged):
        raise RuntimeError(
            f"influence power series did not vanish after {max_iter} iterations: the adjacency matrix has a "
            "cycle (attribution graphs are acyclic, so its normalised matrix should be nilpotent)"
        )


def compute_influence(A: jax.Array, logit_weights: jax.Array, max_iter: int = 1000) -> jax.Array:
    """``[N, N], [N] -> [N]``: total influence ``w·A + w·A² + …`` of each node on the weighted targets.

    As in circuit-tracer, the series is summed term by term until a term is *exactly* zero (A of an acyclic
    graph is nilpotent, so this ends after at most the graph's depth); ``max_iter`` extra products are allowed
    before a RuntimeError. The loop is a ``lax.while_loop``; the convergence check happens outside jit.
    """
    total, converged = _influence(jnp.asarray(A), jnp.asarray(logit_weights), max_iter=max_iter)
    _check_converged(converged, max_iter)
    return total


def compute_node_influence(adjacency_matrix: jax.Array, logit_weights: jax.Array) -> jax.Array:
    """``[N, N], [N] -> [N]``: influence of each node through the normalised graph (`normalize_matrix`)."""
    return compute_influence(normalize_matrix(jnp.asarray(adjacency_matrix)), logit_weights)


@jax.jit
def _edge_scores(pruned: jax.Array, w: jax.Array) -> tuple[jax.Array, jax.Array]:
    normalized = normalize_matrix(pruned)
    influence, converged = _influence(normalized, w)
    return normalized * (influence + w)[:, None], converged


def compute_edge_influence(pruned_matrix: jax.Array, logit_weights: jax.Array) -> jax.Array:
    """``[N, N], [N] -> [N, N]``: edge score ``Â[t, s] · (influence[t] + w[t])`` on the normalised matrix Â.

    An edge scores its share of its target's inputs times how much the target matters (its own influence plus,
    for logits, its weight)."""
    scores, converged = _edge_scores(jnp.asarray(pruned_matrix), jnp.asarray(logit_weights))
    _check_converged(converged, 1000)
    return scores


def _cumulative_fraction(sorted_desc: jax.Array) -> jax.Array:
    """Cumulative share of the total along a descending-sorted score vector, as the reference computes it
    (``cumsum / sum``). The cumsum is float32: circuit-tracer's ``torch.cumsum`` accumulates in double on CPU
    and in float32 on GPU, so on very large graphs (N² tiny edge scores) the threshold index can move by a few
    near-tied entries between the tools; on the parity graphs the masks agree exactly."""
    return jnp.cumsum(sorted_desc) / jnp.sum(sorted_desc)


@jax.jit
def find_threshold(scores: jax.Array, threshold: float) -> jax.Array:
    """The score at which the descending cumulative sum of ``scores`` first reaches ``threshold`` of the total.

    Keeping ``scores >= find_threshold(...)`` keeps that prefix *and every score tied with its last element*
    (so ties can keep more than the fraction asked for). At ``threshold = 1.0`` the result depends on float
    rounding of ``cumsum / sum`` in the reference: if the last non-zero cumulative value rounds below 1 the index
    runs off the end and is clamped to the smallest score (often 0, keeping everything, zero entries included).
    """
    s = jnp.sort(scores.astype(jnp.float32).reshape(-1))[::-1]
    idx = jnp.searchsorted(_cumulative_fraction(s), jnp.float32(threshold), side="left")
    return s[jnp.minimum(idx, s.shape[0] - 1)]


class PruneResult(NamedTuple):
    node_mask: jax.Array  # [N] bool, nodes kept
    edge_mask: jax.Array  # [N, N] bool, edges kept (target, source)
    cumulative_scores: jax.Array  # [N] f32, each node's cumulative influence fraction at its rank


def _check_threshold(name: str, value: float) -> None:
    if not (0.0 <= float(value) <= 1.0):
        raise ValueError(f"{name} must be between 0.0 and 1.0, got {value}")


@partial(jax.jit, static_argnames=("n_features", "n_tokens", "n_logits"))
def _prune(A, logit_probabilities, node_threshold, edge_threshold, *, n_features, n_tokens, n_logits):
    A = A.astype(jnp.float32)
    n = A.shape[0]
    w = _logit_weights(logit_probabilities, n)
    n_fe = n - n_logits - n_tokens  # features and errors

    influence, conv_nodes = _influence(normalize_matrix(A), w)
    node_mask = influence >= find_threshold(influence, node_threshold)
    node_mask = node_mask.at[n_fe:].set(True)

    pruned = jnp.where(node_mask[:, None] & node_mask[None, :], A, 0.0)
    edge_scores, conv_edges = _edge_scores(pruned, w)
    edge_mask = edge_scores >= find_threshold(edge_scores.reshape(-1), edge_threshold)

    def drop_dangling(node_mask, edge_mask):
        has_out = edge_mask[:, :n_fe].any(axis=0)
        node_mask = node_mask.at[:n_fe].set(node_mask[:n_fe] & has_out)
        has_in = edge_mask[:n_features].any(axis=1)
        return node_mask.at[:n_features].set(node_mask[:n_features] & has_in)

    def cond(state):
        node, old, _ = state
        return jnp.any(node != old)

    def body(state):
        node, _, edge = state
        edge = edge & node[:, None] & node[None, :]
        return drop_dangling(node, edge), node, edge

    node_mask, _, edge_mask = jax.lax.while_loop(
        cond, body, (drop_dangling(node_mask, edge_mask), node_mask, edge_mask)
    )

    order = jnp.argsort(-influence, stable=True)  # ties by node index (the reference's sort is unstable)
    cumulative = jnp.zeros_like(influence).at[order].set(_cumulative_fraction(influence[order]))
    return PruneResult(node_mask, edge_mask, cumulative), conv_nodes & conv_edges


def prune_matrix(
    adjacency_matrix: jax.Array,
    logit_probabilities: jax.Array,
    *,
    n_features: int,
    n_tokens: int,
    n_logits: int,
    node_threshold: float = 0.8,
    edge_threshold: float = 0.98,
) -> PruneResult:
    """`prune_graph` on a bare ``[N, N]`` adjacency (node order as in `Graph`) and ``[K]`` logit weights."""
    _check_threshold("node_threshold", node_threshold)
    _check_threshold("edge_threshold", edge_threshold)
    result, converged = _prune(
        jnp.asarray(adjacency_matrix),
        jnp.asarray(logit_probabilities, jnp.float32),
        jnp.float32(node_threshold),
        jnp.float32(edge_threshold),
        n_features=int(n_features),
        n_tokens=int(n_tokens),
        n_logits=int(n_logits),
    )
    _check_converged(converged, 1000)
    return result


def prune_graph(graph: Graph, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> PruneResult:
    """Keep the nodes and edges that carry most of the influence on the logits (circuit-tracer's prune_graph).

    1. Node influence (`compute_node_influence`) seeded with the logit probabilities; keep nodes with influence
       ``>= find_threshold(influence, node_threshold)``. Token and logit nodes are always kept, whatever their
       influence; error nodes are not.
    2. Zero the rows and columns of dropped nodes, recompute influence on that matrix and score edges
       (`compute_edge_influence`); keep edges ``>= find_threshold(all N² scores, edge_threshold)``. The zero
       entries take part in the sort, so a threshold that reaches them keeps zero-weight (non-)edges too.
    3. Repeatedly drop feature and error nodes with no kept outgoing edge (to any node, logits included) and
       feature nodes with no kept incoming edge, clearing the edges of dropped nodes, until nothing changes.
       Error nodes never have incoming edges, so only features are tested for them. The edge mask is only
       intersected with the node mask inside that loop: if the first pass drops nothing, edges touching nodes
       removed in step 1 stay set whenever the edge threshold resolves to 0 (thresholds near 1); we do the same.

    ``cumulative_scores [N]``: each node's cumulative influence fraction at its rank in descending influence
    (what the graph JSON shows as ``influence``). Tied influences are ranked by node index here; the reference
    uses an unstable sort, so tied non-zero influences may get different cumulative values there. Thresholds
    must lie in [0, 1] (ValueError). Masks are JAX bool arrays.
    """
    return prune_matrix(
        graph.adjacency_matrix,
        graph.logit_probabilities,
        n_features=graph.n_selected,
        n_tokens=graph.n_pos,
        n_logits=graph.n_logits,
        node_threshold=node_threshold,
        edge_threshold=edge_threshold,
    )


@partial(jax.jit, static_argnames=("n_features", "n_layers", "n_tokens"))
def _scores(A, logit_probabilities, *, n_features, n_layers, n_tokens):
    n = A.shape[0]
    w = _logit_weights(logit_probabilities, n)
    err = slice(n_features, n_features + n_tokens * n_layers)
    tok = slice(err.stop, err.stop + n_tokens)
    normalized = normalize_matrix(A)
    influence, converged = _influence(normalized, w)
    token_influence = influence[tok].sum()
    error_influence = influence[err].sum()
    replacement = token_influence / (token_influence + error_influence)
    non_error = 1.0 - normalized[:, err].sum(axis=-1)
    out = influence + w
    completeness = (non_error * out).sum() / out.sum()
    return replacement, completeness, converged


def graph_scores(
    adjacency_matrix: jax.Array,
    logit_probabilities: jax.Array,
    *,
    n_features: int,
    n_layers: int,
    n_tokens: int,
) -> tuple[float, float]:
    """`compute_graph_scores` on a bare ``[N, N]`` adjacency (node order as in `Graph`)."""
    r, c, converged = _scores(
        jnp.asarray(adjacency_matrix),
        jnp.asarray(logit_probabilities, jnp.float32),
        n_features=int(n_features),
        n_layers=int(n_layers),
        n_tokens=int(n_tokens),
    )
    _check_converged(converged, 1000)
    return float(r), float(c)


def compute_graph_scores(graph: Graph) -> tuple[float, float]:
    """(replacement_score, completeness_score) of an unpruned graph, as circuit-tracer defines them.

    Replacement: of the influence that reaches the logits from the graph's leaves, the fraction starting at
    token nodes, ``token / (token + error)``, where each sum is of node influences. Feature influence is not in
    it, and influence that reaches a token *through* an error is impossible (error rows are zero), so this is
    "how much of the explanation bottoms out in tokens rather than errors". NaN if both are zero.
    Completeness: mean over all nodes, weighted by ``influence + logit weight``, of the fraction of each node's
    normalised inputs that do not come from error nodes; nodes without inputs (tokens, errors) count as fully
    complete (fraction 1).
    """
    return graph_scores(
        graph.adjacency_matrix,
        graph.logit_probabilities,
        n_features=graph.n_selected,
        n_layers=graph.n_layers,
        n_tokens=graph.n_pos,
    )
