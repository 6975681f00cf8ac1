"""Attribution targets: which output directions get logit rows, and their weights.

Every target is a direction ``v [D]`` read at the final-normed residual of one prompt position (the last by
default; ``targets_at`` places targets at several), a weight (its probability at that position, or a user weight
for custom directions) and a label. Token targets use the demeaned unembedding
column ``W_U[:, i] − mean_j W_U[:, j]``, so a logit row holds direct effects on ``logit_i − mean logit``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["Targets", "CustomTarget", "resolve_targets", "target_positions", "targets_at"]


@dataclasses.dataclass(frozen=True)
class CustomTarget:
    """A custom direction, e.g. ``W_U[:, a] − W_U[:, b]`` for ``logit(a) − logit(b)``."""

    label: str
    weight: float
    vector: np.ndarray


@dataclasses.dataclass
class Targets:
    ids: np.ndarray  # [K] int64 (custom targets: vocab_size + i)
    probabilities: np.ndarray  # [K] float32 (weights for custom targets)
    vectors: np.ndarray  # [K, D] float32
    labels: list[str]
    positions: np.ndarray | None = None  # [K] int64: the position each target is read at (``targets_at``)

    def __len__(self) -> int:
        return len(self.ids)


def _softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    e = np.exp(x - x.max())
    return (e / e.sum()).astype(np.float32)


def resolve_targets(
    spec,
    last_logits: np.ndarray,
    W_U: np.ndarray,
    *,
    max_n_logits: int = 10,
    desired_logit_prob: float = 0.95,
    decode=None,
    encode_token=None,
) -> Targets:
    """Turn a target specification into ``Targets``.

    ``spec``: ``None`` (salient logits: the smallest top-probability prefix reaching ``desired_logit_prob``, at
    most ``max_n_logits``), a sequence of token ids, a sequence of single-token strings (needs
    ``encode_token(str) -> id``), or a sequence of ``CustomTarget`` / ``(label, weight, vector)`` tuples.
    ``last_logits [V]`` are the model's output logits at the last position, ``W_U [D, V]``.
    """
    V = last_logits.shape[0]
    D = W_U.shape[0]
    probs = _softmax(np.asarray(last_logits))
    decode = decode or (lambda i: f"<{i}>")
    mean = W_U.mean(axis=1)

    def token_targets(ids):
        ids = np.asarray(ids, dtype=np.int64)
        bad = ids[(ids < 0) | (ids >= V)]
        if bad.size:
            raise ValueError(f"target token ids out of vocabulary [0, {V}): {bad.tolist()}")
        vecs = (W_U[:, ids] - mean[:, None]).T.astype(np.float32)
        return Targets(ids, probs[ids], vecs, [decode(int(i)) for i in ids])

    if spec is None:
        if max_n_logits < 1:
            raise ValueError(f"max_n_logits must be >= 1, got {max_n_logits}")
        if not 0.0 < desired_logit_prob <= 1.0:
            raise ValueError(f"desired_logit_prob must be in (0, 1], got {desired_logit_prob}")
        k = min(max_n_logits, V)
        order = np.argsort(-probs, kind="stable")[:k]
        cum = np.cumsum(probs[order])
        cutoff = int(np.searchsorted(cum, desired_logit_prob)) + 1
        return token_targets(order[:cutoff])
    spec = list(spec) if not isinstance(spec, np.ndarray) else spec.tolist()
    if len(spec) == 0:
        raise ValueError("attribution_targets is empty: pass None for salient logits, or at least one target")
    if all(isinstance(s, (int, np.integer)) for s in spec):
        return token_targets(spec)
    if all(isinstance(s, str) for s in spec):
        if encode_token is None:
            raise ValueError("string targets need a tokenizer")
        return token_targets([encode_token(s) for s in spec])
    customs = []
    for i, s in enumerate(spec):
        if isinstance(s, tuple) and len(s) == 3:
            s = CustomTarget(str(s[0]), float(s[1]), np.asarray(s[2]))
        if not isinstance(s, CustomTarget):
            raise TypeError(
                f"attribution target {i} is {type(s).__name__}; expected all token ids, all strings, "
                "or all (label, weight, vector) custom targets"
            )
        v = np.asarray(s.vector, dtype=np.float32)
        if v.shape != (D,):
            raise ValueError(f"custom target {s.label!r} has a direction of shape {v.shape}; expected ({D},)")
        if not np.all(np.isfinite(v)):
            raise ValueError(f"custom target {s.label!r} has non-finite entries")
        customs.append(s)
    return Targets(
        ids=np.arange(V, V + len(customs), dtype=np.int64),
        probabilities=np.array([c.weight for c in customs], np.float32),
        vectors=np.stack([np.asarray(c.vector, np.float32) for c in customs]),
        labels=[c.label for c in customs],
    )


def target_positions(spec, T: int) -> np.ndarray:
    """The positions targets are read at, ascending ``[P]`` int64: ``spec`` is ``None`` (the last position), an
    int or a sequence of ints (negative counts from the end, as in Python indexing). Out-of-range or repeated
    positions raise ``ValueError``."""
    if spec is None:
        return np.array([T - 1], np.int64)
    items = [spec] if isinstance(spec, (int, np.integer)) else list(spec)
    if not items:
        raise ValueError("target_positions is empty: pass None for the last position, or at least one position")
    if not all(isinstance(p, (int, np.integer)) and not isinstance(p, bool) for p in items):
        raise TypeError(f"target_positions must be ints, got {items!r}")
    bad = [int(p) for p in items if not -T <= p < T]
    if bad:
        raise ValueError(
            f"target position(s) {bad} outside the prompt's {T} tokens (0..{T - 1}, or -{T}..-1 from the end)"
        )
    pos = np.array([int(p) % T for p in items], np.int64)
    if len(np.unique(pos)) != len(pos):
        raise ValueError(f"target positions repeat: {items} are positions {pos.tolist()} of {T}")
    return np.sort(pos)


def targets_at(spec, logits_TV: np.ndarray, positions: np.ndarray, W_U: np.ndarray, **kwargs) -> Targets:
    """``resolve_targets`` at each of ``positions`` (``[P]``, ascending; ``logits_TV [T, V]`` the model's output
    logits), concatenated in position order: salient targets are chosen per position from that position's
    probabilities; explicit ids, strings and custom directions are read at every position. ``kwargs`` go to
    ``resolve_targets``. The result's ``positions [K]`` say where each target is read."""
    parts = [resolve_targets(spec, np.asarray(logits_TV[p]), W_U, **kwargs) for p in positions]
    return Targets(
        ids=np.concatenate([t.ids for t in parts]),
        probabilities=np.concatenate([t.probabilities for t in parts]),
        vectors=np.concatenate([t.vectors for t in parts]),
        labels=[lab for t in parts for lab in t.labels],
        positions=np.repeat(np.asarray(positions, np.int64), [len(t) for t in parts]),
    )
