#!/usr/bin/env bash
# Runs every opsloop benchmark scenario (issue 8) against its baseline in one
# invocation, prints the table and writes bench/results/<UTC time>.json.
#
#   bash bench/run.sh            full sizes (tens of minutes on 2 cores)
#   bash bench/run.sh --smoke    tiny sizes, well under a minute after the build (CI)
#
# Extra arguments go to `opsloop-bench all` (e.g. --bus memory). Exits non-zero
# when a scenario fails. Every load goes to 127.0.0.1; databases the bench
# creates are dropped and its scratch directory removed.
set -euo pipefail
cd "$(dirname "$0")/.."

SMOKE=0
ARGS=()
for arg in "$@"; do
  case "$arg" in
    --smoke) SMOKE=1 ;;
    *) ARGS+=("$arg") ;;
  esac
done

PG_HOST=127.0.0.1 PG_PORT=5432
port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

ensure_postgres() {
  if port_open "$PG_HOST" "$PG_PORT"; then return; fi
  echo "bench/run.sh: PostgreSQL is down; starting it"
  if [ -d /etc/postgresql ]; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  fi
  for _ in $(seq 1 30); do port_open "$PG_HOST" "$PG_PORT" && return; sleep 1; done
  echo "bench/run.sh: PostgreSQL is not reachable at $PG_HOST:$PG_PORT (trust auth, user postgres)." >&2
  exit 1
}

# Installs a baseline tool with apt-get when it is missing, in full mode only;
# in smoke mode a missing tool makes the bench skip that baseline, saying so.
ensure_tool() {
  local tool=$1 package=$2
  command -v "$tool" >/dev/null && return
  if [ "$SMOKE" = 1 ]; then
    echo "bench/run.sh: $tool missing; its baseline will be skipped (smoke mode installs nothing)"
    return
  fi
  echo "bench/run.sh: installing $package for $tool"
  if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$package" >/dev/null; }; then
    echo "bench/run.sh: could not install $package; the $tool baseline will be skipped" >&2
  fi
}

ensure_postgres
ensure_tool pgbench postgresql-client
ensure_tool pg_dump postgresql-client
ensure_tool zstd zstd
ensure_tool prometheus-alertmanager prometheus-alertmanager

# BENCH_PROFILE=debug reuses the test build (CI's smoke run: it checks the
# scenarios still run, its figures mean nothing); release is for numbers;
# any other Cargo profile (e.g. image) works the same way as release.
# BENCH_DAEMON_DIR: the daemons under test come from this directory as they
# are (CI: target/image, built once); the bench driver from BENCH_PROFILE.
PROFILE=${BENCH_PROFILE:-release}
if [ "$PROFILE" = debug ]; then
  cargo build --workspace --bins --quiet
else
  # Two builds, as the crates are usually built (one feature resolution
  # each), so a warm target directory is reused.
  cargo build --profile "$PROFILE" --quiet -p opsloop-bench
  if [ -z "${BENCH_DAEMON_DIR:-}" ]; then
    cargo build --profile "$PROFILE" --quiet -p opsloop-api -p opsloop-heartbeat-worker \
      -p opsloop-alerter -p opsloop-backup-agent --features opsloop-backup-agent/age --bins
  fi
fi

TARGET_DIR=$(cd "${CARGO_TARGET_DIR:-target}" && pwd)
DAEMON_DIR=$(cd "${BENCH_DAEMON_DIR:-$TARGET_DIR/$PROFILE}" && pwd)
mkdir -p bench/results
stamp=$(date -u +%Y%m%dT%H%M%SZ)
if [ "$SMOKE" = 1 ]; then
  out="bench/results/$stamp-smoke.json"
  ARGS=(--smoke "${ARGS[@]}")
else
  out="bench/results/$stamp.json"
  ARGS=(--require-baselines "${ARGS[@]}")
fi
started=$SECONDS
status=0
"$TARGET_DIR/$PROFILE/opsloop-bench" all --out "$out" --bin-dir "$DAEMON_DIR" "${ARGS[@]}" || status=$?
echo "bench/run.sh: scenarios took $((SECONDS - started)) s; results in $out"
exit "$status"
