"""Cumulative-share thresholds, the one rule both pruning paths (dense ``prune`` and CSR ``sparse``) cut by.

It sits below both so that neither imports the other for it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["cumulative_fraction", "find_threshold"]


def cumulative_fraction(sorted_desc: jax.Array) -> jax.Array:
    """Cumulative share of the total along a descending-sorted score vector, as the reference computes it
    (``cumsum / sum``). The cumsum is float32: circuit-tracer's ``torch.cumsum`` accumulates in double on CPU
    and in float32 on GPU, so on very large graphs (N² tiny edge scores) the threshold index can move by a few
    near-tied entries between the tools; on the parity graphs the masks agree exactly."""
    return jnp.cumsum(sorted_desc) / jnp.sum(sorted_desc)


@jax.jit
def find_threshold(scores: jax.Array, threshold: float) -> jax.Array:
    """The score at which the descending cumulative sum of ``scores`` first reaches ``threshold`` of the total.

    Keeping ``scores >= find_threshold(...)`` keeps that prefix *and every score tied with its last element*
    (so ties can keep more than the fraction asked for). At ``threshold = 1.0`` the result depends on float
    rounding of ``cumsum / sum`` in the reference: if the last non-zero cumulative value rounds below 1 the index
    runs off the end and is clamped to the smallest score (often 0, keeping everything, zero entries included).
    """
    s = jnp.sort(scores.astype(jnp.float32).reshape(-1))[::-1]
    idx = jnp.searchsorted(cumulative_fraction(s), jnp.float32(threshold), side="left")
    return s[jnp.minimum(idx, s.shape[0] - 1)]
