# syntax=docker/dockerfile:1
#
# mabrouter container image.
#   build:  docker build -t mabrouter:local .
#   run:    docker run --rm -p 127.0.0.1:50051:50051 \
#             -e MABROUTER_REDIS_URL=redis://redis:6379/0 \
#             -e MABROUTER_DECISION_SECRET="$(openssl rand -hex 32)" mabrouter:local
# Every setting can also be given as a MABROUTER_* environment variable (see mabrouter.config.Settings).

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

# The venv is created without pip/setuptools: pip runs from the build image and installs into it
# (--python), so the runtime image carries only mabrouter and its runtime dependencies.
# Only the wheel is installed, never the [dev] extra; pip byte-compiles it here because the runtime
# image cannot write .pyc files (PYTHONDONTWRITEBYTECODE, and compose runs it read-only).
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
    && python -m venv --without-pip /opt/venv \
    && pip --python /opt/venv/bin/python install --no-cache-dir /wheels/mabrouter-*.whl \
    && /opt/venv/bin/mabrouter --help > /dev/null

############################################################################
# runtime: slim Python, the venv, a non-root user; nothing else
############################################################################
FROM python:3.11-slim-bookworm AS runtime

ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# A fixed numeric uid/gid so orchestrators can verify runAsNonRoot without reading /etc/passwd.
RUN groupadd --system --gid 10001 mabrouter \
    && useradd --system --uid 10001 --gid mabrouter --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin mabrouter

COPY --from=builder /opt/venv /opt/venv

USER 10001:10001

EXPOSE 50051

# SERVING only once the router has loaded a configuration snapshot from Redis, hence the start period.
HEALTHCHECK --interval=10s --timeout=5s --start-period=15s --retries=3 \
    CMD ["mabrouter", "health", "--address", "127.0.0.1:50051"]

ENTRYPOINT ["mabrouter"]
CMD ["serve", "--listen", "0.0.0.0:50051", "--log-format", "json"]
