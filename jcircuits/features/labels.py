"""Automatic short labels from a feature's dashboard: the tokens it fires on most, then the tokens it promotes.

``auto_label(record) -> "dallas, houston → austin, texas"``. Stored apart from labels people write
(``labels.auto.json`` beside the records, each ``{"label", "label_source": "auto"}``; people's labels go in
``labels.json`` and ``FeatureStore.label`` prefers them).
"""

from __future__ import annotations

from collections import Counter

__all__ = ["auto_label"]


def _clean(tok: str) -> str:
    return tok.strip() or repr(tok)


def auto_label(record: dict, n_fire: int = 2, n_promote: int = 2) -> str:
    """``"<fires on> → <promotes>"`` from the top-activation examples' max tokens (most frequent first, ties
    by first appearance) and the first of ``top_logits``; ``"(never active)"`` for a dead feature."""
    top = next((q for q in record.get("examples_quantiles", []) if q.get("examples")), None)
    fires: list[str] = []
    if top is not None:
        counts = Counter(_clean(e["tokens"][e["train_token_ind"]]) for e in top["examples"])
        fires = [t for t, _ in counts.most_common(n_fire)]
    promotes = [_clean(t) for t in record.get("top_logits", [])[:n_promote]]
    if not fires:
        return "(never active)" + (f" → {', '.join(promotes)}" if promotes else "")
    return f"{', '.join(fires)} → {', '.join(promotes)}"
