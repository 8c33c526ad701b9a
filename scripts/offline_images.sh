#!/usr/bin/env bash
# Builds, with no image registry, stand-ins for the third-party images the
# compose file names, from a debootstrapped Debian bookworm base and Debian's
# packages (deploy/docker/offline/):
#   opsloop-offline/debian:bookworm      debootstrap --variant=minbase, slimmed
#                                        like debian:bookworm-slim (the runtime
#                                        image's base: OPSLOOP_RUNTIME_IMAGE)
#   opsloop-offline/postgres:15          for postgres:15-bookworm (POSTGRES_IMAGE)
#   opsloop-offline/rabbitmq:3-management  for rabbitmq:3.13-management (RABBITMQ_IMAGE)
#   opsloop-offline/prometheus:2         for prom/prometheus (PROMETHEUS_IMAGE)
#   opsloop-offline/node-exporter:1      for prom/node-exporter (NODE_EXPORTER_IMAGE)
#   opsloop-offline/postgres-exporter:0  for prometheuscommunity/postgres-exporter
#                                        (POSTGRES_EXPORTER_IMAGE)
#   opsloop-offline/receiver:latest      test-only webhook recorder (compose_e2e.sh)
#   opsloop-offline/systemd:bookworm     test-only: systemd as PID 1 (systemd_e2e.sh;
#                                        not built by default: OFFLINE_ONLY=systemd)
# Grafana has no Debian package: the `monitoring` profile's grafana service
# still needs its official image.
#
# Idempotent: an image whose definition (Dockerfile, files, base) is
# unchanged is skipped; the debootstrapped root file system is cached as a
# tarball. Prints the compose variables selecting the stand-ins last
# (`--print-env` prints only those).
#
# Usage: scripts/offline_images.sh [--print-env] [--force]
# Environment:
#   OFFLINE_IMAGE_PREFIX=opsloop-offline
#   OFFLINE_CACHE_DIR=${XDG_CACHE_HOME:-$HOME/.cache}/opsloop/offline
#   OFFLINE_DEBIAN_MIRROR  default: the first URIs of
#                          /etc/apt/sources.list.d/debian.sources, else
#                          http://deb.debian.org/debian
#   OFFLINE_ONLY="base postgres rabbitmq prometheus node-exporter
#                 postgres-exporter receiver" (a subset)
set -euo pipefail
cd "$(dirname "$0")/.."

PREFIX="${OFFLINE_IMAGE_PREFIX:-opsloop-offline}"
CACHE_DIR="${OFFLINE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/opsloop/offline}"
ONLY="${OFFLINE_ONLY:-base postgres rabbitmq prometheus node-exporter postgres-exporter receiver}"
SUITE=bookworm
BASE="$PREFIX/debian:$SUITE"
force=0
print_only=0
for arg in "$@"; do
  case "$arg" in
    --force) force=1 ;;
    --print-env) print_only=1 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "offline_images: unknown argument $arg" >&2; exit 2 ;;
  esac
done

print_env() {
  cat <<EOF
OPSLOOP_RUNTIME_IMAGE=$BASE
POSTGRES_IMAGE=$PREFIX/postgres:15
RABBITMQ_IMAGE=$PREFIX/rabbitmq:3-management
PROMETHEUS_IMAGE=$PREFIX/prometheus:2
NODE_EXPORTER_IMAGE=$PREFIX/node-exporter:1
POSTGRES_EXPORTER_IMAGE=$PREFIX/postgres-exporter:0
OPSLOOP_RECEIVER_IMAGE=$PREFIX/receiver:latest
EOF
}
if ((print_only)); then
  print_env
  exit 0
fi

log() { printf 'offline_images: %s\n' "$*" >&2; }
command -v docker >/dev/null || { log "docker CLI not found"; exit 2; }
docker info >/dev/null 2>&1 || { log "no Docker engine answers (start dockerd first)"; exit 2; }

work="$(mktemp -d)"
cleanup() {
  # debootstrap leaves /proc etc. mounted when interrupted.
  if [[ -d "$work/rootfs" ]]; then
    for m in proc sys dev/pts dev; do
      umount "$work/rootfs/$m" 2>/dev/null || true
    done
  fi
  rm -rf "$work"
}
trap cleanup EXIT

mirror() {
  if [[ -n "${OFFLINE_DEBIAN_MIRROR:-}" ]]; then
    echo "$OFFLINE_DEBIAN_MIRROR"
    return
  fi
  local uri=""
  if [[ -r /etc/apt/sources.list.d/debian.sources ]]; then
    uri=$(sed -n 's/^URIs:[[:space:]]*\([^[:space:]]*\).*/\1/p' /etc/apt/sources.list.d/debian.sources | head -n1)
  fi
  if [[ -z "$uri" && -r /etc/apt/sources.list ]]; then
    uri=$(sed -n 's/^deb[[:space:]]\+\(\[[^]]*\][[:space:]]\+\)\{0,1\}\([^[:space:]]*\)[[:space:]].*/\2/p' /etc/apt/sources.list | head -n1)
  fi
  echo "${uri:-http://deb.debian.org/debian}"
}

# The label an image carries: a hash of what defines it.
definition_hash() { # files...
  cat "$@" | sha256sum | cut -c1-16
}

image_hash() { # image
  docker image inspect -f '{{ index .Config.Labels "org.opsloop.offline.hash" }}' "$1" 2>/dev/null || true
}

build_base() {
  local hash tarball mirror_uri started
  mirror_uri="$(mirror)"
  hash=$(printf '%s %s %s\n' "$SUITE" "$mirror_uri" "$(sed -n '/^build_base()/,/^}/p' "$0")" | sha256sum | cut -c1-16)
  if ((!force)) && [[ "$(image_hash "$BASE")" == "$hash" ]]; then
    log "$BASE exists (skipped)"
    return
  fi
  tarball="$CACHE_DIR/$SUITE-minbase-$hash.tar"
  if ((force)) || [[ ! -s "$tarball" ]]; then
    command -v debootstrap >/dev/null || { log "debootstrap not found (apt-get install debootstrap)"; exit 2; }
    [[ "$(id -u)" == 0 ]] || { log "debootstrap needs root"; exit 2; }
    started=$(date +%s)
    log "debootstrap --variant=minbase $SUITE from $mirror_uri"
    mkdir -p "$work/rootfs" "$CACHE_DIR"
    if ! debootstrap --variant=minbase "$SUITE" "$work/rootfs" "$mirror_uri" >"$work/debootstrap.log" 2>&1; then
      tail -n 20 "$work/debootstrap.log" >&2
      log "debootstrap failed"
      exit 1
    fi
    local r="$work/rootfs"
    # Slim it like debian:bookworm-slim: no docs, man pages, locales, apt
    # caches or lists (builds run apt-get update), now and in later installs.
    cat >"$r/etc/dpkg/dpkg.cfg.d/docker-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/lintian/*
EOF
    cat >"$r/etc/apt/apt.conf.d/docker-clean" <<'EOF'
APT::Install-Recommends "false";
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
    # The host's bookworm sources (security updates) when it has them.
    if [[ -r /etc/apt/sources.list.d/debian.sources ]] &&
      grep -q "^Suites:.*\b$SUITE\b" /etc/apt/sources.list.d/debian.sources; then
      cp /etc/apt/sources.list.d/debian.sources "$r/etc/apt/sources.list.d/debian.sources"
      rm -f "$r/etc/apt/sources.list"
    else
      printf 'deb %s %s main\ndeb %s %s-updates main\n' "$mirror_uri" "$SUITE" "$mirror_uri" "$SUITE" \
        >"$r/etc/apt/sources.list"
    fi
    find "$r/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
    find "$r/usr/share/doc" -mindepth 1 -type d -empty -delete
    rm -rf "$r/usr/share/man"/* "$r/usr/share/info"/* "$r/usr/share/lintian" \
      "$r/var/cache/apt"/*.bin "$r/var/cache/apt/archives"/*.deb "$r/var/lib/apt/lists"/* \
      "$r/var/log"/*.log "$r/var/log/apt"/* "$r/tmp"/*
    find "$r/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +
    tar --numeric-owner -C "$r" -cf "$tarball.partial" .
    mv "$tarball.partial" "$tarball"
    find "$CACHE_DIR" -name "$SUITE-minbase-*.tar" -not -name "$(basename "$tarball")" -delete
    log "debootstrap done in $(($(date +%s) - started))s, cached in $tarball"
  else
    log "base root file system from cache $tarball"
  fi
  docker import --change "LABEL org.opsloop.offline.hash=$hash" \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' "$tarball" "$BASE" >/dev/null
  log "$BASE imported"
}

build_image() { # name dockerfile files...
  local name=$1 dockerfile=$2 hash started ctx
  shift 2
  hash=$(definition_hash "deploy/docker/offline/$dockerfile" "${@/#/deploy/docker/offline/}" \
    <(docker image inspect -f '{{.Id}}' "$BASE"))
  if ((!force)) && [[ "$(image_hash "$name")" == "$hash" ]]; then
    log "$name exists (skipped)"
    return
  fi
  ctx="$work/ctx-${dockerfile%%.*}"
  mkdir -p "$ctx"
  cp "deploy/docker/offline/$dockerfile" "$ctx/Dockerfile"
  for f in "$@"; do cp "deploy/docker/offline/$f" "$ctx/"; done
  started=$(date +%s)
  log "building $name"
  if ! docker build -q --build-arg "BASE_IMAGE=$BASE" --label "org.opsloop.offline.hash=$hash" \
    -t "$name" "$ctx" >"$work/build.log" 2>&1; then
    tail -n 40 "$work/build.log" >&2
    log "building $name failed"
    exit 1
  fi
  log "$name built in $(($(date +%s) - started))s ($(docker image inspect -f '{{.Size}}' "$name" | awk '{printf "%.0f MB", $1/1e6}'))"
}

for what in $ONLY; do
  case "$what" in
    base) build_base ;;
    postgres) build_image "$PREFIX/postgres:15" postgres.Dockerfile postgres-entrypoint.sh ;;
    rabbitmq) build_image "$PREFIX/rabbitmq:3-management" rabbitmq.Dockerfile rabbitmq-entrypoint.sh ;;
    prometheus) build_image "$PREFIX/prometheus:2" prometheus.Dockerfile ;;
    node-exporter) build_image "$PREFIX/node-exporter:1" node-exporter.Dockerfile ;;
    postgres-exporter) build_image "$PREFIX/postgres-exporter:0" postgres-exporter.Dockerfile ;;
    receiver) build_image "$PREFIX/receiver:latest" receiver.Dockerfile receiver.py ;;
    systemd) build_image "$PREFIX/systemd:bookworm" systemd.Dockerfile ;;
    *) log "unknown image $what (base postgres rabbitmq prometheus node-exporter postgres-exporter receiver systemd)"; exit 2 ;;
  esac
done
echo "# compose variables selecting the stand-ins:"
print_env
