#!/usr/bin/env bash
# Installs opsloop as systemd services on this host:
#   binaries  -> /usr/local/bin (from BIN_DIR, default target/release)
#   units     -> /etc/systemd/system (opsloop-*.service, opsloop.target)
#   config    -> /etc/opsloop/opsloop.toml (kept when present)
#   secrets   -> /etc/opsloop/credentials/<name> (root-only, 0600; kept when
#                present; tokens generated when absent), handed to the
#                daemons with LoadCredential=
# The alerter's optional secrets (slack_webhook_url, discord_webhook_url,
# pagerduty_routing_key, slack_summary_webhook_url, incident_link_secret —
# the last generated when absent) are loaded only when their credential file
# exists: a drop-in is written for each.
#
# Usage: sudo deploy/systemd/install.sh [--no-start]
#   DATABASE_URL=postgres://opsloop:PW@127.0.0.1:5432/opsloop \
#   AMQP_URL=amqp://opsloop:PW@127.0.0.1:5672/%2f sudo -E deploy/systemd/install.sh
# Never prints a secret value.
set -euo pipefail
cd "$(dirname "$0")/../.."

BIN_DIR="${BIN_DIR:-target/release}"
PREFIX="${PREFIX:-/usr/local/bin}"
UNIT_DIR="${UNIT_DIR:-/etc/systemd/system}"
CONF_DIR="${CONF_DIR:-/etc/opsloop}"
CRED_DIR="$CONF_DIR/credentials"
BINARIES=(opsloop opsloop-api opsloop-heartbeat-worker opsloop-alerter opsloop-backup-agent)
UNITS=(opsloop-migrate.service opsloop-api.service opsloop-heartbeat-worker.service
  opsloop-alerter.service opsloop-backup-agent.service opsloop.target)
OPTIONAL=(slack_webhook_url discord_webhook_url pagerduty_routing_key slack_summary_webhook_url incident_link_secret)
start=1
[[ "${1:-}" == "--no-start" ]] && start=0

if [[ $EUID -ne 0 ]]; then
  echo "install.sh: run as root (sudo)" >&2
  exit 1
fi
for b in "${BINARIES[@]}"; do
  if [[ ! -x "$BIN_DIR/$b" ]]; then
    echo "install.sh: $BIN_DIR/$b missing: cargo build --release --bins first (or set BIN_DIR)" >&2
    exit 1
  fi
done

install -m 0755 -t "$PREFIX" "${BINARIES[@]/#/$BIN_DIR/}"
install -d -m 0755 "$CONF_DIR"
install -d -m 0700 "$CRED_DIR"
if [[ ! -f "$CONF_DIR/opsloop.toml" ]]; then
  # The compose config, with the services on this host instead.
  sed -e 's/@postgres:5432/@127.0.0.1:5432/; s/@rabbitmq:5672/@127.0.0.1:5672/' \
    -e 's/"0\.0\.0\.0:/"127.0.0.1:/' deploy/compose/opsloop.toml >"$CONF_DIR/opsloop.toml"
  chmod 0644 "$CONF_DIR/opsloop.toml"
  echo "installed $CONF_DIR/opsloop.toml (review it)"
fi

umask 077
secret() { # name value-or-empty
  local path="$CRED_DIR/$1"
  if [[ -s "$path" ]]; then
    echo "kept      $path"
  elif [[ -n "$2" ]]; then
    printf '%s\n' "$2" >"$path"
    echo "created   $path"
  else
    echo "install.sh: $path missing: set ${1^^} in the environment or write the file" >&2
    exit 1
  fi
}
random() { head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
secret database_url "${DATABASE_URL:-}"
secret amqp_url "${AMQP_URL:-}"
secret admin_token "${ADMIN_TOKEN:-$(random)}"
secret agent_token "${AGENT_TOKEN:-$(random)}"
# Signs incident pages' acknowledge/resolve links (loaded by the alerter).
secret incident_link_secret "${INCIDENT_LINK_SECRET:-$(random)}"

install -m 0644 -t "$UNIT_DIR" "${UNITS[@]/#/deploy/systemd/}"
# The alerter's optional secrets: a LoadCredential= drop-in per file present.
dropin="$UNIT_DIR/opsloop-alerter.service.d"
install -d -m 0755 "$dropin"
{
  echo "# Written by deploy/systemd/install.sh: the alerter's optional secrets present in $CRED_DIR."
  echo "[Service]"
  for name in "${OPTIONAL[@]}"; do
    if [[ -s "$CRED_DIR/$name" ]]; then echo "LoadCredential=$name:$CRED_DIR/$name"; fi
  done
} >"$dropin/receivers.conf"
chmod 0644 "$dropin/receivers.conf"

systemctl daemon-reload
systemctl enable opsloop.target "${UNITS[@]:0:5}"
if ((start)); then
  systemctl restart opsloop-migrate.service
  systemctl start opsloop.target
  systemctl --no-pager --lines=0 status opsloop.target "${UNITS[@]:0:5}" || true
fi
echo "installed: $(printf '%s ' "${UNITS[@]}")"
