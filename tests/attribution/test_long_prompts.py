"""What keeps a long prompt's memory bounded: gathered decoder sources instead of the padded ``[L, T, K, D]``
store, device batches cut by memory, the capture's patterns dropped once the frozen model holds its own, and
selection's influence read block by block from the sparse rows. Each must leave the graph as it was."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from tiny import tiny_model, tiny_transcoders

import jcircuits.attribution.engine as engine
from jcircuits.attribution import attribute
from jcircuits.common import buckets
from jcircuits.replacement import replace

TOKENS = np.array([1, 5, 9, 33, 7, 2, 60, 11, 4, 8, 17, 3, 40, 6, 21])
KW = dict(batch_size=16, update_interval=2, verbose=False)


def _with_decoders(monkeypatch, layout):
    monkeypatch.setattr(engine, "build_context", functools.partial(engine.build_context, decoders=layout))


@pytest.mark.parametrize("arch,act,skip,dtype", [("llama", "jumprelu", False, "float32"),
                                                 ("gemma2", "relu", True, "float32"),
                                                 ("llama", "jumprelu", False, "bfloat16")])
def test_gathered_decoders_give_the_padded_graph_bit_for_bit(monkeypatch, arch, act, skip, dtype):
    model = tiny_model(arch, seed=3)
    ts = tiny_transcoders(model.cfg, kind="plt", activation=act, skip=skip, seed=4)
    n = replace(model, ts, TOKENS).n_active
    kw = dict(KW, dtype=dtype, max_feature_nodes=n // 2)  # with selection: the rows decide it
    _with_decoders(monkeypatch, "padded")
    want = attribute(model, ts, TOKENS, **kw)
    _with_decoders(monkeypatch, "gathered")
    got = attribute(model, ts, TOKENS, **kw)
    np.testing.assert_array_equal(got.selected_features, want.selected_features)
    assert got.adjacency_matrix.tobytes() == want.adjacency_matrix.tobytes()


def test_auto_layout_gathers_only_when_the_padded_store_is_large(monkeypatch):
    model = tiny_model("llama", seed=3)
    ts = tiny_transcoders(model.cfg, kind="plt", activation="jumprelu", seed=4)
    rep = replace(model, ts, TOKENS)
    _, ctx, _ = engine.build_context(model, ts, rep)
    assert ctx.dec is not None and ctx.dec_idx is None  # tiny: padded
    monkeypatch.setattr(engine, "PADDED_DECODER_BYTES", 0)
    _, ctx, _ = engine.build_context(model, ts, rep)
    L, U, D = ctx.dec_rows.shape
    T, K = len(TOKENS), ctx.dec_idx.shape[2]  # the layout is chosen before padding to the length bucket
    assert L * T * K * D * 4 > L * U * D * 4 + L * T * K * 8  # gathered: the smaller one
    assert ctx.dec is None
    # every layer's distinct active features, once each
    for l in range(L):
        assert U >= len(np.unique(rep.active_features[rep.active_features[:, 0] == l, 2]))
    with pytest.raises(ValueError, match="decoder layout"):
        engine.build_context(model, ts, rep, decoders="dense")


def test_device_batch_is_cut_by_memory_and_the_graph_does_not_change(monkeypatch):
    assert buckets.device_batch(256, 1, per_row=1000, budget=10**6) == 256
    assert buckets.device_batch(256, 1, per_row=10**5, budget=10**6) == 8  # 10 fit: a power of two below
    assert buckets.device_batch(256, 4, per_row=10**5, budget=10**6) == 32  # per device
    assert buckets.device_batch(256, 2, per_row=10**9, budget=10**6) == 2  # at least a row per device
    assert buckets.device_batch(250, 4, per_row=1, budget=10**6) == 252  # uncut: rounded up to the data axis
    model = tiny_model("llama", seed=3)
    ts = tiny_transcoders(model.cfg, kind="plt", activation="jumprelu", seed=4)
    n = replace(model, ts, TOKENS).n_active
    kw = dict(KW, max_feature_nodes=n // 2)
    want = attribute(model, ts, TOKENS, **kw)
    seen = []
    orig = engine._dispatch
    monkeypatch.setattr(engine, "_dispatch", lambda fz, plan, B, *a: seen.append(B) or orig(fz, plan, B, *a))
    monkeypatch.setattr(engine, "ROW_BATCH_BYTES", 1)  # one row a device batch
    got = attribute(model, ts, TOKENS, **kw)
    assert set(seen) == {1}
    np.testing.assert_array_equal(got.selected_features, want.selected_features)
    np.testing.assert_allclose(got.adjacency_matrix, want.adjacency_matrix, rtol=0,
                               atol=1e-6 * np.abs(want.adjacency_matrix).max())


def test_the_capture_is_dropped_once_the_context_holds_its_own():
    model = tiny_model("llama", seed=3)
    ts = tiny_transcoders(model.cfg, kind="plt", activation="jumprelu", seed=4)
    fz = engine._replacement_phase(model, ts, TOKENS, 1, np.float32, None)
    assert fz.rep.inter is None and fz.rep.errors is None and fz.ctx.pattern is not None
    assert fz.rep.n_active == len(fz.rep.activation_values) > 0


def test_block_by_block_influence_equals_one_csr():
    import scipy.sparse

    rng = np.random.default_rng(1)
    n_cols, K = 400, 2
    rows = np.where(rng.random((60, n_cols)) < 0.2, rng.random((60, n_cols)), 0).astype(np.float32)
    rows /= rows.sum(1, keepdims=True)
    nodes = np.concatenate([n_cols + np.arange(K), rng.permutation(n_cols)[:58]])
    p = np.array([0.7, 0.2], np.float32)
    whole = engine._partial_influence(scipy.sparse.csr_array(rows), nodes, p, n_cols)
    blocks = [scipy.sparse.csr_array(rows[a:b]) for a, b in [(0, 2), (2, 20), (20, 21), (21, 60)]]
    np.testing.assert_allclose(engine._partial_influence(blocks, nodes, p, n_cols), whole, rtol=1e-6,
                               atol=1e-7 * whole.max())
    assert (whole > 0).sum() > 100


def _long_prompt_layout(monkeypatch):
    """What a long prompt gets, forced on a short one: patterns recomputed per block, a forward pass attending 8
    query rows at a time, gathered decoders, one row a device batch."""
    monkeypatch.setattr(engine, "PATTERN_BYTES", 0)
    monkeypatch.setattr(buckets, "ATTENTION_BLOCK", 8)
    monkeypatch.setattr(engine, "PADDED_DECODER_BYTES", 0)
    monkeypatch.setattr(engine, "ROW_BATCH_BYTES", 1)


LAYOUT_CASES = [  # arch, kind, activation, skip, input hook, output hook
    ("llama", "plt", "jumprelu", False, "mlp.hook_in", "mlp.hook_out"),
    ("gemma2", "plt", "relu", True, "ln2.hook_normalized", "hook_mlp_out"),  # soft-cap, sliding window, post-norms
    ("gemma3", "clt", "jumprelu", True, "mlp.hook_in", "mlp.hook_out"),  # two RoPE bases, QK-norm
    ("qwen3", "plt", "topk", False, "hook_resid_mid", "mlp.hook_out"),  # QK-norm
]


@pytest.mark.parametrize("case", LAYOUT_CASES, ids=[f"{a}-{k}-{f}" for a, k, f, *_ in LAYOUT_CASES])
def test_recomputed_patterns_give_the_stored_graph(monkeypatch, case):
    """Patterns recomputed per block from what defines them (no ``[L, H, T, T]`` store) give the graph of stored
    patterns to float32 round-off; the capture then holds no patterns at all."""
    arch, kind, act, skip, ih, oh = case
    model = tiny_model(arch)
    ts = tiny_transcoders(model.cfg, kind, act, skip, input_hook=ih, output_hook=oh,
                          top_k=5 if act == "topk" else None)
    want = attribute(model, ts, TOKENS, **KW)
    _long_prompt_layout(monkeypatch)
    fz = engine._replacement_phase(model, ts, TOKENS, 1, np.float32, None)
    assert fz.ctx.pattern is None and fz.ctx.qk is not None and fz.rep.inter is None
    assert (fz.ctx.dec_idx is not None) == (kind == "plt")  # gathered; a CLT keeps its per-layer blocks
    got = attribute(model, ts, TOKENS, **KW)
    np.testing.assert_array_equal(got.selected_features, want.selected_features)
    A = np.abs(want.adjacency_matrix).max()
    np.testing.assert_allclose(got.adjacency_matrix, want.adjacency_matrix, rtol=0, atol=2e-6 * A)


@pytest.mark.parametrize("case", LAYOUT_CASES[1:3], ids=["gemma2-plt", "gemma3-clt"])
def test_long_prompt_layout_keeps_the_definition_at_an_earlier_target(monkeypatch, case):
    """The definition (perturb a source in the frozen forward pass, every target moves by its edge) with the
    long-prompt layout and logits read at position 7 of 15 as well as at the last."""
    from test_attribution_perturbation import _assert_columns_match_perturbations

    arch, kind, act, skip, ih, oh = case
    model = tiny_model(arch)
    ts = tiny_transcoders(model.cfg, kind, act, skip, input_hook=ih, output_hook=oh)
    _long_prompt_layout(monkeypatch)
    g = attribute(model, ts, TOKENS, batch_size=64, target_positions=[7, -1], verbose=False)
    rep = replace(model, ts, TOKENS)  # the reference: whole patterns, captured and frozen
    assert len(rep.round_off) == 0  # no feature within round-off of its threshold: the blocked forward's node set
    np.testing.assert_array_equal(g.active_features, rep.active_features)  # must then be the same
    L, T = model.cfg.n_layers, len(TOKENS)
    assert sorted(set(g.logit_positions.tolist())) == [7, T - 1]
    n_sel = len(g.selected_features)
    rng = np.random.default_rng(2)
    feat_cols = rng.choice(n_sel, size=min(6, n_sel), replace=False)
    err_cols = [n_sel + l * T + t for l, t in [(0, 3), (L - 1, 7), (1, 12)]]
    tok_cols = [n_sel + L * T + t for t in (0, 7, T - 1)]
    _assert_columns_match_perturbations(model, ts, g, rep, [*feat_cols, *err_cols, *tok_cols])


def _triples(a: np.ndarray) -> set:
    return set(map(tuple, a.tolist()))


@pytest.mark.parametrize("arch,kind,act,top_k", [("llama", "plt", "jumprelu", None), ("gemma2", "clt", "relu", None),
                                                 ("qwen3", "plt", "topk", 6)])
def test_the_replacement_step_encodes_long_prompts_in_position_chunks(monkeypatch, arch, kind, act, top_k):
    import jcircuits.replacement as replacement

    model = tiny_model(arch, seed=3)
    ts = tiny_transcoders(model.cfg, kind=kind, activation=act, seed=4, top_k=top_k)
    tokens = np.random.default_rng(7).integers(1, model.cfg.vocab_size, 40)  # padded to 48 positions
    want = replace(model, ts, tokens)
    given = replace(model, ts, tokens, active_features=want.active_features)  # unchunked, node set given
    L, F = model.cfg.n_layers, ts.cfg.n_features
    widths = []
    real = replacement._encode_all
    monkeypatch.setattr(replacement, "_encode_all", lambda tcfg, tc, x, *a: widths.append(x.shape[1]) or real(tcfg, tc, x, *a))
    monkeypatch.setattr(buckets, "ENCODE_CHUNK_BYTES", L * F * 4 * 30)  # 30 positions fit: 2 chunks of 32
    got = replace(model, ts, tokens)
    assert widths == [32, 32]  # the second chunk: 16 positions and 16 of padding, never active
    # the node set: equal outside the features whose presence round-off decides (listed by both runs)
    undecided = _triples(want.round_off.features) | _triples(got.round_off.features)
    assert len(undecided) <= 0.02 * want.n_active, len(undecided)  # the margin excludes almost nothing
    assert _triples(want.active_features) - undecided == _triples(got.active_features) - undecided
    assert np.all(np.diff(got.active_features[:, 0]) >= 0)  # sorted by (layer, position, feature) again
    key = lambda a: (a[:, 0] * 10**4 + a[:, 1]) * 10**4 + a[:, 2]  # noqa: E731
    assert np.all(np.diff(key(got.active_features)) > 0) and np.all(np.diff(key(got.round_off.features)) > 0)
    common = np.intersect1d(key(want.active_features), key(got.active_features))
    pick = lambda r: r.activation_values[np.isin(key(r.active_features), common)]  # noqa: E731
    np.testing.assert_allclose(pick(got), pick(want), rtol=1e-5, atol=1e-6)
    if not undecided:  # then errors and reconstruction follow the same node set
        np.testing.assert_allclose(np.asarray(got.errors), np.asarray(want.errors), rtol=1e-5, atol=1e-5)
    # a given node set is kept as given, chunk by chunk, each valued at its pre-activation
    widths.clear()
    got = replace(model, ts, tokens, active_features=want.active_features)
    assert widths == [32, 32]
    np.testing.assert_array_equal(got.active_features, want.active_features)
    np.testing.assert_allclose(got.activation_values, given.activation_values, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("arch", ["llama", "gemma2", "gemma3", "qwen3"])
def test_a_forward_pass_attending_in_query_blocks_equals_the_whole_pattern_one(arch):
    """Blocked attention (no ``[H, T, T]`` held) against the whole pattern: sliding windows, soft-caps, QK-norm and
    two RoPE bases included."""
    from jcircuits.models.transformer import forward

    model = tiny_model(arch, seed=5)
    tokens = np.random.default_rng(3).integers(1, model.cfg.vocab_size, (1, 48))
    want, inter = forward(model.params, model.cfg, tokens, capture=True)
    got, blocked = forward(model.params, model.cfg, tokens, capture=True, capture_patterns=False, attention_block=16)
    assert blocked.attn_pattern is None and inter.attn_pattern is not None
    scale = np.abs(np.asarray(want)).max()
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0, atol=2e-6 * scale)
    np.testing.assert_allclose(np.asarray(blocked.resid), np.asarray(inter.resid), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="capture_patterns=False"):
        forward(model.params, model.cfg, tokens, capture=True, attention_block=16)
    with pytest.raises(ValueError, match="must divide the 48 positions"):
        forward(model.params, model.cfg, tokens, capture=True, capture_patterns=False, attention_block=20)
