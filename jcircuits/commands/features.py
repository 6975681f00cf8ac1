"""``jcircuits features build``: feature dashboards over a corpus, in circuit-tracer's feature layout.

With no ``--model`` it uses the embedded default model and, unless ``--text``/``--tokens-npy`` is given, that
model's own synthetic corpus (``jcircuits.training.corpus``, the world of the seed it was trained with).
"""

from __future__ import annotations

import sys
from pathlib import Path

from jcircuits.commands._common import (
    UsageError,
    load_model_and_transcoders,
    mesh_of,
    output_dir,
    positive_int,
)

__all__ = ["register", "text_to_tokens", "default_corpus_tokens"]


def text_to_tokens(model, text: str, seq_len: int):
    """``[N, seq_len]`` ids from text, one document a non-empty line: each is tokenized with the BOS rule and cut
    into rows of ``seq_len`` (each row starting with BOS); a short last row is padded with the pad token."""
    import numpy as np

    tok = model.tokenizer
    if tok is None:
        raise UsageError("this model directory has no tokenizer.json: pass --tokens-npy instead of --text")
    bos, pad = model.cfg.bos_token_id, model.cfg.pad_token_id
    rows = []
    for line in text.splitlines():
        if not line.strip():
            continue
        ids = [int(i) for i in tok.encode(line)]
        if bos is not None and ids and ids[0] == bos:
            ids = ids[1:]
        for j in range(0, len(ids), seq_len - 1):
            row = [bos, *ids[j : j + seq_len - 1]]
            if len(row) < seq_len:
                if pad is None:
                    continue  # no pad token: a short row is dropped
                row += [pad] * (seq_len - len(row))
            rows.append(row)
    if not rows:
        raise UsageError("--text gave no token rows (empty file, or every line shorter than --seq-len without a pad)")
    return np.asarray(rows, np.int32)


def default_corpus_tokens(n_docs: int, seed: int = 2):
    """``[n_docs, seq_len]`` ids of the embedded default model's own synthetic corpus (its training seed's world)."""
    import json

    from jcircuits.default import DEFAULT_DIR
    from jcircuits.training import corpus

    rec = json.loads((DEFAULT_DIR / "training.json").read_text())
    world = corpus.make_world(int(rec["seed"]))
    tk = corpus.build_tokenizer(world)
    seq_len = int(rec["settings"]["seq_len"])
    return corpus.encode_documents(tk, corpus.sample_documents(world, n_docs, seq_len, seed=seed), seq_len)


def cmd_features(args) -> int:
    import numpy as np

    from jcircuits.features import build_dashboards

    if args.action != "build":
        raise UsageError(f"unknown action {args.action!r}; try `jcircuits features build`")
    if args.text and args.tokens_npy:
        raise UsageError("give at most one of --text FILE or --tokens-npy FILE")
    if args.model is not None and not (args.text or args.tokens_npy):
        raise UsageError("--model needs a corpus: --text FILE or --tokens-npy FILE")
    out = output_dir(args.output, "-o")
    for flag, path in (("--tokens-npy", args.tokens_npy), ("--text", args.text)):
        if path and not Path(path).is_file():  # checked before the model loads
            raise FileNotFoundError(f"{flag} {path}: no such file")
    model, transcoders = load_model_and_transcoders(args.model, args.transcoders, mesh=args.mesh)
    if args.tokens_npy:
        p = Path(args.tokens_npy)
        try:
            tokens = np.load(p, allow_pickle=False)
        except ValueError as e:
            raise UsageError(f"--tokens-npy {p} is not a .npy array of token ids ({e})") from None
        if tokens.ndim != 2 or not np.issubdtype(tokens.dtype, np.integer):
            raise UsageError(f"--tokens-npy must hold integers [n_sequences, seq_len], got {tokens.dtype} {tokens.shape}")
    elif args.text:
        p = Path(args.text)
        seq_len = min(args.seq_len, model.cfg.max_position_embeddings)
        if seq_len < 2:
            raise UsageError("--seq-len must be at least 2 (BOS + one token)")
        tokens = text_to_tokens(model, p.read_text(encoding="utf-8"), seq_len)
    else:
        tokens = default_corpus_tokens(args.n_docs)
    if args.max_tokens is not None:
        tokens = tokens[: max(1, args.max_tokens // tokens.shape[1])]
    print(f"features: {tokens.shape[0]} sequences x {tokens.shape[1]} tokens -> {out}", file=sys.stderr)
    build_dashboards(
        model,
        transcoders,
        tokens,
        n_top=args.n_top,
        n_per_quantile=args.n_per_quantile,
        n_bins=args.n_bins,
        digits=args.digits,
        context=args.context,
        batch_size=args.batch_size,
        mesh=mesh_of(args.mesh),
        progress=not args.quiet,
        out_dir=out,
        resume=not args.no_resume,
    )
    print(f"wrote {out}/index.json.gz and {transcoders.cfg.n_layers} layer files; read one with "
          f"jcircuits.features.FeatureStore({str(out)!r}).feature(layer, index)")
    return 0


def register(sub) -> None:
    a = sub.add_parser("features", help="feature dashboards (top activations, quantile examples, logits)")
    a.add_argument("action", choices=("build",), help="build: compute the dashboards over a corpus")
    a.add_argument(
        "--model",
        help="HF model directory, org/repo or hf://org/repo?revision=… (default: the embedded default model)",
    )
    a.add_argument("--transcoders", help="circuit-tracer config.yaml, transcoder directory or hub repo")
    a.add_argument("--text", help="corpus text file, one document a line (default: the default model's corpus)")
    a.add_argument("--tokens-npy", help="corpus token ids, an int .npy [n_sequences, seq_len] with BOS first")
    a.add_argument("--seq-len", type=positive_int, default=128, help="row length for --text (default: %(default)s)")
    a.add_argument(
        "--n-docs", type=positive_int, default=1000,
        help="documents of the default model's corpus when no --text/--tokens-npy (default: %(default)s)",
    )
    a.add_argument("--max-tokens", type=positive_int, default=None, help="use at most this many tokens (default: all)")
    a.add_argument(
        "--context", type=positive_int, default=64, help="tokens shown around each example (default: %(default)s)"
    )
    a.add_argument("--n-top", type=positive_int, default=16, help="top examples per feature (default: %(default)s)")
    a.add_argument(
        "--n-per-quantile", type=positive_int, default=4,
        help="examples per quantile band (4 bands; default: %(default)s)",
    )
    a.add_argument(
        "--n-bins", type=positive_int, default=64, help="activation histogram bins (default: %(default)s)"
    )
    a.add_argument(
        "--digits", type=positive_int, default=6,
        help="significant digits of the activations written (default: %(default)s)",
    )
    a.add_argument(
        "--batch-size", type=positive_int, default=32, help="sequences per device batch (default: %(default)s)"
    )
    a.add_argument(
        "--mesh", help="shard rows over a DATAxMODEL device mesh, e.g. 4x2 (default: one device)"
    )
    a.add_argument("--no-resume", action="store_true", help="start over instead of resuming from -o's saved state")
    a.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    a.add_argument("-o", "--output", default="features", help="output directory (default: %(default)s)")
    a.set_defaults(func=cmd_features)
