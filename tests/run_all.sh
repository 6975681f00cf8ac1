#!/usr/bin/env bash
# The test command (README): builds both environments from nothing, then runs the whole suite offline.
#   .venv      jcircuits + the [test] extra (torch==2.13.0 CPU + transformers), pinned by tests/constraints.txt
#   .venv-ref  torch==2.13.0 + circuit-tracer==0.5.0 (its pins clash with ours, so it lives apart), pinned by
#              tests/reference/constraints-ref.txt; reference files go through tests/_artifacts (tests/reference/README.md)
# Extra arguments go to one pytest process, e.g. `bash tests/run_all.sh -k parity -x`.
# On a fresh 2-core machine: ~3-6 min of installs, then the tests in two lanes side by side.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

t0=$(date +%s)
step() { echo "run_all: [$(( $(date +%s) - t0 )) s] $*"; }
die() { echo "run_all: $*" >&2; exit 1; }

PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  step "creating .venv"
  "$PY" -m venv .venv || die "could not create .venv with $PY"
fi
step "installing jcircuits[test] into .venv with tests/constraints.txt (~2 min when new)"
.venv/bin/python -m pip install -q --disable-pip-version-check -c tests/constraints.txt -e ".[test]" 2>&1 \
  | grep -v "is ignored: it is neither a file nor a directory"
.venv/bin/python -c "import jcircuits, jax, torch, transformers" \
  || die ".venv is incomplete (pip install -e '.[test]' failed?)"
step "reference env .venv-ref (circuit-tracer 0.5.0; ~2 min when new)"
bash tests/reference/setup_ref_env.sh || die "could not build .venv-ref"
# Browser tests drive Debian's Chromium through Playwright (never a Playwright browser download).
if [ ! -x /usr/bin/chromium ]; then
  step "installing Debian's chromium for the viewer's browser tests (~1 min)"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  { $SUDO apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null; } \
    || die "could not install chromium"
fi

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 JCIRCUITS_REQUIRE_REF=1 JCIRCUITS_REQUIRE_BROWSER=1 JCIRCUITS_CACHE_DIR=
export XLA_FLAGS="${XLA_FLAGS:---xla_force_host_platform_device_count=8}"
step "ruff (style) and lint-imports (the layering contracts in pyproject.toml)"
.venv/bin/ruff check . || die "ruff found problems"
.venv/bin/lint-imports --no-cache || die "an import breaks the layering (see the contracts above)"
if [ "$#" -gt 0 ]; then
  exec .venv/bin/python -m pytest -q "$@"
fi

# Three pytest processes, grouped by package, in two lanes that run side by side (most of a test's time is
# single-threaded tracing and compilation, so two lanes use the two cores; the reference cases are generated once,
# under conftest.py's lock): lane 1 the first group, lane 2 the other two in turn. Every group runs even when
# another fails; each writes its own log, printed whole when both lanes are done, then a summary of all.
# (Each process keeps its pile of compiled XLA executables small; conftest.py also drops compiled code between
# modules.)
groups=(
  "models+transcoders+attribution+graph+reference|tests/test_layout.py tests/test_thresholds.py tests/test_readme.py tests/models tests/transcoders tests/attribution tests/graph tests/reference"
  "intervention+view+scale+commands+features|tests/intervention tests/view tests/scale tests/commands tests/features"
  "training|tests/training"
)
logs=$(mktemp -d)
run_group() {  # run_group INDEX: one pytest process; its log, exit code and seconds land in $logs
  local g="${groups[$1]}"
  local name="${g%%|*}" paths="${g#*|}" s
  s=$(date +%s)
  step "pytest: $name (started)"
  # shellcheck disable=SC2086
  .venv/bin/python -m pytest -q -p no:cacheprovider $paths >"$logs/$1.log" 2>&1
  echo $? >"$logs/$1.rc"
  echo $(( $(date +%s) - s )) >"$logs/$1.s"
  step "pytest: $name (done, rc=$(cat "$logs/$1.rc"))"
}
run_group 0 &
lane1=$!
{ run_group 1; run_group 2; }
wait "$lane1"

summary=() failed=0
for i in "${!groups[@]}"; do
  name="${groups[$i]%%|*}"
  echo
  echo "run_all: ---------------- log of pytest: $name"
  cat "$logs/$i.log"
  rc=$(cat "$logs/$i.rc" 2>/dev/null || echo 1)
  last=$(grep -E "^(=+ )?[0-9]+ (passed|failed|error)|no tests ran" "$logs/$i.log" | tail -n 1 | sed 's/=//g')
  summary+=("$(printf '%-52s rc=%d %4d s  %s' "$name" "$rc" "$(cat "$logs/$i.s" 2>/dev/null || echo 0)" "$last")")
  [ "$rc" -eq 0 ] || failed=1
  for k in passed failed skipped; do  # totals over all processes
    n=$(grep -oE "[0-9]+ $k" <<<"$last" | grep -oE "[0-9]+" || true)
    eval "tot_$k=\$(( \${tot_$k:-0} + \${n:-0} ))"
  done
  [ "$rc" -eq 0 ] || [ -n "$(grep -oE '[0-9]+ failed' <<<"$last")" ] || tot_failed=$(( ${tot_failed:-0} + 1 ))
done
rm -rf "$logs"
echo
echo "run_all: summary ($(( $(date +%s) - t0 )) s in all)"
printf '  %s\n' "${summary[@]}"
[ "$failed" -eq 0 ] || echo "run_all: some pytest processes failed (above)" >&2
echo "run_all: ${tot_passed:-0} passed, ${tot_failed:-0} failed, ${tot_skipped:-0} skipped"
exit "$failed"
