#!/usr/bin/env bash
# Smoke test of a running opsloop stack (compose, systemd or `opsloop dev`):
#   1. /healthz, /readyz and /metrics of every daemon answer (200, and
#      /metrics carries Prometheus text);
#   2. a proposal goes through to a finished mission: `opsloop proposal
#      submit` (approved by the admin token when the gates leave it pending),
#      `opsloop worker --once` executes its step, `opsloop mission show` says
#      succeeded;
#   3. a test alert is delivered to a receiver (`opsloop alerts test`,
#      receiver SMOKE_ALERT_RECEIVER, default `local`; `none` skips).
#
# Usage: scripts/smoke.sh [--simulate-failure]
#   --simulate-failure  the worker's step fails terminally: the smoke test
#                       must fail, print diagnostics and exit non-zero.
# Environment (defaults for a local stack):
#   API_HTTP=http://127.0.0.1:9754  HEARTBEAT_HTTP=http://127.0.0.1:9755
#   ALERTER_HTTP=http://127.0.0.1:9756  BACKUP_HTTP=http://127.0.0.1:9757
#   OPSLOOP_ENDPOINT=http://127.0.0.1:50051 (api gRPC; https://… with
#   OPSLOOP_CA_FILE for a TLS port such as the compose stack's),
#   OPSLOOP_ALERTER_ENDPOINT=http://127.0.0.1:50052
#   OPSLOOP_TOKEN or OPSLOOP_TOKEN_FILE: the admin token (never printed)
#   OPSLOOP_BIN: the CLI (default: opsloop on PATH, else target/{release,debug})
#   SMOKE_REPEAT_COUNT=1  SMOKE_TIMEOUT=60 (seconds per proposal)
#   SMOKE_STRICT_METRICS=1 (default): fail when `promtool check metrics`
#   complains about a daemon's /metrics (0: print a note instead)
#   SMOKE_COMPOSE: the stack's compose command, e.g. "docker compose -f
#     deploy/compose/docker-compose.yml" (split on spaces); the diagnostics
#     then carry `ps` and `logs --tail=200` of the failing services
#   SMOKE_ARTIFACTS_DIR: where a failed run's artefacts are kept (default: a
#     new /tmp/opsloop-smoke.* directory, printed)
# On failure prints the diagnostics (failing services, their `ps` and log
# tail under compose, every /readyz body, the artefacts), then
# `smoke: FAILED at stage: <stage>` and `failed_iteration=i/N` last.
# Needs curl, python3, the opsloop CLI and the admin token; without one it
# stops at once with one line saying how to get it. Never prints the token.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
SCRIPT_NAME=smoke
# shellcheck source=scripts/lib/ops_common.sh
source scripts/lib/ops_common.sh

simulate=0
for arg in "$@"; do
  case "$arg" in
    --simulate-failure) simulate=1 ;;
    -h | --help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "smoke: unknown argument $arg" >&2; exit 2 ;;
  esac
done

API_HTTP="${API_HTTP:-http://127.0.0.1:9754}"
HEARTBEAT_HTTP="${HEARTBEAT_HTTP:-http://127.0.0.1:9755}"
ALERTER_HTTP="${ALERTER_HTTP:-http://127.0.0.1:9756}"
BACKUP_HTTP="${BACKUP_HTTP:-http://127.0.0.1:9757}"
REPEAT="${SMOKE_REPEAT_COUNT:-1}"
TIMEOUT="${SMOKE_TIMEOUT:-60}"
RECEIVER="${SMOKE_ALERT_RECEIVER:-local}"
export OPSLOOP_ACTOR="${OPSLOOP_ACTOR:-smoke}"

need_tool curl "apt-get install curl"
need_tool python3 "apt-get install python3"
find_cli
need_token
compose_cmd=()
if [[ -n "${SMOKE_COMPOSE:-}" ]]; then
  read -r -a compose_cmd <<<"$SMOKE_COMPOSE"
  need_tool "${compose_cmd[0]}" "install Docker Compose (apt-get install docker-compose) or fix SMOKE_COMPOSE"
fi
if ! [[ "$REPEAT" =~ ^[1-9][0-9]*$ ]]; then
  echo "smoke: SMOKE_REPEAT_COUNT must be a positive whole number" >&2
  exit 2
fi

tmp="$(mktemp -d)"
auth="$(mktemp -d)"
trap 'rm -rf "$tmp" "$auth"' EXIT
auth_header "$auth/header"
CURL_AUTH=(-H "@$auth/header")
stage=""

json() { json_get "$@"; }
failing=() # services whose HTTP checks failed

diagnostics() {
  local services=("${failing[@]}") kept
  echo "--- diagnostics (stage: $stage)"
  if ((${#services[@]})); then echo "failing services: ${services[*]}"; fi
  if ((${#compose_cmd[@]})); then
    echo "--- ${compose_cmd[*]} ps"
    "${compose_cmd[@]}" ps 2>&1
    if ((${#services[@]} == 0)); then services=(api heartbeat-worker alerter backup-agent); fi
    for svc in "${services[@]}"; do
      echo "--- ${compose_cmd[*]} logs --tail=200 $svc"
      "${compose_cmd[@]}" logs --no-color --tail=200 "$svc" 2>&1
    done
  fi
  local body
  for base in "$API_HTTP" "$HEARTBEAT_HTTP" "$ALERTER_HTTP" "$BACKUP_HTTP"; do
    body=$(curl -s -m 5 "${CURL_AUTH[@]}" "$base/readyz") || body=""
    printf '%s/readyz: %s\n' "$base" "${body:-no answer}"
  done
  for f in "$tmp"/*.json "$tmp"/*.err; do
    [[ -s "$f" ]] || continue
    echo "--- $(basename "$f")"
    head -c 4000 "$f"
    echo
  done
  "$CLI" health 2>&1 | head -20 || true
  kept="${SMOKE_ARTIFACTS_DIR:-$(mktemp -d /tmp/opsloop-smoke.XXXXXX)}"
  mkdir -p "$kept" && cp -p "$tmp"/* "$kept"/ 2>/dev/null
  echo "artefacts: $kept (attach them to the escalation: docs/runbook.md#escalation)"
}

http_check() { # name base
  local name=$1 base=$2 code
  for path in /healthz /readyz /metrics; do
    stage="$name $path"
    code=$(curl -s -m 5 "${CURL_AUTH[@]}" -o "$tmp/$name${path//\//_}.body" -w '%{http_code}' "$base$path") || code=000
    if [[ "$code" != 200 ]]; then
      failing+=("$name")
      echo "smoke: $name $base$path answered $code" >&2
      head -c 500 "$tmp/$name${path//\//_}.body" >&2 2>/dev/null
      return 1
    fi
  done
  stage="$name /metrics content"
  if ! grep -q '^# TYPE process_resident_memory_bytes gauge' "$tmp/${name}_metrics.body"; then
    failing+=("$name")
    echo "smoke: $name /metrics is not the expected Prometheus text" >&2
    return 1
  fi
  if command -v promtool >/dev/null; then
    if ! promtool check metrics <"$tmp/${name}_metrics.body" >"$tmp/$name.promtool.err" 2>&1; then
      if [[ "${SMOKE_STRICT_METRICS:-1}" == 1 ]]; then
        echo "smoke: promtool check metrics rejected $name's /metrics" >&2
        cat "$tmp/$name.promtool.err" >&2
        return 1
      fi
      echo "smoke: note: promtool check metrics on $name: $(wc -l <"$tmp/$name.promtool.err") lint remarks"
    fi
  fi
}

proposal_flow() { # iteration
  local run kind id status mission deadline worker_cmd
  run="$(date +%s)-$1-$RANDOM"
  kind="smoke-${run//[^0-9a-z-]/}"
  kind="s${kind:1}"
  stage="proposal submit"
  if ! "$CLI" -o json proposal submit --title "smoke $run" --kind "$kind" \
    --payload '{"smoke": true}' --dedupe-key "smoke-$run" --agent smoke >"$tmp/submit.json" 2>"$tmp/submit.err"; then
    echo "smoke: proposal submit failed: $(head -c 300 "$tmp/submit.err")" >&2
    return 1
  fi
  id=$(json "$tmp/submit.json" proposal.id)
  status=$(json "$tmp/submit.json" proposal.status)
  if [[ "${status,,}" == pending ]]; then
    stage="proposal approve"
    if ! "$CLI" -o json proposal approve "$id" --comment "smoke test" >"$tmp/approve.json" 2>"$tmp/approve.err"; then
      echo "smoke: approving $id failed (is OPSLOOP_TOKEN the admin token?): $(head -c 300 "$tmp/approve.err")" >&2
      return 1
    fi
    status=$(json "$tmp/approve.json" proposal.status)
    [[ -n "$status" ]] || status=$(json "$tmp/approve.json" status)
  fi
  if [[ "${status,,}" != approved ]]; then
    echo "smoke: proposal $id is $status, not approved: $(json "$tmp/submit.json" proposal.rejection_reason)" >&2
    return 1
  fi
  stage="proposal show"
  "$CLI" -o json proposal show "$id" >"$tmp/proposal.json" 2>"$tmp/proposal.err" || return 1
  mission=$(json "$tmp/proposal.json" proposal.mission_id)
  [[ -n "$mission" ]] || mission=$(json "$tmp/proposal.json" mission_id)
  if [[ -z "$mission" ]]; then
    echo "smoke: approved proposal $id has no mission" >&2
    return 1
  fi
  if ((simulate)); then
    worker_cmd='cat >/dev/null; echo "simulated failure (smoke --simulate-failure)" >&2; exit 3'
  else
    worker_cmd='cat >/dev/null; echo "{\"smoke\": \"done\"}"'
  fi
  stage="worker and mission $mission"
  deadline=$(($(date +%s) + TIMEOUT))
  while :; do
    "$CLI" worker --kinds "$kind" --exec "$worker_cmd" --once --worker-id "smoke-$run" \
      >>"$tmp/worker.err" 2>&1 || true
    "$CLI" -o json mission show "$mission" >"$tmp/mission.json" 2>"$tmp/mission.err" || true
    status=$(json "$tmp/mission.json" status)
    [[ -n "$status" ]] || status=$(json "$tmp/mission.json" mission.status)
    case "${status,,}" in
      succeeded) return 0 ;;
      failed | cancelled)
        echo "smoke: mission $mission $status: $(json "$tmp/mission.json" outcome_detail)" >&2
        return 1 ;;
    esac
    if (($(date +%s) >= deadline)); then
      echo "smoke: mission $mission still ${status:-unknown} after ${TIMEOUT}s" >&2
      return 1
    fi
    sleep 1
  done
}

alert_flow() {
  [[ "$RECEIVER" == none ]] && return 0
  stage="alert to receiver $RECEIVER"
  if ! "$CLI" -o json alerts test "$RECEIVER" --severity info --message "opsloop smoke test" \
    >"$tmp/alert.json" 2>"$tmp/alert.err"; then
    echo "smoke: test alert to receiver $RECEIVER failed: $(head -c 300 "$tmp/alert.err")" >&2
    return 1
  fi
}

iteration() { # i
  http_check api "$API_HTTP" &&
    http_check heartbeat-worker "$HEARTBEAT_HTTP" &&
    http_check alerter "$ALERTER_HTTP" &&
    http_check backup-agent "$BACKUP_HTTP" &&
    proposal_flow "$1" &&
    alert_flow
}

started=$(date +%s)
for ((i = 1; i <= REPEAT; i++)); do
  rm -f "$tmp"/*
  failing=()
  if ! iteration "$i"; then
    diagnostics >&2
    echo "smoke: FAILED at stage: $stage"
    echo "failed_iteration=$i/$REPEAT"
    exit 1
  fi
  echo "smoke: iteration $i/$REPEAT passed"
done
echo "smoke: passed ($REPEAT iteration(s), $(($(date +%s) - started))s)"
