"""The one table from circuit-tracer's (TransformerLens) hook names around a block's MLP to ``MLPPoints`` fields.

Transcoder configs name where they read and write with TransformerLens hook names; the decoder exposes those
points as the fields of ``transformer.MLPPoints`` (and ``Intermediates``). Every layer that needs the mapping —
the replacement forward, interventions, harvesting, transcoder validation — reads it here, so a new hook point
is added in one place and an unknown name fails the same way everywhere:

    input hooks  (what a transcoder reads)   ln2.hook_normalized → normalized   (resid_mid · ln2 scale, no gain)
                                             mlp.hook_in         → mlp_in       (the MLP's input, gain included)
                                             hook_resid_mid      → resid_mid
    output hooks (what a transcoder writes)  mlp.hook_out        → mlp_out_raw  (the MLP's output)
                                             hook_mlp_out        → mlp_out      (after Gemma-2's post-MLP norm)

The output field is also the ``mlp_at`` argument of ``transformer.forward_fn``: where the replacement's write
enters the block.
"""

from __future__ import annotations

__all__ = ["INPUT_HOOKS", "OUTPUT_HOOKS", "MLP_HOOKS", "input_field", "output_field"]

INPUT_HOOKS = {"ln2.hook_normalized": "normalized", "mlp.hook_in": "mlp_in", "hook_resid_mid": "resid_mid"}
OUTPUT_HOOKS = {"hook_mlp_out": "mlp_out", "mlp.hook_out": "mlp_out_raw"}
MLP_HOOKS = {**INPUT_HOOKS, **OUTPUT_HOOKS}


def _lookup(table: dict[str, str], kind: str, name: str) -> str:
    if name not in table:
        raise ValueError(f"unknown {kind} hook {name!r}; allowed: {list(table)}")
    return table[name]


def input_field(name: str) -> str:
    """The ``MLPPoints`` field a transcoder with input hook ``name`` reads."""
    return _lookup(INPUT_HOOKS, "input", name)


def output_field(name: str) -> str:
    """The ``MLPPoints`` field (and ``forward_fn``'s ``mlp_at``) a transcoder with output hook ``name`` writes."""
    return _lookup(OUTPUT_HOOKS, "output", name)
