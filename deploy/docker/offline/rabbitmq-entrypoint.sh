#!/bin/bash
# Entry point of the offline rabbitmq stand-in (scripts/offline_images.sh):
# writes rabbitmq.conf from the official image's variables, then runs the
# server as the rabbitmq user with its logs on stdout.
set -euo pipefail

if [[ "${1:-}" != rabbitmq-server ]]; then
  exec "$@"
fi
if [[ "$(id -u)" != 0 ]]; then
  exec /usr/lib/rabbitmq/bin/rabbitmq-server
fi

conf=/etc/rabbitmq/rabbitmq.conf
umask 077
{
  echo "listeners.tcp.default = 5672"
  echo "management.tcp.port = 15672"
  echo "log.console = true"
  echo "log.console.level = info"
  echo "log.file = false"
  echo "loopback_users.guest = true"
  [[ -n "${RABBITMQ_DEFAULT_USER:-}" ]] && echo "default_user = $RABBITMQ_DEFAULT_USER"
  [[ -n "${RABBITMQ_DEFAULT_PASS:-}" ]] && echo "default_pass = $RABBITMQ_DEFAULT_PASS"
  [[ -n "${RABBITMQ_DEFAULT_VHOST:-}" ]] && echo "default_vhost = $RABBITMQ_DEFAULT_VHOST"
  true
} >"$conf"
chown rabbitmq:rabbitmq "$conf"
# The secret stays in the config file, not in the server's environment.
unset RABBITMQ_DEFAULT_PASS
mkdir -p /var/lib/rabbitmq /var/log/rabbitmq
chown -R rabbitmq:rabbitmq /var/lib/rabbitmq /var/log/rabbitmq
export HOME=/var/lib/rabbitmq
exec setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups /usr/lib/rabbitmq/bin/rabbitmq-server
