#!/usr/bin/env bash
# Takes a backup now through the backup-agent and verifies it (restore into a
# scratch database, row counts compared): `opsloop backup now`, then
# `opsloop backup verify <id>`. Exits non-zero when either fails.
#
# Usage: scripts/backup_now.sh [--target NAME] [--no-verify]
# Environment: OPSLOOP_BACKUP_ENDPOINT (default http://127.0.0.1:50053),
#   OPSLOOP_TOKEN or OPSLOOP_TOKEN_FILE (admin token), OPSLOOP_BIN.
set -euo pipefail
cd "$(dirname "$0")/.."
CLI="${OPSLOOP_BIN:-$(command -v opsloop || echo target/release/opsloop)}"
target=() verify=1
while (($#)); do
  case "$1" in
    --target) target=(--target "$2"); shift 2 ;;
    --no-verify) verify=0; shift ;;
    *) echo "backup_now: unknown argument $1" >&2; exit 2 ;;
  esac
done
out="$(mktemp)"
trap 'rm -f "$out"' EXIT

echo "backup_now: taking a backup ${target[*]}"
"$CLI" -o json backup now "${target[@]}" >"$out"
id=$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); b=d.get("backup", d); print(b.get("id",""))' "$out")
status=$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); b=d.get("backup", d); print(b.get("status",""))' "$out")
echo "backup_now: backup $id: $status"
case "${status,,}" in
  completed | verified | succeeded) ;;
  *) echo "backup_now: backup did not complete" >&2; cat "$out" >&2; exit 1 ;;
esac
if ((verify)); then
  "$CLI" -o json backup verify "$id" >"$out"
  passed=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("passed"))' "$out")
  ms=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("duration_ms"))' "$out")
  if [[ "$passed" != True ]]; then
    echo "backup_now: verification of $id FAILED" >&2
    cat "$out" >&2
    exit 1
  fi
  echo "backup_now: verified $id (restore took ${ms} ms)"
fi
