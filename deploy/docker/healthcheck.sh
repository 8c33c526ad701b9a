#!/bin/bash
# Container health probe: GET /healthz on 127.0.0.1:$OPSLOOP_HEALTH_PORT
# (default 9754) with bash's /dev/tcp; healthy on HTTP 200. No curl needed.
set -u
port="${1:-${OPSLOOP_HEALTH_PORT:-9754}}"
path="${2:-/healthz}"
exec 3<>"/dev/tcp/127.0.0.1/${port}" || exit 1
printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' "$path" >&3
read -r -t 3 status_line <&3 || exit 1
exec 3<&-
case "$status_line" in
  HTTP/1.?" 200"*) exit 0 ;;
  *) echo "unhealthy: ${status_line:-no answer}" >&2; exit 1 ;;
esac
