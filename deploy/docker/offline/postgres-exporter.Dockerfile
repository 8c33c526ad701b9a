# Offline stand-in for the official `prometheuscommunity/postgres-exporter`
# image, built by scripts/offline_images.sh from a debootstrapped Debian base
# and Debian's prometheus-postgres-exporter package (0.11). Same contract:
# the arguments are postgres_exporter flags, the connection comes from
# DATA_SOURCE_URI with DATA_SOURCE_USER(_FILE) / DATA_SOURCE_PASS(_FILE)
# (or DATA_SOURCE_NAME), port 9187, user nobody, wget for the health check.
ARG BASE_IMAGE=opsloop-offline/debian:bookworm
FROM ${BASE_IMAGE}
RUN set -eux; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus-postgres-exporter wget; \
    rm -rf /var/lib/apt/lists/*
USER nobody
EXPOSE 9187
ENTRYPOINT ["/usr/bin/prometheus-postgres-exporter"]
