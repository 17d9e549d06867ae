# syntax=docker/dockerfile:1
# One image for every CDB service: `docker run IMAGE risk_manager` runs `cdb run risk_manager`.
# The base is a build argument so the same file builds on the official image (default) and on
# a local stand-in: --build-arg PYTHON_IMAGE=localhost/cdb-sandbox/python:3.11
ARG PYTHON_IMAGE=python:3.12.8-slim-bookworm

# -- build: a virtual environment with the dependencies, then the project ------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /app
RUN python3 -m venv /opt/cdb
# Dependencies first (their own layer, rebuilt only when pyproject.toml changes): the
# runtime dependencies and the operator's, read from pyproject.toml.
COPY pyproject.toml ./
RUN python3 -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p.get('optional-dependencies', {}).get('operator', [])))" \
        > /tmp/requirements.txt \
    && /opt/cdb/bin/pip install -r /tmp/requirements.txt
COPY README.md ./
COPY services ./services
COPY operator ./operator
RUN /opt/cdb/bin/pip install --no-deps . \
    && rm -rf build ./*.egg-info

# -- run: the environment, the configuration files, a non-root user -------------------------
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="claire-de-binaire" \
      org.opencontainers.image.description="CDB paper-trading services (one image, five services)" \
      org.opencontainers.image.licenses="MIT"
ENV PATH=/opt/cdb/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    HTTP_HOST=0.0.0.0 \
    CDB_LOGGING_CONFIG=/app/backoffice/logging_config.json
WORKDIR /app
COPY --from=build /opt/cdb /opt/cdb
COPY backoffice/logging_config.json ./backoffice/logging_config.json
# /var/lib/cdb/alertmanager: where `cdb alerting render` writes Alertmanager's configuration
# (a volume initialised from this directory, owned by the cdb user).
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin cdb \
    && install -d -o 10001 -m 0700 /var/lib/cdb/alertmanager
USER 10001
EXPOSE 8000 8001 8002 8003 8080
# No curl in the image: the check is Python's urllib against 127.0.0.1:$HTTP_PORT/health.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python3", "-m", "services.common.healthcheck"]
ENTRYPOINT ["cdb", "run"]
CMD ["signal_engine"]
