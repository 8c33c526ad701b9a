# Offline stand-in for the official `rabbitmq:3.13-management` image, built
# by scripts/offline_images.sh from a debootstrapped Debian base and
# Debian's rabbitmq-server (3.10, quorum queues and single-active-consumer
# included). Same contract for what compose uses: `docker-entrypoint.sh
# rabbitmq-server`, RABBITMQ_DEFAULT_USER / _PASS / _VHOST creating the
# first user, data in /var/lib/rabbitmq, logs on stdout, the management
# plugin on 15672, `rabbitmq-diagnostics` for the health check.
ARG BASE_IMAGE=opsloop-offline/debian:bookworm
FROM ${BASE_IMAGE}
RUN set -eux; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends rabbitmq-server; \
    rm -rf /var/lib/apt/lists/* /var/lib/rabbitmq/mnesia /var/lib/rabbitmq/.erlang.cookie; \
    echo '[rabbitmq_management,rabbitmq_prometheus].' >/etc/rabbitmq/enabled_plugins
COPY rabbitmq-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
ENV HOME=/var/lib/rabbitmq \
    LANG=C.UTF-8
VOLUME /var/lib/rabbitmq
EXPOSE 4369 5672 15672 15692 25672
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["rabbitmq-server"]
