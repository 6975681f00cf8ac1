"""Automatic short labels from a feature's dashboard: the tokens it fires on most, then the tokens it promotes.

``auto_label(record) -> "dallas, houston → austin, texas"``. Stored apart from labels people write
(``labels.auto.json`` beside the records, each ``{"label", "label_source": "auto"}``; people's labels go in
``labels.json`` and ``FeatureStore.label`` prefers them).

A feature that fires on a common token (``is``, ``the``) is not told apart by that token: what it reads is in the
context before it. Given the corpus's token counts, such a label also names the context: the rarer tokens that
come shortly before the firing token in several of its top examples, e.g. ``"is after lubbock, houston → texas"``
for a feature that fires on the ``is`` of "the state containing lubbock is".
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

__all__ = ["auto_label", "token_text"]

COMMON = 0.01  # a token at 1 % of the corpus's positions or more is common: it names no context
LOOK_BACK = 6  # context tokens: this many before the firing token


def token_text(tok: str) -> str:
    """A token as a label shows it: stripped of spaces (a blank token as its repr)."""
    return tok.strip() or repr(tok)


def _context(examples: list[dict], fired: set[str], freq, n_context: int) -> list[str]:
    """The rare tokens seen shortly before the firing token in at least two (and 3/8) of ``examples``, the
    most often seen first (then the rarer in the corpus)."""
    seen: Counter[str] = Counter()
    for e in examples:
        i = e["train_token_ind"]
        before = {token_text(t) for t in e["tokens"][max(0, i - LOOK_BACK) : i]}
        seen.update(t for t in before if t not in fired and freq(t) < COMMON)
    need = max(2, -(-3 * len(examples) // 8))
    ranked = sorted((t for t, n in seen.items() if n >= need), key=lambda t: (-seen[t], freq(t), t))
    return ranked[:n_context]


def auto_label(
    record: dict,
    n_fire: int = 2,
    n_promote: int = 2,
    *,
    token_frequency: Mapping[str, float] | None = None,
    n_context: int = 2,
) -> str:
    """``"<fires on> → <promotes>"`` from the top-activation examples' max tokens (most frequent first, ties
    by first appearance) and the first of ``top_logits``; ``"(never active)"`` for a dead feature.

    ``token_frequency`` (a token's share of the corpus's positions, by its text): when the token a feature fires on
    most is common, the label reads ``"<fires on> after <context> → <promotes>"`` with up to ``n_context`` rare
    tokens that precede it in several top examples."""
    top = next((q for q in record.get("examples_quantiles", []) if q.get("examples")), None)
    fires: list[str] = []
    if top is not None:
        counts = Counter(token_text(e["tokens"][e["train_token_ind"]]) for e in top["examples"])
        fires = [t for t, _ in counts.most_common(n_fire)]
    promotes = [token_text(t) for t in record.get("top_logits", [])[:n_promote]]
    if not fires:
        return "(never active)" + (f" → {', '.join(promotes)}" if promotes else "")
    head = ", ".join(fires)
    if token_frequency is not None:

        def freq(t: str) -> float:
            return float(token_frequency.get(t, 0.0))

        if freq(fires[0]) >= COMMON:
            ctx = _context(top["examples"], set(fires), freq, n_context)
            if ctx:
                head = f"{head} after {', '.join(ctx)}"
    return f"{head} → {', '.join(promotes)}"
