# syntax=docker/dockerfile:1
# Beseda: a multi-stage image. The build stage installs the package and its pinned
# dependencies into a virtualenv; the runtime stage copies only that virtualenv and
# the SQL migrations, and runs as an unprivileged user. docs/ops.md#container.
ARG PYTHON_IMAGE=python:3.12-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/beseda
COPY . .
RUN /opt/beseda/bin/pip install --upgrade pip \
    && /opt/beseda/bin/pip install . \
    && /opt/beseda/bin/beseda --help > /dev/null

FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 beseda \
    && useradd --system --uid 10001 --gid beseda --home-dir /var/lib/beseda \
       --shell /usr/sbin/nologin beseda \
    && mkdir -p /var/lib/beseda \
    && chown beseda:beseda /var/lib/beseda
COPY --from=build /opt/beseda /opt/beseda
COPY sql /app/sql
# Container defaults: listen on every interface of the container; DATABASE_URL,
# REDIS_URL and BESEDA_JWT_SECRET (or a public key) come from the environment.
ENV PATH=/opt/beseda/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    BESEDA_HOST=0.0.0.0 \
    BESEDA_WS_PORT=8765 \
    BESEDA_HTTP_PORT=8080 \
    BESEDA_DATA_DIR=/var/lib/beseda \
    BESEDA_SQL_DIR=/app/sql \
    BESEDA_LOG_LEVEL=INFO
USER 10001:10001
WORKDIR /var/lib/beseda
EXPOSE 8765 8080
# Healthy = ready: database and bus reachable, not draining (/readyz answers 200).
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('BESEDA_HTTP_PORT', '8080') + '/readyz', timeout=3)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["beseda"]
CMD ["serve"]
