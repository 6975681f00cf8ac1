"""Training: JumpReLU straight-through gradients, dictionary recovery, CLT, resume, data parallelism, harvesting,
the synthetic corpus and LM, the committed default model, and circuit-tracer reading a trained PLT."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jcircuits.training import corpus
from jcircuits.training.transcoder import (
    TrainConfig,
    evaluate_transcoders,
    jumprelu,
    make_mesh,
    step_fn,
    to_transcoder_set,
    train_transcoders,
)
from jcircuits.transcoders.io import load_transcoders, save_transcoders

ROOT = Path(__file__).resolve().parents[2]


def sparse_problem(seed=0, N=20000, L=2, D=32, F=64, p=0.05, cross=0.0):
    """Known sparse dictionary: features ``a`` (each on with prob ``p``, size U(1, 2)) read through unit
    directions ``A`` and written through unit directions ``B``; ``cross`` adds layer 0's features to layer 1's
    output (a cross-layer term only a CLT can explain)."""
    r = np.random.default_rng(seed)
    A = r.normal(size=(L, F, D))
    A /= np.linalg.norm(A, axis=-1, keepdims=True)
    B = r.normal(size=(L, F, D))
    B /= np.linalg.norm(B, axis=-1, keepdims=True)
    a = (r.random((N, L, F)) < p) * r.uniform(1, 2, (N, L, F))
    x = np.einsum("nlf,lfd->nld", a, A)
    y = np.einsum("nlf,lfd->nld", a, B)
    if cross:
        y[:, 1] += cross * a[:, 0] @ B[0]
    return x.astype(np.float32), y.astype(np.float32), a, B


# ------------------------------------------------------------------------------ JumpReLU straight-through


def _smoothed_step(z, w, theta, eps):
    """Σ_i w_i E[H(z − θ)] with each pre-activation z_i spread uniformly over [z_i − ε/2, z_i + ε/2] (the
    rectangle kernel), in closed form."""
    return float((w * np.clip((z + eps / 2 - theta) / eps, 0.0, 1.0)).sum())


def _expected_jumprelu(mu, sigma, theta):
    """E[z · H(z − θ)] for z ~ N(μ, σ²), in closed form."""
    from math import erf, exp, pi, sqrt

    u = (theta - mu) / sigma
    return mu * (1 - 0.5 * (1 + erf(u / sqrt(2)))) + sigma * exp(-u * u / 2) / sqrt(2 * pi)


def test_step_threshold_gradient_matches_finite_difference_of_kernel_smoothed_loss():
    """The L0 step's custom_vjp threshold gradient is exactly the derivative of the kernel-smoothed loss
    (central differences in float64), with thresholds broadcast over a batch; its z-gradient is zero."""
    r = np.random.default_rng(0)
    B, eps = 4000, 0.1
    # float32-representable values, so both sides see the same samples
    z = r.normal(0.5, 0.5, (B, 3)).astype(np.float32).astype(np.float64)
    w = r.normal(1.0, 0.3, (B, 3)).astype(np.float32).astype(np.float64)
    theta = np.array([0.3, 0.55, 0.9], np.float32).astype(np.float64)
    loss = lambda t, zz: jnp.sum(jnp.asarray(w, jnp.float32) * step_fn(zz, t, eps))  # noqa: E731
    g = jax.grad(loss)(jnp.asarray(theta, jnp.float32), jnp.asarray(z, jnp.float32))
    h = 1e-6
    for f in range(3):
        fd = (
            _smoothed_step(z[:, f], w[:, f], theta[f] + h, eps)
            - _smoothed_step(z[:, f], w[:, f], theta[f] - h, eps)
        ) / (2 * h)
        assert abs(fd) > 100  # the window holds samples: the comparison is not vacuous
        np.testing.assert_allclose(float(g[f]), fd, rtol=1e-3)
    gz = jax.grad(loss, argnums=1)(jnp.asarray(theta, jnp.float32), jnp.asarray(z, jnp.float32))
    assert not np.asarray(gz).any()


def test_jumprelu_threshold_gradient_matches_finite_difference_of_expected_loss():
    """JumpReLU's pseudo-derivative −(θ/ε)·rect((z−θ)/ε), averaged over samples, estimates the true gradient of
    the expected output E[z H(z − θ)] (finite differences of its closed form), and equals θ times the step's
    threshold gradient; the z-gradient is H(z − θ)."""
    mu, sigma, eps, n = 0.4, 0.6, 0.05, 400_000
    z = np.random.default_rng(1).normal(mu, sigma, (n, 3)).astype(np.float32)
    theta = np.array([0.2, 0.5, 1.0], np.float32)
    g = jax.grad(lambda t: jnp.mean(jumprelu(jnp.asarray(z), t, eps), axis=0).sum())(jnp.asarray(theta))
    h = 1e-4
    for f in range(3):
        fd = (_expected_jumprelu(mu, sigma, theta[f] + h) - _expected_jumprelu(mu, sigma, theta[f] - h)) / (
            2 * h
        )
        np.testing.assert_allclose(float(g[f]), fd, rtol=0.05)
    g_step = jax.grad(lambda t: jnp.mean(step_fn(jnp.asarray(z), t, eps), axis=0).sum())(jnp.asarray(theta))
    np.testing.assert_allclose(np.asarray(g), theta * np.asarray(g_step), rtol=1e-5)
    gz = jax.grad(lambda zz: jnp.sum(jumprelu(zz, jnp.asarray(theta), eps)))(jnp.asarray(z[:100]))
    np.testing.assert_array_equal(np.asarray(gz), (z[:100] > theta).astype(np.float32))


# ------------------------------------------------------------------------------------- transcoder training

_FAST = dict(n_features=128, batch_size=256, lr=1e-2, log_every=100, bandwidth=0.2, init_threshold=1.0)


def _recovered(ts, B, layer=0, cos=0.9):
    W = ts.decoders.padded()[layer, :, layer if ts.cfg.kind == "clt" else 0]
    W = W / np.maximum(np.linalg.norm(W, axis=-1, keepdims=True), 1e-12)
    return float((np.abs(B[layer] @ W.T).max(1) > cos).mean())


def test_plt_jumprelu_recovers_known_sparse_dictionary():
    """A JumpReLU PLT trained on a known sparse dictionary (64 features in 32 dims, ~3 active) reaches FVU < 0.2
    on held-out tokens, ≥ 90% of the true decoder directions have a learned decoder within cos 0.9, and L0 is
    within 2× the true L0."""
    x, y, a, B = sparse_problem(0)
    cfg = TrainConfig(
        kind="plt", activation="jumprelu", sparsity="l0", sparsity_coeff=3e-3, steps=1000, **_FAST
    )
    ts = to_transcoder_set(train_transcoders(x[:18000], y[:18000], cfg, log=None))
    ev = evaluate_transcoders(ts, x[18000:], y[18000:])
    true_l0 = (a[18000:] > 0).sum(-1).mean(0)
    assert max(ev["fvu"]) < 0.2, ev
    assert all(l0 < 2 * t for l0, t in zip(ev["l0"], true_l0, strict=True)), (ev, true_l0)
    assert min(_recovered(ts, B, 0), _recovered(ts, B, 1)) >= 0.9


@pytest.mark.parametrize(
    "activation,sparsity,coeff,decoder_norm",
    [("relu", "tanh", 1e-2, "penalty"), ("relu", "l1", 3e-2, "penalty"), ("topk", "none", 0.0, "unit")],
)
def test_other_activations_and_penalties_train(activation, sparsity, coeff, decoder_norm):
    """ReLU with the tanh or L1 penalty and TopK (unit-norm decoders) all fit the sparse problem far better than
    the mean (FVU < 0.35) with few active features (true L0 ≈ 3.2: ReLU < 15, TopK == k exactly, with unit
    decoder rows)."""
    x, y, _, _ = sparse_problem(1, N=8000)
    cfg = TrainConfig(
        activation=activation,
        sparsity=sparsity,
        sparsity_coeff=coeff,
        decoder_norm=decoder_norm,
        top_k=4 if activation == "topk" else None,
        steps=400,
        **_FAST,
    )
    ts = to_transcoder_set(train_transcoders(x, y, cfg, log=None))
    ev = evaluate_transcoders(ts, x, y)
    assert max(ev["fvu"]) < 0.35, ev
    if activation == "topk":
        assert ev["l0"] == [4.0, 4.0]
        res = train_transcoders(x, y, dataclasses.replace(cfg, steps=3), log=None)
        np.testing.assert_allclose(np.linalg.norm(res.params.W_dec, axis=-1), 1.0, rtol=1e-5)
    else:
        assert max(ev["l0"]) < 15


def test_clt_explains_cross_layer_writes_and_round_trips(tmp_path):
    """On a problem where layer 1's output also carries layer 0's features, a CLT fits layer 1 far better than
    a PLT (which cannot see layer 0's features there); the CLT saved in circuit-tracer's format loads back with
    the same evaluation."""
    x, y, _, _ = sparse_problem(2, N=10000, cross=0.8)
    base = dict(activation="jumprelu", sparsity="l0", sparsity_coeff=2e-3, steps=600, **_FAST)
    clt = to_transcoder_set(train_transcoders(x, y, TrainConfig(kind="clt", **base), log=None))
    plt_ = to_transcoder_set(train_transcoders(x, y, TrainConfig(kind="plt", **base), log=None))
    ev_clt, ev_plt = evaluate_transcoders(clt, x, y), evaluate_transcoders(plt_, x, y)
    assert ev_clt["fvu"][1] < 0.25 and ev_clt["fvu"][1] < 0.6 * ev_plt["fvu"][1], (ev_clt, ev_plt)
    save_transcoders(clt, tmp_path / "clt")
    back = load_transcoders(tmp_path / "clt", lazy_decoder=False)
    assert back.cfg.kind == "clt" and back.cfg.activation == "jumprelu"
    ev_back = evaluate_transcoders(back, x, y)
    np.testing.assert_allclose(ev_back["fvu"], ev_clt["fvu"], rtol=1e-4)


def test_checkpoint_resume_gives_identical_parameters_and_logs(tmp_path):
    """Stopping after 30 of 60 steps and resuming from the orbax checkpoint gives bit-identical parameters to an
    uninterrupted run; metrics.csv/jsonl hold every logged step once, with MSE/FVU/L0/dead columns."""
    x, y, _, _ = sparse_problem(3, N=4000)
    cfg = TrainConfig(steps=60, checkpoint_every=10, **{**_FAST, "log_every": 10})
    full = train_transcoders(x, y, cfg, out_dir=tmp_path / "full", log=None)
    part = train_transcoders(x, y, cfg, out_dir=tmp_path / "resumed", stop_after=30, log=None)
    assert part.history[-1]["step"] == 30
    msgs = []
    resumed = train_transcoders(x, y, cfg, out_dir=tmp_path / "resumed", log=msgs.append)
    assert any("resumed from step 30" in m for m in msgs)
    for a, b in zip(
        jax.tree_util.tree_leaves(full.params), jax.tree_util.tree_leaves(resumed.params), strict=True
    ):
        np.testing.assert_array_equal(a, b)
    import csv

    rows = list(csv.DictReader(open(tmp_path / "resumed" / "metrics.csv")))
    assert [int(r["step"]) for r in rows] == list(range(10, 61, 10))
    assert {"loss", "fvu", "l0", "dead_frac", "lr", "fvu_0", "l0_1"} <= set(rows[0])
    jl = [json.loads(ln) for ln in open(tmp_path / "resumed" / "metrics.jsonl")]
    assert [r["step"] for r in jl] == [int(r["step"]) for r in rows]


def test_data_parallel_step_matches_single_device():
    """Sharding the batch over all devices (8 fake CPU devices in the test runner) gives the same parameters
    as one device, within float32 round-off of the reordered reductions."""
    if jax.device_count() < 2:
        pytest.skip("needs several devices: XLA_FLAGS=--xla_force_host_platform_device_count=8")
    x, y, _, _ = sparse_problem(4, N=4000)
    cfg = TrainConfig(steps=20, **_FAST)
    many = train_transcoders(x, y, cfg, mesh=make_mesh(), log=None)
    one = train_transcoders(x, y, cfg, mesh=make_mesh(jax.devices()[:1]), log=None)
    for a, b in zip(
        jax.tree_util.tree_leaves(many.params), jax.tree_util.tree_leaves(one.params), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)
    with pytest.raises(ValueError, match="multiple of"):
        train_transcoders(x, y, dataclasses.replace(cfg, batch_size=jax.device_count() + 1), log=None)


def test_bad_configs_are_rejected():
    with pytest.raises(ValueError, match="needs activation='jumprelu'"):
        TrainConfig(activation="relu", sparsity="l0")
    with pytest.raises(ValueError, match="top_k"):
        TrainConfig(activation="topk", sparsity="none")
    with pytest.raises(ValueError, match="TopK cross-layer"):
        TrainConfig(kind="clt", activation="topk", top_k=2, sparsity="none")


# ---------------------------------------------------------------------------------- corpus, LM, harvesting


def test_corpus_holds_out_two_hop_sentences_and_sums():
    """Held-out cities' two-hop sentences and held-out sums never occur in training documents, while their
    single-hop facts do; the tokenizer encodes every word and prepends <bos>."""
    world = corpus.make_world(0)
    tk = corpus.build_tokenizer(world)
    docs = [" ".join(d) for d in corpus.sample_documents(world, 3000, 48, seed=1)]
    text = " | ".join(docs)
    assert "dallas" not in world.held_out_cities
    for c in world.held_out_cities:
        assert f"containing {c} is {world.capital_of[world.state_of[c]]}" not in text
        assert f"{c} is in {world.state_of[c]}" in text
    for a, b in world.held_out_sums:
        assert f"<bos> {a} plus {b} is" not in text and f". {a} plus {b} is" not in text
    ids = corpus.encode_documents(tk, [d.split() for d in docs[:5]], 48)
    assert ids.shape == (5, 48) and (ids[:, 0] == corpus.BOS).all() and tk.token_to_id("<unk>") not in ids
    assert corpus.make_world(0) == world and corpus.make_world(1).held_out_cities != world.held_out_cities


def test_lm_trains_saves_and_harvests(tmp_path):
    """A few LM steps lower the loss and are reproducible from the seed; the HF-layout files load back with
    identical logits; harvesting to shards equals harvesting to memory, drops <bos> and padding, and matches the
    captured hook points."""
    from jcircuits.models import forward
    from jcircuits.models.loading import load_params
    from jcircuits.training import lm
    from jcircuits.training.harvest import harvest, load_shards

    world = corpus.make_world(0)
    tk = corpus.build_tokenizer(world)
    data = corpus.encode_documents(tk, corpus.sample_documents(world, 200, 24, seed=1), 24)
    cfg = lm.tiny_llama_config(tk.get_vocab_size(), d_model=32, n_layers=2, n_heads=2, d_mlp=64)
    params, hist = lm.train_lm(cfg, data, steps=40, batch_size=16, log_every=10, log=None)
    assert hist[-1]["loss"] < hist[0]["loss"]
    again, _ = lm.train_lm(cfg, data, steps=40, batch_size=16, log_every=10, log=None)
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(again), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # same seed, same model
    lm.save_lm(params, cfg, tmp_path / "m")
    p2, cfg2 = load_params(tmp_path / "m")
    assert cfg2 == cfg
    np.testing.assert_array_equal(
        np.asarray(forward(p2, cfg2, data[:2])), np.asarray(forward(params, cfg, data[:2]))
    )
    x, y = harvest(params, cfg, data[:10], batch_size=4, progress=False)
    shards = harvest(
        params, cfg, data[:10], batch_size=4, out_dir=tmp_path / "h", shard_rows=50, progress=False
    )
    assert len(shards) > 1
    xs, ys = load_shards(tmp_path / "h")
    np.testing.assert_array_equal(xs, x)
    np.testing.assert_array_equal(ys, y)
    n_real = int(((data[:10] != 0) & (np.arange(24) >= 1)).sum())
    assert x.shape == (n_real, 2, 32)
    _, inter = forward(params, cfg, data[:1], capture=True)
    np.testing.assert_allclose(x[0], np.asarray(inter.mlp_in[:, 0, 1]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(y[0], np.asarray(inter.mlp_out_raw[:, 0, 1]), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------- the embedded default model


def test_embedded_default_answers_its_prompts_and_its_transcoders_fit():
    """The committed default (what `jcircuits attribute` traces without --model) loads with the ordinary loaders,
    answers the README's prompt with austin and '3 plus 4 is' with 7, and its transcoders reconstruct its MLP
    outputs on fresh corpus text (FVU < 0.2 at every layer) with few active features."""
    from random_demo import demo_model, demo_transcoders

    from jcircuits.default import DEFAULT_DIR, default_model, default_transcoders
    from jcircuits.training import lm
    from jcircuits.training.harvest import harvest

    record = json.loads((DEFAULT_DIR / "training.json").read_text())
    model = default_model()
    ts = default_transcoders(model)
    assert ts.cfg.kind == "plt" and ts.cfg.n_layers == model.cfg.n_layers and ts.cfg.activation == "jumprelu"
    tok = model.tokenizer
    probs = lm.predict_next(
        model.params, model.cfg, tok, ["the capital of the state containing dallas is", "3 plus 4 is"]
    )
    assert tok.id_to_token(int(probs[0].argmax())) == "austin" and probs[0].max() > 0.5
    assert tok.id_to_token(int(probs[1].argmax())) == "7"
    world = corpus.make_world(record["seed"])
    tk = corpus.build_tokenizer(world)
    assert tk.get_vocab() == tok._tk.get_vocab()
    toks = corpus.encode_documents(tk, corpus.sample_documents(world, 64, 48, seed=12345), 48)
    x, y = harvest(model.params, model.cfg, toks, batch_size=64, progress=False)
    ev = evaluate_transcoders(ts, x, y)
    assert max(ev["fvu"]) < 0.2 and max(ev["l0"]) < 64, ev
    # random model still reachable for tests
    rnd = demo_model()
    assert rnd.name.startswith("demo-random") and demo_transcoders(rnd).cfg.n_features == 256


_CT_LOAD = """
import sys, numpy as np, torch
from circuit_tracer.transcoder.single_layer_transcoder import load_transcoder_set
d = sys.argv[1]; L = int(sys.argv[2]); x = torch.tensor(np.load(d + "/x.npy")); cpu = torch.device("cpu")
ts = load_transcoder_set({i: f"{d}/tc/layer_{i}.safetensors" for i in range(L)}, scan="s", device=cpu,
    feature_input_hook="mlp.hook_in", feature_output_hook="mlp.hook_out", lazy_encoder=False, lazy_decoder=False)
acts = torch.stack([ts.encode_layer(x[l], l) for l in range(L)])
dec = torch.stack([ts[l].W_dec for l in range(L)])
np.savez(d + "/ref.npz", acts=acts.detach().numpy(), dec=dec.detach().numpy())
"""


@pytest.mark.ref
def test_trained_plt_round_trips_through_circuit_tracer(tmp_path):
    """A PLT trained here and saved with save_transcoders is read by circuit-tracer's own loader with the same
    JumpReLU activations and decoder weights."""
    import subprocess

    from jcircuits.transcoders.core import encode_layer

    py = Path(os.environ.get("JCIRCUITS_REF_VENV", ROOT / ".venv-ref")) / "bin" / "python"
    if not py.is_file():
        pytest.skip("no circuit-tracer reference env (.venv-ref or JCIRCUITS_REF_VENV)")
    x, y, _, _ = sparse_problem(5, N=4000)
    ts = to_transcoder_set(train_transcoders(x, y, TrainConfig(steps=100, **_FAST), log=None), scan="s")
    save_transcoders(ts, tmp_path / "tc")
    xs = np.ascontiguousarray(x[:50].transpose(1, 0, 2))  # [L, n, D]
    np.save(tmp_path / "x.npy", xs)
    subprocess.run(
        [str(py), "-c", _CT_LOAD, str(tmp_path), "2"], check=True, capture_output=True, timeout=300
    )
    ref = np.load(tmp_path / "ref.npz")
    ours = np.stack([np.asarray(encode_layer(ts.cfg, ts.params, l, jnp.asarray(xs[l]))) for l in range(2)])
    assert (ours > 0).mean() > 0.01  # features fire: the comparison is not vacuous
    np.testing.assert_allclose(ref["acts"], ours, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ref["dec"], ts.decoders.padded()[:, :, 0], rtol=1e-6, atol=1e-7)


def test_train_transcoders_command_writes_loadable_set_and_logs(tmp_path):
    """`jcircuits train-transcoders` harvests a model directory's activations from a text file (to shards),
    trains, and writes a circuit-tracer config.yaml + layer files that load_transcoders reads, plus metrics,
    checkpoints and a held-out evaluation."""
    from jcircuits.cli import main
    from jcircuits.models import init_params
    from jcircuits.training import lm

    world = corpus.make_world(0)
    tk = corpus.build_tokenizer(world)
    cfg = lm.tiny_llama_config(tk.get_vocab_size(), d_model=32, n_layers=2, n_heads=2, d_mlp=64)
    lm.save_lm(init_params(cfg, jax.random.key(0)), cfg, tmp_path / "m")
    tk.save(str(tmp_path / "m" / "tokenizer.json"))
    docs = corpus.sample_documents(world, 60, 24, seed=1)
    (tmp_path / "text.txt").write_text("\n".join(" ".join(d[1:]) for d in docs))
    args = ["train-transcoders", "--model", str(tmp_path / "m"), "--text", str(tmp_path / "text.txt")]
    args += ["--seq-len", "24", "-o", str(tmp_path / "tc"), "--steps", "20", "--batch-size", "64"]
    args += ["--n-features", "64", "--log-every", "10", "--checkpoint-every", "10", "--harvest-dir"]
    assert main(args + [str(tmp_path / "h"), "-q"]) == 0
    ts = load_transcoders(tmp_path / "tc", n_layers=2)
    assert ts.cfg.kind == "plt" and ts.cfg.n_features == 64 and ts.cfg.activation == "jumprelu"
    assert sorted(p.name for p in (tmp_path / "h").iterdir())[0] == "shard_00000.safetensors"
    assert len((tmp_path / "tc" / "train" / "metrics.csv").read_text().splitlines()) == 3
    ev = json.loads((tmp_path / "tc" / "eval.json").read_text())
    assert len(ev["fvu"]) == 2 and ev["n_tokens"] > 0


def test_embedded_default_reads_in_transformers_with_the_same_logits():
    """The committed default is a plain Hugging Face Llama directory: transformers loads it and gives our logits."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from jcircuits.default import DEFAULT_DIR, default_model
    from jcircuits.models import forward

    model = default_model()
    ids = model.tokenizer.encode("the capital of the state containing dallas is")
    hf = transformers.AutoModelForCausalLM.from_pretrained(DEFAULT_DIR, torch_dtype=torch.float32).eval()
    with torch.no_grad():
        ref = hf(torch.tensor(ids[None], dtype=torch.long)).logits[0].numpy()
    ours = np.asarray(forward(model.params, model.cfg, ids[None]))[0]
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4)
