"""Feature dashboards equal a brute-force numpy computation over the same small corpus (seeded tiny Llama and
Gemma-2 models, per-layer and cross-layer transcoders); resuming after a stop gives the same files."""

from __future__ import annotations

import numpy as np
import pytest
from tiny import tiny_model, tiny_transcoders

from jcircuits.features import FeatureStore, build_dashboards
from jcircuits.features.build import STATE_NAME
from jcircuits.models import forward
from jcircuits.models.transformer import unembed_matrix

N, S, F, K, C, B = 10, 12, 24, 4, 8, 4


def _corpus(vocab: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = rng.integers(3, vocab, (N, S)).astype(np.int32)
    t[:, 0] = 1  # BOS
    t[3, 9:] = 0  # a padded sequence: pads are not counted
    return t


def _brute(model, tcs, tokens):
    """Activations [L, N, S, F] (numpy encoder over our captured hook) and the counted-position mask."""
    _, inter = forward(model.params, model.cfg, tokens, capture=True)
    x = np.asarray(inter.hook(tcs.cfg.input_hook), np.float64)  # [L, N, S, D]
    p = tcs.params
    pre = np.einsum("lnsd,ldf->lnsf", x, np.asarray(p.W_enc, np.float64)) + np.asarray(p.b_enc)[:, None, None]
    if tcs.cfg.activation == "jumprelu":
        acts = pre * (pre > np.asarray(p.threshold)[:, None, None])
    else:
        acts = np.maximum(pre, 0.0)
    valid = np.ones((N, S), bool)
    valid[:, 0] = False
    valid &= tokens != 0
    return acts * valid[None, :, :, None], valid


CASES = [("llama", "plt", "jumprelu"), ("gemma2", "plt", "relu"), ("llama", "clt", "jumprelu"), ("gemma2", "clt", "relu")]


@pytest.fixture(scope="module", params=CASES, ids=["-".join(c) for c in CASES])
def built(request, tmp_path_factory):
    arch, kind, act = request.param
    model = tiny_model(arch)
    tcs = tiny_transcoders(model.cfg, kind, activation=act, n_features=F)
    tokens = _corpus(model.cfg.vocab_size)
    out = tmp_path_factory.mktemp(f"feat-{arch}-{kind}")
    build_dashboards(
        model, tcs, tokens, n_top=K, context=C, batch_size=B, out_dir=out, resume=False, progress=False
    )
    acts, valid = _brute(model, tcs, tokens)
    return model, tcs, tokens, out, acts, valid


def _close(a, b):
    return np.allclose(a, b, rtol=2e-4, atol=2e-5)


def test_top_activations_contexts_frequencies_and_extremes_equal_brute_force(built):
    model, tcs, tokens, out, acts, valid = built
    store = FeatureStore(out)
    L = tcs.cfg.n_layers
    n_valid = valid.sum()
    n_checked = 0
    for l in range(L):
        for f in range(F):
            rec = store.feature(l, f)
            a = acts[l, :, :, f]
            vals = np.sort(a[valid & (a > 0)])[::-1]
            top = rec["examples_quantiles"][0]
            assert top["quantile_name"] == "Top activations"
            got = np.array([e["tokens_acts_list"][e["train_token_ind"]] for e in top["examples"]])
            assert len(got) == min(K, len(vals))
            assert _close(np.sort(got)[::-1], vals[:K]), (l, f, got, vals[:K])
            assert rec["activation_frequency"] == pytest.approx((valid & (a > 0)).sum() / n_valid)
            assert rec["act_max"] == pytest.approx(a[valid].max(), rel=2e-4, abs=2e-5)
            assert rec["act_min"] == pytest.approx(a[valid].min(), rel=2e-4, abs=2e-5)
            assert sum(rec["histogram"]) == (valid & (a > 0)).sum()
            for e in top["examples"]:  # the context of every example whose value has no tie
                v = e["tokens_acts_list"][e["train_token_ind"]]
                near = np.argwhere(np.isclose(a, v, rtol=1e-3, atol=1e-4) & valid)
                if len(near) != 1:
                    continue
                n, p = near[0]
                start = e_start = p - e["train_token_ind"]
                length = S - np.argmax(valid[n, ::-1])
                want = [str(t) for t in tokens[n, e_start : min(start + C, length)]]
                assert e["tokens"] == want
                assert _close(np.array(e["tokens_acts_list"]), a[n, e_start : e_start + len(want)])
                assert e["train_token_ind"] in range(len(want))
                n_checked += 1
    assert n_checked > L * F // 2


def test_top_and_bottom_logits_equal_the_decoder_direction_through_the_unembedding(built):
    model, tcs, tokens, out, acts, valid = built
    store = FeatureStore(out)
    W_U = np.asarray(unembed_matrix(model.params), np.float64)
    for l in range(tcs.cfg.n_layers):
        W = np.asarray(tcs.decoders.W_dec[l], np.float64)
        dirs = W[:, -1, :] if tcs.cfg.kind == "clt" else W  # CLT: the last layer's decoder slot
        lg = dirs @ W_U
        for f in range(F):
            rec = store.feature(l, f)
            order = np.argsort(-lg[f])
            assert rec["top_logits"] == [str(i) for i in order[:10]]
            assert rec["bottom_logits"] == [str(i) for i in order[::-1][:10]]
    if tcs.cfg.kind == "clt":  # the first slot would give other logits
        first = np.asarray(tcs.decoders.W_dec[0], np.float64)[:, 0, :] @ W_U
        assert store.feature(0, 0)["top_logits"] != [str(i) for i in np.argsort(-first[0])[:10]]


def test_quantile_bands_hold_sampled_examples_in_their_band(built):
    model, tcs, tokens, out, acts, valid = built
    store = FeatureStore(out)
    for l in range(tcs.cfg.n_layers):
        for f in range(F):
            rec = store.feature(l, f)
            qv = rec["quantile_values"]
            assert len(qv) == 100 and all(np.diff(qv) >= -1e-6)
            for q in rec["examples_quantiles"][1:]:
                assert q["quantile_name"].startswith("Quantile ")
                for e in q["examples"]:
                    v = e["tokens_acts_list"][e["train_token_ind"]]
                    assert np.isclose(acts[l, :, :, f], v, rtol=1e-3, atol=1e-4).any()


def _files(out):
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.suffix in (".bin", ".gz", ".json")}


def test_resume_after_a_stop_gives_the_same_files(tmp_path):
    model = tiny_model("llama")
    tcs = tiny_transcoders(model.cfg, "plt", n_features=F)
    tokens = _corpus(model.cfg.vocab_size)
    kw = dict(n_top=K, context=C, batch_size=B // 2, progress=False)
    whole = build_dashboards(model, tcs, tokens, out_dir=tmp_path / "whole", resume=False, **kw)

    def stop(i):
        if i == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_dashboards(model, tcs, tokens, out_dir=tmp_path / "part", resume=False, on_batch=stop, **kw)
    assert (tmp_path / "part" / STATE_NAME).is_file()
    seen = []
    build_dashboards(model, tcs, tokens, out_dir=tmp_path / "part", resume=True, on_batch=seen.append, **kw)
    assert seen == [2, 3, 4]  # batches 0 and 1 were not run again
    assert _files(tmp_path / "part") == _files(whole)
    assert not (tmp_path / "part" / STATE_NAME).exists()
    # a state from another corpus is refused, not mixed in
    with pytest.raises(KeyboardInterrupt):
        build_dashboards(model, tcs, tokens, out_dir=tmp_path / "other", resume=False, on_batch=stop, **kw)
    with pytest.raises(ValueError, match="another corpus, model or settings"):
        build_dashboards(model, tcs, tokens, out_dir=tmp_path / "other", resume=True, **{**kw, "n_top": K + 1})


def test_a_mesh_gives_the_same_dashboards(tmp_path):
    from jcircuits.scale.sharding import make_mesh

    model = tiny_model("llama")
    tcs = tiny_transcoders(model.cfg, "plt", n_features=F)
    tokens = _corpus(model.cfg.vocab_size)
    kw = dict(n_top=K, context=C, batch_size=8, progress=False, resume=False)
    a = FeatureStore(build_dashboards(model, tcs, tokens, out_dir=tmp_path / "one", **kw))
    b = FeatureStore(build_dashboards(model, tcs, tokens, out_dir=tmp_path / "mesh", mesh=make_mesh(4, 2), **kw))
    for l in range(3):
        for f in range(F):
            ra, rb = a.feature(l, f), b.feature(l, f)
            assert ra["activation_frequency"] == rb["activation_frequency"]
            ta = [e["tokens_acts_list"] for e in ra["examples_quantiles"][0]["examples"]]
            tb = [e["tokens_acts_list"] for e in rb["examples_quantiles"][0]["examples"]]
            assert len(ta) == len(tb)
            for x, y in zip(ta, tb, strict=True):
                assert _close(np.array(x), np.array(y))


def test_bad_inputs_say_what_is_wrong(tmp_path):
    model = tiny_model("llama")
    tcs = tiny_transcoders(model.cfg, "plt", n_features=F)
    tokens = _corpus(model.cfg.vocab_size)
    kw = dict(out_dir=tmp_path / "o", progress=False)
    with pytest.raises(ValueError, match=r"\[n_sequences, seq_len\]"):
        build_dashboards(model, tcs, tokens[0], **kw)
    no_bos = tokens.copy()
    no_bos[2, 0] = 5
    with pytest.raises(ValueError, match="sequence 2 starts with token 5, not the BOS"):
        build_dashboards(model, tcs, no_bos, **kw)
    with pytest.raises(ValueError, match="out of vocabulary"):
        build_dashboards(model, tcs, tokens + 1000, **kw)
    with pytest.raises(ValueError, match="at least 2 tokens"):
        build_dashboards(model, tcs, tokens[:, :1], **kw)
    with pytest.raises(ValueError, match="batch_size"):
        build_dashboards(model, tcs, tokens, batch_size=0, **kw)
    with pytest.raises(ValueError, match="n_top"):
        build_dashboards(model, tcs, tokens, n_top=0, **kw)
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError):
        build_dashboards(model, tcs, tokens, out_dir=tmp_path / "file", progress=False)
    other = tiny_transcoders(tiny_model("llama", n_layers=2).cfg, "plt", n_features=F)
    with pytest.raises(ValueError, match="every layer needs one"):
        build_dashboards(model, other, tokens, **kw)
    from jcircuits.scale.sharding import make_mesh

    with pytest.raises(ValueError, match="multiple of the mesh's data axis"):
        build_dashboards(model, tcs, tokens, batch_size=3, mesh=make_mesh(4, 2), **kw)


@pytest.mark.parametrize("kc,m,path", [(16, 40, "sparse"), (4, 8, "dense")])
def test_the_sparse_update_equals_the_dense_one_and_falls_back_when_it_cannot(kc, m, path):
    """The per-batch update from each feature's first ``kc`` active entries (plus the ``m`` busiest features
    whole) gives exactly the dense update's state when at most ``m`` tables are full; ``_layer_update`` takes the
    dense one otherwise, so its state is the dense one's in every case (ties between positions and between values,
    a feature firing everywhere, rare features included). The path meant is asserted to run."""
    import jax
    import jax.numpy as jnp

    import jcircuits.features.build as fb

    rng = np.random.default_rng(kc)
    P, Fs = 96, 40
    s = fb.DashboardSettings(4, 4, 2, 8, 16, 10, 8)
    st = jax.tree.map(lambda x: x[0], fb._init_state(1, Fs, s))
    valid = rng.random(P) > 0.1
    g = np.where(valid, np.arange(P) + 1000, -1).astype(np.int32)
    seed, layer = jnp.uint32(3), jnp.int32(2)
    sparse_equal = fallbacks = 0
    for it in range(6):
        a = np.maximum(rng.standard_normal((Fs, P)) - 1.6, 0) * rng.uniform(0.5, 3, Fs)[:, None]
        a[:3] = np.maximum(rng.standard_normal((3, P)), 0)  # busy features
        a[3] = np.abs(rng.standard_normal(P)) + 0.1  # fires at every position
        a[:, 5] = a[:, 7]  # ties between positions
        a[8:10, it % 7 :: 7] = 0.75  # ties between the values of one feature, and with the kept ones
        a[20:] *= rng.random((Fs - 20, P)) < 0.2  # rare features
        args = (jnp.asarray(valid), jnp.asarray(g + it * P), seed, layer, s)
        a_FP = jnp.asarray(a, jnp.float32)
        dense = fb._layer_update_dense(st, a_FP, *args)
        sparse, n_full = fb._layer_update_sparse(st, a_FP.T, *args, kc, m)
        chosen, _ = fb._layer_update(st, a_FP.T, *args, kc, m)
        for k in dense:
            assert np.array_equal(np.asarray(chosen[k]), np.asarray(dense[k])), k
        same = all(np.array_equal(np.asarray(sparse[k]), np.asarray(dense[k])) for k in dense)
        if int(n_full) <= m:
            assert same, it
            sparse_equal += 1
        else:
            fallbacks += 1
        st = dense
    assert int(np.asarray(st["count"]).sum()) > 0
    assert (sparse_equal, fallbacks) == ((6, 0) if path == "sparse" else (0, 6))  # the path meant was exercised


def test_the_sample_is_the_same_whatever_the_batches():
    """``_sample_merge`` keeps, per feature and hash bucket, the occurrence of largest key (ties: earliest
    position): one batch of all candidates, the same split in two in either order, or candidates repeated give the
    same sample, and each kept occurrence is a real one with its own value."""
    import jax.numpy as jnp

    import jcircuits.features.build as fb

    rng = np.random.default_rng(0)
    Fs, P, R = 6, 300, 8
    vals = np.where(rng.random((Fs, P)) < 0.3, rng.random((Fs, P)), 0.0).astype(np.float32)
    g = np.broadcast_to(np.arange(P, dtype=np.int32), (Fs, P))
    rows = jnp.arange(Fs)[:, None]
    seed, layer = jnp.uint32(5), jnp.int32(1)
    empty = (jnp.full((Fs, R), -jnp.inf), jnp.zeros((Fs, R)), jnp.full((Fs, R), -1, jnp.int32))

    def run(parts):
        res = empty
        for sl in parts:
            res = fb._sample_merge(res, rows, jnp.asarray(g[:, sl]), jnp.asarray(vals[:, sl]),
                                   jnp.asarray(vals[:, sl] > 0), seed, layer)
        return [np.asarray(x) for x in res]

    whole = run([slice(None)])
    for parts in ([slice(0, 137), slice(137, None)], [slice(137, None), slice(0, 137)],
                  [slice(None), slice(0, 150)]):
        for x, y in zip(whole, run(parts), strict=True):
            assert np.array_equal(x, y)
    k, v, i = whole
    kept = i >= 0
    assert kept.sum() >= Fs * R * 0.75  # most buckets hold an occurrence (about 90 occurrences a feature)
    f_ix = np.nonzero(kept)[0]
    assert np.all(vals[f_ix, i[kept]] == v[kept]) and np.all(v[kept] > 0)
    assert np.all((k[kept] >= 0) & (k[kept] < 1)) and np.all(np.isneginf(k[~kept]))


def test_records_round_like_pythons_format():
    """The vectorised rounding of the records' numbers gives exactly ``float(format(x, ".{d}g"))``, halves and
    float32 values included."""
    from jcircuits.features.build import _round_sig

    rng = np.random.default_rng(0)
    x = (rng.standard_normal(20000) * 10.0 ** rng.integers(-12, 12, 20000)).astype(np.float32).astype(np.float64)
    x = np.concatenate([x, np.arange(1, 4000) * 2.0**-13, np.arange(1, 4000) * 0.0005, [0.0, -0.0]])
    for d in (4, 6):
        want = np.array([float(format(float(v), f".{d}g")) for v in x])
        assert np.array_equal(_round_sig(x, d), want)


def test_a_failed_finish_resumes_without_running_the_pass_again(tmp_path, monkeypatch):
    import jcircuits.features.build as fb

    model = tiny_model("llama")
    tcs = tiny_transcoders(model.cfg, "plt", n_features=F)
    tokens = _corpus(model.cfg.vocab_size)
    kw = dict(n_top=K, context=C, batch_size=B, progress=False)
    whole = build_dashboards(model, tcs, tokens, out_dir=tmp_path / "whole", resume=False, **kw)
    real = fb._finish

    def broken(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(fb, "_finish", broken)
    with pytest.raises(OSError, match="disk full"):
        build_dashboards(model, tcs, tokens, out_dir=tmp_path / "part", resume=False, **kw)
    assert (tmp_path / "part" / STATE_NAME).is_file()
    monkeypatch.setattr(fb, "_finish", real)
    seen = []
    build_dashboards(model, tcs, tokens, out_dir=tmp_path / "part", resume=True, on_batch=seen.append, **kw)
    assert seen == []  # every batch was done before the finish failed
    assert _files(tmp_path / "part") == _files(whole)
