#!/usr/bin/env bash
# The compose stack end to end, as an operator lives it (`just compose-e2e`):
#   1. engine: a Docker engine that answers, else `dockerd` started here
#      (and stopped on exit); failing that, exit 1 with the reason;
#   2. images: the binaries (`cargo build --profile $COMPOSE_E2E_CARGO_PROFILE`,
#      the backup-agent with its `age` feature), one image per daemon and
#      the CLI image (targets of deploy/docker/Dockerfile.runtime), each
#      daemon image under 60 MB, and, with no registry, the stand-ins of
#      scripts/offline_images.sh (COMPOSE_E2E_IMAGES=official uses the
#      compose file's registry images instead);
#   3. fresh random secrets (deploy/compose/init-secrets.sh into a private
#      temp dir), free loopback ports, `up -d` with the test override
#      deploy/compose/docker-compose.e2e.yml (recording webhook receiver,
#      a worker container, a 3 s heartbeat) and the `monitoring` profile
#      without Grafana (no offline image): Prometheus with 5 s intervals,
#      the production rules plus deploy/compose/e2e-forced-alert.rules.yml
#      (labelled with this run's id), node-exporter, postgres-exporter;
#      every service healthy before a deadline, else the failing service's
#      logs;
#   4. scripts/smoke.sh against the published ports; then, with the
#      alerter stopped, `smoke.sh --simulate-failure` must exit 1 naming
#      the alerter with `ps` and its `logs --tail=200`;
#   5. the loop: a trigger rule on this run's `mission.succeeded`; a proposal
#      over gRPC from the host → auto-approved → executed by the worker
#      container (`opsloop worker --exec`) → mission succeeded → the event
#      on the bus → the trigger fires a proposal whose step costs $101 →
#      the heartbeat's budget check engages the emergency stop → critical
#      alert → delivered to the receiver as Slack and Discord payloads
#      (shapes checked); the stop is released;
#   5b. monitoring: every Prometheus target up (the four daemons with the
#      viewer token, node-exporter, postgres-exporter, RabbitMQ's :15692,
#      Prometheus itself; the down ones named), every rule of the rule files
#      loaded and evaluated without error, and the forced alert delivered to
#      the Slack receiver through the alerter's v2 API: the alerter counts
#      it as received over HTTP with no refused call, refuses a post without
#      a token (401) and with the viewer token (403), accepts the
#      alert_sender token Prometheus sends;
#   6. chaos: kill -9 of the api, heartbeat-worker, alerter and backup-agent
#      processes in turn while proposals keep arriving; each container comes
#      back by its restart policy (`docker kill` would not do: Docker treats
#      it as an operator stop and cancels the restart policy); every proposal has exactly one mission, one
#      succeeded step, one `mission.succeeded` event; outbox drained, queues
#      empty, each notification received once;
#   7. a backup by the backup-agent container, verified, restored (timed)
#      into a scratch database and compared;
#   8. no secret value in the compose logs; `down -v`; engine stopped;
#      one summary line with the figures.
#
# Usage: scripts/compose_e2e.sh
# Environment:
#   COMPOSE_E2E_COMPOSE     compose command (default: docker-compose when
#                           installed, else "docker compose")
#   COMPOSE_E2E_IMAGES      offline (default) | official
#   COMPOSE_E2E_CARGO_PROFILE  release (default); CI: image (Cargo.toml's
#                           [profile.image]); the binaries come from
#                           target/<profile dir>
#   COMPOSE_E2E_IMAGE_MAX_MB=60  a daemon image this size or larger fails
#   COMPOSE_E2E_SKIP_BUILD=1   use the existing binaries as they are
#   COMPOSE_E2E_LOAD=30     proposals submitted during the kill phase
#   COMPOSE_E2E_HEALTH_TIMEOUT=180  COMPOSE_E2E_FLOW_TIMEOUT=180 (seconds)
#   COMPOSE_E2E_KEEP=1      leave the stack (and engine) running on exit
#   COMPOSE_E2E_PROJECT=opsloop-e2e  compose project name
# Exits non-zero naming the failed stage; logs of the failing services
# are printed.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
# shellcheck source=scripts/lib/docker_engine.sh
source scripts/lib/docker_engine.sh

for arg in "$@"; do
  case "$arg" in
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "compose_e2e: unknown argument $arg (see --help)" >&2; exit 2 ;;
  esac
done

PROJECT="${COMPOSE_E2E_PROJECT:-opsloop-e2e}"
IMAGES="${COMPOSE_E2E_IMAGES:-offline}"
PROFILE="${COMPOSE_E2E_CARGO_PROFILE:-release}"
LOAD="${COMPOSE_E2E_LOAD:-30}"
HEALTH_TIMEOUT="${COMPOSE_E2E_HEALTH_TIMEOUT:-180}"
FLOW_TIMEOUT="${COMPOSE_E2E_FLOW_TIMEOUT:-180}"
KEEP="${COMPOSE_E2E_KEEP:-0}"
DAEMONS=(api heartbeat-worker alerter backup-agent)
# The `monitoring` profile without grafana (its official image only).
MONITORING=(prometheus node-exporter postgres-exporter)
SERVICES=(postgres rabbitmq migrate "${DAEMONS[@]}" receiver worker "${MONITORING[@]}")
# Every compose command sees the profile; `up` names its services.
export COMPOSE_PROFILES=monitoring

started=$(date +%s)
stage_started=$started
stage="setup"
timings=()
work="$(mktemp -d "${TMPDIR:-/tmp}/opsloop-e2e.XXXXXX")"
chmod 0700 "$work"
stack_up=0
result="FAIL"

log() { printf 'compose_e2e: %s\n' "$*"; }
die() {
  log "FAILED at stage: $stage: $*" >&2
  exit 1
}
begin() { # stage name
  local now
  now=$(date +%s)
  if [[ "$stage" != setup ]]; then timings+=("$stage=$((now - stage_started))s"); fi
  stage=$1
  stage_started=$now
  log "== $stage ($((now - started))s)"
}

compose() {
  # shellcheck disable=SC2086 # COMPOSE may be two words ("docker compose")
  $COMPOSE -p "$PROJECT" -f deploy/compose/docker-compose.yml -f deploy/compose/docker-compose.e2e.yml "$@"
}

container_of() { # service → container id (also when stopped)
  docker ps -aq --filter "label=com.docker.compose.project=$PROJECT" \
    --filter "label=com.docker.compose.service=$1" | head -n1
}

psql_q() { # SQL → unaligned tuples
  docker exec -i "$(container_of postgres)" psql -v ON_ERROR_STOP=1 -U opsloop -d opsloop -tAq -c "$1"
}

cli() { # opsloop CLI against the api (admin token)
  "$CLI" --token-file "$SECRETS/admin_token" "$@"
}

service_logs() { # services...
  compose logs --no-color --tail 80 "$@" 2>&1 | sed 's/^/  | /' >&2 || true
}

cleanup() {
  local rc=$?
  set +e
  if ((rc != 0)) && ((stack_up)); then
    log "--- service states" >&2
    compose ps >&2 2>&1
  fi
  if ((stack_up)) && [[ "$KEEP" != 1 ]]; then
    compose down -v --remove-orphans >"$work/down.log" 2>&1 || {
      log "compose down failed:" >&2
      tail -n 20 "$work/down.log" >&2
    }
  fi
  if [[ -n "$DOCKERD_PID" && "$KEEP" != 1 ]]; then
    local pid=$DOCKERD_PID
    stop_docker_engine
    log "engine stopped (dockerd pid $pid)"
  fi
  if [[ "$KEEP" == 1 ]]; then
    log "kept: project $PROJECT, secrets in $work/secrets"
  else
    rm -rf "$work"
  fi
  if ((rc != 0)); then
    log "FAIL (stage: $stage, $(($(date +%s) - started))s)" >&2
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------- tools --
for tool in docker curl python3; do
  command -v "$tool" >/dev/null || die "$tool not found"
done
if [[ -n "${COMPOSE_E2E_COMPOSE:-}" ]]; then
  COMPOSE="$COMPOSE_E2E_COMPOSE"
elif command -v docker-compose >/dev/null; then
  COMPOSE=docker-compose
else
  COMPOSE="docker compose"
fi

# ------------------------------------------------------------ engine --
begin "engine"
ensure_docker_engine "$work/dockerd.log" || die "no Docker engine (see above)"
[[ -n "$DOCKERD_PID" ]] && log "engine started (dockerd pid $DOCKERD_PID)"
$COMPOSE version >/dev/null 2>&1 || die "compose command '$COMPOSE' does not work"
log "engine $(docker version -f '{{.Server.Version}}'), compose: $COMPOSE $($COMPOSE version --short 2>/dev/null || true)"

# ---------------------------------------------------------- binaries --
begin "cargo build --profile $PROFILE"
profile_dir=$PROFILE
[[ "$PROFILE" == dev ]] && profile_dir=debug
BINS=(opsloop opsloop-api opsloop-heartbeat-worker opsloop-alerter opsloop-backup-agent)
if [[ "${COMPOSE_E2E_SKIP_BUILD:-0}" != 1 ]]; then
  cargo build --profile "$PROFILE" --locked -p opsloop-cli -p opsloop-api -p opsloop-heartbeat-worker \
    -p opsloop-alerter -p opsloop-backup-agent --features opsloop-backup-agent/age --bins 2>&1 | tail -n 3
fi
for bin in "${BINS[@]}"; do
  [[ -x "target/$profile_dir/$bin" ]] || die "target/$profile_dir/$bin missing"
done
CLI="$ROOT/target/$profile_dir/opsloop"
# Test support (opsloop-core's `testing` feature) stays out of the shipped
# binaries: its messages would be in them as string constants.
for bin in "${BINS[@]}"; do
  if grep -q "PostgreSQL for tests is not reachable" "target/$profile_dir/$bin"; then
    die "target/$profile_dir/$bin contains opsloop-core's test support (built with the testing feature?)"
  fi
done

# ------------------------------------------------------------ images --
begin "images"
if [[ "$IMAGES" == offline ]]; then
  bash scripts/offline_images.sh >"$work/offline.env" 2>"$work/offline.log" || {
    cat "$work/offline.log" >&2
    die "scripts/offline_images.sh failed"
  }
  sed 's/^/  /' "$work/offline.log"
  set -a
  # shellcheck disable=SC1091
  source "$work/offline.env"
  set +a
else
  OFFLINE_ONLY="base receiver" bash scripts/offline_images.sh >"$work/offline.env" 2>"$work/offline.log" || {
    cat "$work/offline.log" >&2
    die "scripts/offline_images.sh (receiver) failed"
  }
  OPSLOOP_RECEIVER_IMAGE=$(sed -n 's/^OPSLOOP_RECEIVER_IMAGE=//p' "$work/offline.env")
  export OPSLOOP_RECEIVER_IMAGE
fi
export OPSLOOP_IMAGE_PREFIX="opsloop" OPSLOOP_IMAGE_TAG="e2e"
export OPSLOOP_DOCKERFILE=deploy/docker/Dockerfile.runtime
# The images from the built binaries, as a release pipeline builds them: a
# minimal context (stripped binaries, the root file system script) instead
# of the repository with its target/ directory. One build per target; the
# `rootfs` stage is built once and cached for the others.
ctx="$work/context"
mkdir -p "$ctx/target/release" "$ctx/deploy/docker"
for bin in "${BINS[@]}"; do
  cp "target/$profile_dir/$bin" "$ctx/target/release/"
done
strip --strip-debug "$ctx"/target/release/* 2>/dev/null || log "note: strip not available, binaries keep their debug info"
cp deploy/docker/rootfs.sh "$ctx/deploy/docker/"
cp deploy/docker/Dockerfile.runtime.dockerignore "$ctx/.dockerignore"
IMAGE_MAX_MB="${COMPOSE_E2E_IMAGE_MAX_MB:-60}"
image_sizes=()
too_big=()
for target in "${DAEMONS[@]}" cli; do
  image="$OPSLOOP_IMAGE_PREFIX-$target:$OPSLOOP_IMAGE_TAG"
  if ! docker build -f deploy/docker/Dockerfile.runtime --target "$target" \
    --build-arg "RUNTIME_IMAGE=${OPSLOOP_RUNTIME_IMAGE:-debian:bookworm-slim}" \
    --build-arg "VCS_REF=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" \
    --build-arg "BUILD_DATE=$(git log -1 --format=%cI 2>/dev/null || echo unknown)" \
    -t "$image" "$ctx" >"$work/build-$target.log" 2>&1; then
    tail -n 40 "$work/build-$target.log" >&2
    die "docker build of $image failed"
  fi
  bytes=$(docker image inspect -f '{{.Size}}' "$image")
  mb=$(awk -v b="$bytes" 'BEGIN {printf "%.1f", b / 1e6}')
  [[ "$target" == cli ]] && { cli_image_mb=$mb; continue; }
  image_sizes+=("$target:$mb")
  awk -v b="$bytes" -v max="$IMAGE_MAX_MB" 'BEGIN {exit !(b >= max * 1e6)}' && too_big+=("$target:${mb}MB")
done
bin_mb=$(du -cb "$ctx"/target/release/* | tail -n1 | awk '{printf "%.1f", $1/1e6}')
image_mb=$(IFS=,; echo "${image_sizes[*]}")
log "images (MB): $image_mb, cli:$cli_image_mb (binaries $bin_mb MB, stripped)"
((${#too_big[@]} == 0)) || die "daemon image(s) of ${IMAGE_MAX_MB} MB or more: ${too_big[*]}"
# No shell in a daemon image: the probe is the binary's own subcommand.
if docker run --rm --entrypoint /bin/sh "$OPSLOOP_IMAGE_PREFIX-api:$OPSLOOP_IMAGE_TAG" -c true >/dev/null 2>&1; then
  die "the api image has a shell (/bin/sh); daemon images hold only their binary and its libraries"
fi

# ----------------------------------------------------------- secrets --
begin "secrets and ports"
SECRETS="$work/secrets"
export OPSLOOP_SECRETS_DIR="$SECRETS"
hook_token() { head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
SLACK_WEBHOOK_URL="http://receiver:8080/slack/$(hook_token)" \
  DISCORD_WEBHOOK_URL="http://receiver:8080/discord/$(hook_token)" \
  bash deploy/compose/init-secrets.sh >/dev/null
# Free loopback ports (the host's own PostgreSQL/RabbitMQ keep theirs).
read -r POSTGRES_PORT RABBITMQ_PORT RABBITMQ_MANAGEMENT_PORT API_GRPC_PORT API_HTTP_PORT \
  HEARTBEAT_HTTP_PORT ALERTER_GRPC_PORT ALERTER_HTTP_PORT BACKUP_GRPC_PORT BACKUP_HTTP_PORT \
  PROMETHEUS_PORT GRAFANA_PORT RECEIVER_PORT < <(python3 - <<'PY'
import socket
socks = []
for _ in range(13):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
)
export POSTGRES_PORT RABBITMQ_PORT RABBITMQ_MANAGEMENT_PORT API_GRPC_PORT API_HTTP_PORT \
  HEARTBEAT_HTTP_PORT ALERTER_GRPC_PORT ALERTER_HTTP_PORT BACKUP_GRPC_PORT BACKUP_HTTP_PORT \
  PROMETHEUS_PORT GRAFANA_PORT RECEIVER_PORT
export OPSLOOP_PUBLISH_SERVICE_ADDR=127.0.0.1 OPSLOOP_PUBLISH_INFRA_ADDR=127.0.0.1
# The api's gRPC port serves TLS (init-secrets.sh wrote its certificate and
# the CA); the CLI and the worker container check it against tls_ca.
[[ -s "$SECRETS/tls_cert" && -s "$SECRETS/tls_ca" ]] || die "init-secrets.sh wrote no TLS certificate (is openssl installed?)"
export OPSLOOP_ENDPOINT="https://127.0.0.1:$API_GRPC_PORT"
export OPSLOOP_CA_FILE="$SECRETS/tls_ca"
export OPSLOOP_ALERTER_ENDPOINT="http://127.0.0.1:$ALERTER_GRPC_PORT"
export OPSLOOP_BACKUP_ENDPOINT="http://127.0.0.1:$BACKUP_GRPC_PORT"
export OPSLOOP_HEARTBEAT_ENDPOINT="http://127.0.0.1:$HEARTBEAT_HTTP_PORT"
export OPSLOOP_ACTOR=compose-e2e
RECEIVER="http://127.0.0.1:$RECEIVER_PORT"
log "ports: api $API_GRPC_PORT/$API_HTTP_PORT, alerter $ALERTER_GRPC_PORT/$ALERTER_HTTP_PORT, backup $BACKUP_GRPC_PORT/$BACKUP_HTTP_PORT, postgres $POSTGRES_PORT, rabbitmq $RABBITMQ_PORT, prometheus $PROMETHEUS_PORT"
# This run's id: in the flow's titles and the forced alert's labels.
run="$(date +%s)-$RANDOM"
# Prometheus's files (docker-compose.e2e.yml mounts them): the production
# prometheus.yml with 5 s scrape and evaluation intervals instead of 15 s,
# the production rules, and the forced alert labelled with this run's id.
PROM_DIR="$work/prometheus"
export OPSLOOP_E2E_PROMETHEUS_DIR="$PROM_DIR"
mkdir -p "$PROM_DIR/rules"
sed -e 's/^\(  scrape_interval:\) 15s$/\1 5s/' -e 's/^\(  evaluation_interval:\) 15s$/\1 5s/' \
  deploy/prometheus/prometheus.yml >"$PROM_DIR/prometheus.yml"
[[ "$(grep -c '^  \(scrape\|evaluation\)_interval: 5s$' "$PROM_DIR/prometheus.yml")" == 2 ]] ||
  die "deploy/prometheus/prometheus.yml has no global 15s scrape_interval and evaluation_interval to shorten"
cp deploy/prometheus/rules/*.yml "$PROM_DIR/rules/"
sed "s/E2E_RUN_ID/$run/g" deploy/compose/e2e-forced-alert.rules.yml >"$PROM_DIR/rules/e2e-forced-alert.yml"
# Bind mounts keep their own modes: Prometheus runs as nobody.
chmod -R a+rX "$PROM_DIR"
# The alerter's configuration (docker-compose.e2e.yml mounts it): the
# stack's opsloop.toml plus an on-call rotation of two test people, paged
# through Slack (the recording receiver), so a P0 becomes a page with signed
# acknowledge/resolve links pointing at the alerter's published port.
ALERTER_CONFIG="$work/opsloop-alerter.toml"
cat deploy/compose/opsloop.toml - >"$ALERTER_CONFIG" <<'TOML'

[alerter.incidents]
page_receivers = ["slack"]
people = [
  { name = "e2e-ana", slack = "U_E2E_ANA" },
  { name = "e2e-bo", slack = "U_E2E_BO" },
]
rotation = { time_zone = "UTC", handover_day = "mon", handover_time = "09:00", start = "2026-01-05", members = ["e2e-ana", "e2e-bo"] }
TOML
chmod a+r "$ALERTER_CONFIG"
export OPSLOOP_E2E_ALERTER_CONFIG="$ALERTER_CONFIG"
export OPSLOOP_ALERTER_EXTERNAL_URL="http://127.0.0.1:$ALERTER_HTTP_PORT"

# ---------------------------------------------------------------- up --
begin "up"
compose config -q || die "compose config rejected the files"
# A leftover project of an interrupted run goes first.
compose down -v --remove-orphans >/dev/null 2>&1 || true
stack_up=1
up_started=$(date +%s)
compose up -d --no-build "${SERVICES[@]}" >"$work/up.log" 2>&1 || {
  cat "$work/up.log" >&2
  service_logs
  die "compose up failed"
}

# Every service healthy (migrate: exited 0), or the failing one's logs.
wait_healthy() { # deadline seconds
  local deadline=$(($(date +%s) + $1)) svc id state pending
  while :; do
    pending=()
    for svc in "${SERVICES[@]}"; do
      id=$(container_of "$svc")
      if [[ -z "$id" ]]; then pending+=("$svc:absent"); continue; fi
      state=$(docker inspect -f '{{.State.Status}}/{{if .State.Health}}{{.State.Health.Status}}{{end}}/{{.State.ExitCode}}' "$id")
      case "$svc:$state" in
        migrate:exited/*/0 | worker:running/* | *:running/healthy/*) ;;
        migrate:exited/*) service_logs migrate; die "migrate exited with $state" ;;
        *) pending+=("$svc:$state") ;;
      esac
    done
    ((${#pending[@]} == 0)) && return 0
    if (($(date +%s) >= deadline)); then
      log "not healthy after $1 s: ${pending[*]}" >&2
      for svc in "${pending[@]}"; do service_logs "${svc%%:*}"; done
      die "services not healthy: ${pending[*]}"
    fi
    sleep 1
  done
}
wait_healthy "$HEALTH_TIMEOUT"
up_to_healthy=$(($(date +%s) - up_started))
log "all services healthy ${up_to_healthy}s after up"

mem_of() { # services... → one "service=N.NMiB" line each, from one `docker stats`
  local svc id usage ids=()
  local -A usage_of=()
  for svc in "$@"; do ids+=("$(container_of "$svc")"); done
  while read -r id usage; do usage_of[$id]=$usage; done < <(docker stats --no-stream --format '{{.ID}} {{.MemUsage}}' "${ids[@]}")
  for svc in "$@"; do
    id=$(container_of "$svc")
    awk -v s="$svc" -v v="${usage_of[$id]:-?}" 'BEGIN {u=v; sub(/ .*/,"",u); n=u; gsub(/[0-9.]/,"",u); gsub(/[^0-9.]/,"",n);
          if (u=="GiB") n*=1024; else if (u=="KiB") n/=1024; else if (u=="B") n/=1048576;
          printf "%s=%.1fMiB\n", s, n}'
  done
}
sleep 5
mapfile -t idle_mem < <(mem_of "${DAEMONS[@]}" postgres rabbitmq "${MONITORING[@]}")
log "idle memory: ${idle_mem[*]}"

# ------------------------------------------------------------- smoke --
begin "smoke"
API_HTTP="http://127.0.0.1:$API_HTTP_PORT" HEARTBEAT_HTTP="http://127.0.0.1:$HEARTBEAT_HTTP_PORT" \
  ALERTER_HTTP="http://127.0.0.1:$ALERTER_HTTP_PORT" BACKUP_HTTP="http://127.0.0.1:$BACKUP_HTTP_PORT" \
  OPSLOOP_TOKEN_FILE="$SECRETS/admin_token" OPSLOOP_BIN="$CLI" SMOKE_ALERT_RECEIVER=slack \
  bash scripts/smoke.sh || die "scripts/smoke.sh failed"

# The status page (public on the api's HTTP port) sees every daemon by its
# /readyz over the compose network, and the database and the bus.
status_states=""
for _ in $(seq 1 30); do
  status_states=$(curl -fsS "http://127.0.0.1:$API_HTTP_PORT/status.json" 2>/dev/null |
    python3 -c 'import json,sys; print(" ".join(c["id"] + "=" + c["state"] for c in json.load(sys.stdin)["components"]))' 2>/dev/null || true)
  missing=0
  for id in api heartbeat-worker alerter backup-agent database bus; do
    grep -qw -- "$id=operational" <<<"$status_states" || missing=1
  done
  ((missing == 0)) && break
  sleep 2
done
((missing == 0)) || die "status page: not every component operational after 60 s: ${status_states:-no answer from /status.json}"
curl -fsS "http://127.0.0.1:$API_HTTP_PORT/status" | grep -q 'All systems operational' ||
  die "status page: /status does not say 'All systems operational'"
log "status page: $status_states"

# ------------------------------------------ TLS and tokens at the edge --
# The api's gRPC port takes TLS only, and only with a token: a plaintext
# client, a client without the CA, and a TLS client without a token are
# each refused with their reason.
begin "edges: TLS and tokens"
edge_fail() { # expected-substring command... → the command must fail saying it
  local want=$1 out
  shift
  if out=$("$@" 2>&1); then die "edges: '$*' succeeded; expected a refusal ($want)"; fi
  grep -q -- "$want" <<<"$out" || die "edges: '$*' failed without '$want': $out"
}
edge_fail "use https://" env -u OPSLOOP_CA_FILE "$CLI" --endpoint "http://127.0.0.1:$API_GRPC_PORT" \
  --token-file "$SECRETS/admin_token" policy list
edge_fail "TLS to" env -u OPSLOOP_CA_FILE "$CLI" --token-file "$SECRETS/admin_token" policy list
edge_fail "UNAUTHENTICATED" env -u OPSLOOP_TOKEN_FILE -u OPSLOOP_TOKEN "$CLI" policy list
cli policy list >/dev/null || die "edges: the CLI over TLS with the admin token was refused"
log "api gRPC: TLS with the compose CA and a token accepted; plaintext, unknown CA and no token refused"

# ------------------------------------ smoke: a stopped service named --
# scripts/smoke.sh --simulate-failure with the alerter stopped must exit 1,
# name the alerter and carry `compose ps` and the alerter's log tail.
begin "smoke --simulate-failure, alerter stopped"
compose stop alerter >"$work/stop.log" 2>&1 || { cat "$work/stop.log" >&2; die "compose stop alerter failed"; }
smoke_rc=0
API_HTTP="http://127.0.0.1:$API_HTTP_PORT" HEARTBEAT_HTTP="http://127.0.0.1:$HEARTBEAT_HTTP_PORT" \
  ALERTER_HTTP="http://127.0.0.1:$ALERTER_HTTP_PORT" BACKUP_HTTP="http://127.0.0.1:$BACKUP_HTTP_PORT" \
  OPSLOOP_TOKEN_FILE="$SECRETS/admin_token" OPSLOOP_BIN="$CLI" SMOKE_ALERT_RECEIVER=slack \
  SMOKE_COMPOSE="$COMPOSE -p $PROJECT -f deploy/compose/docker-compose.yml -f deploy/compose/docker-compose.e2e.yml" \
  SMOKE_ARTIFACTS_DIR="$work/smoke-artefacts" \
  bash scripts/smoke.sh --simulate-failure >"$work/smoke-fail.log" 2>&1 || smoke_rc=$?
compose start alerter >"$work/start.log" 2>&1 || { cat "$work/start.log" >&2; die "compose start alerter failed"; }
smoke_said() { grep -q -- "$1" "$work/smoke-fail.log" || { sed 's/^/  | /' "$work/smoke-fail.log" >&2; die "smoke --simulate-failure: no line matching: $1"; }; }
[[ "$smoke_rc" == 1 ]] || { sed 's/^/  | /' "$work/smoke-fail.log" >&2; die "smoke --simulate-failure exited $smoke_rc, not 1"; }
[[ "$(tail -n1 "$work/smoke-fail.log")" == "failed_iteration=1/1" ]] || die "smoke: the last line is not failed_iteration=1/1"
smoke_said '^failing services: alerter$'
smoke_said '^smoke: FAILED at stage: alerter /healthz$'
smoke_said ' ps$'
smoke_said ' logs --tail=200 alerter$'
alerter_tail=$(awk '/ logs --tail=200 alerter$/ {on = 1; next} /^--- / {on = 0} on' "$work/smoke-fail.log" | grep -c alerter || true)
((alerter_tail > 0)) || die "smoke --simulate-failure printed no alerter log line"
log "smoke named the stopped alerter, with ps and $alerter_tail lines of its log"
wait_healthy "$HEALTH_TIMEOUT"

# -------------------------------------------------------------- flow --
begin "flow: proposal → worker → trigger → alert"
# A JSON field (dotted path) of a file.
jget() { python3 -c 'import json,sys
v=json.load(open(sys.argv[1]))
for k in sys.argv[2].split("."):
    v=v.get(k) if isinstance(v,dict) else None
print("" if v is None else v)' "$1" "$2"; }

wait_for() { # what timeout command... (until the command succeeds)
  local what=$1 timeout=$2 deadline
  shift 2
  deadline=$(($(date +%s) + timeout))
  until "$@"; do
    (($(date +%s) < deadline)) || die "$what: not within ${timeout}s"
    sleep 1
  done
}

flow_title="e2e flow $run"
reaction_title="e2e budget reaction $run"
cli -o json trigger add --name "e2e-budget-$run" \
  --description "compose e2e: this run's mission succeeded → a step costing \$101" \
  --condition "{\"type\": \"event_count\", \"kind\": \"mission.succeeded\", \"payload\": {\"title\": \"$flow_title\"}, \"window_seconds\": 3600, \"min_count\": 1}" \
  --action "{\"title\": \"$reaction_title\", \"agent\": \"compose-e2e\", \"steps\": [{\"kind\": \"notify\", \"payload\": {\"run\": \"$run\"}}]}" \
  --cooldown 1d >"$work/trigger.json" || die "trigger add failed"
flow_started=$(date +%s)
cli -o json proposal submit --title "$flow_title" --kind echo --payload "{\"run\": \"$run\"}" \
  --dedupe-key "e2e-flow-$run" --agent compose-e2e >"$work/flow.json" || die "proposal submit failed"
flow_id=$(jget "$work/flow.json" proposal.id)
flow_status=$(jget "$work/flow.json" proposal.status)
[[ "${flow_status,,}" == approved ]] || die "proposal $flow_id is '$flow_status', not auto-approved"
mission_status() { # title → status of its mission
  psql_q "SELECT m.status FROM missions m WHERE m.title = '$1'"
}
flow_done() { [[ "$(mission_status "$flow_title")" == succeeded ]]; }
wait_for "mission of '$flow_title' succeeded (worker container)" "$FLOW_TIMEOUT" flow_done
flow_mission_s=$(($(date +%s) - flow_started))
log "proposal $flow_id auto-approved, mission succeeded ${flow_mission_s}s after submit"
reaction_done() { [[ "$(mission_status "$reaction_title")" == succeeded ]]; }
wait_for "the trigger's proposal '$reaction_title' executed" "$FLOW_TIMEOUT" reaction_done
log "trigger fired: '$reaction_title' succeeded with cost \$101 ($(($(date +%s) - flow_started))s)"

records() { curl -sf -m 5 "$RECEIVER/records" >"$work/records.json"; }
# Slack and Discord payloads of the emergency-stop alert, shapes checked.
check_alert_records() { # → 0 when both arrived with valid shapes
  records || return 1
  python3 - "$work/records.json" <<'PY'
import json, sys
records = json.load(open(sys.argv[1]))
def about(r, name):
    return name in json.dumps(r["body"])
found = {"slack": 0, "discord": 0}
errors = []
for r in records:
    b = r["body"]
    if not about(r, "OpsEmergencyStop"):
        continue
    if r["service"] == "slack":
        ok = (isinstance(b, dict) and isinstance(b.get("text"), str) and b["text"]
              and isinstance(b.get("blocks"), list) and 0 < len(b["blocks"]) <= 50
              and all(isinstance(x, dict) and x.get("type") in ("header", "section", "actions", "context", "divider")
                      for x in b["blocks"]))
    elif r["service"] == "discord":
        ok = (isinstance(b, dict) and isinstance(b.get("content"), str) and len(b["content"]) <= 2000
              and isinstance(b.get("embeds"), list) and 0 < len(b["embeds"]) <= 10
              and all(isinstance(e.get("title"), str) and len(e["title"]) <= 256
                      and len(e.get("fields", [])) <= 25 for e in b["embeds"])
              and b.get("allowed_mentions") == {"parse": []})
    else:
        continue
    if not ok:
        errors.append(f"{r['service']} payload has the wrong shape: {json.dumps(b)[:300]}")
    found[r["service"]] += 1
if errors:
    print("\n".join(errors), file=sys.stderr)
    sys.exit(2)
sys.exit(0 if found["slack"] >= 1 and found["discord"] >= 1 else 1)
PY
}
alert_ok() {
  local rc=0
  check_alert_records || rc=$?
  ((rc == 2)) && die "alert payload shape check failed"
  return "$rc"
}
wait_for "OpsEmergencyStop delivered to the Slack and Discord receivers" "$FLOW_TIMEOUT" alert_ok
flow_alert_s=$(($(date +%s) - flow_started))
log "alert OpsEmergencyStop delivered as Slack and Discord payloads ${flow_alert_s}s after submit"
cli emergency-stop release --reason "compose e2e: budget test done" >/dev/null || die "emergency-stop release failed"

# -------------------------------------------------------- monitoring --
# The `monitoring` profile for real: Prometheus scrapes every target, has
# every rule loaded, and its forced alert reaches the recording receiver
# through the alerter's authenticated Alertmanager v2 API.
begin "monitoring: targets, rules, forced alert"
PROM="http://127.0.0.1:$PROMETHEUS_PORT"
ALERTER_HTTP="http://127.0.0.1:$ALERTER_HTTP_PORT"
# A P0 for the incident stage below, posted now so its group_wait runs
# alongside this stage's.
page_alert="[{\"labels\": {\"alertname\": \"ComposeE2EPage\", \"severity\": \"critical\", \"service\": \"compose-e2e\", \"e2e_run\": \"$run\"}, \"annotations\": {\"summary\": \"compose e2e: a P0 that must page the on-call person\"}}]"
curl -sf -m 5 -o /dev/null -X POST -H 'Content-Type: application/json' \
  -H "Authorization: Bearer $(<"$SECRETS/alert_sender_token")" --data "$page_alert" "$ALERTER_HTTP/api/v2/alerts" ||
  die "POST of the P0 alert ComposeE2EPage to the alerter failed"
page_posted_at=$(date +%s)
prom_api() { # path → $work/prom.json
  curl -sf -m 5 "$PROM$1" >"$work/prom.json"
}
# Every target of prometheus.yml's scrape_configs up; the others named
# with their error in $work/targets.txt.
targets_up() {
  prom_api /api/v1/targets || { echo "Prometheus API unreachable" >"$work/targets.txt"; return 1; }
  python3 - "$work/prom.json" "$PROM_DIR/prometheus.yml" >"$work/targets.txt" <<'PY'
import json, re, sys
active = json.load(open(sys.argv[1]))["data"]["activeTargets"]
cfg = open(sys.argv[2]).read()
want = set()
for listed in re.findall(r"targets:\s*\[([^\]]*)\]", cfg[cfg.index("scrape_configs:"):]):
    want |= set(re.findall(r'"([^"]+)"', listed))
got = {t["labels"].get("instance", ""): t for t in active}
down = []
for instance in sorted(want):
    t = got.get(instance)
    if t is None:
        down.append(f"{instance}: not among Prometheus's targets")
    elif t["health"] != "up":
        down.append(f'{t["labels"].get("job")} {instance}: {t["health"]} {t.get("lastError", "")}'.rstrip())
print(f"{len(want) - len(down)}/{len(want)}")
print("\n".join(down))
sys.exit(1 if down or not want else 0)
PY
}
targets_deadline=$(($(date +%s) + 90))
until targets_up; do
  if (($(date +%s) >= targets_deadline)); then
    sed -n '2,$s/^/  down: /p' "$work/targets.txt" >&2
    service_logs prometheus
    die "Prometheus targets not all up after 90s: $(head -n1 "$work/targets.txt") up"
  fi
  sleep 2
done
targets_summary=$(head -n1 "$work/targets.txt")
log "Prometheus targets up: $targets_summary (4 daemons with the viewer token, node-exporter, postgres-exporter, rabbitmq:15692, prometheus)"

# Every alert and recording rule of the mounted rule files loaded and
# evaluated without error.
rules_ok() {
  prom_api /api/v1/rules || { echo "Prometheus API unreachable" >"$work/rules.txt"; return 1; }
  python3 - "$work/prom.json" "$PROM_DIR"/rules/*.yml >"$work/rules.txt" <<'PY'
import json, re, sys
groups = json.load(open(sys.argv[1]))["data"]["groups"]
loaded = {}
for g in groups:
    for r in g["rules"]:
        loaded[r["name"]] = r
want = set()
for path in sys.argv[2:]:
    want |= set(re.findall(r"^\s*- (?:alert|record):\s*(\S+)\s*$", open(path).read(), re.M))
bad = [f"{name}: not loaded" for name in sorted(want - set(loaded))]
for name in sorted(want & set(loaded)):
    r = loaded[name]
    if r.get("health") != "ok":
        bad.append(f'{name}: {r.get("health")} {r.get("lastError", "")}'.rstrip())
print(f"{len(want) - len(bad)}/{len(want)} rules in {len(groups)} groups")
print("\n".join(bad))
sys.exit(1 if bad or not want else 0)
PY
}
rules_deadline=$(($(date +%s) + 60))
until rules_ok; do
  if (($(date +%s) >= rules_deadline)); then
    sed -n '2,$s/^/  rule: /p' "$work/rules.txt" >&2
    service_logs prometheus
    die "Prometheus rules not all loaded and healthy after 60s: $(head -n1 "$work/rules.txt")"
  fi
  sleep 2
done
rules_summary=$(head -n1 "$work/rules.txt")
log "Prometheus rules loaded and evaluated: $rules_summary"

# The forced alert at the Slack receiver (warning → slack), this run's id
# in the payload.
forced_record() { # → received_at of this run's forced alert at the receiver
  records || return 1
  python3 - "$work/records.json" "$run" <<'PY'
import json, sys
records, run = json.load(open(sys.argv[1])), sys.argv[2]
hits = [r for r in records if "ComposeE2EForcedAlert" in json.dumps(r["body"]) and run in json.dumps(r["body"])]
slack = [r for r in hits if r["service"] == "slack"]
if not slack:
    sys.exit(1)
print(min(r["received_at"] for r in slack))
PY
}
forced_deadline=$(($(date +%s) + FLOW_TIMEOUT))
until forced_at=$(forced_record); do
  if (($(date +%s) >= forced_deadline)); then
    prom_api /api/v1/alerts && python3 -c 'import json,sys; [print("  firing in Prometheus:", a["labels"].get("alertname"), a["state"], a.get("activeAt")) for a in json.load(open(sys.argv[1]))["data"]["alerts"]]' "$work/prom.json" >&2
    curl -sf -m 5 "$PROM/api/v1/alertmanagers" | sed 's/^/  alertmanagers: /' >&2 || true
    service_logs prometheus alerter
    die "ComposeE2EForcedAlert (run $run) not at the Slack receiver within ${FLOW_TIMEOUT}s"
  fi
  sleep 1
done
# Delivery time: from the alert's activeAt in Prometheus to the receiver.
prom_api /api/v1/alerts || die "Prometheus /api/v1/alerts unreachable"
forced_active_at=$(python3 - "$work/prom.json" "$run" <<'PY'
import datetime, json, re, sys
alerts = json.load(open(sys.argv[1]))["data"]["alerts"]
mine = [a for a in alerts if a["labels"].get("e2e_run") == sys.argv[2] and a["state"] == "firing"]
if mine:
    # RFC 3339 with nanoseconds: Python reads up to microseconds.
    at = re.sub(r"\.(\d+)", lambda m: "." + (m.group(1) + "000000")[:6], mine[0]["activeAt"].replace("Z", "+00:00"))
    print(datetime.datetime.fromisoformat(at).timestamp())
PY
)
[[ -n "$forced_active_at" ]] || die "ComposeE2EForcedAlert (run $run) is not firing in Prometheus"
forced_alert_delivered_s=$(awk -v a="$forced_active_at" -v r="$forced_at" 'BEGIN {printf "%.0f", r - a}')
# The alerter holds it as posted over HTTP from Prometheus (generatorURL).
viewer_get() { curl -sf -m 5 -H "Authorization: Bearer $(<"$SECRETS/viewer_token")" "$ALERTER_HTTP$1"; }
viewer_get "/api/v2/alerts?filter=e2e_run%3D%22$run%22" >"$work/am-alerts.json" || die "alerter GET /api/v2/alerts (viewer token) failed"
python3 - "$work/am-alerts.json" <<'PY' || die "the alerter does not hold the forced alert as posted by Prometheus: $(head -c 400 "$work/am-alerts.json")"
import json, sys
alerts = json.load(open(sys.argv[1]))
sys.exit(0 if any(a["labels"].get("alertname") == "ComposeE2EForcedAlert" and "/graph?" in a.get("generatorURL", "") for a in alerts) else 1)
PY
# Authenticated: since the alerter's last start it counted alerts received
# over HTTP (POST /api/v2/alerts takes the alert_sender role only) and
# refused no call; a post without a token is 401, with the viewer token
# 403, with the alert_sender token (the file Prometheus reads) 200.
metric_sum() { # file name [label=value] → sum of the samples
  python3 - "$@" <<'PY'
import re, sys
text, name = open(sys.argv[1]).read(), sys.argv[2]
want = sys.argv[3] if len(sys.argv) > 3 else None
total = 0.0
for m in re.finditer(rf"^{name}(?:{{([^}}]*)}})? (\S+)$", text, re.M):
    labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1) or ""))
    if want and labels.get(want.split("=")[0]) != want.split("=", 1)[1]:
        continue
    total += float(m.group(2))
print(int(total))
PY
}
viewer_get /metrics >"$work/alerter-metrics.txt" || die "alerter /metrics (viewer token) failed"
received_http=$(metric_sum "$work/alerter-metrics.txt" opsloop_alerter_alerts_received_total source=http)
refused_before=$(metric_sum "$work/alerter-metrics.txt" opsloop_auth_failures_total daemon=alerter)
((received_http >= 1)) || die "the alerter counts no alert received over HTTP (opsloop_alerter_alerts_received_total{source=\"http\"})"
[[ "$refused_before" == 0 ]] || die "the alerter refused $refused_before call(s) since its start (opsloop_auth_failures_total{daemon=\"alerter\"}): a scrape or Prometheus's alerts without a valid token?"
post_code() { # [token file] → HTTP status of an empty alert batch
  local auth=()
  [[ -n "${1:-}" ]] && auth=(-H "Authorization: Bearer $(<"$1")")
  curl -s -m 5 -o /dev/null -w '%{http_code}' -X POST -H 'Content-Type: application/json' "${auth[@]}" \
    --data '[]' "$ALERTER_HTTP/api/v2/alerts"
}
code_none=$(post_code)
code_viewer=$(post_code "$SECRETS/viewer_token")
code_sender=$(post_code "$SECRETS/alert_sender_token")
[[ "$code_none/$code_viewer/$code_sender" == 401/403/200 ]] ||
  die "POST /api/v2/alerts: no token $code_none, viewer $code_viewer, alert_sender $code_sender; expected 401, 403, 200"
viewer_get /metrics >"$work/alerter-metrics.txt" || die "alerter /metrics (viewer token) failed"
refused_after=$(metric_sum "$work/alerter-metrics.txt" opsloop_auth_failures_total daemon=alerter)
((refused_after == refused_before + 2)) || die "the alerter counted $((refused_after - refused_before)) refusals for the two refused posts, expected 2"
curl -sf -m 5 "$PROM/api/v1/alertmanagers" | grep -q '"url":"http://alerter:9756/api/v2/alerts"' ||
  die "Prometheus does not list the alerter (http://alerter:9756/api/v2/alerts) as an active Alertmanager"
log "forced alert ComposeE2EForcedAlert (e2e_run=$run) at the Slack receiver ${forced_alert_delivered_s}s after it fired (alerter group_wait 30 s); the alerter received $received_http alert(s) over its v2 API with 0 refusals; POST without token 401, viewer 403, alert_sender 200"

# ---------------------------------------------------------- incident --
# The P0 posted above: an incident opened from its alert group, this week's
# on-call primary of the rotation paged (mentioned) at the Slack receiver
# with signed links, the acknowledge
# link followed from the host (no token), the escalation stopped, the link
# single-use.
begin "incident: P0 page, acknowledge link"
page_link() { # → the acknowledge link of this run's page at the Slack receiver
  records || return 1
  python3 - "$work/records.json" <<'PY'
import json, re, sys
for r in json.load(open(sys.argv[1])):
    body = json.dumps(r["body"])
    who = re.search(r"<@(U_E2E_[A-Z]+)>", body)
    if r["service"] != "slack" or "ComposeE2EPage" not in body or not who:
        continue
    m = re.search(r"Acknowledge: (http[^\s\"\\>|]+)", body)
    if m:
        print(who.group(1), m.group(1))
        sys.exit(0)
sys.exit(1)
PY
}
page_deadline=$(($(date +%s) + FLOW_TIMEOUT))
until page=$(page_link); do
  if (($(date +%s) >= page_deadline)); then
    psql_q "SELECT id, level, state, title FROM incidents" | sed 's/^/  incident: /' >&2 || true
    service_logs alerter
    die "no page with an acknowledge link for ComposeE2EPage at the Slack receiver within ${FLOW_TIMEOUT}s"
  fi
  sleep 1
done
page_s=$(($(date +%s) - page_posted_at))
read -r paged ack_url <<<"$page"
[[ "$ack_url" == "$OPSLOOP_ALERTER_EXTERNAL_URL/api/v1/incidents/"* ]] ||
  die "the acknowledge link $ack_url does not point at the alerter's published URL $OPSLOOP_ALERTER_EXTERNAL_URL"
incident_id=$(sed -E 's|.*/api/v1/incidents/([0-9a-f-]+)/.*|\1|' <<<"$ack_url")
[[ "$(psql_q "SELECT level || ' ' || state FROM incidents WHERE id = '$incident_id'")" == "P0 triggered" ]] ||
  die "incident $incident_id is not a triggered P0 before the acknowledgement"
ack_code=$(curl -s -m 5 -o "$work/ack.txt" -w '%{http_code}' "$ack_url")
[[ "$ack_code" == 200 ]] || die "following the acknowledge link answered $ack_code: $(head -c 300 "$work/ack.txt")"
row=$(psql_q "SELECT state || ' ' || coalesce(acknowledged_by, '-') || ' ' || (next_escalation_at IS NULL) FROM incidents WHERE id = '$incident_id'")
[[ "$row" == "acknowledged "*" true" ]] ||
  die "after the acknowledge link incident $incident_id is '$row', expected acknowledged with no next escalation step"
reuse_code=$(curl -s -m 5 -o /dev/null -w '%{http_code}' "$ack_url")
[[ "$reuse_code" == 403 ]] || die "a used acknowledge link answered $reuse_code, expected 403 (single use)"
log "P0 ComposeE2EPage: incident $incident_id paged $paged (this week's primary) at the Slack receiver ${page_s}s after the post; acknowledged from the host through the signed link ($row), escalation stopped, the link refused on reuse (403)"

# ------------------------------------------------------------- chaos --
begin "chaos: kill -9 each daemon under load"
load_prefix="e2e load $run"
# Submits LOAD proposals, one every ~0.4 s, each retried with its dedupe
# key until the api answers (it is being killed meanwhile).
submitter() {
  local i tries
  for ((i = 1; i <= LOAD; i++)); do
    tries=0
    until cli -o json proposal submit --title "$load_prefix #$i" --kind analyze \
      --payload "{\"i\": $i}" --dedupe-key "e2e-load-$run-$i" --agent compose-e2e \
      >"$work/load-$i.json" 2>>"$work/load.err"; do
      tries=$((tries + 1))
      ((tries < 120)) || { echo "proposal $i: gave up" >>"$work/load.err"; return 1; }
      sleep 1
    done
    sleep 0.4
  done
}
submitter &
submitter_pid=$!
restarts=()
for svc in "${DAEMONS[@]}"; do
  sleep 3
  id=$(container_of "$svc")
  before=$(docker inspect -f '{{.RestartCount}}' "$id")
  # SIGKILL of the daemon process (tini's child), as a crash or the kernel's
  # OOM killer would: tini exits 137 and the restart policy brings the
  # container back. (`docker kill -s KILL` counts as an operator stop:
  # Docker cancels the restart policy for it.) From the host: the images
  # have no shell to run kill in. Fallback: the container's init.
  init_pid=$(docker inspect -f '{{.State.Pid}}' "$id")
  daemon_pids=$(cat "/proc/$init_pid/task/$init_pid/children" 2>/dev/null || true)
  if [[ -n "${daemon_pids// /}" ]]; then
    # shellcheck disable=SC2086 # one or more pids
    kill -KILL $daemon_pids
  else
    kill -KILL "$init_pid"
  fi
  kill_at=$(date +%s)
  back() {
    [[ "$(docker inspect -f '{{.RestartCount}} {{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}' "$id")" == "$((before + 1)) running healthy" ]]
  }
  wait_for "$svc back after kill -9 (restart policy)" 120 back
  restarts+=("$svc=$(($(date +%s) - kill_at))s")
  log "killed $svc: restarted and healthy in $(($(date +%s) - kill_at))s"
done
wait "$submitter_pid" || { tail -n 5 "$work/load.err" >&2; die "submitting the load failed"; }
load_done() {
  [[ "$(psql_q "SELECT count(*) FROM missions WHERE title LIKE '$load_prefix #%' AND status = 'succeeded'")" == "$LOAD" ]]
}
wait_for "all $LOAD load missions succeeded" "$FLOW_TIMEOUT" load_done
# Exactly once, nothing lost: counted in the database.
q_count() { psql_q "$1"; }
proposals_n=$(q_count "SELECT count(*) FROM proposals WHERE title LIKE '$load_prefix #%'")
distinct_n=$(q_count "SELECT count(DISTINCT title) FROM proposals WHERE title LIKE '$load_prefix #%'")
missions_n=$(q_count "SELECT count(*) FROM missions WHERE title LIKE '$load_prefix #%'")
steps_n=$(q_count "SELECT count(*) FROM mission_steps s JOIN missions m ON m.id = s.mission_id WHERE m.title LIKE '$load_prefix #%' AND s.status = 'succeeded'")
retried_n=$(q_count "SELECT count(*) FROM mission_steps s JOIN missions m ON m.id = s.mission_id WHERE m.title LIKE '$load_prefix #%' AND s.attempt > 1")
ev_succ_n=$(q_count "SELECT count(*) FROM events e JOIN missions m ON m.id = e.mission_id WHERE m.title LIKE '$load_prefix #%' AND e.kind = 'mission.succeeded'")
ev_step_n=$(q_count "SELECT count(*) FROM events e JOIN missions m ON m.id = e.mission_id WHERE m.title LIKE '$load_prefix #%' AND e.kind = 'step.succeeded'")
for pair in "proposals:$proposals_n" "distinct titles:$distinct_n" "missions:$missions_n" \
  "succeeded steps:$steps_n" "mission.succeeded events:$ev_succ_n" "step.succeeded events:$ev_step_n"; do
  [[ "${pair##*:}" == "$LOAD" ]] || die "${pair%%:*}: ${pair##*:}, expected $LOAD (lost or duplicated)"
done
# Every event row reached the bus (outbox drained) and every queue was
# consumed (nothing stuck, nothing dead-lettered).
outbox_drained() { [[ "$(q_count "SELECT count(*) FROM outbox WHERE published_at IS NULL")" == 0 ]]; }
wait_for "outbox drained to RabbitMQ" 60 outbox_drained
queues_empty() {
  docker exec "$(container_of rabbitmq)" rabbitmqctl -q list_queues name messages_ready messages_unacknowledged \
    >"$work/queues.txt" 2>/dev/null || return 1
  awk '$2 ~ /^[0-9]+$/ && ($2 != 0 || $3 != 0) {bad=1} END {exit bad}' "$work/queues.txt"
}
queues_deadline=$(($(date +%s) + 60))
until queues_empty; do
  if (($(date +%s) >= queues_deadline)); then
    sed 's/^/  | /' "$work/queues.txt" >&2
    die "messages left in RabbitMQ queues after 60s (name, ready, unacked above)"
  fi
  sleep 1
done
dead_lettered=$(q_count "SELECT count(*) FROM step_dead_letters")
# Notifications: each (receiver, alert, state) exactly once.
records || die "receiver unreachable"
dupes=$(python3 - "$work/records.json" <<'PY'
import collections, json, sys
records = json.load(open(sys.argv[1]))
seen = collections.Counter()
for r in records:
    body = json.dumps(r["body"], sort_keys=True)
    seen[(r["service"], body)] += 1
print(sum(n - 1 for n in seen.values() if n > 1))
PY
)
[[ "$dupes" == 0 ]] || die "$dupes duplicated notification(s) at the receiver"
slack_n=$(python3 -c 'import json,sys; print(sum(r["service"]=="slack" for r in json.load(open(sys.argv[1]))))' "$work/records.json")
discord_n=$(python3 -c 'import json,sys; print(sum(r["service"]=="discord" for r in json.load(open(sys.argv[1]))))' "$work/records.json")
# What arrived, by receiver: the alert names found in each payload.
python3 - "$work/records.json" <<'PY'
import collections, json, re, sys
got = collections.Counter()
for r in json.load(open(sys.argv[1])):
    text = json.dumps(r["body"])
    names = sorted(set(re.findall(r"\b(Ops[A-Z][A-Za-z]+|Opsloop[A-Z][A-Za-z]+|ComposeE2E[A-Za-z]+|Watchdog|test alert|smoke test)", text))) or ["?"]
    got[f'{r["service"]}:{"+".join(names)}'] += 1
print("compose_e2e: received " + ", ".join(f"{k}×{v}" for k, v in sorted(got.items())))
PY
log "exactly once: $LOAD proposals → $LOAD missions, steps, events (steps retried: $retried_n); outbox drained, queues empty; notifications slack=$slack_n discord=$discord_n, none duplicated"
mapfile -t load_mem < <(mem_of "${DAEMONS[@]}")

# ------------------------------------------------------------ backup --
begin "backup, verify, restore"
"$CLI" --token-file "$SECRETS/admin_token" -o json backup now >"$work/backup.json" || die "backup now failed"
backup_id=$(jget "$work/backup.json" id)
backup_status=$(jget "$work/backup.json" status)
backup_size=$(jget "$work/backup.json" size_bytes)
[[ "$backup_status" == completed ]] || die "backup $backup_id is $backup_status"
# The volume from the host (the image has no `find`); it was created empty
# by this run's `up`.
backup_volume=$(docker inspect -f '{{range .Mounts}}{{if eq .Destination "/var/lib/opsloop/backups"}}{{.Source}}{{end}}{{end}}' \
  "$(container_of backup-agent)")
[[ -n "$backup_volume" ]] || die "the backup-agent has no volume at /var/lib/opsloop/backups"
find "$backup_volume" -type f >"$work/backup-files.txt" || die "cannot list the backup volume $backup_volume"
[[ -s "$work/backup-files.txt" ]] || die "no backup file in the backup-agent's volume"
"$CLI" --token-file "$SECRETS/admin_token" -o json backup verify "$backup_id" >"$work/verify.json" ||
  die "backup verify failed"
[[ "$(jget "$work/verify.json" passed)" == True ]] || die "verification of $backup_id did not pass: $(head -c 400 "$work/verify.json")"
verify_ms=$(jget "$work/verify.json" duration_ms)
psql_q "CREATE DATABASE opsloop_restore" >/dev/null
pg_password=$(<"$SECRETS/postgres_password")
restore_started=$(date +%s%N)
OPSLOOP_RESTORE_TARGET_URL="postgres://opsloop:${pg_password}@postgres:5432/opsloop_restore" \
  "$CLI" --token-file "$SECRETS/admin_token" -o json backup restore "$backup_id" --confirm >"$work/restore.json" ||
  die "backup restore failed: $(head -c 400 "$work/restore.json")"
restore_ms=$((($(date +%s%N) - restore_started) / 1000000))
restored=$(docker exec -i "$(container_of postgres)" psql -U opsloop -d opsloop_restore -tAq \
  -c "SELECT count(*) FROM proposals WHERE title LIKE '$load_prefix #%'")
[[ "$restored" == "$LOAD" ]] || die "restored database has $restored of the $LOAD load proposals"
log "backup $backup_id: $backup_size bytes, verified in ${verify_ms} ms, restored in ${restore_ms} ms (row counts match)"

# ----------------------------------------------------------- secrets --
begin "secrets not in logs"
compose logs --no-color >"$work/compose.log" 2>&1
leaked=()
for f in "$SECRETS"/*; do
  # Certificates are public; their keys are checked like every secret.
  case "$(basename "$f")" in tls_cert | tls_ca) continue ;; esac
  value=$(<"$f")
  [[ ${#value} -ge 8 ]] || continue
  if grep -qF -- "$value" "$work/compose.log"; then leaked+=("$(basename "$f")"); fi
done
((${#leaked[@]} == 0)) || die "secret value(s) in docker-compose logs: ${leaked[*]}"
log "no secret value in $(wc -l <"$work/compose.log") log lines"

# -------------------------------------------------------------- down --
begin "down"
compose down -v --remove-orphans >"$work/down.log" 2>&1 || { cat "$work/down.log" >&2; die "compose down -v failed"; }
stack_up=0
left=$(docker ps -aq --filter "label=com.docker.compose.project=$PROJECT" | wc -l)
[[ "$left" == 0 ]] || die "$left container(s) left after down"
begin "done"
result="PASS"
echo "compose_e2e: $result image_mb=$image_mb cli_image_mb=$cli_image_mb up_to_healthy=${up_to_healthy}s api_grpc=tls+token" \
  "flow=${flow_mission_s}s alert=${flow_alert_s}s prometheus_targets_up=$targets_summary" \
  "rules_loaded=${rules_summary%% *} forced_alert_delivered_s=$forced_alert_delivered_s" \
  "p0_paged_s=$page_s p0_acknowledged_by_link=yes" \
  "kills=${#DAEMONS[@]} restarts=[${restarts[*]}]" \
  "load=${LOAD}/${LOAD} exactly_once retried_steps=$retried_n dead_letters=$dead_lettered" \
  "notifications=slack:$slack_n,discord:$discord_n dupes=0 backup=${backup_size}B verify=${verify_ms}ms" \
  "restore=${restore_ms}ms secrets_in_logs=0 idle_mem=[${idle_mem[*]}] load_mem=[${load_mem[*]}]" \
  "stages=[${timings[*]}] total=$(($(date +%s) - started))s"
