"""The engine's work-saving shapes are exact and bounded: position prefixes, batch plans and length buckets.

Truncating a batch to a position prefix, padding the prompt to a length bucket and splitting targets into
batches must not change a single edge (beyond float32 summation order), and prompts of nearby lengths must reuse
every compiled shape.
"""

from __future__ import annotations

import numpy as np
import pytest
from tiny import tiny_model, tiny_transcoders

from jcircuits.attribution import attribute, linear
from jcircuits.attribution.engine import plan_batches
from jcircuits.common.buckets import length_bucket, position_buckets, size_bucket

TOKENS = np.array([1, 5, 9, 33, 7, 2, 60, 11, 4, 8, 17, 3, 40, 6, 21])


@pytest.fixture(scope="module")
def llama_plt():
    model = tiny_model("llama", seed=3)
    return model, tiny_transcoders(model.cfg, kind="plt", activation="jumprelu", seed=4)


def test_plan_batches_covers_every_target_once_with_valid_prefixes():
    rng = np.random.default_rng(0)
    act = np.stack([rng.integers(0, 4, 700), rng.integers(1, 40, 700), rng.integers(0, 99, 700)], 1)
    act = act[np.lexsort((act[:, 2], act[:, 1], act[:, 0]))]
    idx = rng.permutation(len(act))[:500]
    buckets = position_buckets(48, 3)
    assert buckets == [16, 32, 48]
    plan = plan_batches(idx, act, batch_size=64, small=16, pos_buckets=buckets)
    members = np.concatenate([p for *_, p in plan])
    assert sorted(members.tolist()) == sorted(idx.tolist())
    for B, n_pos, part in plan:
        assert B in (64, 16) and 0 < len(part) <= B
        if B == 64:
            assert len(set(act[part, 0])) == 1  # full chunks never mix layers
        assert n_pos in buckets and act[part, 1].max() < n_pos
        assert n_pos == min(b for b in buckets if b > act[part, 1].max())
    assert all(len(p) == B for B, _, p in plan[:-1])  # only the last chunk is padded
    # high layers first: each chunk's lowest layer is at least the next chunk's highest
    for (_, _, a), (_, _, b) in zip(plan[:-1], plan[1:], strict=True):
        assert act[a, 0].min() >= act[b, 0].max()


def test_size_bucket_is_a_half_octave_at_most_50_percent_over():
    assert [size_bucket(n) for n in (1, 8, 9, 12, 13, 16, 17, 25, 108, 130)] == [
        8,
        8,
        12,
        12,
        16,
        16,
        24,
        32,
        128,
        192,
    ]
    for n in range(9, 5000):
        assert n <= size_bucket(n) <= 1.5 * n


def test_length_bucket():
    assert [length_bucket(t) for t in (1, 16, 17, 128, 129, 1024, 1025)] == [
        16,
        16,
        32,
        128,
        192,
        1024,
        1280,
    ]


def test_prefixes_batches_and_buckets_do_not_change_the_graph(llama_plt):
    model, ts = llama_plt
    ref = attribute(model, ts, TOKENS, position_buckets=1, batch_size=512)
    for kw in (dict(position_buckets=4, batch_size=8), dict(position_buckets=2, batch_size=3)):
        g = attribute(model, ts, TOKENS, **kw)
        np.testing.assert_array_equal(g.selected_features, ref.selected_features)
        A, R = g.adjacency_matrix, ref.adjacency_matrix
        assert np.abs(A - R).max() <= 1e-6 * np.abs(R).max(), kw


def test_prompts_in_one_length_bucket_share_compiled_shapes(llama_plt):
    model, ts = llama_plt
    # batch_size=1 and one position bucket: every call has the same shapes, whatever the prompt's features
    kw = dict(batch_size=1, position_buckets=1, max_feature_nodes=12)
    # 12 and 15 tokens: same length bucket (16); 789 and 1002 active features share the size bucket 1024 and the
    # padded per-(layer, position) width (32)
    attribute(model, ts, TOKENS[:12], **kw)
    n_feat, n_logit = linear.rows_for_features._cache_size(), linear.rows_for_logits._cache_size()
    g = attribute(model, ts, TOKENS[:15], **kw)
    assert g.settings["n_active"] == 1002
    assert linear.rows_for_features._cache_size() == n_feat
    assert linear.rows_for_logits._cache_size() == n_logit
    assert g.settings["timings"]["compile_s"] == 0.0
