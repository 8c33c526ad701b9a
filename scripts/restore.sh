#!/usr/bin/env bash
# Restores a backup into a database through the backup-agent (`opsloop
# backup restore`, admin token, audited). Without a backup id, lists the
# newest backups to choose from. The target URL is read from the environment
# or a file so it never appears on a command line, in shell history or in
# this script's trace (`bash -x`).
#
# Usage: scripts/restore.sh                      # list backups
#        RESTORE_TARGET_URL_FILE=/path scripts/restore.sh BACKUP_ID [--force]
#        OPSLOOP_RESTORE_TARGET_URL=postgres://… scripts/restore.sh BACKUP_ID
#   --force  restore even when the target database is not empty
# Asks for confirmation on a terminal; RESTORE_CONFIRM=restore answers it
# (automation). Without the CLI or the token it stops at once with one line.
# Runbook: docs/runbook.md#restore (stop the daemons writing to the target
# first; verify the backup before restoring over production).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
SCRIPT_NAME=restore
# shellcheck source=scripts/lib/ops_common.sh
source scripts/lib/ops_common.sh
case "${1:-}" in
  -h | --help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
esac
find_cli
need_token
if (($# == 0)); then
  "$CLI" backup list --limit 20 || exit 1
  echo "restore: pass a backup id (and set OPSLOOP_RESTORE_TARGET_URL or RESTORE_TARGET_URL_FILE)"
  exit 0
fi
id="$1"
shift
force=()
for arg in "$@"; do
  case "$arg" in
    --force) force=(--force) ;;
    *) echo "restore: unknown argument $arg (see --help)" >&2; exit 2 ;;
  esac
done
if [[ -n "${RESTORE_TARGET_URL_FILE:-}" ]]; then
  [[ -r "$RESTORE_TARGET_URL_FILE" ]] ||
    missing "target URL file $RESTORE_TARGET_URL_FILE" "write the target database URL into it (one line)"
  # Read without a traced expansion of the value.
  { read -r OPSLOOP_RESTORE_TARGET_URL <"$RESTORE_TARGET_URL_FILE"; } 2>/dev/null
  export OPSLOOP_RESTORE_TARGET_URL
fi
if [[ -z "${OPSLOOP_RESTORE_TARGET_URL:+set}" ]]; then
  echo "restore: no target database: set RESTORE_TARGET_URL_FILE (a file holding the URL) or OPSLOOP_RESTORE_TARGET_URL" >&2
  exit 2
fi
answer="${RESTORE_CONFIRM:-}"
if [[ -z "$answer" && -t 0 ]]; then
  read -r -p "restore backup $id over the target database? type 'restore' to confirm: " answer
fi
if [[ "$answer" != restore ]]; then
  echo "restore: not confirmed: type 'restore' at the prompt or set RESTORE_CONFIRM=restore" >&2
  exit 1
fi
started=$(date +%s)
if ! "$CLI" backup restore "$id" --confirm "${force[@]}"; then
  echo "restore: FAILED: backup $id was not restored (the target is unchanged unless the message says otherwise)"
  exit 1
fi
echo "restore: done in $(($(date +%s) - started))s; run scripts/smoke.sh before reopening traffic"
