# syntax=docker/dockerfile:1
#
# mabrouter container image.
#   build:  docker build -t mabrouter:local .
#   run:    docker run --rm -p 127.0.0.1:50051:50051 -p 127.0.0.1:9464:9464 \
#             -e MABROUTER_REDIS_URL=redis://redis:6379/0 \
#             -e MABROUTER_DECISION_SECRET="$(openssl rand -hex 32)" mabrouter:local
# The tools image (the same, plus what `mabrouter report` and `mabrouter loadtest` need):
#           docker build --build-arg EXTRAS=report,loadtest -t mabrouter-tools:local .
# Every setting can also be given as a MABROUTER_* environment variable (see mabrouter.config.Settings).
# The whole kit (Kubernetes, compose with Prometheus, Grafana and an OpenTelemetry collector): docs/deployment.md

############################################################################
# builder: build the mabrouter wheel, install it with its runtime deps into /opt/venv
############################################################################
FROM python:3.11-slim-bookworm AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /build

# README.md* is a wildcard so the build also works before the README exists
# (setuptools only warns when the readme named in pyproject.toml is missing).
COPY pyproject.toml README.md* ./
COPY src ./src

RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# Extras to install with the wheel: none for the sidecar (matplotlib and Pillow would only add size and
# CVE reports to every pod); "report,loadtest" for the tools image. Declared here, after the wheel is
# built, so both images share the cached layers above.
ARG EXTRAS=""

# The venv is created without pip/setuptools: pip runs from the build image and installs into it
# (--python), so the runtime image carries only mabrouter and its runtime dependencies.
# Only the wheel is installed, never the [dev] extra; pip byte-compiles it here because the runtime
# image cannot write .pyc files (PYTHONDONTWRITEBYTECODE, and compose runs it read-only).
# The wheel (with its extras, if any) goes through a requirements file: `wheel.whl[a,b]` is one argument
# there, where a shell glob would read the brackets as a character class.
RUN echo "$(echo /wheels/mabrouter-*.whl)${EXTRAS:+[${EXTRAS}]}" > /wheels/requirements.txt \
    && python -m venv --without-pip /opt/venv \
    && pip --python /opt/venv/bin/python install --no-cache-dir --requirement /wheels/requirements.txt \
    && /opt/venv/bin/mabrouter --help > /dev/null

############################################################################
# runtime: slim Python, the venv, a non-root user; nothing else
############################################################################
FROM python:3.11-slim-bookworm AS runtime

# Metrics on every interface of the container (the router's own default is loopback, for a process on a
# host): a scraper reaches them through the container's network; publishing them is the runtime's call.
ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MABROUTER_METRICS_LISTEN=0.0.0.0:9464

# A fixed numeric uid/gid so orchestrators can verify runAsNonRoot without reading /etc/passwd.
RUN groupadd --system --gid 10001 mabrouter \
    && useradd --system --uid 10001 --gid mabrouter --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin mabrouter

COPY --from=builder /opt/venv /opt/venv

USER 10001:10001

# gRPC, Prometheus metrics
EXPOSE 50051 9464

# SERVING only once the router has loaded a configuration snapshot from Redis, hence the start period.
HEALTHCHECK --interval=10s --timeout=5s --start-period=15s --retries=3 \
    CMD ["mabrouter", "health", "--address", "127.0.0.1:50051"]

ENTRYPOINT ["mabrouter"]
CMD ["serve", "--listen", "0.0.0.0:50051", "--log-format", "json"]
