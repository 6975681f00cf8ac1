#!/usr/bin/env bash
# Create the reference virtualenv `.venv-ref` (torch + circuit-tracer 0.5.0) in the repo root.
# Idempotent: does nothing if .venv-ref already imports circuit_tracer at the pinned version.
# Needs only package registries (no model hub access).
#
#   bash tests/reference/setup_ref_env.sh            # create / reuse
#   JCIRCUITS_REF_PYTHON=python3.11 bash tests/reference/setup_ref_env.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${JCIRCUITS_REF_VENV:-$ROOT/.venv-ref}"
PY="${JCIRCUITS_REF_PYTHON:-python3}"
TORCH_VERSION="2.13.0"
CT_VERSION="0.5.0"

check() {
  "$VENV/bin/python" - <<PYEOF 2>/dev/null
import importlib.metadata as m, circuit_tracer, torch, transformer_lens, transformers  # noqa: F401
# the nnsight backend (Gemma-3 cases): circuit-tracer 0.5.0 imports nnsight.intervention.tracing.tracer, gone in nnsight 0.8
import circuit_tracer.replacement_model.replacement_model_nnsight  # noqa: F401
assert m.version("circuit-tracer") == "$CT_VERSION", m.version("circuit-tracer")
assert torch.__version__.split("+")[0] == "$TORCH_VERSION", torch.__version__
PYEOF
}

if [ -x "$VENV/bin/python" ] && check; then
  echo "setup_ref_env: $VENV is ready (circuit-tracer $CT_VERSION, torch $TORCH_VERSION)"
  exit 0
fi

start=$(date +%s)
echo "setup_ref_env: creating $VENV"
rm -rf "$VENV"
"$PY" -m venv "$VENV"
LOG="$VENV/setup_ref_env.log"
pipi() {  # quiet pip; show the log tail on failure
  if ! "$VENV/bin/python" -m pip install --disable-pip-version-check "$@" >>"$LOG" 2>&1; then
    grep -v "is ignored: it is neither a file nor a directory" "$LOG" | tail -n 40 >&2
    echo "setup_ref_env: pip install failed (full log: $LOG)" >&2
    exit 1
  fi
}
pipi --upgrade pip

# Prefer a CPU-only torch wheel: a local one (pip's find-links, e.g. /opt/wheels) when present, since the
# default PyPI wheel drags in several GB of CUDA libraries. `torch==X` also matches `X+cpu`.
TORCH_SPEC="torch==$TORCH_VERSION"
for d in ${PIP_FIND_LINKS:-} /opt/wheels; do
  w=$(ls "$d"/torch-"$TORCH_VERSION"+cpu-*.whl 2>/dev/null | head -n1 || true)
  if [ -n "$w" ]; then TORCH_SPEC="$w"; break; fi
done
echo "setup_ref_env: installing $TORCH_SPEC circuit-tracer==$CT_VERSION"
# -c: the exact versions this env passed on (tests/reference/constraints-ref.txt; how to refresh it is at its top)
pipi -c "$ROOT/tests/reference/constraints-ref.txt" "$TORCH_SPEC" "circuit-tracer==$CT_VERSION" pyyaml safetensors tokenizers

check || { echo "setup_ref_env: $VENV does not import circuit_tracer $CT_VERSION" >&2; exit 1; }
echo "setup_ref_env: done in $(( $(date +%s) - start )) s"
