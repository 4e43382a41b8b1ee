# The gateway as a container image: `docker build -t gateway .`, or `docker compose up` for
# the whole stack (gateway, Redis, Prometheus, demo upstream; see docker-compose.yml).
#
# Two stages on the same base image: the venv built in the first is copied into the second,
# and its interpreter symlink points into the base image, so both stages must match.

# ---------------------------------------------------------------------------- build
FROM python:3.11-slim AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

# Every runtime dependency (uvloop, httptools, hiredis, aiohttp) ships manylinux wheels for
# CPython 3.11 on amd64 and arm64, so no compiler is needed; add build tools here, never
# in the runtime stage, if a platform without wheels must be supported.
RUN python -m venv /opt/venv
WORKDIR /src
# README.md is the package's long description: setuptools reads it while building.
COPY pyproject.toml README.md ./
COPY gateway/ ./gateway/
# Runtime dependencies only (no test or bench extras); a regular, non-editable install.
RUN /opt/venv/bin/pip install .

# ---------------------------------------------------------------------------- runtime
FROM python:3.11-slim AS runtime

ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    GATEWAY_CONFIG=/etc/gateway/gateway.yaml

# A fixed, unprivileged uid/gid, so volume permissions and runAsNonRoot checks are stable.
RUN groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin gateway

COPY --from=build /opt/venv /opt/venv
# The example config, baked in; mount a file over it (read-only) to configure the gateway.
# Owned by root, so the gateway process cannot rewrite its own config.
COPY config/gateway.yaml /etc/gateway/gateway.yaml

USER 10001:10001

# 8080: the proxy (server.port); 9100: the admin app (admin.port: /metrics, /healthz).
EXPOSE 8080 9100

# The admin app listens on ${ADMIN_HOST:-127.0.0.1}: loopback, which this check reaches from
# inside the container. Slim images have no curl, hence Python; any error (refused, timeout,
# a status other than 2xx) exits non-zero. ProxyHandler({}) ignores any HTTP(S)_PROXY set
# for the container: a loopback probe must never go through a proxy.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.build_opener(u.ProxyHandler({})).open('http://127.0.0.1:' + (os.environ.get('ADMIN_PORT') or '9100') + '/healthz', timeout=2)"]

# SIGTERM: stop accepting, drain in-flight requests within server.shutdown_grace, exit 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["gateway"]
CMD ["run"]
