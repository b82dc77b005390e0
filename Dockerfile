# scorestream worker image.
#   docker build -t scorestream .
#   docker run --rm -e SCORESTREAM_BOOTSTRAP=kafka:9092 \
#     -e SCORESTREAM_API_TOKEN="$(openssl rand -hex 24)" -p 6066:6066 scorestream
# The image binds the HTTP API to 0.0.0.0, which the worker refuses without a token
# (or SCORESTREAM_ALLOW_INSECURE_BIND=1 on a network you trust); /metrics stays open.
# Any command of the CLI works too: docker run --rm scorestream topics apply --dry-run

# --- builder: a virtualenv with the package, installed like `make setup` does
# (same pip upgrade, same pyproject), not editable, without the dev extra, and with the
# hot modules compiled by mypyc (setup.py); the build fails if they do not load.
FROM python:3.11-slim AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN apt-get update -q \
 && apt-get install -y -q --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY src ./src
# Dependencies first (mypyc type-checks against them), then the compiled build over it.
RUN pip install --quiet --upgrade pip setuptools wheel \
 && pip install --quiet . \
 && pip install --quiet "mypy>=1.10" types-PyYAML \
 && SCORESTREAM_COMPILE=1 pip install --quiet --no-build-isolation --no-deps --force-reinstall . \
 && pip uninstall --quiet -y mypy types-PyYAML \
 && python -c "import scorestream, sys; sys.exit(0 if scorestream.compiled() else 1)" \
 && scorestream --help >/dev/null

# --- runtime: the virtualenv, the rules and topic declarations, a non-root user.
FROM python:3.11-slim AS runtime
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin scorestream
COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
COPY rules ./rules
COPY topics ./topics
RUN mkdir -p /app/var/state && chown -R scorestream:scorestream /app/var
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    SCORESTREAM_WEB_HOST=0.0.0.0 \
    SCORESTREAM_STATE_DIR=/app/var/state
USER scorestream
VOLUME ["/app/var"]
EXPOSE 6066
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:6066/healthz', timeout=4).status == 200 else 1)"]
ENTRYPOINT ["scorestream"]
CMD ["worker"]
