"""A TCP proxy on loopback that tests control: cut every connection, or stall them.

It runs its own event loop in a thread, so sync and async tests can use it alike.
Only 127.0.0.1 is ever listened on or connected to.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from concurrent.futures import Future


class Proxy:
    """Forward ``127.0.0.1:<port>`` to the broker, with faults on demand."""

    def __init__(self, target_port: int = 5672) -> None:
        self.target_port = target_port
        self.port = 0
        self.connections = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._writers: set[asyncio.StreamWriter] = set()
        self._flowing = asyncio.Event()
        self._server: asyncio.Server | None = None

    def __enter__(self) -> Proxy:
        self._thread.start()
        self.port = self._call(self._start()).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._call(self._stop()).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def url(self, **query: int) -> str:
        params = "&".join(f"{k}={v}" for k, v in query.items())
        return f"amqp://127.0.0.1:{self.port}/" + (f"?{params}" if params else "")

    def cut(self) -> None:
        """Close every open connection abruptly, both sides."""
        self._call(self._cut()).result(10)

    def stall(self) -> None:
        """Stop forwarding bytes (sockets stay open): heartbeats time out."""
        self._loop.call_soon_threadsafe(self._flowing.clear)

    def resume(self) -> None:
        """Forward again."""
        self._loop.call_soon_threadsafe(self._flowing.set)

    def _call(self, coro: object) -> Future[int]:
        return asyncio.run_coroutine_threadsafe(coro, self._loop)  # type: ignore[arg-type]

    async def _start(self) -> int:
        self._flowing.set()
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._cut()

    async def _cut(self) -> None:
        for writer in list(self._writers):
            transport = writer.transport
            transport.abort()  # RST, not a clean close
        self._writers.clear()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            broker_r, broker_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_w.transport.abort()
            return
        self._writers |= {client_w, broker_w}
        await asyncio.gather(self._pipe(client_r, broker_w), self._pipe(broker_r, client_w))
        for w in (client_w, broker_w):
            self._writers.discard(w)
            w.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()
        writer.transport.abort()
