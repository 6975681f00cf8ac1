"""Steering from the viewer: the server's model runs a graph's prompt with pinned features edited, and the viewer
shows the top next tokens and a short greedy continuation before and after.

The request names features the way the graph does (layer, prompt position, feature index within the layer) and
says what to do to each: ``value`` (set the activation) or ``multiplier`` (scale its clean activation at that
position). ``from_position`` applies a value at the position and every later one, generated tokens included.
Everything is computed by `jcircuits.intervention.feature_intervention` and `~jcircuits.intervention.generate`
with their defaults (attention frozen on the prompt, effects propagate), so the numbers are those of
``jcircuits intervene`` for the same edits.

`Steerer.trace` attributes a new prompt on the same model (`jcircuits.attribution.attribute` with its defaults)
and exports it into the server's graph directory, as ``jcircuits attribute --graph-dir`` does.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from typing import Any

import numpy as np

from jcircuits.models import Model
from jcircuits.transcoders import TranscoderSet
from jcircuits.view.export import scan_name

__all__ = ["Steerer", "MAX_EDITS", "MAX_GENERATE", "MAX_TOP_K"]

MAX_EDITS = 64
MAX_GENERATE = 32
MAX_TOP_K = 20
MAX_TOKENS = 4096


@dataclasses.dataclass
class Steerer:
    """A model and its transcoders, and a lock: one steering computation at a time (each is jitted; the
    server's threads would only contend for the same device)."""

    model: Model
    transcoders: TranscoderSet
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    def info(self) -> dict[str, Any]:
        return {
            "available": True,
            "model": self.model.name,
            "scan": scan_name(self.transcoders.cfg.scan),
            "n_layers": self.model.cfg.n_layers,
            "n_features": self.transcoders.cfg.n_features,
        }

    def trace(self, request: Any, graph_dir) -> dict[str, Any]:
        """Attribute ``request["prompt"]`` and write ``<slug>.json`` (+ its index entry) into ``graph_dir``;
        FileExistsError when that slug is taken (a trace never overwrites a graph), ValueError for bad input."""
        from pathlib import Path

        from jcircuits.attribution import attribute
        from jcircuits.view.export import check_slug, export_graph_json

        if not isinstance(request, dict) or not isinstance(request.get("prompt"), str):
            raise ValueError('a trace request is {"prompt": TEXT, "slug": NAME}')
        prompt, slug = request["prompt"], request.get("slug")
        if not prompt.strip() or len(prompt) > 4000:
            raise ValueError("the prompt must be 1 to 4000 characters of text")
        if self.model.tokenizer is None:
            raise ValueError("the server's model has no tokenizer: it cannot trace text")
        check_slug(slug)
        with self.lock:  # one trace at a time, so two cannot both find the name free
            if (Path(graph_dir) / f"{slug}.json").exists():
                raise FileExistsError(f"a graph named {slug!r} exists already; choose another name")
            graph = attribute(self.model, self.transcoders, prompt, verbose=False)
            graph.settings["token_strings"] = [
                self.model.tokenizer.decode([int(t)]) for t in graph.input_tokens
            ]
            result = export_graph_json(graph, slug, graph_dir, tokenizer=self.model.tokenizer)
        return {"slug": slug, "nodes": result.n_nodes, "links": result.n_links, "summary": result.summary()}

    def _token(self, i: int) -> str:
        tok = self.model.tokenizer
        return f"#{i}" if tok is None else tok.decode([int(i)])

    def check_scan(self, scan: Any) -> None:
        """ValueError unless a graph of transcoder set ``scan`` was traced with this server's transcoders (a
        graph or a server that names no set is taken at its word; names compared as ``export.scan_name`` writes
        them)."""
        mine = self.transcoders.cfg.scan
        if mine and isinstance(scan, str) and scan not in ("", "local") and scan_name(scan) != scan_name(mine):
            raise ValueError(
                f"this graph was traced with transcoders {scan!r} but the server's model has {mine!r}; serve "
                "it with --model/--transcoders of that graph to steer it"
            )

    def _specs(self, edits: Any, n_prompt: int):
        from jcircuits.intervention import InterventionSpec

        if not isinstance(edits, list) or not 1 <= len(edits) <= MAX_EDITS:
            raise ValueError(f"edits must be a list of 1 to {MAX_EDITS} feature edits")
        L, F = self.model.cfg.n_layers, self.transcoders.cfg.n_features
        specs = []
        for k, e in enumerate(edits):
            if not isinstance(e, dict) or not all(
                type(e.get(f)) is int for f in ("layer", "position", "feature")
            ):
                raise ValueError(f"edits[{k}] needs integer layer, position and feature")
            layer, pos, feat = e["layer"], e["position"], e["feature"]
            if not (0 <= layer < L and 0 <= pos < n_prompt and 0 <= feat < F):
                raise ValueError(
                    f"edits[{k}] = layer {layer}, position {pos}, feature {feat} is outside this model "
                    f"({L} layers, {n_prompt} prompt positions, {F} features)"
                )
            modes = [m for m in ("value", "multiplier") if m in e]
            if len(modes) != 1:
                raise ValueError(f"edits[{k}] needs exactly one of value or multiplier")
            x = e[modes[0]]
            if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
                raise ValueError(f"edits[{k}].{modes[0]} must be a finite number")
            scale = modes[0] == "multiplier"
            if e.get("from_position") and scale:
                raise ValueError(
                    f"edits[{k}]: from_position needs a value (generated tokens have no clean activation)"
                )
            where = slice(pos, None) if e.get("from_position") else pos
            specs.append(InterventionSpec(layer, where, feat, float(x), scale))
        return specs

    def _top(self, logits_V, k: int) -> list[dict]:
        z = np.asarray(logits_V, np.float64)
        p = np.exp(z - z.max())
        p /= p.sum()
        order = np.argsort(-p, kind="stable")[:k]
        return [{"id": int(i), "token": self._token(i), "prob": float(p[i])} for i in order]

    def steer(self, request: Any) -> dict[str, Any]:
        """Answer one steering request ``{"tokens": [ids], "scan", "edits": [...], "generate": N, "top_k": K}``
        (see the module docstring); ValueError names what is wrong with it."""
        from jcircuits.intervention import feature_intervention, generate, specs_to_interventions

        if not isinstance(request, dict):
            raise ValueError('a steering request is {"tokens": [...], "edits": [...], "generate": N}')
        self.check_scan(request.get("scan"))
        tokens = request.get("tokens")
        V = self.model.cfg.vocab_size
        if (
            not isinstance(tokens, list)
            or not 1 <= len(tokens) <= MAX_TOKENS
            or not all(type(t) is int and 0 <= t < V for t in tokens)
        ):
            raise ValueError(f"tokens must be 1 to {MAX_TOKENS} token ids in [0, {V})")
        n_gen, top_k = request.get("generate", 8), request.get("top_k", 10)
        if type(n_gen) is not int or not 0 <= n_gen <= MAX_GENERATE:
            raise ValueError(f"generate must be a whole number of tokens from 0 to {MAX_GENERATE}")
        if type(top_k) is not int or not 1 <= top_k <= MAX_TOP_K:
            raise ValueError(f"top_k must be 1 to {MAX_TOP_K}")
        specs = self._specs(request.get("edits"), len(tokens))
        ids = np.asarray(tokens, np.int32)
        with self.lock:
            before, clean = feature_intervention(self.model, self.transcoders, ids, [])
            interventions = specs_to_interventions(specs, clean, len(tokens))
            after, _ = feature_intervention(
                self.model, self.transcoders, ids, interventions, return_activations=False
            )
            out = {
                "before": {"top": self._top(before[-1], top_k)},
                "after": {"top": self._top(after[-1], top_k)},
            }
            if n_gen:
                for key, edits in (("before", []), ("after", interventions)):
                    g = generate(self.model, self.transcoders, ids, edits, max_new_tokens=n_gen)
                    gen = [int(t) for t in g.tokens]
                    out[key]["generated"] = [self._token(t) for t in gen]
                    out[key]["generated_ids"] = gen
        clean = np.asarray(clean)
        out["edits"] = [
            {"layer": s.layer, "position": s.position if isinstance(s.position, int) else s.position.start,
             "feature": s.feature, "clean": float(clean[s.layer, s.position if isinstance(s.position, int) else
             s.position.start, s.feature]), "from_position": isinstance(s.position, slice)}
            for s in specs
        ]  # fmt: skip
        out["interventions"] = [
            [int(layer), pos if isinstance(pos, int) else f"{pos.start}..", int(feat), float(v)]
            for layer, pos, feat, v in interventions
        ]
        return out
