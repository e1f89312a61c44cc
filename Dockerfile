# Slim, multi-arch-friendly image (amd64, arm64, armv7): every dependency has wheels or is pure
# Python; nothing is compiled at build time.
#   docker build -t edge-gateway .
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY bridge ./bridge
COPY device_sim ./device_sim
RUN pip install . \
    && useradd --system --uid 10001 --home /var/lib/edge-gateway edge \
    && mkdir -p /var/lib/edge-gateway /var/lib/edge-devices /etc/edge-gateway \
    && chown edge /var/lib/edge-gateway /var/lib/edge-devices
COPY conf /etc/edge-gateway

USER edge
VOLUME ["/var/lib/edge-gateway"]
EXPOSE 1883 9464
ENTRYPOINT ["edge-gateway"]
CMD ["run", "-c", "/etc/edge-gateway/compose/gateway.toml"]
