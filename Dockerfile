# Contractor access-governance gateway.
#   docker build -t contractor-gateway .
#   docker run -e GATEWAY_CONFIG=/etc/gateway/gateway.toml -v $PWD/config:/etc/gateway \
#              -e UPSTREAM_TOKEN=... -p 8080:8080 contractor-gateway
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app

COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY policies ./policies
COPY config ./config
COPY wsgi.py ./
RUN pip install --no-cache-dir -e . \
    && useradd --system --uid 10001 gateway \
    && mkdir -p /app/var && chown gateway /app/var

USER gateway
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/_gateway/health').status == 200 else 1)"
# Migrations run as a separate step: `docker run ... gateway db upgrade`.
# The worker class bounds slow clients (GATEWAY_CLIENT_HEADER_TIMEOUT, _BODY_TIMEOUT,
# _BODY_MIN_RATE; README "Running it for real"); put a buffering proxy such as nginx in front.
CMD ["gunicorn", "-k", "gateway.serving.GatewayThreadWorker", "-w", "4", "--threads", "16", \
     "--keep-alive", "5", "-b", "0.0.0.0:8080", "wsgi:app"]
