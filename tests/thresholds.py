"""Comparing feature activations without depending on which side of a JumpReLU threshold round-off lands.

A JumpReLU feature whose pre-activation sits on its threshold θ is 0 in one float computation and ≈ θ in another
(circuit-tracer and we sum in different orders). Elementwise comparison would make such a test flaky by
construction, so ``assert_activations_close`` compares every element except those where one side is 0 and the
other is a value within ``margin`` (relative) of the feature's threshold: exactly the elements whose presence
round-off decides. It asserts how many it excluded (at most ``max_excluded``) and reports them.
"""

from __future__ import annotations

import numpy as np

__all__ = ["assert_activations_close", "round_off_flips"]


def round_off_flips(got, want, threshold_LF, *, atol: float, margin: float = 1e-4) -> np.ndarray:
    """Boolean ``[L, T, F]``: elements that differ by more than ``atol`` only because a JumpReLU feature sits on its
    threshold (one side 0, the other within ``margin·max(1, θ)`` of θ). ``threshold_LF`` ``None``: no JumpReLU."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if threshold_LF is None:
        return np.zeros(got.shape, bool)
    theta = np.broadcast_to(np.asarray(threshold_LF, np.float64)[:, None, :], got.shape)
    fired = np.where(got == 0, want, got)  # the value of the side that fired
    one_zero = (got == 0) != (want == 0)
    on_threshold = np.abs(fired - theta) <= margin * np.maximum(1.0, np.abs(theta))
    return one_zero & on_threshold & (np.abs(got - want) > atol)


def assert_activations_close(
    got, want, threshold_LF, *, atol: float, margin: float = 1e-4, max_excluded: int = 2, err_msg: str = ""
) -> int:
    """``assert_allclose(got, want, atol)`` over ``[L, T, F]`` activations, except round-off threshold flips
    (``round_off_flips``), of which there may be at most ``max_excluded``. Returns how many were excluded."""
    flips = round_off_flips(got, want, threshold_LF, atol=atol, margin=margin)
    n = int(flips.sum())
    assert n <= max_excluded, f"{err_msg}: {n} threshold flips excluded (at most {max_excluded}): {np.argwhere(flips)}"
    keep = ~flips
    np.testing.assert_allclose(np.asarray(got)[keep], np.asarray(want)[keep], atol=atol, err_msg=err_msg)
    if n:
        print(f"{err_msg}: excluded {n} JumpReLU features on their threshold: {np.argwhere(flips).tolist()}")
    return n
