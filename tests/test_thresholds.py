"""The threshold-aware activation comparison excludes exactly the round-off flips, and nothing else."""

from __future__ import annotations

import numpy as np
import pytest
from thresholds import assert_activations_close, round_off_flips

THETA = np.array([[0.5, 1.6016881, 2.0]])  # [L=1, F=3]


def _acts(*values):
    return np.array(values, np.float32).reshape(1, -1, 3)


def test_a_feature_on_its_threshold_is_excluded_and_counted():
    got = _acts(0.0, 0.0, 3.0, 0.7, 1.6016881, 0.0)
    want = _acts(0.0, 1.6016882, 3.0, 0.7, 1.6016881, 0.0)
    assert round_off_flips(got, want, THETA, atol=1e-4).sum() == 1
    assert assert_activations_close(got, want, THETA, atol=1e-4) == 1


def test_a_real_difference_still_fails():
    # off the threshold: a feature at 1.9 where the other side has 0 is a real difference
    with pytest.raises(AssertionError):
        assert_activations_close(_acts(0.0, 1.9, 0.0), _acts(0.0, 0.0, 0.0), THETA, atol=1e-4)
    # both sides fired, but with different values
    with pytest.raises(AssertionError):
        assert_activations_close(_acts(0.0, 1.7, 0.0), _acts(0.0, 1.8, 0.0), THETA, atol=1e-4)
    # no thresholds (ReLU): nothing is excluded
    with pytest.raises(AssertionError):
        assert_activations_close(_acts(0.0, 1.6, 0.0), _acts(0.0, 0.0, 0.0), None, atol=1e-4)


def test_too_many_flips_fail():
    got = _acts(0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    want = _acts(0.5, 1.6016881, 2.0, 0.5, 1.6016881, 2.0)
    with pytest.raises(AssertionError, match="6 threshold flips"):
        assert_activations_close(got, want, THETA, atol=1e-4, max_excluded=2)
