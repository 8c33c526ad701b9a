#!/usr/bin/env bash
# The systemd units booted for real (`just systemd-e2e`): Debian's systemd as
# PID 1 in an unprivileged container (test-only image from
# scripts/offline_images.sh), the units, configuration and credentials
# installed by deploy/systemd/install.sh exactly as on a host, against this
# machine's PostgreSQL (a fresh database) and RabbitMQ over host networking:
#   1. engine and image (opsloop-offline/systemd:bookworm);
#   2. boot, install.sh, the test-only drop-in
#      deploy/systemd/testing/zz-unprivileged-container.conf (user and mount
#      namespaces are not available unprivileged), free ports per daemon;
#   3. opsloop-migrate then opsloop.target: every unit active (Type=notify:
#      READY=1 received) and /readyz 200 on every daemon;
#   4. LoadCredential=: the api accepts the admin token read from
#      /etc/opsloop/credentials (the CLI inside the container);
#   5. kill -9 of each daemon's main process: back by Restart=, ready again;
#   6. READY=1 as documented: with the broker unreachable the api still
#      turns active (the outbox holds its events) while the alerter stays
#      `activating` (waiting, not crash-looping) until the broker answers;
#   7. a host whose PostgreSQL comes up after the units: the database URL
#      points at a port nothing listens on until a forwarder to PostgreSQL
#      starts a few seconds after the units; migrate and every daemon wait
#      (none fails), then turn active and ready without intervention;
#   8. reports whether the mount-namespace sandboxing was applied (it is not,
#      in an unprivileged container: documented in deploy/systemd/README.md).
# Prints one summary line `systemd_e2e: PASS|FAIL …`.
#
# Usage: scripts/systemd_e2e.sh
# Environment:
#   SYSTEMD_E2E_BIN_DIR=target/release   the five binaries (built by the caller)
#   SYSTEMD_E2E_PG=postgres://postgres@127.0.0.1:5432   server for the fresh database
#   SYSTEMD_E2E_AMQP=amqp://guest:guest@127.0.0.1:5672/%2f
#   SYSTEMD_E2E_KEEP=1                   leave the container running on exit
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
# shellcheck source=scripts/lib/docker_engine.sh
source scripts/lib/docker_engine.sh

for arg in "$@"; do
  case "$arg" in
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "systemd_e2e: unknown argument $arg (see --help)" >&2; exit 2 ;;
  esac
done

BIN_DIR="${SYSTEMD_E2E_BIN_DIR:-target/release}"
PG="${SYSTEMD_E2E_PG:-postgres://postgres@127.0.0.1:5432}"
AMQP="${SYSTEMD_E2E_AMQP:-amqp://guest:guest@127.0.0.1:5672/%2f}"
KEEP="${SYSTEMD_E2E_KEEP:-0}"
IMAGE="opsloop-offline/systemd:bookworm"
NAME="opsloop-systemd-e2e-$$"
DB="opsloop_systemd_e2e_$$"
DAEMONS=(api heartbeat-worker alerter backup-agent)
BINS=(opsloop opsloop-api opsloop-heartbeat-worker opsloop-alerter opsloop-backup-agent)

started=$(date +%s)
stage="setup"
work="$(mktemp -d "${TMPDIR:-/tmp}/opsloop-systemd.XXXXXX")"
container_up=0
db_created=0
forwarder_pid=""

summary=()

log() { printf 'systemd_e2e: %s\n' "$*"; }
die() { log "FAILED at stage: $stage: $*" >&2; exit 1; }
begin() { stage=$1; log "== $stage"; }
in_ct() { docker exec "$NAME" "$@"; }

cleanup() {
  local rc=$?
  set +e
  if ((rc != 0)) && ((container_up)); then
    log "--- unit states and journal tails" >&2
    in_ct systemctl --no-pager list-units 'opsloop*' >&2 2>&1
    for d in migrate "${DAEMONS[@]}"; do
      in_ct journalctl -u "opsloop-$d" --no-pager -n 15 2>&1 | cut -c1-300 | sed 's/^/  | /' >&2
    done
  fi
  if ((container_up)) && [[ "$KEEP" != 1 ]]; then docker rm -f "$NAME" >/dev/null 2>&1; fi
  if [[ -n "$forwarder_pid" ]]; then kill "$forwarder_pid" 2>/dev/null; fi
  if ((db_created)) && [[ "$KEEP" != 1 ]]; then
    psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1
  fi
  [[ "$KEEP" == 1 ]] || stop_docker_engine
  rm -rf "$work"
  if ((rc == 0)); then
    echo "systemd_e2e: PASS in $(($(date +%s) - started))s: ${summary[*]}"
  else
    echo "systemd_e2e: FAIL (stage: $stage, $(($(date +%s) - started))s)" >&2
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------- tools --
begin "tools"
for tool in docker psql python3; do
  command -v "$tool" >/dev/null || die "$tool not found (apt-get install docker.io postgresql-client python3)"
done
for bin in "${BINS[@]}"; do
  [[ -x "$BIN_DIR/$bin" ]] || die "$BIN_DIR/$bin missing: cargo build --release --bins first (or set SYSTEMD_E2E_BIN_DIR)"
done
psql "$PG/postgres" -qAtc "select 1" >/dev/null 2>&1 || die "PostgreSQL does not answer at $PG"

# ---------------------------------------------------- engine and image --
begin "engine"
ensure_docker_engine "$work/dockerd.log" || die "no Docker engine"
begin "image"
OFFLINE_ONLY="base systemd" bash scripts/offline_images.sh >/dev/null 2>"$work/offline.log" || {
  cat "$work/offline.log" >&2
  die "scripts/offline_images.sh failed"
}

# ------------------------------------------------------------- boot --
begin "boot"
psql "$PG/postgres" -qc "CREATE DATABASE $DB" >/dev/null || die "cannot create database $DB"
db_created=1
read -r -a PORTS <<<"$(python3 -c '
import socket
socks = [socket.socket() for _ in range(8)]
for s in socks: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))')"
docker run -d --name "$NAME" --network host --tmpfs /run --tmpfs /run/lock \
  -v /sys/fs/cgroup:/sys/fs/cgroup:ro -v "$ROOT:/src:ro" "$IMAGE" >/dev/null || die "docker run failed"
container_up=1
for _ in $(seq 1 30); do
  state=$(in_ct systemctl is-system-running 2>/dev/null || true)
  [[ "$state" == running || "$state" == degraded ]] && break
  sleep 1
done
[[ "$state" == running || "$state" == degraded ]] || die "systemd did not boot (state: ${state:-none})"
log "systemd booted ($state)"

begin "install"
in_ct env BIN_DIR="/src/$BIN_DIR" DATABASE_URL="$PG/$DB" AMQP_URL="$AMQP" \
  bash -c 'cd /src && bash deploy/systemd/install.sh --no-start' >"$work/install.log" 2>&1 || {
  cat "$work/install.log" >&2
  die "deploy/systemd/install.sh failed"
}
# Every unit: the test-only container drop-in, and this run's own exchange
# and queues on the shared broker (they expire a minute after the run). Per
# daemon: free ports (the environment wins over /etc/opsloop/opsloop.toml).
cat >"$work/bus.conf" <<CONF
[Service]
Environment=OPSLOOP__BUS__EXCHANGE=$NAME.events
Environment=OPSLOOP__BUS__DEAD_LETTER_EXCHANGE=$NAME.dlx
Environment=OPSLOOP__BUS__QUEUE_TYPE=classic
Environment=OPSLOOP__BUS__QUEUE_EXPIRES_MS=60000
Environment=OPSLOOP__ALERTER__QUEUE=$NAME.alerter
Environment=OPSLOOP__HEARTBEAT__REACTIONS_QUEUE=$NAME.reactions
CONF
declare -A HTTP_PORT
i=0
for unit in migrate "${DAEMONS[@]}"; do
  dir="/etc/systemd/system/opsloop-$unit.service.d"
  in_ct install -d -m 0755 "$dir"
  docker cp deploy/systemd/testing/zz-unprivileged-container.conf "$NAME:$dir/" >/dev/null
  docker cp "$work/bus.conf" "$NAME:$dir/bus.conf" >/dev/null
  [[ "$unit" == migrate ]] && continue
  section=$unit
  [[ "$unit" == heartbeat-worker ]] && section=heartbeat
  [[ "$unit" == backup-agent ]] && section=backup
  key=${section^^}
  HTTP_PORT[$unit]=${PORTS[$i]}
  {
    echo "[Service]"
    echo "Environment=OPSLOOP__${key}__HTTP_ADDR=127.0.0.1:${PORTS[$i]}"
    [[ "$unit" != heartbeat-worker ]] && echo "Environment=OPSLOOP__${key}__GRPC_ADDR=127.0.0.1:${PORTS[$((i + 1))]}"
    [[ "$unit" == api ]] && echo "Environment=OPSLOOP__API__OUTBOX_RELAY=true"
  } >"$work/ports.conf"
  docker cp "$work/ports.conf" "$NAME:$dir/ports.conf" >/dev/null
  [[ "$unit" == api ]] && API_GRPC=${PORTS[$((i + 1))]}
  i=$((i + 2))
done
in_ct systemctl daemon-reload

# ------------------------------------------------------------ start --
begin "start"
t0=$(date +%s%N)
in_ct systemctl start opsloop-migrate.service || die "opsloop-migrate.service failed"
in_ct systemctl start opsloop.target || die "systemctl start opsloop.target failed"
t1=$(date +%s%N)
for d in "${DAEMONS[@]}"; do
  [[ "$(in_ct systemctl is-active "opsloop-$d")" == active ]] || die "opsloop-$d is not active"
done
ready_all() {
  local d code
  for d in "${DAEMONS[@]}"; do
    code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:${HTTP_PORT[$d]}/readyz" || true)
    [[ "$code" == 200 ]] || return 1
  done
}
for _ in $(seq 1 60); do ready_all && break; sleep 0.5; done
ready_all || die "not every daemon answers /readyz 200"
summary+=("start_to_active_ms=$(((t1 - t0) / 1000000))")
log "every unit active and ready"

# ------------------------------------------------------ credentials --
begin "credentials"
in_ct /usr/local/bin/opsloop --endpoint "http://127.0.0.1:$API_GRPC" \
  --token-file /etc/opsloop/credentials/admin_token --output json health >"$work/health.json" ||
  die "the api refused the admin token from LoadCredential="
python3 -c 'import json,sys; json.load(open(sys.argv[1]))' "$work/health.json" ||
  die "opsloop health did not print JSON"
if in_ct /usr/local/bin/opsloop --endpoint "http://127.0.0.1:$API_GRPC" --token not-a-token \
  health >/dev/null 2>&1; then
  die "the api accepted a wrong token"
fi
log "the admin token from /etc/opsloop/credentials works; a wrong one is refused"

# -------------------------------------------------------------- kill --
begin "kill -9"
for d in "${DAEMONS[@]}"; do
  unit="opsloop-$d"
  before=$(in_ct systemctl show -p NRestarts --value "$unit")
  pid=$(in_ct systemctl show -p MainPID --value "$unit")
  [[ "$pid" -gt 0 ]] || die "$unit has no main process"
  in_ct kill -9 "$pid"
  back=0
  for _ in $(seq 1 60); do
    now=$(in_ct systemctl show -p NRestarts --value "$unit")
    newpid=$(in_ct systemctl show -p MainPID --value "$unit")
    code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:${HTTP_PORT[$d]}/readyz" || true)
    if ((now > before)) && [[ "$newpid" != "$pid" && "$newpid" -gt 0 && "$code" == 200 ]]; then
      back=1
      break
    fi
    sleep 0.5
  done
  ((back)) || die "$unit did not come back after kill -9 (restarts $before → ${now:-?})"
  log "$unit: killed (pid $pid), restarted by systemd (pid $newpid), ready"
done
summary+=("restarted=${#DAEMONS[@]}/${#DAEMONS[@]}")

# ------------------------------------------------------ ready semantics --
begin "ready semantics"
closed_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cred=/etc/opsloop/credentials/amqp_url
in_ct cp -p "$cred" "$cred.saved"
in_ct sh -c "printf '%s\n' 'amqp://guest:guest@127.0.0.1:$closed_port/%2f' >$cred"
in_ct systemctl restart --no-block opsloop-api opsloop-alerter
api_state="" alerter_state="" alerter_sub=""
for _ in $(seq 1 20); do
  api_state=$(in_ct systemctl show -p ActiveState --value opsloop-api)
  [[ "$api_state" == active ]] && break
  sleep 0.5
done
[[ "$api_state" == active ]] || die "with the broker unreachable the api did not turn active (state: $api_state)"
sleep 3 # the alerter must still be waiting after a while: a window, not a synchronisation
alerter_state=$(in_ct systemctl show -p ActiveState --value opsloop-alerter)
alerter_sub=$(in_ct systemctl show -p SubState --value opsloop-alerter)
[[ "$alerter_state" == activating && "$alerter_sub" == start ]] ||
  die "with the broker unreachable the alerter should wait before READY=1 (state: $alerter_state/$alerter_sub)"
log "broker unreachable: api active (READY=1), alerter activating/start (no READY=1 yet)"
in_ct mv "$cred.saved" "$cred"
in_ct systemctl restart opsloop-api opsloop-alerter || die "restart after restoring the broker failed"
for _ in $(seq 1 60); do ready_all && break; sleep 0.5; done
ready_all || die "not every daemon ready again after the broker came back"
summary+=("ready_semantics=ok")

# ------------------------------------------------ database after units --
begin "database after the units"
late_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
in_ct systemctl stop opsloop.target opsloop-migrate.service
cred=/etc/opsloop/credentials/database_url
in_ct sh -c "printf '%s\n' 'postgres://postgres@127.0.0.1:$late_port/$DB' >$cred"
in_ct systemctl start --no-block opsloop-migrate.service opsloop.target
sleep 4 # PostgreSQL stays away for a while: a window, not a synchronisation
for unit in migrate "${DAEMONS[@]}"; do
  state=$(in_ct systemctl show -p ActiveState --value "opsloop-$unit")
  [[ "$state" != failed ]] || die "opsloop-$unit failed while PostgreSQL was unreachable"
done
migrate_state=$(in_ct systemctl show -p ActiveState --value opsloop-migrate)
[[ "$migrate_state" == activating ]] ||
  die "opsloop-migrate should be waiting for the database (state: $migrate_state)"
pg_host_port=${PG#*@}
pg_host_port=${pg_host_port%%/*}
cat >"$work/forward.py" <<'PY'
import socket, sys, threading
listen_port, target_host, target_port = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
def pipe(src, dst):
    try:
        while (data := src.recv(65536)):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try: s.shutdown(socket.SHUT_RDWR)
            except OSError: pass
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", listen_port))
server.listen(64)
while True:
    client, _ = server.accept()
    upstream = socket.create_connection((target_host, target_port))
    for a, b in ((client, upstream), (upstream, client)):
        threading.Thread(target=pipe, args=(a, b), daemon=True).start()
PY
late_t0=$(date +%s%N)
python3 "$work/forward.py" "$late_port" "${pg_host_port%%:*}" "${pg_host_port##*:}" &
forwarder_pid=$!
for _ in $(seq 1 120); do ready_all && break; sleep 0.5; done
ready_all || die "the daemons did not become ready after PostgreSQL came up"
for unit in "${DAEMONS[@]}"; do
  [[ "$(in_ct systemctl is-active "opsloop-$unit")" == active ]] || die "opsloop-$unit is not active after PostgreSQL came up"
done
summary+=("database_late_ready_ms=$((($(date +%s%N) - late_t0) / 1000000))")
log "PostgreSQL reachable only after the units started: migrate waited, every daemon active and ready"

# ----------------------------------------------------------- sandbox --
begin "sandbox report"
pid=$(in_ct systemctl show -p MainPID --value opsloop-api)
if in_ct cmp -s /proc/1/mountinfo "/proc/$pid/mountinfo"; then
  log "ProtectSystem=strict and the other mount-namespace protections were NOT applied (unprivileged container; documented)"
  summary+=("mount_sandbox=skipped_by_systemd")
else
  log "the api runs in its own mount namespace (ProtectSystem= applied)"
  summary+=("mount_sandbox=applied")
fi
stage="done"
