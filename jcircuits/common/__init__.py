"""What every layer may use: the one pytree convention (``pytree``), ``ArrayInfo`` — shape, logical axes and
init of each array, declared once per tree (``arrays``), the one Hub resolver (``hub``), the shape-bucket policy
that the engine compiles for and the memory estimator plans with (``buckets``), and run-time defaults: the
persistent compilation cache and progress bars (``runtime``). ``pytorch_state`` (not imported here) is the one
reader of PyTorch pickles, for ``jcircuits convert`` only: ``torch.load(weights_only=True)`` into safetensors."""

from jcircuits.common.arrays import ArrayInfo, array_axes, array_init, array_shapes
from jcircuits.common.buckets import length_bucket, position_buckets, size_bucket
from jcircuits.common.hub import HubRef, hub_file, hub_snapshot, parse_ref
from jcircuits.common.pytree import pytree_dataclass
from jcircuits.common.runtime import show_progress, use_compilation_cache

__all__ = [
    "ArrayInfo",
    "array_axes",
    "array_init",
    "array_shapes",
    "length_bucket",
    "position_buckets",
    "size_bucket",
    "HubRef",
    "hub_file",
    "hub_snapshot",
    "parse_ref",
    "pytree_dataclass",
    "show_progress",
    "use_compilation_cache",
]
