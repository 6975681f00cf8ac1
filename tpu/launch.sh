#!/usr/bin/env bash
# Launch jcircuits attribution on a Cloud TPU VM or pod slice. See tpu/README.md.
#
#   tpu/launch.sh create   CONFIG           create the TPU VM / slice named $TPU_NAME
#   tpu/launch.sh install  CONFIG           copy this checkout to every worker, build a venv with jax[tpu]
#   tpu/launch.sh dryrun   CONFIG           mesh, memory estimate and shardings (local; no TPU needed)
#   tpu/launch.sh run      CONFIG ARGS...   run tpu/run.py on all workers at once (ARGS: --transcoders --prompt …)
#   tpu/launch.sh collect  CONFIG [DIR]     copy worker 0's output directory ($OUT_DIR) back to DIR
#   tpu/launch.sh delete   CONFIG           delete the TPU
#
# Environment: TPU_NAME (default jcircuits), ZONE (default us-west4-a), PROJECT (default: gcloud's),
# OUT_DIR (default out/<config name>, on the workers), SPOT=1 for a spot/preemptible slice, DRY=1 to print the
# gcloud commands instead of running them.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

cmd="${1:?usage: tpu/launch.sh create|install|dryrun|run|collect|delete CONFIG [ARGS...]}"
config="${2:?give a config, e.g. tpu/configs/gemma-2-9b.yaml}"
shift 2
[ -f "$config" ] || { echo "launch.sh: no config file $config" >&2; exit 2; }

TPU_NAME="${TPU_NAME:-jcircuits}"
ZONE="${ZONE:-us-west4-a}"
name="$(basename "$config" .yaml)"
OUT_DIR="${OUT_DIR:-out/$name}"
# The two settings the TPU itself needs, read from the config (plain `key: value` lines).
field() { sed -n "s/^$1:[[:space:]]*\([^[:space:]#]*\).*/\1/p" "$config" | head -1; }
ACCEL="$(field accelerator)"
RUNTIME="$(field runtime)"

gc() {  # gcloud, or just print it with DRY=1
  local args=(gcloud compute tpus tpu-vm "$@" --zone "$ZONE")
  [ -n "${PROJECT:-}" ] && args+=(--project "$PROJECT")
  if [ -n "${DRY:-}" ]; then printf '%q ' "${args[@]}"; echo; else "${args[@]}"; fi
}

case "$cmd" in
  create)
    extra=()
    [ -n "${SPOT:-}" ] && extra+=(--spot)
    gc create "$TPU_NAME" --accelerator-type "$ACCEL" --version "$RUNTIME" "${extra[@]}"
    ;;
  install)
    # Ship the committed tree (no venvs, no artifacts) to every worker, then build the environment there.
    tarball="$(mktemp -d)/jcircuits.tar.gz"
    git archive --format=tar.gz -o "$tarball" HEAD
    gc scp "$tarball" "$TPU_NAME:~/jcircuits.tar.gz" --worker=all
    gc ssh "$TPU_NAME" --worker=all --command \
      'set -e; rm -rf ~/jcircuits && mkdir ~/jcircuits && tar -xzf ~/jcircuits.tar.gz -C ~/jcircuits &&
       cd ~/jcircuits && python3 -m venv .venv && .venv/bin/pip install -q -U pip &&
       .venv/bin/pip install -q "jax[tpu]" -e . && .venv/bin/python -c "import jax; print(jax.devices())"'
    ;;
  dryrun)
    python3 tpu/dryrun.py "$config" "$@"
    ;;
  run)
    # Every worker runs the same program; jax.distributed finds the others through the TPU metadata.
    # Model weights: HF_TOKEN must be set on the workers for gated repos (or pass --model /local/dir).
    quoted="$(printf '%q ' "$@")"
    gc ssh "$TPU_NAME" --worker=all --command \
      "cd ~/jcircuits && .venv/bin/python tpu/run.py $config --out $OUT_DIR $quoted"
    ;;
  collect)
    dest="${1:-.}"
    mkdir -p "$dest"
    gc scp "$TPU_NAME:~/jcircuits/$OUT_DIR" "$dest" --worker=0 --recurse
    ;;
  delete)
    gc delete "$TPU_NAME" --quiet
    ;;
  *)
    echo "launch.sh: unknown command $cmd (create|install|dryrun|run|collect|delete)" >&2
    exit 2
    ;;
esac
