"""``attribute_batch``: many prompts through one process's compiled shapes, each graph equal bit for bit to its
single ``attribute`` call."""

from __future__ import annotations

import numpy as np
import pytest
from tiny import tiny_model, tiny_transcoders

from jcircuits.attribution import attribute, attribute_batch

PROMPTS = [
    np.array([1, 5, 9, 33, 7, 2, 60, 11, 4, 8, 17]),
    np.array([1, 40, 3, 12, 9, 9, 21, 6, 30, 5, 2, 44]),  # same length bucket as the first
    np.array([1, 7, 50, 2, 19, 8]),
]


def _same(a, b) -> None:
    for name in ("adjacency_matrix", "selected_features", "active_features", "activation_values",
                 "logit_token_ids", "logit_probabilities", "logit_positions", "input_tokens"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert a.logit_labels == b.logit_labels and a.input_string == b.input_string


@pytest.mark.parametrize("positions", [None, [2, -1]], ids=["last", "two-positions"])
def test_batch_graphs_equal_single_calls_bit_for_bit(positions):
    model = tiny_model("llama")
    ts = tiny_transcoders(model.cfg, "plt", "jumprelu", False)
    kw = dict(batch_size=32, max_feature_nodes=60, update_interval=1, target_positions=positions)
    graphs = attribute_batch(model, ts, PROMPTS, **kw)
    assert len(graphs) == len(PROMPTS)
    for prompt, g in zip(PROMPTS, graphs, strict=True):
        _same(g, attribute(model, ts, prompt, **kw))


def test_a_bad_prompt_fails_before_any_work_naming_its_index():
    model = tiny_model("llama")
    ts = tiny_transcoders(model.cfg)
    with pytest.raises(ValueError, match="prompt 1: token ids must be a non-empty"):
        attribute_batch(model, ts, [PROMPTS[0], np.array([], np.int32)])
    with pytest.raises(ValueError, match=r"prompt 2: target position\(s\) \[-7\] outside the prompt's 6 tokens"):
        attribute_batch(model, ts, PROMPTS, target_positions=[-7])
    with pytest.raises(ValueError, match="no prompts"):
        attribute_batch(model, ts, [])
    with pytest.raises(TypeError, match="sequence of prompts"):
        attribute_batch(model, ts, "one prompt")
