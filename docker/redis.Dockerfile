# Redis for machines that cannot pull the official image (CI builds it from its local Debian
# base, which already holds Debian's redis-server). Compose uses `${REDIS_IMAGE:-redis:7}`,
# so ordinary hosts never need this file.
#   docker build -f docker/redis.Dockerfile -t deinfer-redis .
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
RUN if ! command -v redis-server >/dev/null; then \
        apt-get update && apt-get install -y --no-install-recommends redis-server \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && mkdir -p /data && chown redis:redis /data
USER redis
WORKDIR /data
VOLUME ["/data"]
EXPOSE 6379
HEALTHCHECK --interval=5s --timeout=3s --retries=5 CMD redis-cli ping | grep -q PONG
CMD ["redis-server", "--bind", "0.0.0.0", "--protected-mode", "no", "--dir", "/data"]
