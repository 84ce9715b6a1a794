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
RUN pip install --no-cache-dir ".[dashboard]" \
    && useradd --create-home --uid 10001 leveret
USER leveret

# The worker serves /livez, /readyz and /metrics on port 9100 (docs/operations.md).
# /livez fails once the worker has been unready for a minute: disconnected,
# without a consumer, or stalled with messages waiting.
EXPOSE 9100
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["leveret", "health", "--url", "http://127.0.0.1:9100/livez"]

STOPSIGNAL SIGTERM
CMD ["leveret", "worker", "leveret.demo:app", "--http-host", "0.0.0.0", "--http-port", "9100"]
