# Offline stand-in for the official `prom/node-exporter` image, built by
# scripts/offline_images.sh from a debootstrapped Debian base and Debian's
# prometheus-node-exporter package (1.5). Same contract: the arguments are
# node_exporter flags (`--path.procfs`, `--path.sysfs`, `--path.rootfs` for
# the host's file systems mounted read-only), port 9100, user nobody, wget
# for the health check.
ARG BASE_IMAGE=opsloop-offline/debian:bookworm
FROM ${BASE_IMAGE}
RUN set -eux; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus-node-exporter wget; \
    rm -rf /var/lib/apt/lists/*
USER nobody
EXPOSE 9100
ENTRYPOINT ["/usr/bin/prometheus-node-exporter"]
