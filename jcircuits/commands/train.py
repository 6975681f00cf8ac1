"""``jcircuits train-default`` and ``jcircuits train-transcoders``.

``train-default OUT`` re-creates the embedded default model (synthetic corpus, tiny Llama, harvest, JumpReLU
PLTs) into ``OUT``; ``jcircuits/default`` is ``train-default jcircuits/default --seed 0``.

``train-transcoders --model DIR --text FILE -o OUT`` trains a PLT or CLT set on any model we can run: each line
of ``FILE`` is tokenized with the model's tokenizer (or ``--tokens-npy`` gives ``[sequences, positions]`` ids),
activations are harvested (in memory, or as shards under ``--harvest-dir``), and the set is trained with
checkpoints and metrics under ``OUT/train`` (resumed by default; ``--no-resume`` starts over) and written to
``OUT`` in circuit-tracer's format (``config.yaml`` + layer files). Bad numbers, paths, token ids outside the
model's vocabulary, non-finite activations and a resume with other settings than the checkpoint's are refused
with a one-line error (exit code 2) before any work they would spoil.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

__all__ = ["register"]


def cmd_train_default(args) -> int:
    from jcircuits.training.default_model import DefaultSettings, train_default

    s = DefaultSettings()
    if args.lm_steps is not None or args.tc_steps is not None:
        import dataclasses

        s = dataclasses.replace(
            s,
            lm_steps=args.lm_steps if args.lm_steps is not None else s.lm_steps,
            tc_steps=args.tc_steps if args.tc_steps is not None else s.tc_steps,
        )
    rec = train_default(args.output, seed=args.seed, settings=s, reuse_lm=args.reuse_lm)
    print(json.dumps({k: rec[k] for k in ("accuracy", "transcoders", "lm_train_s", "tc_train_s", "total_s")}))
    return 0


# Numeric flags of train-transcoders that must be positive (and finite).
_POSITIVE = ("seq_len", "n_features", "steps", "batch_size", "log_every", "checkpoint_every", "lr")


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _check_arguments(args) -> None:
    """Refuse bad numbers and paths before any model is loaded or activation harvested."""
    for dest in _POSITIVE:
        v = getattr(args, dest)
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"{_flag(dest)} must be a positive number, got {v}")
    if args.top_k is not None and not 0 < args.top_k <= args.n_features:
        raise ValueError(f"--top-k must be between 1 and --n-features ({args.n_features}), got {args.top_k}")
    if not (math.isfinite(args.sparsity_coeff) and args.sparsity_coeff >= 0):
        raise ValueError(f"--sparsity-coeff must be a finite number >= 0, got {args.sparsity_coeff}")
    if (args.text is None) == (args.tokens_npy is None):
        raise ValueError("give exactly one of --text FILE or --tokens-npy FILE")
    for flag, path in (("--text", args.text), ("--tokens-npy", args.tokens_npy)):
        if path is None:
            continue
        if Path(path).is_dir():
            raise ValueError(f"{flag} {path} is a directory; give a file")
        if not Path(path).is_file():
            raise FileNotFoundError(f"{flag} {path}: no such file")
    for flag, path in (("-o/--output", args.output), ("--harvest-dir", args.harvest_dir)):
        if path is not None and Path(path).exists() and not Path(path).is_dir():
            raise ValueError(f"{flag} {path} is an existing file; give a directory (new or existing)")


def _check_token_ids(tokens, vocab_size: int, pad_id: int, source: str) -> None:
    """Every token id (padding aside) must index the model's embedding: JAX would clamp the rest silently."""
    import numpy as np

    real = tokens[tokens != pad_id]
    if real.size == 0:
        raise ValueError(f"{source} holds no tokens besides padding (pad id {pad_id})")
    lo, hi = int(real.min()), int(real.max())
    if lo < 0 or hi >= vocab_size:
        bad = int(((real < 0) | (real >= vocab_size)).sum())
        worst = hi if hi >= vocab_size else lo
        raise ValueError(
            f"{source} holds {bad} token ids outside the model's vocabulary (vocab size {vocab_size}, valid ids "
            f"0..{vocab_size - 1}; largest id {hi}, smallest {lo}, e.g. {worst} at (sequence, position) "
            f"{tuple(int(i) for i in np.argwhere(tokens == worst)[0])}); tokenize with this model's tokenizer"
        )


def _check_finite_harvest(x, y, tokens, pad_id: int) -> None:
    """Name the layer and the (sequence, position) of the first non-finite harvested value."""
    import numpy as np

    for name, a in (("inputs", x), ("outputs", y)):
        bad = ~np.isfinite(a)
        if bad.any():
            row, layer, _ = (int(i) for i in np.argwhere(bad)[0])
            # harvest keeps non-pad tokens at positions >= 1, sequence by sequence
            seq, pos = np.argwhere((tokens != pad_id) & (np.arange(tokens.shape[1]) >= 1))[row]
            raise ValueError(
                f"the harvested {name} hold {int(bad.sum())} non-finite values, the first at layer {layer}, "
                f"sequence {int(seq)}, position {int(pos)} (token id {int(tokens[seq, pos])}); the model "
                "produces NaN/inf on this data (check its weights), so no transcoder can be trained on it"
            )


# TrainConfig fields set by a flag of the same name (the others are fixed or follow from --activation).
_FLAG_FIELDS = {"kind", "n_features", "activation", "top_k", "sparsity", "sparsity_coeff", "lr", "steps"}
_FLAG_FIELDS |= {"batch_size", "seed", "input_hook", "output_hook"}


def _resume_refusal(e) -> ValueError:
    names = {"tokens": "harvested training tokens"}
    diffs = "; ".join(
        f"{_flag(k) if k in _FLAG_FIELDS else names.get(k, k)}: {old!r} in the checkpoint, {new!r} now"
        for k, old, new in e.differences
    )
    return ValueError(
        f"{e.directory} holds a run with other settings ({diffs}); rerun with the same settings to resume, "
        "or pass --no-resume to start over"
    )


def _read_tokens(args, tokenizer, pad_id: int):
    import numpy as np

    if args.tokens_npy is not None:
        arr = np.load(args.tokens_npy, allow_pickle=False)
        if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"{args.tokens_npy}: expected an integer array [sequences, positions]")
        return arr.astype(np.int32)
    if tokenizer is None:
        raise ValueError("the model directory has no tokenizer.json: pass --tokens-npy instead of --text")
    lines = [ln.strip() for ln in Path(args.text).read_text().splitlines() if ln.strip()]
    if not lines:
        raise ValueError(f"{args.text} has no non-empty lines")
    out = np.full((len(lines), args.seq_len), pad_id, np.int32)
    for i, ln in enumerate(lines):
        ids = tokenizer.encode(ln)[: args.seq_len]
        out[i, : len(ids)] = ids
    return out


def cmd_train_transcoders(args) -> int:
    import numpy as np

    from jcircuits.models.loading import load_params, resolve_model_dir
    from jcircuits.models.tokenizer import Tokenizer
    from jcircuits.training.harvest import harvest, load_shards
    from jcircuits.training.transcoder import (
        ResumeMismatch,
        TrainConfig,
        evaluate_transcoders,
        to_transcoder_set,
        train_transcoders,
    )
    from jcircuits.transcoders.io import save_transcoders

    _check_arguments(args)
    model_dir = resolve_model_dir(args.model)
    params, cfg = load_params(model_dir)
    tok = Tokenizer.from_file(model_dir) if (Path(model_dir) / "tokenizer.json").is_file() else None
    pad = cfg.pad_token_id if cfg.pad_token_id is not None else (tok.pad_id if tok else None)
    if pad is None:
        raise ValueError("the model defines no pad token id; pad your --tokens-npy rows yourself")
    tokens = _read_tokens(args, tok, pad)
    source = f"--tokens-npy {args.tokens_npy}" if args.tokens_npy else f"--text {args.text} (tokenized)"
    _check_token_ids(tokens, cfg.vocab_size, pad, source)
    tcfg = TrainConfig(
        kind=args.kind,
        n_features=args.n_features,
        activation=args.activation,
        top_k=args.top_k,
        sparsity=args.sparsity or {"jumprelu": "l0", "relu": "tanh", "topk": "none"}[args.activation],
        sparsity_coeff=args.sparsity_coeff,
        decoder_norm="unit" if args.activation == "topk" else "penalty",
        lr=args.lr,
        steps=args.steps,
        batch_size=args.batch_size,
        seed=args.seed,
        log_every=args.log_every,
        checkpoint_every=args.checkpoint_every,
        input_hook=args.input_hook,
        output_hook=args.output_hook,
    )
    kw = dict(input_hook=tcfg.input_hook, output_hook=tcfg.output_hook, pad_id=pad, progress=not args.quiet)
    if args.harvest_dir:
        harvest(params, cfg, tokens, out_dir=args.harvest_dir, **kw)
        x, y = load_shards(args.harvest_dir)
    else:
        x, y = harvest(params, cfg, tokens, **kw)
    _check_finite_harvest(x, y, tokens, pad)
    if x.shape[0] < 2:
        raise ValueError(
            f"only {x.shape[0]} token(s) to harvest (position 0 and padding are skipped): give more data"
        )
    n_eval = max(1, int(0.05 * x.shape[0]))
    perm = np.random.default_rng(args.seed).permutation(x.shape[0])
    ev, tr = perm[:n_eval], perm[n_eval:]
    out = Path(args.output)
    try:
        res = train_transcoders(x[tr], y[tr], tcfg, out_dir=out / "train", resume=not args.no_resume)
    except ResumeMismatch as e:
        raise _resume_refusal(e) from None
    ts = to_transcoder_set(res, scan=args.scan or f"jcircuits-{tcfg.kind}-{Path(model_dir).name}")
    cfg_path = save_transcoders(ts, out)
    metrics = evaluate_transcoders(ts, x[ev], y[ev])
    (out / "eval.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(f"wrote {cfg_path}; held-out {len(ev)} tokens: {json.dumps(metrics)}", file=sys.stderr)
    return 0


def register(sub) -> None:
    a = sub.add_parser("train-default", help="re-create the embedded default model and its transcoders")
    a.add_argument("output", help="directory to write the model, tokenizer and transcoders into")
    a.add_argument("--seed", type=int, default=0, help="seed of corpus, LM and transcoders (default: %(default)s)")
    a.add_argument("--lm-steps", type=int, default=None, help="override the LM's training steps")
    a.add_argument("--tc-steps", type=int, default=None, help="override the transcoders' training steps")
    a.add_argument(
        "--reuse-lm",
        action="store_true",
        help="keep the LM an earlier run wrote to OUTPUT; retrain transcoders",
    )
    a.set_defaults(func=cmd_train_default)

    t = sub.add_parser("train-transcoders", help="harvest activations and train PLT/CLT transcoders")
    t.add_argument("--model", required=True, help="HF model directory, org/repo or hf://org/repo")
    t.add_argument("--text", help="text file, one training sequence per line")
    t.add_argument("--tokens-npy", help="int .npy [sequences, positions] of token ids (pad-filled)")
    t.add_argument(
        "--seq-len", type=int, default=64, help="positions per --text line, truncated/padded (default: %(default)s)"
    )
    t.add_argument("-o", "--output", required=True, help="output directory (config.yaml + layer files)")
    t.add_argument(
        "--kind", choices=("plt", "clt"), default="plt", help="per-layer or cross-layer (default: %(default)s)"
    )
    t.add_argument(
        "--activation", choices=("relu", "jumprelu", "topk"), default="jumprelu", help="(default: %(default)s)"
    )
    t.add_argument("--top-k", type=int, default=None, help="active features per token, for --activation topk")
    t.add_argument(
        "--sparsity",
        choices=("l1", "tanh", "l0", "none"),
        default=None,
        help="sparsity penalty (default: l0 for jumprelu, tanh for relu, none for topk)",
    )
    t.add_argument("--sparsity-coeff", type=float, default=2e-3, help="its weight (default: %(default)s)")
    t.add_argument("--n-features", type=int, default=1024, help="features per layer (default: %(default)s)")
    t.add_argument("--steps", type=int, default=2000, help="optimizer steps (default: %(default)s)")
    t.add_argument("--batch-size", type=int, default=1024, help="tokens per step (default: %(default)s)")
    t.add_argument("--lr", type=float, default=1e-2, help="learning rate (default: %(default)s)")
    t.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    t.add_argument("--log-every", type=int, default=100, help="steps between metric rows (default: %(default)s)")
    t.add_argument(
        "--checkpoint-every", type=int, default=500, help="steps between checkpoints (default: %(default)s)"
    )
    t.add_argument("--input-hook", default="mlp.hook_in", help="where features read (default: %(default)s)")
    t.add_argument("--output-hook", default="mlp.hook_out", help="where they write (default: %(default)s)")
    t.add_argument("--harvest-dir", help="write harvested activations as shards here (else in memory)")
    t.add_argument("--scan", help="the transcoder set's scan name in config.yaml")
    t.add_argument(
        "--no-resume", action="store_true", help="start over even if checkpoints exist (deletes them)"
    )
    t.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    t.set_defaults(func=cmd_train_transcoders)
