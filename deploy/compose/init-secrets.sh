#!/usr/bin/env bash
# Writes random secrets for the compose stack into ./secrets (or
# $OPSLOOP_SECRETS_DIR), keeping any that exist. Webhook URLs cannot be
# invented: set SLACK_WEBHOOK_URL / DISCORD_WEBHOOK_URL, or edit the files.
# Prints file names only, never a value.
set -euo pipefail
cd "$(dirname "$0")"
dir="${OPSLOOP_SECRETS_DIR:-./secrets}"
# The directory is private to this user; the files are world-readable
# because compose bind-mounts them as they are (uid/gid/mode are ignored
# outside swarm) and the containers read them as non-root users (opsloop
# 10001, grafana 472).
umask 077
mkdir -p "$dir"
chmod 0700 "$dir"

random() { head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n'; }

write() { # name value
  if [[ -s "$dir/$1" ]]; then
    echo "kept    $dir/$1"
  else
    printf '%s\n' "$2" > "$dir/$1"
    chmod 0644 "$dir/$1"
    echo "created $dir/$1"
  fi
}

existing_or_random() { # name
  if [[ -s "$dir/$1" ]]; then cat "$dir/$1"; else random; fi
}

pg_password="$(existing_or_random postgres_password)"
mq_password="$(existing_or_random rabbitmq_password)"
write postgres_password "$pg_password"
write rabbitmq_password "$mq_password"
write database_url "postgres://opsloop:${pg_password}@postgres:5432/opsloop"
write amqp_url "amqp://opsloop:${mq_password}@rabbitmq:5672/%2f"
write admin_token "$(random)"
write agent_token "$(random)"
write viewer_token "$(random)"
write alert_sender_token "$(random)"
write grafana_admin_password "$(random)"
# The alerter rejects an empty or non-http(s) webhook secret at start; a
# placeholder keeps it running, but notifications to that receiver are
# dead-lettered (OpsloopAlertDeliveryFailing) until a real URL is set.
for receiver in slack discord; do
  var="${receiver^^}_WEBHOOK_URL"
  if [[ -z "${!var:-}" && ! -s "$dir/${receiver}_webhook_url" ]]; then
    echo "warning: $var not set: ${receiver} notifications go to a placeholder and are dead-lettered" >&2
  fi
  write "${receiver}_webhook_url" "${!var:-http://127.0.0.1:9/${receiver}-webhook-not-configured}"
done
