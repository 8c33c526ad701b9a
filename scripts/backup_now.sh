#!/usr/bin/env bash
# Takes a backup now through the backup-agent and verifies it (restore into a
# scratch database, row counts compared): `opsloop backup now`, then
# `opsloop backup verify <id>`. Exits non-zero when either fails.
#
# Usage: scripts/backup_now.sh [--target NAME] [--no-verify]
# Environment: OPSLOOP_BACKUP_ENDPOINT (default http://127.0.0.1:50053),
#   OPSLOOP_TOKEN_FILE or OPSLOOP_TOKEN (admin token, never printed),
#   OPSLOOP_BIN. Without the CLI, python3 or the token it stops at once
#   with one line saying how to get it.
# Lines an operator reads:
#   backup_now: backup <id>: completed (<bytes> bytes)
#   backup_now: verified <id> (restore took <ms> ms)
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
SCRIPT_NAME=backup_now
# shellcheck source=scripts/lib/ops_common.sh
source scripts/lib/ops_common.sh
target=() verify=1
while (($#)); do
  case "$1" in
    --target)
      [[ -n "${2:-}" ]] || { echo "backup_now: --target needs a name" >&2; exit 2; }
      target=(--target "$2"); shift 2 ;;
    --no-verify) verify=0; shift ;;
    -h | --help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "backup_now: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
need_tool python3 "apt-get install python3"
find_cli
need_token
out="$(mktemp)"
err="$(mktemp)"
trap 'rm -f "$out" "$err"' EXIT

echo "backup_now: taking a backup${target[*]:+ (${target[*]})}"
if ! "$CLI" -o json backup now "${target[@]}" >"$out" 2>"$err"; then
  echo "backup_now: FAILED: opsloop backup now: $(head -c 400 "$err")"
  exit 1
fi
id=$(json_get "$out" id)
status=$(json_get "$out" status)
echo "backup_now: backup $id: $status ($(json_get "$out" size_bytes) bytes)"
if [[ "$status" != completed ]]; then
  echo "backup_now: FAILED: backup $id is $status: $(json_get "$out" error)"
  exit 1
fi
if ((verify)); then
  if ! "$CLI" -o json backup verify "$id" >"$out" 2>"$err"; then
    echo "backup_now: FAILED: opsloop backup verify $id: $(head -c 400 "$err")"
    exit 1
  fi
  if [[ "$(json_get "$out" passed)" != true ]]; then
    echo "backup_now: FAILED: verification of $id: $(json_get "$out" error) $(json_get "$out" mismatches)"
    exit 1
  fi
  echo "backup_now: verified $id (restore took $(json_get "$out" duration_ms) ms)"
fi
