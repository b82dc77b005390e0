# scorestream worker image.
#   docker build -t scorestream .
#   docker run --rm -e SCORESTREAM_BOOTSTRAP=kafka:9092 -p 6066:6066 scorestream
# Any command of the CLI works too: docker run --rm scorestream topics apply --dry-run

# --- builder: a virtualenv with the package, installed like `make setup` does
# (same pip upgrade, same pyproject), but not editable and without the dev extra.
FROM python:3.11-slim AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --quiet --upgrade pip \
 && pip install --quiet . \
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
