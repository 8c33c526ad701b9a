#!/usr/bin/env bash
# Restores a backup into a database through the backup-agent (`opsloop
# backup restore`, admin token, audited). Without a backup id, lists the
# newest backups to choose from. The target URL is read from the environment
# or a file so it never appears on a command line or in shell history.
#
# Usage: scripts/restore.sh                      # list backups
#        RESTORE_TARGET_URL_FILE=/path scripts/restore.sh BACKUP_ID [--force]
#        OPSLOOP_RESTORE_TARGET_URL=postgres://… scripts/restore.sh BACKUP_ID
# Runbook: docs/runbook.md#restore (stop the daemons writing to the target
# first; verify the backup before restoring over production).
set -euo pipefail
cd "$(dirname "$0")/.."
CLI="${OPSLOOP_BIN:-$(command -v opsloop || echo target/release/opsloop)}"
if (($# == 0)); then
  "$CLI" backup list --limit 20
  echo "restore: pass a backup id (and set OPSLOOP_RESTORE_TARGET_URL or RESTORE_TARGET_URL_FILE)"
  exit 0
fi
id="$1"
shift
force=()
[[ "${1:-}" == --force ]] && force=(--force)
if [[ -n "${RESTORE_TARGET_URL_FILE:-}" ]]; then
  OPSLOOP_RESTORE_TARGET_URL="$(cat "$RESTORE_TARGET_URL_FILE")"
  export OPSLOOP_RESTORE_TARGET_URL
fi
if [[ -z "${OPSLOOP_RESTORE_TARGET_URL:-}" ]]; then
  echo "restore: set OPSLOOP_RESTORE_TARGET_URL or RESTORE_TARGET_URL_FILE" >&2
  exit 2
fi
if [[ -t 0 ]]; then
  read -r -p "restore backup $id over the target database? type 'restore' to confirm: " answer
  [[ "$answer" == restore ]] || { echo "restore: aborted"; exit 1; }
fi
started=$(date +%s)
"$CLI" backup restore "$id" --confirm "${force[@]}"
echo "restore: done in $(($(date +%s) - started))s; run scripts/smoke.sh before reopening traffic"
