# serving-proxy image: build wheels in one stage, install them offline in a slim runtime.
#
#   docker build -t serving-proxy .
#   podman build --format docker -t serving-proxy .   # OCI format has no HEALTHCHECK: podman drops it
#   docker run -p 8080:8080 -v "$PWD/proxy.yaml:/etc/serving-proxy/proxy.yaml:ro" serving-proxy
#
# The config must listen on 0.0.0.0 (listen.host) to be reachable from outside the container;
# tokens come from the environment variables the config names (token_env), never the image.

FROM python:3.11-slim AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY proxy ./proxy
# Every runtime dependency becomes a wheel here, so the runtime stage installs offline and
# ships no compiler, no build backend and no pip cache.
RUN pip wheel --wheel-dir /wheels .


FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SERVING_PROXY_HEALTH_URL=http://127.0.0.1:8080/healthz

RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels /wheels/serving_proxy-*.whl \
    && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin serving-proxy \
    && mkdir -p /etc/serving-proxy /var/lib/serving-proxy \
    && chown 10001:10001 /var/lib/serving-proxy

# A fixed numeric uid lets Kubernetes' runAsNonRoot verify the user without a passwd lookup.
USER 10001:10001

# Cutover state (`state: /var/lib/serving-proxy/state.sqlite3`) and recordings: the config
# directory is usually mounted read-only, so the state needs a writable place of its own.
VOLUME ["/var/lib/serving-proxy"]

EXPOSE 8080

# slim has no curl; the interpreter is already there. The URL is an env var so a config
# that listens elsewhere can point the check at it.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['SERVING_PROXY_HEALTH_URL'], timeout=4)"]

ENTRYPOINT ["serving-proxy"]
CMD ["serve", "--config", "/etc/serving-proxy/proxy.yaml"]
