#!/usr/bin/env bash
# Runs the whole opsloop test suite against real PostgreSQL and RabbitMQ.
# Starts either service when it is down; fails with a clear message when it
# cannot be reached. Extra arguments go to the test runner.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

PG_HOST=127.0.0.1 PG_PORT=5432 AMQP_PORT=5672

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

ensure_postgres() {
  if port_open "$PG_HOST" "$PG_PORT"; then return; fi
  echo "test.sh: PostgreSQL is down; starting it"
  if [ -d /etc/postgresql ]; then
    local versions=(/etc/postgresql/*)
    pg_ctlcluster --skip-systemctl-redirect "$(basename "${versions[0]}")" main start || true
  fi
  for _ in $(seq 1 30); do port_open "$PG_HOST" "$PG_PORT" && return; sleep 1; done
  echo "test.sh: PostgreSQL is not reachable at $PG_HOST:$PG_PORT (trust auth, user postgres)." >&2
  echo "         Start it: pg_ctlcluster --skip-systemctl-redirect \$(ls /etc/postgresql) main start" >&2
  exit 1
}

ensure_rabbitmq() {
  if port_open "$PG_HOST" "$AMQP_PORT"; then return; fi
  echo "test.sh: RabbitMQ is down; starting it"
  if command -v rabbitmq-server >/dev/null; then rabbitmq-server -detached || true; fi
  for _ in $(seq 1 90); do port_open "$PG_HOST" "$AMQP_PORT" && return; sleep 1; done
  echo "test.sh: RabbitMQ is not reachable at $PG_HOST:$AMQP_PORT (guest/guest)." >&2
  echo "         Start it: rabbitmq-server -detached" >&2
  exit 1
}

# The alerter's end-to-end test drives a stock Prometheus, and the metrics
# test runs `promtool check metrics` (both from Debian's prometheus package).
ensure_prometheus() {
  command -v prometheus >/dev/null && command -v promtool >/dev/null && return
  echo "test.sh: installing Debian's prometheus (prometheus and promtool) for the tests"
  if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }; then
    echo "test.sh: could not install Debian's prometheus package; the alerter's Prometheus test" >&2
    echo "         and the promtool metrics test need it: apt-get install -y prometheus" >&2
    exit 1
  fi
}

# The alerter's amtool test drives Alertmanager's own CLI (Debian's
# prometheus-alertmanager package ships amtool).
ensure_amtool() {
  command -v amtool >/dev/null && return
  echo "test.sh: installing Debian's prometheus-alertmanager (amtool) for the tests"
  if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus-alertmanager >/dev/null; }; then
    echo "test.sh: could not install Debian's prometheus-alertmanager package; the alerter's amtool" >&2
    echo "         test needs it: apt-get install -y --no-install-recommends prometheus-alertmanager" >&2
    exit 1
  fi
}

# The status page's browser test drives Debian's headless Chromium through
# chromedriver (opsloop_e2e::webdriver).
ensure_chromium() {
  command -v chromium >/dev/null && command -v chromedriver >/dev/null && return
  echo "test.sh: installing Debian's chromium and chromium-driver for the browser tests"
  if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null; }; then
    echo "test.sh: could not install Debian's chromium and chromium-driver; the status page's" >&2
    echo "         browser test needs them: apt-get install -y --no-install-recommends chromium chromium-driver" >&2
    exit 1
  fi
}

ensure_postgres
ensure_rabbitmq
ensure_prometheus
ensure_amtool
ensure_chromium

# Daemon process tests start the real binaries.
cargo build --workspace --bins --quiet || { echo "test.sh: the build failed" >&2; exit 1; }

# The workspace has no doctests; nextest runs every other test, in parallel.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@" 2>&1 | tee "$log" || status=$?
  summary=$(grep -E 'Summary \[' "$log" | tail -n1)
  passed=$(sed -nE 's/.* ([0-9]+) passed.*/\1/p' <<<"$summary")
  failed=$(sed -nE 's/.* ([0-9]+) failed.*/\1/p' <<<"$summary")
  skipped=$(sed -nE 's/.* ([0-9]+) skipped.*/\1/p' <<<"$summary")
  echo "tests: ${passed:-0} passed, ${failed:-0} failed, ${skipped:-0} skipped"
else
  cargo test --workspace --no-fail-fast "$@" || status=$?
fi
exit "$status"
