#!/usr/bin/env bash
# Go/No-Go gate before a release (docs/runbook.md, "Go / No-Go"): formatting,
# lints, the test suite, the deployment files, and the smoke test against a
# running stack. Stops at the first failed stage and names it.
#
# Usage: scripts/release_check.sh [--skip-smoke]
#   The smoke stage needs a running stack (scripts/smoke.sh environment);
#   --skip-smoke is for machines without one and is printed as a NO-GO note.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
skip_smoke=0
[[ "${1:-}" == --skip-smoke ]] && skip_smoke=1
started=$(date +%s)

stage() { # name command...
  local name=$1 t0
  shift
  t0=$(date +%s)
  echo "== $name"
  if ! "$@"; then
    echo "release_check: FAILED stage: $name ($(($(date +%s) - t0))s) -> NO-GO"
    exit 1
  fi
  echo "   $name ok ($(($(date +%s) - t0))s)"
}

stage "fmt" cargo fmt --all -- --check
stage "clippy" cargo clippy --workspace --all-targets --quiet -- -D warnings
stage "tests" bash scripts/test.sh
stage "deploy files" bash scripts/check_deploy.sh
if ((skip_smoke)); then
  echo "release_check: smoke SKIPPED: not a GO until scripts/smoke.sh passes against the release candidate"
  exit 3
fi
stage "smoke" env SMOKE_REPEAT_COUNT="${SMOKE_REPEAT_COUNT:-3}" bash scripts/smoke.sh
echo "release_check: GO ($(($(date +%s) - started))s)"
