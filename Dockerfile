# syntax=docker/dockerfile:1
#
# mailproxy container image.
#
#   docker build -t mailproxy .
#   docker run -v $PWD/mailproxy.yaml:/etc/mailproxy/mailproxy.yaml:ro -p 1143:1143 mailproxy
#
# Two stages: `builder` turns the project (and every dependency) into wheels; the final stage
# installs those wheels exactly as the README's `pip install .` does, with no compiler and no
# build tooling, and runs as the unprivileged user mailproxy (uid 10001).
#
# Inside the container, listeners use unprivileged ports (1143 IMAP, 1993 IMAPS, 1110 POP3,
# 1995 POP3S, 9100 metrics) so no capability is needed; map 143/993/110/995 to them outside
# (the Helm chart's Service does).

ARG PYTHON_IMAGE=python:3.11-slim

# --- builder: wheels for mailproxy and all of its dependencies ------------------------------------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proxy ./proxy
RUN pip wheel . -w /wheels

# --- final image ----------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="mailproxy" \
      org.opencontainers.image.description="Protocol-aware IMAP/POP3 proxy and POP3-to-IMAP gateway" \
      org.opencontainers.image.licenses="MIT"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MAILPROXY_HEALTH_URL=http://127.0.0.1:9100/healthz

RUN groupadd --system --gid 10001 mailproxy \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/mailproxy \
            --no-create-home --shell /usr/sbin/nologin mailproxy \
 && mkdir -p /etc/mailproxy /etc/mailproxy/tls /var/lib/mailproxy \
 && chown 10001:10001 /var/lib/mailproxy \
 && chmod 0750 /var/lib/mailproxy

# Same install step as the README (`pip install .`), from the builder's wheels; the wheels are
# bind-mounted, not copied, so they do not stay in a layer. pip byte-compiles at install time,
# which matters with a read-only root filesystem.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index /wheels/*.whl \
 && mailproxy --version

# A placeholder config so the image starts; mount the real one over it (the Helm chart mounts a
# ConfigMap at this path).
COPY config/container.yaml /etc/mailproxy/mailproxy.yaml

# The gateway's SQLite store lives here (gateway: {store: /var/lib/mailproxy/gateway.db}).
VOLUME ["/var/lib/mailproxy"]
WORKDIR /var/lib/mailproxy

EXPOSE 1143 1993 1110 1995 9100

USER 10001:10001

# /healthz on the metrics listener; the URL follows the config's metrics.address.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['MAILPROXY_HEALTH_URL'], timeout=4)"]

ENTRYPOINT ["mailproxy"]
CMD ["serve", "--config", "/etc/mailproxy/mailproxy.yaml"]
