"""Run circuit-tracer 0.5.0's pruning and graph scores on graphs from an .npz; write its results to an .npz.

Run with the reference virtualenv's python (torch + circuit-tracer), e.g.

    .venv-ref/bin/python tests/reference/prune_ref.py graphs.npz results.npz

Input keys, for i in range(n_graphs): ``adj_{i}`` f32 [N, N]; ``probs_{i}`` f32 [K];
``sizes_{i}`` int [4] = (n_features, n_layers, n_tokens, n_logits); ``thresholds_{i}`` f64 [2] = (node, edge).
Output keys: ``node_mask_{i}``, ``edge_mask_{i}``, ``cumulative_{i}``, ``node_influence_{i}``,
``edge_scores_{i}`` (compute_edge_influence of the full matrix), ``scores_{i}`` = (replacement, completeness).

With ``--pt G.pt`` it also loads a circuit-tracer ``.pt`` graph (e.g. from jcircuits' ``Graph.to_circuit_tracer``)
with ``Graph.from_pt`` and adds its tensors as ``pt_<name>`` and a JSON summary as ``pt_info`` (one process, so
circuit-tracer's slow import is paid once).
"""

from __future__ import annotations

import argparse
import json
import logging

import numpy as np
import torch
from circuit_tracer.attribution.targets import LogitTarget
from circuit_tracer.graph import (
    Graph,
    compute_edge_influence,
    compute_graph_scores,
    compute_node_influence,
    prune_graph,
)
from circuit_tracer.utils.tl_nnsight_mapping import UnifiedConfig


def make_graph(adj: np.ndarray, probs: np.ndarray, sizes: np.ndarray) -> Graph:
    n_features, n_layers, n_tokens, n_logits = (int(x) for x in sizes)
    vocab = 1000
    cfg = UnifiedConfig(
        n_layers=n_layers,
        d_model=1,
        d_head=1,
        n_heads=1,
        d_mlp=1,
        d_vocab=vocab,
        tokenizer_name="none",
        model_name="none",
        original_architecture="none",
    )
    return Graph(
        input_string="",
        input_tokens=torch.zeros(n_tokens, dtype=torch.long),
        active_features=torch.zeros((n_features, 3), dtype=torch.long),
        adjacency_matrix=torch.from_numpy(adj.astype(np.float32)),
        cfg=cfg,
        selected_features=torch.arange(n_features),
        activation_values=torch.ones(n_features),
        logit_targets=[LogitTarget(token_str=f"t{i}", vocab_idx=vocab + i) for i in range(n_logits)],
        logit_probabilities=torch.from_numpy(probs.astype(np.float32)),
        scan="prune_ref",
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("inputs")
    ap.add_argument("outputs")
    ap.add_argument("--pt", help="a circuit-tracer .pt graph to load with Graph.from_pt and summarise")
    args = ap.parse_args()
    logging.disable(logging.WARNING)
    torch.set_num_threads(1)  # deterministic reductions

    data = np.load(args.inputs)
    out: dict[str, np.ndarray] = {}
    for i in range(int(data["n_graphs"])):
        g = make_graph(data[f"adj_{i}"], data[f"probs_{i}"], data[f"sizes_{i}"])
        node_thr, edge_thr = (float(x) for x in data[f"thresholds_{i}"])
        w = torch.zeros(g.adjacency_matrix.shape[0])
        w[-len(g.logit_targets) :] = g.logit_probabilities
        res = prune_graph(g, node_threshold=node_thr, edge_threshold=edge_thr)
        influence = compute_node_influence(g.adjacency_matrix, w)
        out[f"node_mask_{i}"] = res.node_mask.numpy()
        out[f"edge_mask_{i}"] = res.edge_mask.numpy()
        out[f"cumulative_{i}"] = res.cumulative_scores.numpy()
        out[f"node_influence_{i}"] = influence.numpy()
        out[f"edge_scores_{i}"] = compute_edge_influence(g.adjacency_matrix, w).numpy()
        out[f"scores_{i}"] = np.array(compute_graph_scores(g), dtype=np.float64)
    if args.pt:
        g = Graph.from_pt(args.pt)
        for name in (
            "adjacency_matrix",
            "active_features",
            "activation_values",
            "selected_features",
            "input_tokens",
            "logit_probabilities",
            "logit_token_ids",
        ):
            out[f"pt_{name}"] = getattr(g, name).numpy()
        info = {
            "input_string": g.input_string,
            "scan": g.scan,
            "vocab_size": g.vocab_size,
            "n_pos": g.n_pos,
            "targets": [[t.token_str, t.vocab_idx, type(t).__name__] for t in g.logit_targets],
            "cfg": dict(g.cfg.to_dict(), cls=type(g.cfg).__name__),
            "scores": compute_graph_scores(g),
        }
        out["pt_info"] = np.array(json.dumps(info))
    np.savez(args.outputs, **out)


if __name__ == "__main__":
    main()
