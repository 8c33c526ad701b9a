# shellcheck shell=bash
# One way to get a Docker engine for the container tests (compose_e2e.sh,
# systemd_e2e.sh): use the engine that answers, else start Debian's dockerd
# here and stop it again on exit. Source it, then:
#   ensure_docker_engine LOGFILE   # sets DOCKERD_PID when it started one
#   stop_docker_engine             # only stops what ensure_docker_engine started
# Both print nothing on success; ensure_docker_engine returns 1 with one
# line on stderr naming the problem.

DOCKERD_PID=""

ensure_docker_engine() { # logfile
  local logfile=$1
  docker info >/dev/null 2>&1 && return 0
  if ! command -v dockerd >/dev/null; then
    echo "no Docker engine answers and dockerd is not installed (apt-get install docker.io)" >&2
    return 1
  fi
  if [[ "$(id -u)" != 0 ]]; then
    echo "no Docker engine answers and starting dockerd needs root" >&2
    return 1
  fi
  dockerd >"$logfile" 2>&1 &
  DOCKERD_PID=$!
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && return 0
    kill -0 "$DOCKERD_PID" 2>/dev/null || break
    sleep 1
  done
  tail -n 20 "$logfile" >&2
  echo "the Docker engine did not start (dockerd log above)" >&2
  return 1
}

stop_docker_engine() {
  [[ -n "$DOCKERD_PID" ]] || return 0
  kill "$DOCKERD_PID" 2>/dev/null
  for _ in $(seq 1 30); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 1; done
  DOCKERD_PID=""
}
