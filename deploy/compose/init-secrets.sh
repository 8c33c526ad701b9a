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
# Signs the acknowledge/resolve links of incident pages (HMAC).
write incident_link_secret "$(random)"
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

# TLS for the api's gRPC port: a private CA (tls_ca.pem for clients; its key
# stays in this directory, never mounted) and the api's certificate for the
# names clients use (api inside the stack, localhost/127.0.0.1 from the host).
if [[ -s "$dir/tls_cert" && -s "$dir/tls_key" && -s "$dir/tls_ca" ]]; then
  echo "kept    $dir/tls_cert, $dir/tls_key, $dir/tls_ca"
elif ! command -v openssl >/dev/null; then
  echo "warning: openssl not found: no tls_cert/tls_key written, the api's gRPC port stays plaintext (install openssl and rerun)" >&2
else
  tmp="$(mktemp -d)"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$dir/tls_ca_key" -out "$tmp/ca.pem" -days 3650 -subj "/CN=opsloop compose CA" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$tmp/api.key" -out "$tmp/api.csr" -subj "/CN=api" 2>/dev/null
  openssl x509 -req -in "$tmp/api.csr" -CA "$tmp/ca.pem" -CAkey "$dir/tls_ca_key" -CAcreateserial \
    -days 397 -out "$tmp/api.pem" \
    -extfile <(printf "subjectAltName=DNS:api,DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth") 2>/dev/null
  # PKCS#8 key, readable by the daemons' non-root user through the bind mount.
  openssl pkcs8 -topk8 -nocrypt -in "$tmp/api.key" -out "$dir/tls_key"
  cp "$tmp/api.pem" "$dir/tls_cert"
  cp "$tmp/ca.pem" "$dir/tls_ca"
  chmod 0644 "$dir/tls_cert" "$dir/tls_key" "$dir/tls_ca"
  chmod 0600 "$dir/tls_ca_key"
  rm -rf "$tmp"
  echo "created $dir/tls_cert, $dir/tls_key, $dir/tls_ca (clients: --ca-file $dir/tls_ca)"
fi
