# Test-only webhook receiver for scripts/compose_e2e.sh: records every POST
# (path and JSON body) and serves them back on GET /records. Built by
# scripts/offline_images.sh from the debootstrapped Debian base.
ARG BASE_IMAGE=opsloop-offline/debian:bookworm
FROM ${BASE_IMAGE}
RUN set -eux; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3; \
    rm -rf /var/lib/apt/lists/*
COPY receiver.py /usr/local/bin/receiver.py
USER nobody
EXPOSE 8080
HEALTHCHECK --interval=5s --timeout=3s --retries=5 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"]
CMD ["python3", "-u", "/usr/local/bin/receiver.py"]
