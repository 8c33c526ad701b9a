#!/usr/bin/env bash
# Rotates the compose stack's secrets old -> new, one phase at a time, and
# checks health (/readyz), metrics and scripts/smoke.sh after each phase:
#   tokens    admin_token, agent_token (api, alerter, backup-agent); the old
#             admin token must then be refused
#   database  the opsloop role's password (ALTER ROLE), postgres_password and
#             database_url; every daemon restarted
#   broker    the opsloop RabbitMQ user's password, rabbitmq_password and
#             amqp_url; every daemon restarted
# A failed phase puts that phase's old secrets back, restarts, and exits
# non-zero naming the phase. At the end no old or new secret value may appear
# in the containers' logs. Secret values are never printed or put on a
# command line (they travel through files and stdin).
#
# Usage: scripts/rotate_secrets_check.sh [tokens] [database] [broker]
#        (default: all three). Run against a stack started with
#        deploy/compose (docker compose or docker-compose).
# Environment: OPSLOOP_SECRETS_DIR (default deploy/compose/secrets),
#   WAIT_SECONDS=120, and the scripts/smoke.sh variables.
# Needs docker with compose, curl and the opsloop CLI; without one it stops
# at once with one line saying how to get it. Tracing (`bash -x`) is
# switched off: this script handles secret values.
#   ROTATE_COMPOSE: the stack's compose command (default: docker compose, or
#   docker-compose, with -f deploy/compose/docker-compose.yml; split on
#   spaces), e.g. with a project name and an override file.
if [[ $- == *x* ]]; then
  set +x
  echo "rotate: tracing switched off (this script handles secret values)" >&2
fi
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
ROOT="$PWD"
SCRIPT_NAME=rotate
# shellcheck source=scripts/lib/ops_common.sh
source scripts/lib/ops_common.sh
COMPOSE_FILE="$ROOT/deploy/compose/docker-compose.yml"
SECRETS="${OPSLOOP_SECRETS_DIR:-$ROOT/deploy/compose/secrets}"
export OPSLOOP_SECRETS_DIR="$SECRETS"
WAIT_SECONDS="${WAIT_SECONDS:-120}"
DAEMONS=(api heartbeat-worker alerter backup-agent)
phases=("$@")
((${#phases[@]})) || phases=(tokens database broker)

need_tool docker "install Docker (apt-get install docker.io docker-compose)"
need_tool curl "apt-get install curl"
find_cli
if [[ -n "${ROTATE_COMPOSE:-}" ]]; then
  read -r -a compose_cmd <<<"$ROTATE_COMPOSE"
  need_tool "${compose_cmd[0]}" "install Docker Compose (apt-get install docker-compose) or fix ROTATE_COMPOSE"
elif docker compose version >/dev/null 2>&1; then
  compose_cmd=(docker compose -f "$COMPOSE_FILE")
elif command -v docker-compose >/dev/null; then
  compose_cmd=(docker-compose -f "$COMPOSE_FILE")
else
  missing "docker compose" "install the compose plugin or docker-compose (apt-get install docker-compose)"
fi
compose() { "${compose_cmd[@]}" "$@"; }

vault="$(mktemp -d)"
chmod 0700 "$vault"
trap 'rm -rf "$vault"' EXIT
umask 077

random() { head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
# Writes a secret file in place (same inode: compose bind-mounts the file).
put() { # name value
  printf '%s\n' "$2" >"$SECRETS/$1"
}
keep_old() { # names...
  for n in "$@"; do cp -p "$SECRETS/$n" "$vault/old.$n"; done
}
restore_old() { # names...
  for n in "$@"; do cat "$vault/old.$n" >"$SECRETS/$n"; done
}
value() { head -n1 "$SECRETS/$1"; }

wait_healthy() { # services...
  local deadline=$(($(date +%s) + WAIT_SECONDS)) svc id status
  for svc in "$@"; do
    while :; do
      id=$(compose ps -q "$svc" 2>/dev/null)
      status=$([[ -n "$id" ]] && docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$id" 2>/dev/null)
      [[ "$status" == healthy ]] && break
      if (($(date +%s) >= deadline)); then
        echo "rotate: $svc not healthy after ${WAIT_SECONDS}s (status ${status:-missing})" >&2
        compose logs --tail 30 "$svc" >&2
        return 1
      fi
      sleep 2
    done
  done
}

check() { # phase
  echo "rotate: [$1] checking health, metrics and smoke"
  wait_healthy "${DAEMONS[@]}" || return 1
  OPSLOOP_BIN="$CLI" OPSLOOP_TOKEN_FILE="$SECRETS/admin_token" SMOKE_REPEAT_COUNT=1 bash scripts/smoke.sh >"$vault/smoke.log" 2>&1 || {
    tail -20 "$vault/smoke.log" >&2
    return 1
  }
}

restart() { # services...
  compose up -d --no-deps --force-recreate "$@" >/dev/null 2>&1
}

fail_phase() { # phase names...
  local phase=$1
  shift
  echo "rotate: phase $phase FAILED; putting the old secrets back" >&2
  restore_old "$@"
  restart "${DAEMONS[@]}"
  wait_healthy "${DAEMONS[@]}" >/dev/null 2>&1 || true
  echo "rotate: FAILED phase: $phase"
  exit 1
}

phase_tokens() {
  local names=(admin_token agent_token)
  keep_old "${names[@]}"
  put admin_token "$(random)"
  put agent_token "$(random)"
  restart api alerter backup-agent
  check tokens || fail_phase tokens "${names[@]}"
  if OPSLOOP_TOKEN_FILE="$vault/old.admin_token" "$CLI" health >/dev/null 2>&1; then
    echo "rotate: the old admin token is still accepted" >&2
    fail_phase tokens "${names[@]}"
  fi
}

phase_database() {
  local names=(postgres_password database_url) pw
  keep_old "${names[@]}"
  pw=$(random)
  # The password reaches psql on stdin, never on a command line.
  if ! printf "ALTER ROLE opsloop PASSWORD '%s';\n" "$pw" |
    compose exec -T postgres psql -q -v ON_ERROR_STOP=1 -U opsloop -d opsloop >/dev/null; then
    echo "rotate: ALTER ROLE failed" >&2
    fail_phase database "${names[@]}"
  fi
  put postgres_password "$pw"
  put database_url "postgres://opsloop:${pw}@postgres:5432/opsloop"
  restart "${DAEMONS[@]}"
  if ! check database; then
    printf "ALTER ROLE opsloop PASSWORD '%s';\n" "$(head -n1 "$vault/old.postgres_password")" |
      compose exec -T postgres psql -q -U opsloop -d opsloop >/dev/null 2>&1
    fail_phase database "${names[@]}"
  fi
}

phase_broker() {
  local names=(rabbitmq_password amqp_url) pw
  keep_old "${names[@]}"
  pw=$(random)
  # rabbitmqctl reads the new password from stdin when it is not an argument.
  if ! printf '%s\n' "$pw" | compose exec -T rabbitmq rabbitmqctl -q change_password opsloop >/dev/null; then
    echo "rotate: rabbitmqctl change_password failed" >&2
    fail_phase broker "${names[@]}"
  fi
  put rabbitmq_password "$pw"
  put amqp_url "amqp://opsloop:${pw}@rabbitmq:5672/%2f"
  restart "${DAEMONS[@]}"
  if ! check broker; then
    head -n1 "$vault/old.rabbitmq_password" |
      compose exec -T rabbitmq rabbitmqctl -q change_password opsloop >/dev/null 2>&1
    fail_phase broker "${names[@]}"
  fi
}

for n in admin_token agent_token postgres_password database_url rabbitmq_password amqp_url; do
  [[ -s "$SECRETS/$n" ]] || { echo "rotate: $SECRETS/$n missing (deploy/compose/init-secrets.sh)" >&2; exit 2; }
done
check before || { echo "rotate: FAILED phase: before (the stack is not healthy before rotating)"; exit 1; }
for phase in "${phases[@]}"; do
  case "$phase" in
    tokens) phase_tokens ;;
    database) phase_database ;;
    broker) phase_broker ;;
    *) echo "rotate: unknown phase $phase" >&2; exit 2 ;;
  esac
  echo "rotate: phase $phase ok"
done

# No secret value, old or new, in any container's logs.
compose logs --no-color >"$vault/logs.txt" 2>&1
for f in "$vault"/old.* "$SECRETS"/*; do
  [[ -s "$f" && "$(basename "$f")" != .gitignore ]] || continue
  if grep -qF -- "$(head -n1 "$f")" "$vault/logs.txt"; then
    echo "rotate: the value of $(basename "$f") appears in the compose logs" >&2
    echo "rotate: FAILED phase: logs"
    exit 1
  fi
done
echo "rotate: all phases passed (${phases[*]}); no secret in the logs"
