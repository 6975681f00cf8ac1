"""The shape-bucket policy: which padded sizes the attribution engine compiles for.

XLA compiles one program per distinct static shape, so the engine pads every size that varies from prompt to
prompt to a few buckets; the memory estimator plans with the same padded sizes. Both import them from here, and
the rule that cuts a long prompt's device batches of rows by memory (``device_batch``).
"""

from __future__ import annotations

__all__ = ["length_bucket", "size_bucket", "position_buckets", "row_bytes", "device_batch", "ROW_BATCH_BYTES",
           "gathers_decoders", "PADDED_DECODER_BYTES", "dense_rows_fit", "DENSE_LIMIT_BYTES",
           "recomputes_patterns", "PATTERN_BYTES"]


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


ROW_BATCH_BYTES = 2**30  # a device batch of rows is cut so that its largest buffers stay near this


def row_bytes(L: int, Tb: int, D: int, n_sources: int, n_active: int) -> int:
    """Bytes one target row occupies on a device while its batch runs, at most (a full-length prefix): the
    per-layer source edges the scan stacks ``[L, T, K]`` and their flat copy, the gathered row ``[n_active]``
    and its error/token columns, and the transposed block's cotangents (about eight ``[T, D]`` arrays), all
    float32. ``n_sources``: K for a PLT, D for a CLT (its scan stacks slot gradients)."""
    return 4 * (2 * L * Tb * n_sources + n_active + L * Tb + Tb + 8 * Tb * D)


def device_batch(batch_size: int, data: int, per_row: int, budget: int = ROW_BATCH_BYTES) -> int:
    """The rows one device batch holds: ``batch_size`` rounded up to a multiple of the data axis, cut (to a power
    of two times the data axis, at least one row per device) while a device's share would take more than
    ``budget`` bytes at ``per_row`` each. Only how rows are grouped on the device changes: which rows are
    computed, and in which order, does not."""
    full = -(-batch_size // data) * data
    fit = max(1, budget // max(per_row, 1))  # rows per device
    if full // data <= fit:
        return full
    return data * (1 << (fit.bit_length() - 1))


ENCODE_CHUNK_BYTES = 2**28  # the replacement step encodes at most this much [L, positions, F] float32 at a time


def encode_chunk(L: int, Tb: int, F: int, limit: int | None = None) -> int:
    """Positions the replacement step encodes at a time: all ``Tb`` while ``[L, Tb, F]`` float32 fits ``limit``
    (default ``ENCODE_CHUNK_BYTES``), else ``Tb`` split into the fewest even chunks (a multiple of 16 positions,
    the last one padded) that do."""
    limit = ENCODE_CHUNK_BYTES if limit is None else limit
    n = -(-L * Tb * F * 4 // limit)
    if n <= 1:
        return Tb
    per = -(-Tb // n)
    return -(-per // 16) * 16


ATTENTION_BLOCK = 256  # query rows a long prompt's forward pass attends at a time


def attention_block(Tb: int) -> int | None:
    """Query rows per attention block for a forward pass that does not capture its patterns (a long prompt):
    ``ATTENTION_BLOCK`` when it divides ``Tb`` (lengths past 1024 are bucketed to multiples of 256) and is
    smaller, else ``None`` (the whole pattern at once)."""
    return ATTENTION_BLOCK if Tb > ATTENTION_BLOCK and Tb % ATTENTION_BLOCK == 0 else None


PADDED_DECODER_BYTES = 2**28  # above this, a PLT's source vectors are kept gathered, if that is smaller


def gathers_decoders(L: int, Tb: int, K: int, D: int, U: int, itemsize: int, limit: int = PADDED_DECODER_BYTES):
    """Whether the frozen model keeps a PLT's active decoder vectors *gathered* (each layer's ``U`` distinct rows
    in float32 plus a row index and an activation per padded slot) rather than padded ``[L, T, K, D]`` in the
    compute dtype: when the padded store would exceed ``limit`` and the gathered one is smaller."""
    padded = L * Tb * K * D * itemsize
    return padded > max(limit, L * U * D * 4 + L * Tb * K * 8)


DENSE_LIMIT_BYTES = 2**30  # attribute(adjacency="auto") keeps rows dense up to this much row + matrix memory


def dense_rows_fit(n_rows: int, n_cols: int, N: int, selecting: bool, limit: int = DENSE_LIMIT_BYTES) -> bool:
    """Whether ``attribute(adjacency="auto")`` keeps its working rows dense: ``n_rows`` float32 rows of ``n_cols``
    (twice with selection: raw and normalised) plus the final ``[N, N]`` matrix fit in ``limit`` bytes."""
    return 4 * (n_rows * n_cols * (2 if selecting else 1) + N * N) <= limit


PATTERN_BYTES = 2**30  # above this, the frozen attention patterns are recomputed per block, not stored


def recomputes_patterns(L: int, H: int, Tb: int, itemsize: int, limit: int = PATTERN_BYTES) -> bool:
    """Whether a prompt's frozen attention patterns ``[L, H, T, T]`` (``itemsize`` bytes each) are too large to
    store, so the frozen model keeps what defines them and recomputes one block's at a time."""
    return L * H * Tb * Tb * itemsize > limit
