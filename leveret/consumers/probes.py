"""The worker's HTTP endpoints: liveness, readiness and Prometheus metrics.

A few lines of HTTP/1.1 on the worker's own event loop, so a probe that gets
an answer proves the loop is turning (a loop blocked by a handler answers
nothing, and the probe's timeout fails it). No web framework: three GET
routes, one request per connection.

- ``GET /livez``: 200 while the worker is live, 503 with the reason otherwise;
- ``GET /readyz``: 200 while it is ready to take work, 503 with the reason;
- ``GET /metrics``: the Prometheus text exposition of :class:`~leveret.metrics.WorkerMetrics`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import orjson
import structlog

from leveret.errors import ConfigurationError
from leveret.health import Health, Verdict
from leveret.metrics import CONTENT_TYPE, WorkerMetrics

log = structlog.get_logger(__name__)

READ_TIMEOUT = 5.0
"""Seconds a client gets to send its request."""

MAX_REQUEST = 8192
"""Bytes of request line and headers read before the request is refused."""

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    503: "Service Unavailable",
}


class ProbeServer:
    """Serve ``/livez``, ``/readyz`` and ``/metrics`` for one worker.

    Args:
        health: the worker's health, asked at each probe.
        metrics: the worker's metrics.
        host: the address to listen on (``0.0.0.0`` in a container, so the
            orchestrator and Prometheus reach it).
        port: the port; 0 picks a free one (see :attr:`port` once started).
        clock: the clock :class:`Health` is fed with.
    """

    def __init__(
        self,
        health: Health,
        metrics: WorkerMetrics,
        *,
        host: str = "127.0.0.1",
        port: int = 9100,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.health = health
        self.metrics = metrics
        self.host = host
        self.port = port
        self.clock = clock
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        """Listen; :attr:`port` is the bound port afterwards.

        Raises:
            ConfigurationError: the address cannot be listened on (in use, say).
        """
        try:
            self._server = await asyncio.start_server(self._serve, self.host, self.port)
        except OSError as exc:
            raise ConfigurationError(
                f"cannot serve probes on {self.host}:{self.port}: {exc.strerror or exc}"
            ) from exc
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("worker.probes_listening", host=self.host, port=self.port)

    async def close(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
                return
            if len(head) > MAX_REQUEST:
                await _respond(writer, 400, b"request too large\n", "text/plain")
                return
            method, _, rest = head.split(b"\r\n", 1)[0].decode("latin-1").partition(" ")
            path = rest.split(" ", 1)[0].split("?", 1)[0]
            status, body, kind = self.answer(method, path)
            await _respond(writer, status, body, kind, head_only=method == "HEAD")
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    def answer(self, method: str, path: str) -> tuple[int, bytes, str]:
        """Status, body and content type for a request (no I/O)."""
        if method not in ("GET", "HEAD"):
            return 405, b"only GET and HEAD\n", "text/plain"
        now = self.clock()
        if path in ("/livez", "/healthz"):
            return _verdict(self.health.liveness(now))
        if path == "/readyz":
            verdict = self.health.readiness(now)
            self.metrics.ready.set(1 if verdict.ok else 0)
            return _verdict(verdict)
        if path == "/metrics":
            self.metrics.ready.set(1 if self.health.readiness(now).ok else 0)
            return 200, self.metrics.render(), CONTENT_TYPE
        return 404, b"not found: try /livez, /readyz or /metrics\n", "text/plain"


def _verdict(verdict: Verdict) -> tuple[int, bytes, str]:
    return (200 if verdict.ok else 503), orjson.dumps(verdict.as_dict()) + b"\n", "application/json"


async def _respond(
    writer: asyncio.StreamWriter, status: int, body: bytes, kind: str, *, head_only: bool = False
) -> None:
    head = (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
        f"Content-Type: {kind}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Cache-Control: no-store\r\n"
        "Connection: close\r\n\r\n"
    )
    writer.write(head.encode("latin-1") + (b"" if head_only else body))
    await writer.drain()
