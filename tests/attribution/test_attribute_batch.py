"""``attribute_batch``: many prompts through one process's compiled shapes, each graph equal bit for bit to its
single ``attribute`` call."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from tiny import tiny_model, tiny_transcoders

import jcircuits.attribution.engine as engine
from jcircuits.attribution import attribute, attribute_batch
from jcircuits.scale.sharding import data_slices, make_mesh

needs_8 = pytest.mark.skipif(
    jax.device_count() < 8, reason="needs XLA_FLAGS=--xla_force_host_platform_device_count=8"
)

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


def _record_devices(monkeypatch) -> list[tuple[int, set]]:
    """(prompt length, the devices its frozen model was placed on), one a call."""
    seen: list[tuple[int, set]] = []
    phase = engine._replacement_phase

    def spy(*args, **kw):
        fz = phase(*args, **kw)
        seen.append((fz.T, {d.id for x in jax.tree.leaves(fz.ctx) for d in x.devices()}))
        return fz

    monkeypatch.setattr(engine, "_replacement_phase", spy)
    return seen


@needs_8
def test_the_data_axis_splits_prompts_each_slice_running_the_single_call(monkeypatch):
    model = tiny_model("gemma2")
    ts = tiny_transcoders(model.cfg, "plt", "jumprelu", False)
    kw = dict(batch_size=32, max_feature_nodes=60, update_interval=1)
    singles = [attribute(model, ts, p, **kw) for p in PROMPTS]
    seen = _record_devices(monkeypatch)
    mesh = make_mesh(2, 1, devices=jax.devices()[4:6])  # one device a slice: equal to the call without a mesh
    graphs = attribute_batch(model, ts, PROMPTS + PROMPTS[:1], mesh=mesh, **kw)
    assert len(graphs) == len(PROMPTS) + 1
    for g, single in zip(graphs, singles + singles[:1], strict=True):
        _same(g, single)
    # dealt longest first in turn: lengths 12, 11, 11, 6 -> slice 0 (device 4) gets 12 and 11, slice 1 gets 11 and 6
    assert sorted((T, tuple(devs)) for T, devs in seen) == [(6, (5,)), (11, (4,)), (11, (5,)), (12, (4,))], seen

    # (1, 2) slices: each graph is the single call on that slice's mesh, bit for bit
    seen.clear()
    mesh = make_mesh(2, 2, devices=jax.devices()[:4])
    graphs = attribute_batch(model, ts, PROMPTS, mesh=mesh, **kw)
    on_slice = [attribute(model, ts, p, mesh=data_slices(mesh)[0], **kw) for p in PROMPTS]
    for g, ref in zip(graphs, on_slice, strict=True):
        _same(g, ref)
    for _, devs in seen:
        assert devs in ({0, 1}, {2, 3}), seen  # weights over the slice's model axis, nothing across slices
    # and split="rows" is the loop of attribute(mesh=mesh)
    rows = attribute_batch(model, ts, PROMPTS[:1], mesh=mesh, split="rows", **kw)
    _same(rows[0], attribute(model, ts, PROMPTS[0], mesh=mesh, **kw))


@needs_8
def test_a_failing_prompt_on_one_slice_stops_the_split_and_is_raised(monkeypatch):
    model = tiny_model("llama")
    ts = tiny_transcoders(model.cfg)
    calls = []
    real = engine.attribute

    def flaky(m, t, tokens, **kw):
        calls.append(len(tokens))
        if len(tokens) == len(PROMPTS[2]):
            raise RuntimeError("boom on the short prompt")
        return real(m, t, tokens, **kw)

    monkeypatch.setattr(engine, "attribute", flaky)
    with pytest.raises(RuntimeError, match="boom on the short prompt"):
        attribute_batch(model, ts, PROMPTS * 3, mesh=make_mesh(2, 1, devices=jax.devices()[:2]), batch_size=32)
    assert len(calls) < 3 * len(PROMPTS)  # each slice stopped at its failing prompt: the last never ran
    with pytest.raises(ValueError, match="split must be 'prompts' or 'rows'"):
        attribute_batch(model, ts, PROMPTS, split="layers")
