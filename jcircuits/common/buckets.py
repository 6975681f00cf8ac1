"""The shape-bucket policy: which padded sizes the attribution engine compiles for.

XLA compiles one program per distinct static shape, so the engine pads every size that varies from prompt to
prompt to a few buckets; the memory estimator plans with the same padded sizes. Both import them from here.
"""

from __future__ import annotations

__all__ = ["length_bucket", "size_bucket", "position_buckets"]


def length_bucket(T: int) -> int:
    """The padded prompt length the engine compiles for: a multiple of 16 (64 past 128 tokens, 256 past 1024),
    so prompts of nearby lengths share every compiled shape."""
    g = 16 if T <= 128 else 64 if T <= 1024 else 256
    return -(-T // g) * g


def size_bucket(n: int) -> int:
    """``n`` rounded up to a half-octave (8, 12, 16, 24, 32, 48, 64, 96, …): at most 50% padding, and few
    enough distinct sizes that prompts with different numbers of active features share compiled shapes."""
    if n <= 8:
        return 8
    p = 1 << ((n - 1).bit_length() - 1)  # largest power of two below n
    return p + p // 2 if n <= p + p // 2 else 2 * p


def position_buckets(T: int, n_buckets: int) -> list[int]:
    """Prefix lengths a feature batch is truncated to: ``n_buckets`` even steps up to ``T``."""
    return sorted({max(1, -(-T * k // n_buckets)) for k in range(1, n_buckets + 1)})
