"""``jcircuits intervene``: set transcoder features and compare the model's next-token distribution (and, with
``--generate N``, its continuation) before and after.

``--set L:POS:FEAT=VALUE`` sets feature FEAT of layer L at POS (an int, negative from the end of the prompt, or a
range ``START..STOP``; ``START..`` is open-ended and also edits generated tokens). ``--set L:POS:FEAT*=K`` scales
the clean activation by K. Without ``--model`` it runs the built-in demo model, like ``jcircuits attribute``.
"""

from __future__ import annotations

import sys
import time

from jcircuits.commands._common import (
    UsageError,
    add_model_arguments,
    check_prompt_arguments,
    load_model_and_transcoders,
    prompt_of,
)

__all__ = ["register"]


def _token_str(model, i: int) -> str:
    if model.tokenizer is None:
        return f"#{i}"
    try:
        return repr(model.tokenizer.id_to_token(i))
    except KeyError:
        return f"#{i}"


def _continuation(model, toks) -> str:
    toks = [int(t) for t in toks]
    eos = model.cfg.eos_token_id
    if eos is not None and eos in toks:
        toks = toks[: toks.index(eos) + 1]  # the model ended the text; the rest is noise
    if model.tokenizer is None:
        return " ".join(str(t) for t in toks)
    return repr(model.tokenizer.decode(toks))


def cmd_intervene(args) -> int:
    import jax
    import numpy as np

    from jcircuits.intervention import (
        feature_intervention,
        generate,
        parse_intervention,
        specs_to_interventions,
    )
    from jcircuits.models import encode_prompt

    check_prompt_arguments(args.prompt, args.tokens, args.chat)
    if not args.set:
        raise UsageError("give at least one --set L:POS:FEAT=VALUE (e.g. --set 1:-1:42=0 to ablate)")
    if args.top_k < 1:
        raise UsageError(f"--top-k must be >= 1, got {args.top_k}")
    if args.generate is not None and args.generate < 1:
        raise UsageError(f"--generate must be >= 1, got {args.generate}")
    specs = [parse_intervention(s) for s in args.set]
    t0 = time.perf_counter()
    model, transcoders = load_model_and_transcoders(args.model, args.transcoders, dtype=args.dtype)
    tokens = encode_prompt(model, prompt_of(model, args.prompt, args.tokens, args.chat))
    T = len(tokens)
    constrained = range(model.cfg.n_layers) if args.constrained else None
    before, clean_acts = feature_intervention(model, transcoders, tokens, [])
    interventions = specs_to_interventions(specs, clean_acts, T)
    after, _ = feature_intervention(
        model,
        transcoders,
        tokens,
        interventions,
        constrained_layers=constrained,
        freeze_attention=not args.no_freeze_attention,
    )
    clean_acts = np.asarray(clean_acts)
    shown = " ".join(_token_str(model, t) for t in tokens)
    print(f"prompt: {shown} ({T} tokens)")
    for layer, pos, feat, value in interventions:
        clean = f"clean activation {clean_acts[layer, pos, feat]:.4g}" if isinstance(pos, int) else "a range"
        where = pos if isinstance(pos, int) else f"{pos.start or 0}..{'' if pos.stop is None else pos.stop}"
        print(f"  set layer {layer} position {where} feature {feat} -> {value:.4g} ({clean})")
    mode = "all layers constrained (direct effects)" if args.constrained else "effects propagate"
    print(f"mode: {mode}, attention {'live' if args.no_freeze_attention else 'frozen'}")
    p0 = np.asarray(jax.nn.softmax(before[-1]))
    p1 = np.asarray(jax.nn.softmax(after[-1]))
    k = min(args.top_k, len(p0))
    print(f"{'rank':>4}  {'before':<28}{'after':<28}")
    for r, (i, j) in enumerate(zip(np.argsort(-p0)[:k], np.argsort(-p1)[:k], strict=True), 1):
        b = f"{_token_str(model, i)} {p0[i]:.4f}"
        a = f"{_token_str(model, j)} {p1[j]:.4f} ({p1[j] - p0[j]:+.4f})"
        print(f"{r:>4}  {b:<28}{a:<28}")
    if args.generate:
        rng = jax.random.key(args.seed)
        kw = dict(max_new_tokens=args.generate, temperature=args.temperature, rng=rng)
        g0 = generate(model, transcoders, tokens, [], **kw)
        g1 = generate(
            model,
            transcoders,
            tokens,
            interventions,
            constrained_layers=constrained,
            freeze_attention=not args.no_freeze_attention,
            **kw,
        )
        print(f"continuation before: {_continuation(model, g0.tokens)}")
        print(f"continuation after:  {_continuation(model, g1.tokens)}")
    print(f"({time.perf_counter() - t0:.2f}s)", file=sys.stderr)
    return 0


def register(sub) -> None:
    a = sub.add_parser("intervene", help="edit transcoder features and compare outputs before/after")
    add_model_arguments(a)
    a.add_argument(
        "--set",
        action="append",
        metavar="L:POS:FEAT=VALUE",
        help="feature edit; repeatable. POS: int or START..STOP (START.. also edits generated tokens); "
        "L:POS:FEAT*=K scales the clean activation",
    )
    a.add_argument(
        "--constrained",
        action="store_true",
        help="freeze every layer's MLP output and norms (direct effects)",
    )
    a.add_argument("--no-freeze-attention", action="store_true", help="let attention patterns respond too")
    a.add_argument("--top-k", type=int, default=5, help="next tokens to list (default 5)")
    a.add_argument("--generate", type=int, metavar="N", help="also generate N tokens before/after")
    a.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    a.add_argument("--seed", type=int, default=0, help="PRNG seed for sampling")
    a.set_defaults(func=cmd_intervene)
