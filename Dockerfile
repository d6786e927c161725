# Contractor access-governance gateway: the runtime image, built from the wheel.
#   docker build -t contractor-gateway .
#   docker run -e GATEWAY_CONFIG=/etc/gateway/gateway.toml -v $PWD/config:/etc/gateway:ro \
#              -v gateway-data:/var/lib/gateway -e UPSTREAM_TOKEN=... -p 8080:8080 \
#              --stop-timeout 30 contractor-gateway
# Migrations run as a separate step: `docker run ... contractor-gateway gateway db upgrade`.
#
# The base image is pinned by release; pin it by digest in your registry mirror with
#   docker build --build-arg PYTHON_IMAGE=python:3.11.11-slim-bookworm@sha256:<digest> .
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /dist .

FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    GATEWAY_SERVER__BIND=0.0.0.0:8080
# Dependencies only as locked, by hash (`make lock`); then the wheel alone, without
# the demo (sample dataset service, demo IdP wiring) that has no place in production.
COPY requirements/runtime.lock /tmp/runtime.lock
COPY --from=wheel /dist/ /tmp/dist/
RUN pip install --no-cache-dir --require-hashes -r /tmp/runtime.lock \
    && pip install --no-cache-dir --no-deps /tmp/dist/*.whl \
    && python -c "import pathlib, shutil, gateway; shutil.rmtree(pathlib.Path(gateway.__file__).parent / 'demo')" \
    && rm -r /tmp/dist /tmp/runtime.lock \
    && useradd --system --uid 10001 gateway \
    && mkdir -p /var/lib/gateway && chown gateway /var/lib/gateway

USER gateway
WORKDIR /var/lib/gateway
# With the SQLite database (sqlite:////var/lib/gateway/gateway.db) the access log lives
# here: keep it on a volume, or point [database] url at PostgreSQL.
VOLUME ["/var/lib/gateway"]
EXPOSE 8080
STOPSIGNAL SIGTERM
# Start-up runs the policy load and the lock-state poll before /_gateway/health answers.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/_gateway/health', timeout=2).status == 200 else 1)"]
# `gateway serve` runs gunicorn with the package's gunicorn.conf.py: settings from the
# config's [server] table (or GATEWAY_SERVER__*), one worker per CPU, JSON logs on stderr,
# `docker kill -s HUP` reloads gracefully. server.graceful_timeout (default 8 s) stays
# below Docker's stop grace (10 s, or --stop-timeout): raise both together. Metrics:
# [metrics] bind = "0.0.0.0:9464" serves them on a port of their own (publish it only to
# the monitoring network), or /_gateway/metrics with [metrics] token.
EXPOSE 9464
CMD ["gateway", "serve"]
