# Test-only image for scripts/systemd_e2e.sh: Debian bookworm booting
# systemd as PID 1, with what the opsloop units need at run time (the
# PostgreSQL client for the backup-agent, CA certificates) and curl for the
# checks. The units, binaries and configuration are installed into a
# running container by deploy/systemd/install.sh, as on a host.
ARG BASE_IMAGE=opsloop-offline/debian:bookworm
FROM ${BASE_IMAGE}
RUN set -eux; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      systemd systemd-sysv ca-certificates postgresql-client curl procps; \
    rm -rf /var/lib/apt/lists/*; \
    systemctl mask systemd-logind.service getty.target console-getty.service; \
    useradd --system --no-create-home --home-dir /var/lib/opsloop --shell /usr/sbin/nologin opsloop
STOPSIGNAL SIGRTMIN+3
CMD ["/lib/systemd/systemd"]
