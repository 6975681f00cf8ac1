"""Influence, pruning and graph scores, as circuit-tracer 0.5.0 defines them (``circuit_tracer/graph.py``).

Definition for definition, in float32, as jitted functions; every place where the reference does something a
reader may not expect is noted in the docstring of the function that reproduces it. Legend as in
``jcircuits.graph.container``: ``A_NN[target, source]`` over [features | errors | tokens | logits].

Every public function also takes a `SparseAdjacency` (``jcircuits.graph.sparse``) and then runs the same
definitions on its stored entries, in numpy / scipy on the host, without an ``[N, N]`` array.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jcircuits.graph.container import Graph, logit_weight_vector
from jcircuits.graph.cumulative import cumulative_fraction, find_threshold
from jcircuits.graph.sparse import (
    SparseAdjacency,
    sparse_edge_influence,
    sparse_graph_scores,
    sparse_influence,
    sparse_normalize,
    sparse_prune,
)

__all__ = [
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

_HI = jax.lax.Precision.HIGHEST


def normalize_matrix(A: jax.Array | SparseAdjacency) -> jax.Array | SparseAdjacency:
    """``[N, N] -> [N, N]``: ``|A|`` with each row divided by its sum (sums clamped below at 1e-10, so all-zero
    rows, e.g. error and token rows, stay zero). A `SparseAdjacency` gives one of the same pattern."""
    if isinstance(A, SparseAdjacency):
        return sparse_normalize(A)
    return _normalize(jnp.asarray(A))


@jax.jit
def _normalize(A: jax.Array) -> jax.Array:
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
    before a RuntimeError. The loop is a ``lax.while_loop``; the convergence check happens outside jit. A
    `SparseAdjacency` gives a numpy ``[N]`` (one sparse mat-vec per term).
    """
    if isinstance(A, SparseAdjacency):
        return sparse_influence(A, np.asarray(logit_weights, np.float32), max_iter)
    total, converged = _influence(jnp.asarray(A), jnp.asarray(logit_weights), max_iter=max_iter)
    _check_converged(converged, max_iter)
    return total


def compute_node_influence(adjacency_matrix: jax.Array, logit_weights: jax.Array) -> jax.Array:
    """``[N, N], [N] -> [N]``: influence of each node through the normalised graph (`normalize_matrix`)."""
    return compute_influence(normalize_matrix(adjacency_matrix), logit_weights)


@jax.jit
def _edge_scores(pruned: jax.Array, w: jax.Array) -> tuple[jax.Array, jax.Array]:
    normalized = _normalize(pruned)
    influence, converged = _influence(normalized, w)
    return normalized * (influence + w)[:, None], converged


def compute_edge_influence(pruned_matrix: jax.Array, logit_weights: jax.Array) -> jax.Array:
    """``[N, N], [N] -> [N, N]``: edge score ``Â[t, s] · (influence[t] + w[t])`` on the normalised matrix Â.

    An edge scores its share of its target's inputs times how much the target matters (its own influence plus,
    for logits, its weight). A `SparseAdjacency` gives the scores of its stored entries (same pattern)."""
    if isinstance(pruned_matrix, SparseAdjacency):
        return sparse_edge_influence(pruned_matrix, np.asarray(logit_weights, np.float32))
    scores, converged = _edge_scores(jnp.asarray(pruned_matrix), jnp.asarray(logit_weights))
    _check_converged(converged, 1000)
    return scores


class PruneResult(NamedTuple):
    """Masks of the kept nodes and edges. For a `SparseAdjacency` graph the arrays are numpy and
    ``edge_mask`` is a `SparseAdjacency` of bools over the graph's stored entries (same pattern)."""

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
    w = logit_weight_vector(logit_probabilities, n)
    n_fe = n - n_logits - n_tokens  # features and errors

    influence, conv_nodes = _influence(_normalize(A), w)
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
    cumulative = jnp.zeros_like(influence).at[order].set(cumulative_fraction(influence[order]))
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
    if isinstance(adjacency_matrix, SparseAdjacency):
        return PruneResult(
            *sparse_prune(
                adjacency_matrix,
                np.asarray(logit_probabilities, np.float32),
                n_features=int(n_features),
                n_tokens=int(n_tokens),
                n_logits=int(n_logits),
                node_threshold=float(node_threshold),
                edge_threshold=float(edge_threshold),
            )
        )
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
    must lie in [0, 1] (ValueError). Masks are JAX bool arrays; for a sparse graph (`SparseAdjacency`) numpy,
    with the edge mask over its stored entries (``jcircuits.graph.sparse.sparse_prune``).
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
    w = logit_weight_vector(logit_probabilities, n)
    err = slice(n_features, n_features + n_tokens * n_layers)
    tok = slice(err.stop, err.stop + n_tokens)
    normalized = _normalize(A)
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
    if isinstance(adjacency_matrix, SparseAdjacency):
        return sparse_graph_scores(
            adjacency_matrix,
            np.asarray(logit_probabilities, np.float32),
            n_features=int(n_features),
            n_layers=int(n_layers),
            n_tokens=int(n_tokens),
        )
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
