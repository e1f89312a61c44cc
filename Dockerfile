# Slim, multi-arch-friendly image (amd64, arm64, armv7): every dependency has wheels or is pure
# Python; nothing is compiled at build time.
#   docker build -t edge-gateway .
# The build stage installs the package and its runtime dependencies (no test or dev extras) into a
# virtual environment; the final image gets only that environment, runs as the unprivileged user
# `edge` and owns its data directories: /var/lib/edge-gateway (gateway), /data (sink).
FROM python:3.11-slim-bookworm AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY bridge ./bridge
COPY device_sim ./device_sim
RUN python -m venv /opt/edge-gateway \
    && /opt/edge-gateway/bin/pip install . \
    && /opt/edge-gateway/bin/pip uninstall -y pip setuptools

FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/edge-gateway/bin:$PATH

COPY --from=build /opt/edge-gateway /opt/edge-gateway
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/edge-gateway --shell /usr/sbin/nologin edge \
    && mkdir -p /var/lib/edge-gateway /var/lib/edge-devices /data /etc/edge-gateway \
    && chown edge:edge /var/lib/edge-gateway /var/lib/edge-devices /data
COPY conf /etc/edge-gateway

USER edge
WORKDIR /var/lib/edge-gateway
VOLUME ["/var/lib/edge-gateway", "/data"]
EXPOSE 1883 9464
# Ready = the event loop answers, the local broker listens and the buffer is open (the uplink may be
# down: the buffer covers it). Needs metrics.listen on port 9464 without TLS, as in conf/compose/;
# other commands run from this image (sink, device-sim) set their own check or --no-healthcheck.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9464/readyz', timeout=4)"]
ENTRYPOINT ["edge-gateway"]
CMD ["run", "-c", "/etc/edge-gateway/compose/gateway.toml"]
