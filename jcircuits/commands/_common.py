"""What the model-running commands share: their arguments, and turning those into typed values.

Nothing here is passed ``argparse`` objects beyond the command layer: each command converts its namespace with
these helpers and calls the library with explicit parameters.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = [
    "UsageError",
    "add_model_arguments",
    "add_scale_arguments",
    "parse_tokens",
    "check_prompt_arguments",
    "prompt_of",
    "load_model_and_transcoders",
    "mesh_of",
    "positive_int",
    "port_number",
    "probability",
    "output_file",
    "output_dir",
]

_INT32_MAX = 2**31 - 1


class UsageError(ValueError):
    """A command line that cannot run as given; ``jcircuits`` prints the message and exits with 2."""


def positive_int(text: str) -> int:
    """argparse type: an integer ≥ 1."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if not 1 <= n <= _INT32_MAX:
        raise argparse.ArgumentTypeError(f"expected a whole number from 1 to {_INT32_MAX}, got {n}")
    return n


def port_number(text: str) -> int:
    """argparse type: a TCP port 0–65535 (0: any free port)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= n <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0 to 65535 (0: any free port), got {n}")
    return n


def probability(text: str) -> float:
    """argparse type: a number in (0, 1]."""
    try:
        p = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a probability, got {text!r}") from None
    if not 0.0 < p <= 1.0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"expected a probability in (0, 1], got {text}")
    return p


def tolerance(text: str) -> float:
    """argparse type: a number in [0, 1)."""
    try:
        p = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from None
    if not 0.0 <= p < 1.0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text}")
    return p


def output_file(path: str, flag: str = "-o") -> Path:
    """Check, before any work, that ``path`` can be written as a file: not a directory, parent creatable."""
    p = Path(path)
    if p.is_dir():
        raise UsageError(f"{flag} {path} is a directory; give a file name, e.g. {p / 'graph.safetensors'}")
    parent = next((q for q in [p.parent, *p.parent.parents] if q.exists()), Path("."))
    if not parent.is_dir():
        raise UsageError(f"{flag} {path}: {parent} is a file, so {p.parent} cannot be created")
    return p


def output_dir(path: str, flag: str) -> Path:
    """Check, before any work, that ``path`` is (or can be made) a directory."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UsageError(f"{flag} {path} is a file; give a directory (it is created if missing)")
    parent = next((q for q in p.parents if q.exists()), Path("."))
    if not parent.is_dir():
        raise UsageError(f"{flag} {path}: {parent} is a file, so the directory cannot be created")
    return p


def parse_tokens(s: str):
    """``"2,15,7"`` → ``int32 [T]`` token ids (exit with a message on anything else)."""
    import numpy as np

    try:
        ids = [int(x) for x in s.replace(" ", "").split(",") if x]
    except ValueError:
        raise UsageError(f"--tokens must be comma-separated integers, got {s!r}") from None
    if not ids:
        raise UsageError("--tokens is empty")
    bad = [i for i in ids if not 0 <= i <= _INT32_MAX]
    if bad:
        raise UsageError(f"--tokens: {bad[0]} is not a token id (ids are 0 to the vocabulary size - 1)")
    return np.asarray(ids, np.int32)


def add_model_arguments(a: argparse.ArgumentParser) -> None:
    """The ``--model/--transcoders/--prompt/--tokens/--dtype`` arguments every model-running command shares."""
    a.add_argument(
        "--model",
        help="HF model directory, org/repo or hf://org/repo?revision=… (default: the embedded default model)",
    )
    a.add_argument(
        "--transcoders",
        help="circuit-tracer config.yaml, transcoder directory, hub repo (org/repo[/subfolder][@revision]) or one "
        "of circuit-tracer's presets: gemma (mwhanna/gemma-scope-transcoders), llama (mntss/transcoder-Llama-3.2-1B)",
    )
    a.add_argument("--prompt", help="prompt text (a special start token is prepended if missing)")
    a.add_argument("--tokens", help="comma-separated token ids, used as given")
    a.add_argument(
        "--chat",
        action="store_true",
        help="put --prompt in one user turn of the tokenizer's chat template, with the generation prompt (for "
        "instruction-tuned models such as google/gemma-3-4b-it or Qwen/Qwen3-4B)",
    )
    a.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        default="float32",
        help="how the weights are stored (bfloat16: exact for bfloat16 checkpoints, rounded otherwise) and how rows "
        "are computed: float32 throughout, or mixed bfloat16 (forward, node set, targets and selection in float32, "
        "rows from bfloat16 matmul inputs summed in float32) (default: %(default)s)",
    )


def check_prompt_arguments(prompt: str | None, tokens: str | None, chat: bool = False) -> None:
    """``--prompt`` / ``--tokens`` / ``--chat`` make sense together (checked before anything loads)."""
    if (prompt is None) == (tokens is None):
        raise UsageError("give exactly one of --prompt TEXT or --tokens 2,15,7,…")
    if chat and prompt is None:
        raise UsageError("--chat formats a --prompt TEXT as a chat turn; it does not apply to --tokens")


def prompt_of(model, prompt: str | None, tokens: str | None, chat: bool = False):
    """What to trace from ``--prompt`` / ``--tokens`` / ``--chat`` once the model is loaded: the text (tokenized by
    the engine with the BOS rule), the ids of the chat-formatted text, or the given ids."""
    check_prompt_arguments(prompt, tokens, chat)
    if prompt is None:
        return parse_tokens(tokens)
    if model.tokenizer is None:
        raise UsageError("this model directory has no tokenizer.json: pass --tokens instead of --prompt")
    if chat:
        if model.tokenizer.chat_template is None:
            raise UsageError(
                "--chat: this model's tokenizer has no chat template (tokenizer_config.json has no chat_template): "
                "drop --chat for a base model"
            )
        return model.tokenizer.encode_chat(prompt)
    return prompt


def add_scale_arguments(a: argparse.ArgumentParser) -> None:
    """``--mesh``, ``--dry-run``, ``--device-memory``, ``--host-memory``, ``--l0``."""
    a.add_argument(
        "--mesh",
        help="shard over a DATAxMODEL device mesh, e.g. 4x2 (default: one device). DATA splits the batch of rows, "
        "MODEL the weights",
    )
    a.add_argument(
        "--dry-run",
        action="store_true",
        help="print the mesh, the memory estimate and every array's sharding, then exit (2 if it cannot fit)",
    )
    a.add_argument(
        "--device-memory", help="memory per device for the estimate, e.g. 16GiB (default: detected)"
    )
    a.add_argument("--host-memory", help="host memory for the estimate, e.g. 64GiB (default: available RAM)")
    a.add_argument(
        "--l0",
        type=float,
        default=None,
        help="expected active features per layer and position, for the estimate (default 64; a previous graph's "
        "n_active / (layers x (tokens-1)) is exact)",
    )


def mesh_of(text: str | None):
    """The ``Mesh`` named by ``--mesh DATAxMODEL`` (``None`` without it)."""
    if not text:
        return None
    from jcircuits.scale.sharding import make_mesh, parse_mesh

    return make_mesh(*parse_mesh(text))


def load_model_and_transcoders(
    model: str | None, transcoders: str | None, *, dtype: str = "float32", mesh: str | None = None
):
    """``(Model, TranscoderSet)`` named on the command line: the embedded default (with a notice) when ``model``
    is ``None``; with ``mesh``, loaded straight onto that mesh shard by shard. ``dtype`` is the storage dtype of
    the loaded weights (the embedded default stays float32)."""
    if model is None:
        from jcircuits.default import DEFAULT_NOTICE, default_model, default_transcoders

        if transcoders is not None:
            from jcircuits.transcoders.io import TRANSCODER_PRESETS

            if transcoders in TRANSCODER_PRESETS:
                repo, trained_on = TRANSCODER_PRESETS[transcoders]
                raise UsageError(
                    f"--transcoders {transcoders} needs --model: circuit-tracer's preset ({repo}) was trained on "
                    f"{trained_on}, so add --model {trained_on}"
                )
            raise UsageError("--transcoders needs --model (the demo model comes with its own transcoders)")
        print(DEFAULT_NOTICE, file=sys.stderr)
        m = default_model()
        return m, default_transcoders(m)
    if transcoders is None:
        raise UsageError("--model needs --transcoders (a circuit-tracer config.yaml, directory or hub repo)")
    import jax.numpy as jnp

    from jcircuits.models import load_model
    from jcircuits.transcoders import load_transcoders

    jdtype = jnp.bfloat16 if dtype == "bfloat16" else jnp.float32
    if mesh:  # each device's shards read straight from the files, no whole-model host copy
        from jcircuits.scale.sharded_loading import load_for_mesh

        return load_for_mesh(model, transcoders, mesh_of(mesh), dtype=jdtype)
    return load_model(model, dtype=jdtype), load_transcoders(transcoders, dtype=jdtype)
