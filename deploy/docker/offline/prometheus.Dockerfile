# Offline stand-in for the official `prom/prometheus` image, built by
# scripts/offline_images.sh from a debootstrapped Debian base and Debian's
# prometheus package. Same contract: the arguments are Prometheus flags,
# data in /prometheus, user nobody, wget for the health check.
ARG BASE_IMAGE=opsloop-offline/debian:bookworm
FROM ${BASE_IMAGE}
RUN set -eux; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus wget; \
    rm -rf /var/lib/apt/lists/*; \
    install -d -o nobody -g nogroup -m 0755 /prometheus /etc/prometheus
USER nobody
WORKDIR /prometheus
VOLUME /prometheus
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
