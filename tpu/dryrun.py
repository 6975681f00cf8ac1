"""Dry run of a TPU attribution config: mesh, per-device memory estimate, and the sharding of every array.

    python tpu/dryrun.py tpu/configs/gemma-2-9b.yaml [--mesh 2x8] [--batch-size 128] [--n-tokens 256]

Needs no TPU and no weights: shapes come from ``jax.eval_shape`` over the model's ``config.json``, shardings from
``jcircuits.scale.sharding.RULES`` on a mesh of the configured size (no devices are created), memory from
``jcircuits.scale.memory``. Exits 2, naming the setting to change, when the estimate exceeds the configured memory.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jcircuits.models.config import config_from_hf  # noqa: E402
from jcircuits.scale.memory import estimate_attribution, human, parse_bytes  # noqa: E402
from jcircuits.scale.plan import dry_run_report  # noqa: E402
from jcircuits.scale.sharding import parse_mesh  # noqa: E402
from jcircuits.transcoders.core import TranscoderConfig  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", help="a tpu/configs/*.yaml file")
    ap.add_argument("--mesh", help="override the config's DATAxMODEL mesh")
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--n-tokens", type=int)
    ap.add_argument("--max-feature-nodes", type=int)
    ap.add_argument("--dtype", choices=("float32", "bfloat16"))
    args = ap.parse_args(argv)
    path = Path(args.config)
    conf = yaml.safe_load(path.read_text())
    run = dict(conf["run"])
    for k in ("batch_size", "n_tokens", "max_feature_nodes", "dtype"):
        if getattr(args, k) is not None:
            run[k] = getattr(args, k)
    cfg = config_from_hf(path.parent / conf["hf_config"])
    t = conf["transcoders"]
    tcfg = TranscoderConfig(
        kind=t["kind"],
        n_layers=cfg.n_layers,
        d_model=cfg.d_model,
        n_features=int(t["n_features"]),
        activation=t.get("activation", "relu"),
        skip=bool(t.get("skip", False)),
    )
    mesh = parse_mesh(args.mesh or conf["mesh"])
    est = estimate_attribution(
        cfg,
        tcfg,
        n_tokens=int(run["n_tokens"]),
        batch_size=int(run["batch_size"]),
        max_feature_nodes=run.get("max_feature_nodes"),
        dtype=run["dtype"],
        mesh=mesh,
        l0=run.get("l0"),
        sharded_loading=True,
    )
    print(f"{path.name}: {conf['model']} on {conf['accelerator']} ({mesh[0] * mesh[1]} chips)")
    print(dry_run_report(cfg, tcfg, est, mesh, run["dtype"], devices=f"{conf['accelerator']}"))
    dev_cap, host_cap = parse_bytes(conf["device_memory"]), parse_bytes(conf["host_memory"])
    print(f"available per device: {human(dev_cap)}; host: {human(host_cap)}")
    problems = est.problems(dev_cap, host_cap)
    for p in problems:
        print(f"will not fit: {p}", file=sys.stderr)
    if not problems:
        print(f"fits: peak {human(est.device_peak)} of {human(dev_cap)} per chip")
    return 2 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
