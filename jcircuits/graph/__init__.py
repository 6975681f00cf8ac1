"""Attribution graphs: the ``Graph`` container and its files (``container``); influence, pruning and scores as
circuit-tracer defines them (``prune``), on a dense matrix or a CSR `SparseAdjacency` (``sparse``). Graphs know
only arrays: nothing here imports a model or a viewer."""

from jcircuits.graph.container import Graph
from jcircuits.graph.prune import (
    PruneResult,
    compute_edge_influence,
    compute_graph_scores,
    compute_influence,
    compute_node_influence,
    find_threshold,
    graph_scores,
    normalize_matrix,
    prune_graph,
    prune_matrix,
)
from jcircuits.graph.sparse import SparseAdjacency

__all__ = [
    "Graph",
    "SparseAdjacency",
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
