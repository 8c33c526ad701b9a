# Offline stand-in for the official `postgres:15-bookworm` image, built by
# scripts/offline_images.sh from a debootstrapped Debian base and Debian's
# postgresql-15. Same contract as the official image for what compose uses:
# POSTGRES_USER / POSTGRES_DB / POSTGRES_PASSWORD(_FILE), PGDATA at
# /var/lib/postgresql/data, the superuser is POSTGRES_USER, local socket
# trust and scram-sha-256 over TCP, pg_isready/psql on PATH, /docker-entrypoint-initdb.d.
ARG BASE_IMAGE=opsloop-offline/debian:bookworm
FROM ${BASE_IMAGE}
RUN set -eux; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql-15; \
    rm -rf /var/lib/apt/lists/*; \
    install -d -o postgres -g postgres -m 2775 /var/run/postgresql /docker-entrypoint-initdb.d; \
    install -d -o postgres -g postgres -m 0700 /var/lib/postgresql/data
COPY postgres-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
ENV PATH=/usr/lib/postgresql/15/bin:$PATH \
    PGDATA=/var/lib/postgresql/data \
    LANG=C.UTF-8
VOLUME /var/lib/postgresql/data
EXPOSE 5432
STOPSIGNAL SIGINT
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["postgres"]
