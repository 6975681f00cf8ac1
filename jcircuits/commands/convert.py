"""``jcircuits convert IN -o OUT``: a PyTorch state dict (``pytorch_model.bin``, ``.pt``, sharded ``.bin`` + index)
turned into safetensors once, read with ``torch.load(weights_only=True)``; nothing else in jcircuits unpickles."""

from __future__ import annotations

__all__ = ["register"]


def cmd_convert(args) -> int:
    import sys

    from jcircuits.common.pytorch_state import convert_state_dict

    res = convert_state_dict(args.input, args.output)
    where = (
        res.index if res.index is not None else (res.files[0] if len(res.files) == 1 else res.files[0].parent)
    )
    print(
        f"wrote {where}: {res.n_tensors} tensors, {res.n_bytes / 1e6:.2f} MB in {len(res.files)} safetensors "
        f"file(s){f', copied {len(res.copied)} other file(s)' if res.copied else ''}"
    )
    if res.skipped:
        shown = ", ".join(res.skipped[:8]) + (" …" if len(res.skipped) > 8 else "")
        print(
            f"jcircuits convert: note: skipped {len(res.skipped)} non-tensor value(s): {shown}",
            file=sys.stderr,
        )
    return 0


def register(sub) -> None:
    a = sub.add_parser(
        "convert",
        help="turn a PyTorch state dict (pytorch_model.bin, .pt, sharded .bin + index) into safetensors, once",
        description="Read a PyTorch state dict with torch.load(weights_only=True) (needs torch) and write it as "
        "safetensors; jcircuits' loaders never unpickle, so convert such checkpoints once with this.",
    )
    a.add_argument(
        "input",
        help="a .bin/.pt/.pth file, a pytorch_model.bin.index.json, or a directory holding them "
        "(its other files, e.g. config.json, are copied)",
    )
    a.add_argument(
        "-o",
        "--output",
        required=True,
        help="a .safetensors file (one input file) or a directory (shards + model.safetensors.index.json)",
    )
    a.set_defaults(func=cmd_convert)
