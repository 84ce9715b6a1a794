"""One AMQP connection as an asyncio protocol: the handshake, heartbeats, and frames to channels.

Frames are read and dispatched in ``data_received``, synchronously: a
delivery reaches its consumer's callback in the same pass of the event loop
that read it, with no queue and no task between the socket and the callback.
Frames written in one pass of the loop (the acks of deliveries that finished
together, a thousand tasks' publishes) go to the transport together at the
end of the pass: one system call, not one each. A publisher waits in
:meth:`drain` while the transport's buffer is full.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog
from pamqp import commands as spec

from leveret.amqp import codec
from leveret.amqp.errors import AMQPError, ConnectionLost, tell
from leveret.amqp.handshake import (
    FRAME_MAX,
    HANDSHAKE_TIMEOUT,
    Address,
    closed_by_broker,
    start_ok,
    tune_ok,
)

if TYPE_CHECKING:
    import ssl

    from leveret.amqp.channel import Channel

log = structlog.get_logger(__name__)

CLOSE_TIMEOUT = 2.0


class Connection(asyncio.Protocol):
    """An open AMQP connection; make one with :func:`connect`.

    ``closed`` is a future that resolves, with the :class:`ConnectionLost` that
    ended it, once the connection is gone for whatever reason.
    """

    def __init__(self, *, vhost: str, user: str, password: str, name: str, heartbeat: int) -> None:
        self.loop = asyncio.get_running_loop()
        self.vhost, self.name = vhost, name
        self._user, self._password = user, password
        self._heartbeat = heartbeat
        self.frame_max = FRAME_MAX
        self.transport: asyncio.Transport | None = None
        self.channels: dict[int, Channel] = {}
        self.close_callbacks: list[Callable[[ConnectionLost], None]] = []
        self.closed: asyncio.Future[ConnectionLost] = self.loop.create_future()
        self._opened: asyncio.Future[None] = self.loop.create_future()
        self._reader = codec.FrameReader()
        self._writable: asyncio.Future[None] | None = None
        self._out: list[bytes] = []
        self._last_read = time.monotonic()
        self._beat: asyncio.TimerHandle | None = None
        self._closing = False
        self._next_channel = 1

    @property
    def is_closed(self) -> bool:
        """Whether the connection is gone or going."""
        return self.closed.done() or self._closing

    # ------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(codec.PROTOCOL_HEADER)

    def data_received(self, data: bytes) -> None:
        self._last_read = time.monotonic()
        try:
            for kind, number, payload in self._reader.feed(data):
                if number == 0:
                    self._on_connection_frame(kind, payload)
                elif (channel := self.channels.get(number)) is not None:
                    channel.on_frame(kind, payload)
        except (codec.FrameError, AMQPError, ValueError, KeyError) as exc:
            log.error("amqp.bad_frame", error=str(exc))
            self._lost(ConnectionLost(f"unreadable frame from the broker: {exc}"), abort=True)

    def connection_lost(self, exc: Exception | None) -> None:
        reason = f"connection lost: {exc}" if exc else "connection closed"
        self._lost(ConnectionLost(reason))

    def pause_writing(self) -> None:
        if self._writable is None:
            self._writable = self.loop.create_future()

    def resume_writing(self) -> None:
        waiter, self._writable = self._writable, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # ------------------------------------------------------------ writing

    def write(self, data: bytes) -> None:
        """Write frames (at the end of this pass of the loop, in order).

        Raises:
            ConnectionLost: the connection is gone.
        """
        if self.closed.done():
            raise self._gone()
        if not self._out:
            self.loop.call_soon(self._flush)
        self._out.append(data)

    def _flush(self) -> None:
        out, self._out = self._out, []
        if out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    def _gone(self) -> ConnectionLost:
        # Raised by every later call: its traceback is reset, or each raise would grow it.
        return self.closed.result().with_traceback(None)

    async def drain(self) -> None:
        """Wait while the transport's write buffer is over its high-water mark."""
        waiter = self._writable
        if waiter is not None:
            waiting: list[asyncio.Future[Any]] = [waiter, self.closed]
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if self.closed.done():
            raise self._gone()

    # ------------------------------------------------------------ channels

    async def channel(self) -> Channel:
        """Open a new channel."""
        from leveret.amqp.channel import Channel

        if self.is_closed:
            raise self._gone() if self.closed.done() else ConnectionLost("closing")
        number = self._next_channel
        while number in self.channels:
            number = number % 2047 + 1
        self._next_channel = number % 2047 + 1
        channel = Channel(self, number)
        self.channels[number] = channel
        await channel.open()
        return channel

    # ------------------------------------------------------------ channel 0

    def _on_connection_frame(self, kind: int, payload: memoryview) -> None:
        if kind != codec.METHOD:
            return  # heartbeats: their arrival is all that counts
        method = codec.rare_method(kind, 0, payload)
        if isinstance(method, spec.Connection.Start):
            self.write(start_ok(self.name, self._user, self._password))
        elif isinstance(method, spec.Connection.Tune):
            self._tune(method)
        elif isinstance(method, spec.Connection.OpenOk):
            if not self._opened.done():
                self._opened.set_result(None)
        elif isinstance(method, spec.Connection.Close):
            with contextlib.suppress(ConnectionLost):
                self.write(codec.rare_frame(spec.Connection.CloseOk(), 0))
            self._lost(closed_by_broker(method, opened=self._opened.done()))
        elif isinstance(method, spec.Connection.CloseOk):
            self._lost(ConnectionLost("closed by the client", 200))
        elif isinstance(method, spec.Connection.Blocked):
            log.warning("amqp.blocked", reason=method.reason)
        elif isinstance(method, spec.Connection.Unblocked):
            log.info("amqp.unblocked")

    def _tune(self, tune: spec.Connection.Tune) -> None:
        frames, self.frame_max, heartbeat = tune_ok(
            tune, heartbeat=self._heartbeat, vhost=self.vhost
        )
        self.write(frames)
        if heartbeat:
            self._schedule_beat(heartbeat)

    def _schedule_beat(self, heartbeat: int) -> None:
        # The broker sends a heartbeat at least every half interval when idle;
        # two whole intervals without a byte from it means it is gone.
        def beat() -> None:
            if self.closed.done():
                return
            if time.monotonic() - self._last_read > 2 * heartbeat:
                log.warning("amqp.heartbeat_missed", heartbeat=heartbeat)
                self._lost(ConnectionLost("no heartbeat from the broker"), abort=True)
                return
            with contextlib.suppress(ConnectionLost):
                self.write(codec.HEARTBEAT_FRAME)
            self._beat = self.loop.call_later(heartbeat / 2, beat)

        self._beat = self.loop.call_later(heartbeat / 2, beat)

    # ------------------------------------------------------------ ending

    def _lost(self, reason: ConnectionLost, *, abort: bool = False) -> None:
        if self.closed.done():
            return
        self.closed.set_result(reason)
        if self._beat is not None:
            self._beat.cancel()
        if not self._opened.done():
            self._opened.set_exception(reason)
            self._opened.exception()  # retrieved: connect() raises it
        for channel in list(self.channels.values()):
            channel.gone(reason)
        self.channels.clear()
        if self.transport is not None:
            if abort:  # nothing more to say to a broker that went silent or spoke garbage
                self.transport.abort()
            else:
                self._flush()  # a close-ok still to go, say
                self.transport.close()
        tell(self.close_callbacks, reason)

    async def close(self) -> None:
        """Close the connection politely (``connection.close``), or abort it if that hangs."""
        if self.closed.done():
            return
        if not self._closing:
            self._closing = True
            with contextlib.suppress(ConnectionLost):
                self.write(codec.rare_frame(spec.Connection.Close(200, "Normal shutdown", 0, 0), 0))
        try:
            await asyncio.wait_for(asyncio.shield(self.closed), CLOSE_TIMEOUT)
        except TimeoutError:
            if self.transport is not None:
                self.transport.abort()
            self._lost(ConnectionLost("closed by the client", 200))


async def connect(
    url: str, *, name: str, heartbeat: int, ssl: ssl.SSLContext | None = None
) -> Connection:
    """Open a connection to the broker of an ``amqp://`` or ``amqps://`` URL.

    Raises:
        AuthenticationFailed: the broker refused the credentials.
        ConnectionLost: the broker closed the connection during the handshake
            (a vhost the user may not open, say).
        OSError: the broker cannot be reached.
        TimeoutError: the handshake did not finish in time.
    """
    address = Address.of(url, tls=ssl is not None)
    loop = asyncio.get_running_loop()
    protocol: dict[str, Any] = {
        "vhost": address.vhost,
        "user": address.user,
        "password": address.password,
        "name": name,
        "heartbeat": heartbeat,
    }
    host = address.host
    async with asyncio.timeout(HANDSHAKE_TIMEOUT):
        _, conn = await loop.create_connection(
            lambda: Connection(**protocol),
            host,
            address.port,
            ssl=ssl,
            server_hostname=host if ssl is not None else None,
        )
        try:
            await asyncio.shield(conn._opened)
        except BaseException:
            if conn.transport is not None:
                conn.transport.abort()
            raise
    return conn
