#!/usr/bin/env bash
# Go/No-Go before a release (docs/runbook.md, "Go / No-Go"): runs every
# check, even after one failed, and prints one report, then the verdict:
#   release check  scripts/release_check.sh passes (all stages but smoke,
#                  which is the next check), or the GO line of a log of it
#   smoke          scripts/smoke.sh passes GO_NO_GO_SMOKE_COUNT (3) times
#                  in a row
#   secrets        every required secret is present and not empty (the
#                  files are tested, never read or printed)
#   daemons        /healthz and /metrics answer on every daemon
#   broker         every daemon's broker connection is active (its /readyz
#                  broker check), not reconnecting
#   backup         a completed, verified backup newer than
#                  GO_NO_GO_MAX_BACKUP_AGE_HOURS (24)
# Last line: `go_no_go: GO`, or `go_no_go: NO-GO: <check> (<reason>); ...`.
# Exit 0 only for GO; 1 for NO-GO; 2 when a tool or the token is missing.
#
# Usage: scripts/go_no_go.sh [--release-check-log FILE]
#   --release-check-log FILE  use a release_check.sh log (e.g. CI's) instead
#                             of running it: its last line must be the GO
#                             line, and the file younger than a day
# Environment:
#   GO_NO_GO_SECRETS_DIR  where the secrets are (default
#     $CREDENTIALS_DIRECTORY under systemd, else deploy/compose/secrets)
#   GO_NO_GO_SECRETS="admin_token agent_token database_url amqp_url
#     postgres_password rabbitmq_password"  the required ones
#   GO_NO_GO_SMOKE_COUNT=3  GO_NO_GO_MAX_BACKUP_AGE_HOURS=24
#   GO_NO_GO_RELEASE_STAGES=fmt,clippy,tests,deploy,coverage
#   and the scripts/smoke.sh variables (URLs, endpoints, OPSLOOP_TOKEN_FILE).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
SCRIPT_NAME=go_no_go
# shellcheck source=scripts/lib/ops_common.sh
source scripts/lib/ops_common.sh

release_log=""
while (($#)); do
  case "$1" in
    --release-check-log)
      [[ -n "${2:-}" ]] || { echo "go_no_go: --release-check-log needs a file" >&2; exit 2; }
      release_log=$2
      shift 2 ;;
    -h | --help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "go_no_go: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

need_tool curl "apt-get install curl"
need_tool python3 "apt-get install python3"
find_cli
need_token
SECRETS_DIR="${GO_NO_GO_SECRETS_DIR:-${CREDENTIALS_DIRECTORY:-deploy/compose/secrets}}"
read -r -a REQUIRED_SECRETS <<<"${GO_NO_GO_SECRETS:-admin_token agent_token database_url amqp_url postgres_password rabbitmq_password}"
SMOKE_COUNT="${GO_NO_GO_SMOKE_COUNT:-3}"
MAX_AGE_HOURS="${GO_NO_GO_MAX_BACKUP_AGE_HOURS:-24}"
DAEMONS=("api ${API_HTTP:-http://127.0.0.1:9754}" "heartbeat-worker ${HEARTBEAT_HTTP:-http://127.0.0.1:9755}"
  "alerter ${ALERTER_HTTP:-http://127.0.0.1:9756}" "backup-agent ${BACKUP_HTTP:-http://127.0.0.1:9757}")

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
auth_header "$tmp/auth.header"
CURL_AUTH=(-H "@$tmp/auth.header")
report=() reasons=()
result() { # check ok|FAIL detail
  report+=("$(printf '  %-14s %-5s %s' "$1" "$2" "$3")")
  [[ "$2" == ok ]] || reasons+=("$1 ($3)")
}

echo "go_no_go: checking (release check, smoke x$SMOKE_COUNT, secrets, daemons, broker, backup)"

# ------------------------------------------------------- release check --
if [[ -n "$release_log" ]]; then
  if [[ ! -s "$release_log" ]]; then
    result "release check" FAIL "no log at $release_log"
  elif [[ -n "$(find "$release_log" -mmin +1440 2>/dev/null)" ]]; then
    result "release check" FAIL "$release_log is older than a day: run scripts/release_check.sh again"
  else
    last=$(tail -n1 "$release_log")
    if [[ "$last" == "release_check: GO"* ]]; then result "release check" ok "$last"
    else result "release check" FAIL "${last:-empty log}"; fi
  fi
else
  RELEASE_CHECK_STAGES="${GO_NO_GO_RELEASE_STAGES:-fmt,clippy,tests,deploy,coverage}" \
    bash scripts/release_check.sh >"$tmp/release.log" 2>&1
  last=$(grep -E '^release_check: ' "$tmp/release.log" | tail -n1)
  if [[ "$last" == "release_check: GO"* ]]; then result "release check" ok "$last"
  else result "release check" FAIL "${last:-no output}"; fi
fi

# --------------------------------------------------------------- smoke --
if SMOKE_REPEAT_COUNT="$SMOKE_COUNT" bash scripts/smoke.sh >"$tmp/smoke.log" 2>&1; then
  result "smoke x$SMOKE_COUNT" ok "$SMOKE_COUNT/$SMOKE_COUNT passed in a row"
else
  detail="$(grep -E '^smoke: (FAILED|.* not found)' "$tmp/smoke.log" | tail -n1)"
  iteration="$(grep -E '^failed_iteration=' "$tmp/smoke.log" | tail -n1)"
  result "smoke x$SMOKE_COUNT" FAIL "${iteration:+$iteration, }${detail:-$(tail -n1 "$tmp/smoke.log")}"
fi

# ------------------------------------------------------------- secrets --
absent=()
for name in "${REQUIRED_SECRETS[@]}"; do
  [[ -s "$SECRETS_DIR/$name" ]] || absent+=("$name")
done
if ((${#absent[@]})); then
  result secrets FAIL "missing or empty in $SECRETS_DIR: ${absent[*]}"
else
  result secrets ok "${#REQUIRED_SECRETS[@]} required present in $SECRETS_DIR (values not read)"
fi

# ------------------------------------------------------------- daemons --
down=()
for pair in "${DAEMONS[@]}"; do
  name=${pair%% *} base=${pair#* }
  for path in /healthz /metrics; do
    code=$(curl -s -m 5 "${CURL_AUTH[@]}" -o "$tmp/body" -w '%{http_code}' "$base$path") || code=000
    if [[ "$code" != 200 ]]; then down+=("$name $path $code"); fi
  done
done
if ((${#down[@]})); then
  result daemons FAIL "$(printf '%s, ' "${down[@]}" | sed 's/, $//')"
else
  result daemons ok "/healthz and /metrics answer on api, heartbeat-worker, alerter, backup-agent"
fi

# -------------------------------------------------------------- broker --
connected=() broken=()
for pair in "${DAEMONS[@]}"; do
  name=${pair%% *} base=${pair#* }
  if ! curl -s -m 5 "${CURL_AUTH[@]}" -o "$tmp/readyz.json" "$base/readyz"; then
    broken+=("$name: no answer"); continue
  fi
  state=$(python3 -c 'import json,sys
try:
    b = json.load(open(sys.argv[1])).get("checks", {}).get("broker")
except ValueError:
    b = {"status": "error", "error": "/readyz is not JSON"}
if b is None: print("none")
elif b.get("status") == "ok": print("ok")
else: print(b.get("error") or b.get("status"))' "$tmp/readyz.json")
  case "$state" in
    ok) connected+=("$name") ;;
    none) ;;
    *) broken+=("$name: $state") ;;
  esac
done
if ((${#broken[@]})); then
  result broker FAIL "$(printf '%s; ' "${broken[@]}" | sed 's/; $//')"
elif ((${#connected[@]} == 0)); then
  result broker FAIL "no daemon reports a broker check on /readyz"
else
  result broker ok "connection active on ${connected[*]}"
fi

# -------------------------------------------------------------- backup --
if "$CLI" -o json backup list --limit 20 >"$tmp/backups.json" 2>"$tmp/backups.err"; then
  verdict=$(python3 - "$tmp/backups.json" "$MAX_AGE_HOURS" <<'PY'
import datetime, json, sys
backups = json.load(open(sys.argv[1])).get("backups", [])
limit = float(sys.argv[2])
good = [b for b in backups if b.get("status") == "completed" and b.get("verification") == "passed"]
if not good:
    print("FAIL no completed, verified backup: run scripts/backup_now.sh")
    sys.exit()
b = max(good, key=lambda b: b.get("finished_at") or "")
finished = datetime.datetime.fromisoformat(b["finished_at"].replace("Z", "+00:00"))
age = (datetime.datetime.now(datetime.timezone.utc) - finished).total_seconds() / 3600
if age > limit:
    print(f"FAIL newest verified backup {b['id']} is {age:.1f} h old (limit {limit:g} h): run scripts/backup_now.sh")
else:
    print(f"ok newest verified backup {b['id']} is {age:.1f} h old (limit {limit:g} h)")
PY
  )
  result backup "${verdict%% *}" "${verdict#* }"
else
  result backup FAIL "backup list failed: $(head -c 200 "$tmp/backups.err")"
fi

echo "go_no_go: report ($(date -u +%Y-%m-%dT%H:%MZ))"
printf '%s\n' "${report[@]}"
if ((${#reasons[@]})); then
  echo "go_no_go: NO-GO: $(printf '%s; ' "${reasons[@]}" | sed 's/; $//')"
  exit 1
fi
echo "go_no_go: GO"
