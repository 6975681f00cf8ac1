"""Two-hop circuit in the embedded default model: the answer goes through a "state" feature, and swapping that
feature for another state's changes the answer to that state's capital.

Run from the repository root (a few minutes on 2 CPU cores)::

    python experiments/two_hop/run.py            # writes experiments/two_hop/{results.md,results.json,graph.svg}

Steps:
1. Attribute ``the capital of the state containing dallas is`` (-> austin) and draw the pruned graph.
2. Find *state features*: for every prompt ``the capital of the state containing CITY is`` (all 60 cities), read the
   transcoder activations at the city position and the last position. A feature is a state-S feature at
   (layer, position) when it is active on >= 80% of S's cities and on <= 10% of the other states' cities.
3. Show that the graph's most influential features are Texas features (influence on the logits, from the
   graph's adjacency matrix). Every feature listed is named by the shipped feature dashboards
   (``jcircuits.default.default_features()``): its automatic label and the sentence of its top activation.
4. Intervene (``jcircuits.intervention.feature_intervention``; attention patterns frozen, later layers live): turn
   the Texas features off and set California's features to their mean activation on California prompts, at one
   layer at a time and at all layers; report p(austin), p(sacramento) and the top token. Then do the same swap for
   every (source state, target state) pair, one held-in city per source state, and count how often the answer
   becomes the target's capital.
5. Held-out cities (two-hop sentence never trained, so the answer must be composed): swap *only* the state
   features for every (source, target) pair and count how often the answer becomes the target's capital; show
   one prompt (pasadena: sacramento -> austin) in full.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import jax
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

from jcircuits.attribution import attribute  # noqa: E402
from jcircuits.default import DEFAULT_DIR, default_features, default_model, default_transcoders  # noqa: E402
from jcircuits.graph import compute_node_influence  # noqa: E402
from jcircuits.intervention import feature_intervention  # noqa: E402
from jcircuits.training.corpus import STATES  # noqa: E402
from jcircuits.view.export import graph_to_json  # noqa: E402
from jcircuits.view.render import render_svg  # noqa: E402

TEMPLATE = "the capital of the state containing {} is"
ON, OFF = 0.6, 0.2
SWAP_LAYERS = (2, 3)  # where state features live at the last position (see results.md)
SHORTCUT_LAYERS = (1, 2)
SCALES = (1.0, 2.0, 4.0)
MAIN_SCALE = 2.0
HEADLINE_HELD_OUT = "pasadena"  # a held-out california city: its two-hop sentence was never trained


def clean_acts(model, ts, city: str) -> np.ndarray:
    """Feature activations ``[L, T, F]`` on the two-hop prompt for ``city`` (no edits)."""
    _, acts = feature_intervention(model, ts, TEMPLATE.format(city), [])
    return np.asarray(acts)


def probs_last(logits) -> np.ndarray:
    return np.asarray(jax.nn.softmax(np.asarray(logits)[-1].astype(np.float64)))


def state_features(acts: dict[str, np.ndarray], positions: list[int]):
    """Per state: boolean mask ``[L, P, F]`` of its features at ``positions``, and its mean activations."""
    on = {
        s: np.stack([acts[c][:, positions] > 0 for c in cities]).mean(0) for s, (_, cities) in STATES.items()
    }
    mean = {s: np.stack([acts[c][:, positions] for c in cities]).mean(0) for s, (_, cities) in STATES.items()}
    feats = {}
    for s in STATES:
        others = np.max(np.stack([on[t] for t in STATES if t != s]), 0)
        feats[s] = (on[s] >= ON) & (others <= OFF)
    return feats, mean


def set_edits(state: str, feats, positions: list[int], layers, value=None) -> list[tuple]:
    """Interventions setting ``state``'s features in ``layers`` to 0 (``value=None``) or to ``value[l, p, f]``."""
    L, P, F = np.nonzero(feats[state])
    return [
        (int(l), positions[p], int(f), 0.0 if value is None else float(value[l, p, f]))
        for l, p, f in zip(L, P, F, strict=True)
        if l in layers
    ]


def swap_edits(
    src: str, dst: str, feats, mean, positions: list[int], layers, scale: float = 1.0
) -> list[tuple]:
    """Turn ``src``'s state features off and ``dst``'s on (at ``scale`` x their mean activation), in ``layers``."""
    return set_edits(src, feats, positions, layers) + set_edits(
        dst, feats, positions, layers, scale * mean[dst]
    )


def city_edits(acts_LTF: np.ndarray, feats, city_pos: int, layers) -> list[tuple]:
    """Turn off the features active at the city position in ``layers`` that are no state's feature (the city's
    own features, through which the model also maps a trained city straight to its capital)."""
    any_state = np.any(np.stack([feats[s][:, 0] for s in feats]), 0)  # [L, F] at the city position
    return [
        (int(l), city_pos, int(f), 0.0)
        for l in layers
        for f in np.nonzero(acts_LTF[l, city_pos])[0]
        if not any_state[l, f]
    ]


def main() -> int:
    t0 = time.perf_counter()
    model, ts = default_model(), default_transcoders()
    tok = model.tokenizer
    L = model.cfg.n_layers
    record = json.loads((DEFAULT_DIR / "training.json").read_text())
    cap_id = {s: tok.token_to_id(cap) for s, (cap, _) in STATES.items()}
    prompt = TEMPLATE.format("dallas")
    ids = tok.encode(prompt)
    city_pos, last_pos = int(np.nonzero(ids == tok.token_to_id("dallas"))[0][0]), len(ids) - 1
    positions = [city_pos, last_pos]

    # 1. the graph
    graph = attribute(model, ts, prompt, verbose=False)
    doc, _ = graph_to_json(graph, "two_hop_dallas", tokenizer=tok)
    (HERE / "graph.svg").write_text(render_svg(doc, 1100, 620), encoding="utf-8")

    # 2. state features
    acts = {c: clean_acts(model, ts, c) for _, (_, cities) in STATES.items() for c in cities}
    feats, mean = state_features(acts, positions)
    n_feats = {s: int(feats[s].sum()) for s in STATES}
    store = default_features()
    where = {city_pos: "city", last_pos: "last"}
    state_list = {
        s: [
            {"layer": int(l), "pos": where[positions[pi]], "feature": int(f), **dashboard(store, int(l), int(f))}
            for l, pi, f in zip(*np.nonzero(feats[s]), strict=True)
        ]
        for s in STATES
    }

    # 3. which graph features matter, and are they state features?
    infl = np.asarray(compute_node_influence(graph.adjacency_matrix, graph.logit_weights()))
    sel = np.asarray(graph.active_features)[np.asarray(graph.selected_features)]
    vals = np.asarray(graph.activation_values)[np.asarray(graph.selected_features)]
    order = np.argsort(-infl[: len(sel)])[:10]
    top_rows = []
    for i in order:
        l, p, f = (int(v) for v in sel[i])
        owner = "-"
        if p in positions:
            owners = [s for s in STATES if feats[s][l, positions.index(p), f]]
            owner = owners[0] if owners else "-"
        top_rows.append(
            {
                "layer": l,
                "pos": p,
                "token": tok.id_to_token(int(ids[p])),
                "feature": f,
                "activation": float(vals[i]),
                "influence": float(infl[i]),
                "state_feature_of": owner,
                **dashboard(store, l, f),
            }
        )
    row = np.asarray(graph.adjacency_matrix)[graph.logit_slice][0]  # direct effects on the top logit
    f_row = row[: len(sel)]
    direct = {
        "features_at_city_position": float(f_row[sel[:, 1] == city_pos].sum()),
        "features_at_last_position": float(f_row[sel[:, 1] == last_pos].sum()),
        "features_elsewhere": float(f_row[(sel[:, 1] != city_pos) & (sel[:, 1] != last_pos)].sum()),
        "errors": float(row[graph.error_slice].sum()),
        "tokens": float(row[graph.token_slice].sum()),
    }
    tx_share = sum(r["influence"] for r in top_rows if r["state_feature_of"] == "texas")

    # 4. interventions on the dallas prompt: state swap at the layers holding state features, with and without
    # the city's own features (the memorised city -> capital shortcut) turned off at the city position
    logits, _ = feature_intervention(model, ts, prompt, [])
    base = probs_last(logits)
    rows = [{"edit": "none (clean)", "n_edits": 0, **_summ(base, cap_id, tok)}]
    city_off = city_edits(acts["dallas"], feats, city_pos, SHORTCUT_LAYERS)
    p = probs_last(feature_intervention(model, ts, prompt, city_off)[0])
    rows.append(
        {"edit": "dallas's own features off (layers 1-2)", "n_edits": len(city_off), **_summ(p, cap_id, tok)}
    )
    off = set_edits("texas", feats, positions, range(L))
    p = probs_last(feature_intervention(model, ts, prompt, off)[0])
    rows.append({"edit": "texas state features off", "n_edits": len(off), **_summ(p, cap_id, tok)})
    both = city_off + off
    p = probs_last(feature_intervention(model, ts, prompt, both)[0])
    rows.append(
        {"edit": "dallas's own + texas state features off", "n_edits": len(both), **_summ(p, cap_id, tok)}
    )
    for shortcut in (False, True):
        for k in SCALES:
            edits = swap_edits("texas", "california", feats, mean, positions, SWAP_LAYERS, k)
            edits = (city_off if shortcut else []) + edits
            p = probs_last(feature_intervention(model, ts, prompt, edits)[0])
            name = f"texas -> california state features ({k:g}x mean)" + (
                " + dallas's own off" if shortcut else ""
            )
            rows.append({"edit": name, "n_edits": len(edits), **_summ(p, cap_id, tok)})

    # every (source state, target state) pair, first trained city of each source state, with the main recipe
    held = set(_world_held_out(record))
    pairs, hits = [], 0
    for s, (_, cities) in STATES.items():
        city = next(c for c in cities if c not in held)
        pr = TEMPLATE.format(city)
        own = city_edits(acts[city], feats, city_pos, SHORTCUT_LAYERS)
        for t in STATES:
            if t == s:
                continue
            edits = own + swap_edits(s, t, feats, mean, positions, SWAP_LAYERS, MAIN_SCALE)
            p = probs_last(feature_intervention(model, ts, pr, edits)[0])
            ok = int(p.argmax()) == cap_id[t]
            hits += ok
            pairs.append({"city": city, "from": s, "to": t, "p_target": float(p[cap_id[t]]), "hit": bool(ok)})

    # held-out cities: their two-hop sentence was never trained, so no city -> capital shortcut exists and the
    # answer must be composed (city -> state -> capital); here the state-feature swap alone should move it
    heldout = {"cities": [], "swaps": [], "headline": []}
    for city in held:
        s = next(st for st, (_, cities) in STATES.items() if city in cities)
        pr = TEMPLATE.format(city)
        p0 = probs_last(feature_intervention(model, ts, pr, [])[0])
        correct = int(p0.argmax()) == cap_id[s]
        heldout["cities"].append({"city": city, "state": s, "correct": bool(correct)})
        if not correct:
            continue
        for t in STATES:
            if t == s:
                continue
            for k in SCALES:
                edits = swap_edits(s, t, feats, mean, positions, SWAP_LAYERS, k)
                p = probs_last(feature_intervention(model, ts, pr, edits)[0])
                heldout["swaps"].append(
                    {
                        "city": city,
                        "from": s,
                        "to": t,
                        "scale": k,
                        "p_target": float(p[cap_id[t]]),
                        "p_source": float(p[cap_id[s]]),
                        "hit": int(p.argmax()) == cap_id[t],
                    }
                )
    pr = TEMPLATE.format(HEADLINE_HELD_OUT)
    heldout["headline"].append(
        {
            "edit": "none (clean)",
            "n_edits": 0,
            **_summ(probs_last(feature_intervention(model, ts, pr, [])[0]), cap_id, tok),
        }
    )
    off = set_edits("california", feats, positions, SWAP_LAYERS)
    p = probs_last(feature_intervention(model, ts, pr, off)[0])
    heldout["headline"].append(
        {"edit": "california state features off", "n_edits": len(off), **_summ(p, cap_id, tok)}
    )
    for k in SCALES:
        edits = swap_edits("california", "texas", feats, mean, positions, SWAP_LAYERS, k)
        p = probs_last(feature_intervention(model, ts, pr, edits)[0])
        name = f"california -> texas state features ({k:g}x mean)"
        heldout["headline"].append({"edit": name, "n_edits": len(edits), **_summ(p, cap_id, tok)})

    out = {
        "prompt": prompt,
        "graph": {
            "n_active": int(graph.settings["n_active"]),
            "n_selected": int(len(graph.selected_features)),
            "logits": dict(zip(graph.logit_labels, map(float, graph.logit_probabilities), strict=True)),
        },
        "state_feature_counts": n_feats,
        "state_features": state_list,
        "top_features": top_rows,
        "direct_effects_on_top_logit": direct,
        "texas_share_of_top10_influence": tx_share / sum(r["influence"] for r in top_rows),
        "dallas_swap": rows,
        "pair_swaps": {"hits": hits, "total": len(pairs), "pairs": pairs},
        "held_out": heldout,
        "seconds": time.perf_counter() - t0,
    }
    (HERE / "results.json").write_text(json.dumps(out, indent=2) + "\n")
    (HERE / "results.md").write_text(_markdown(out, record))
    print(_markdown(out, record))
    return 0


def dashboard(store, layer: int, feature: int) -> dict:
    """A feature's name from its dashboard: the automatic label and the sentence of its top activation (from the
    last full stop before the position, the position's token in brackets)."""
    rec = store.feature(layer, feature)
    top = next((q["examples"][0] for q in rec["examples_quantiles"] if q["examples"]), None)
    context = ""
    if top is not None:
        before = top["tokens"][: top["train_token_ind"]]
        stops = [i for i, t in enumerate(before) if t == "."]
        words = before[stops[-1] + 1 if stops else 0 :]
        context = " ".join([*words, f"[{top['tokens'][top['train_token_ind']]}]"])
    return {"label": store.label(layer, feature)["label"], "top_context": context}


def _summ(p: np.ndarray, cap_id: dict[str, int], tok) -> dict:
    return {
        "p_austin": float(p[cap_id["texas"]]),
        "p_sacramento": float(p[cap_id["california"]]),
        "top": tok.id_to_token(int(p.argmax())),
        "p_top": float(p.max()),
    }


def _world_held_out(record) -> tuple[str, ...]:
    from jcircuits.training.corpus import make_world

    return make_world(record["seed"]).held_out_cities


def _markdown(out: dict, record: dict) -> str:
    lines = [
        "# Two-hop circuit in the default model",
        "",
        "Made by `python experiments/two_hop/run.py` on the embedded default model (`jcircuits/default`, "
        f"seed {record['seed']}); {out['seconds']:.0f} s on CPU.",
        "",
        f"Prompt: `{out['prompt']}`. Graph: {out['graph']['n_active']} active features, "
        f"{out['graph']['n_selected']} selected; logits "
        + ", ".join(f"{k} {v:.3f}" for k, v in list(out["graph"]["logits"].items())[:3])
        + ". Picture: [graph.svg](graph.svg).",
        "",
        f"State features (active on ≥{ON:.0%} of one state's cities and ≤{OFF:.0%} of every other state's, at "
        "the city or last position): "
        + ", ".join(f"{s} {n}" for s, n in out["state_feature_counts"].items())
        + ".",
        "",
        "## Most influential features in the graph",
        "",
        "Each feature is named by the shipped dashboards (`jcircuits.default.default_features()`): its automatic "
        "label (*fires on → promotes*) and the sentence of its top activation over the model's corpus.",
        "",
        "| layer | position | feature | activation | influence | state feature of | automatic label | top activation |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in out["top_features"]:
        lines.append(
            f"| {r['layer']} | {r['pos']} ({r['token']}) | {r['feature']} | {r['activation']:.2f} | "
            f"{r['influence']:.3f} | {r['state_feature_of']} | {r['label']} | {r['top_context']} |"
        )
    lines += [
        "",
        f"Texas features carry {100 * out['texas_share_of_top10_influence']:.0f}% of the top-10 features' influence. "
        "Direct effects on the austin logit (the graph's logit row): "
        + ", ".join(f"{k.replace('_', ' ')} {v:+.2f}" for k, v in out["direct_effects_on_top_logit"].items())
        + ". Two paths reach the answer: the city's own features at the city position (a memorised "
        "city -> capital shortcut, moved to the last position by attention) and state features at the last "
        "position.",
        "",
        "## The state features, by their dashboards",
        "",
        "Every state feature found above (layer/feature at the city or last position), with its automatic label "
        "and the sentence of its top activation over the model's corpus. The automatic label names the token a "
        "feature fires on (for state features, the final `is`), so a state feature's meaning shows in its "
        "contexts, not in its label.",
        "",
        "| state | feature | position | automatic label | top activation |",
        "|---|---|---|---|---|",
    ]
    for st, fs in out["state_features"].items():
        for r in fs:
            lines.append(
                f"| {st} | {r['layer']}/{r['feature']} | {r['pos']} | {r['label']} | {r['top_context']} |"
            )
    lines += [
        "",
        "## Swapping the state feature (dallas prompt)",
        "",
        "Attention patterns frozen at the clean run; every later feature is re-encoded live. State features are "
        "set at the city and last positions in layers 2-3; 'dallas's own features' are the non-state features "
        "active at the dallas position in layers 1-2.",
        "",
        "| intervention | edits | p(austin) | p(sacramento) | top token (p) |",
        "|---|---|---|---|---|",
    ]
    for r in out["dallas_swap"]:
        lines.append(
            f"| {r['edit']} | {r['n_edits']} | {r['p_austin']:.3f} | {r['p_sacramento']:.3f} | "
            f"{r['top']} ({r['p_top']:.3f}) |"
        )
    ps = out["pair_swaps"]
    lines += [
        "",
        "Recipe for every (source state, target state) pair, one trained city per source state: the city's own "
        f"features off (layers 1-2) and the state features swapped at {MAIN_SCALE:g}x mean (layers 2-3): the answer "
        f"becomes the target state's capital in **{ps['hits']}/{ps['total']}** cases.",
        "",
    ]
    ho = out["held_out"]
    n_ok = sum(c["correct"] for c in ho["cities"])
    lines += [
        "## Held-out cities: the state feature alone decides the answer",
        "",
        f"For the {len(ho['cities'])} held-out cities the two-hop sentence was never trained (only 'CITY is in "
        f"STATE' and 'the capital of STATE is CAPITAL'), so there is no memorised shortcut: the model answers "
        f"{n_ok}/{len(ho['cities'])} of them correctly by composing the two facts. On those, swapping **only** the "
        "state features (layers 2-3, city and last positions; no other edit) moves the answer to the target "
        "state's capital:",
        "",
        "| scale of the target state's features | answer becomes the target's capital | chance |",
        "|---|---|---|",
    ]
    n_states = len(STATES)
    for k in SCALES:
        sw = [r for r in ho["swaps"] if r["scale"] == k]
        lines.append(f"| {k:g}x mean | **{sum(r['hit'] for r in sw)}/{len(sw)}** | ~1/{n_states - 1} |")
    lines += [
        "",
        f"Prompt `{TEMPLATE.format(HEADLINE_HELD_OUT)}` ({HEADLINE_HELD_OUT} is a held-out california city):",
        "",
        "| intervention | edits | p(austin) | p(sacramento) | top token (p) |",
        "|---|---|---|---|---|",
    ]
    for r in ho["headline"]:
        lines.append(
            f"| {r['edit']} | {r['n_edits']} | {r['p_austin']:.3f} | {r['p_sacramento']:.3f} | "
            f"{r['top']} ({r['p_top']:.3f}) |"
        )
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
