"""One process of the localhost multi-process test (``tests/test_multiprocess.py`` starts two of these).

``python tests/mp_worker.py PROCESS_ID NUM_PROCESSES PORT OUT_DIR [attribute]``: two CPU devices per process,
``jax.distributed`` on 127.0.0.1:PORT, a ``2 x 2`` (data x model) mesh over all processes' devices. It runs a
sharded forward pass, an orbax save/restore of the sharded params, and with ``attribute`` a sharded attribution;
process 0 writes the results to ``OUT_DIR/result.npz``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"  # before jax is imported
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ (tiny.py)

PROMPT = [1, 17, 42, 5, 63, 8, 29, 77, 3, 51]


def main() -> int:
    pid, nproc, port, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
    do_attr = len(sys.argv) > 5 and sys.argv[5] == "attribute"
    from jcircuits.scale import distributed

    distributed.initialize(f"127.0.0.1:{port}", nproc, pid, timeout_s=60)
    import jax
    import numpy as np
    import tiny
    from jax.sharding import NamedSharding, PartitionSpec

    from jcircuits.models import forward_fn
    from jcircuits.scale import sharding as shd

    assert jax.process_count() == nproc and jax.local_device_count() == 2, (
        jax.process_count(),
        jax.devices(),
    )
    mesh = shd.make_mesh(2, jax.device_count() // 2)
    model = tiny.tiny_model("llama", vocab_size=128, n_heads=4, n_kv_heads=2, d_mlp=64)
    params = shd.shard_params(model.params, model.cfg, mesh)
    assert not params.layers.wq.is_fully_addressable  # really spread over both processes
    tokens = np.asarray([PROMPT, PROMPT[::-1]] * 2, np.int32)
    toks = shd.put(tokens, NamedSharding(mesh, PartitionSpec("data")))
    # forward() checks token ids eagerly on the host; a global token array goes straight to the jitted body
    logits = distributed.to_host(jax.jit(lambda p, t: forward_fn(p, model.cfg, t)[0])(params, toks))

    ckpt = out / "ckpt"
    distributed.save_checkpoint(ckpt, params)
    restored = distributed.restore_checkpoint(ckpt, params)
    same = all(
        np.array_equal(distributed.to_host(a), distributed.to_host(b))
        for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(params), strict=True)
    )
    # weights on a host-local mesh (as tpu/run.py loads them) move onto the global mesh without a copy when the
    # global model axis is this process's devices
    local = shd.make_mesh(1, jax.local_device_count(), devices=jax.local_devices())
    local_params = shd.shard_params(model.params, model.cfg, local)
    moved = shd.shard_params(local_params, model.cfg, mesh)

    def pointers(a):
        return {s.device.id: s.data.unsafe_buffer_pointer() for s in a.addressable_shards}

    zero_copy = pointers(moved.layers.wq) == pointers(local_params.layers.wq)
    result = dict(logits=logits, checkpoint_equal=np.asarray(same), zero_copy=np.asarray(zero_copy))
    if do_attr:
        from jcircuits.attribution import attribute
        from jcircuits.models import Model

        ts = tiny.tiny_transcoders(model.cfg)
        ts.params = shd.shard_transcoders(ts.params, ts.cfg, local)
        local_model = Model(params=local_params, cfg=model.cfg, name=model.name)
        graph = attribute(local_model, ts, np.asarray(PROMPT), batch_size=8, mesh=mesh)
        result.update(adjacency=graph.adjacency_matrix, selected=graph.selected_features)
    if distributed.is_coordinator():
        np.savez(out / "result.npz", **result)
    jax.distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
