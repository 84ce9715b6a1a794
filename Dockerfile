# The leveret worker image. Build from the repository root:
#   docker build -t leveret .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY leveret ./leveret
COPY schemas ./schemas
COPY examples ./examples
RUN pip install --no-cache-dir . \
    && useradd --create-home --uid 10001 leveret
USER leveret

# The worker touches this file every few seconds while it is connected and its
# consumers are registered; a stale file means it is stuck or disconnected.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["leveret", "health", "--file", "/tmp/leveret-health", "--max-age", "30"]

STOPSIGNAL SIGTERM
CMD ["leveret", "worker", "leveret.demo:app", "--health-file", "/tmp/leveret-health"]
