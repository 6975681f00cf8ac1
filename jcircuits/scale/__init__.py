"""Running at scale: logical axes → mesh rules (``sharding``), loading straight onto a mesh from sliced file reads
(``sharded_loading``), multi-host start-up and host transfers (``distributed``), the memory estimate (``memory``)
and the run plan that checks a run fits before anything is loaded (``plan``)."""

from jcircuits.scale.distributed import initialize, is_coordinator, to_host
from jcircuits.scale.memory import MemoryEstimate, estimate_attribution
from jcircuits.scale.plan import PlanError, RunSettings, preflight
from jcircuits.scale.sharded_loading import load_for_mesh, load_model_sharded, load_transcoders_sharded
from jcircuits.scale.sharding import RULES, make_mesh, parse_mesh, shard_params, shard_transcoders

__all__ = [
    "initialize",
    "is_coordinator",
    "to_host",
    "MemoryEstimate",
    "estimate_attribution",
    "PlanError",
    "RunSettings",
    "preflight",
    "load_for_mesh",
    "load_model_sharded",
    "load_transcoders_sharded",
    "RULES",
    "make_mesh",
    "parse_mesh",
    "shard_params",
    "shard_transcoders",
]
