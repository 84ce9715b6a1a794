"""A connection with one confirm channel on a plain socket, for code without an event loop.

The transport of the synchronous :class:`leveret.publisher.Publisher`. It has
no thread of its own: whichever thread calls :meth:`ConfirmLink.pump` does the
I/O, writing what was published and reading what the broker sent, and the
link calls its owner back (a confirm, a returned message, a channel the
broker closed, a channel ready again) on that thread. One thread at a time
may use it; :meth:`ConfirmLink.wake` is the only call safe from another
thread, to end a wait in :meth:`ConfirmLink.pump` early.

The frames are :mod:`leveret.amqp.codec`'s, as for the asyncio client: a
publish is encoded once into one buffer, and a socket write sends as many
publishes as are waiting.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any

import structlog
from pamqp import commands as spec

from leveret.amqp import codec
from leveret.amqp.errors import ChannelClosed, ConnectionLost
from leveret.amqp.handshake import CHANNEL_MAX, HANDSHAKE_TIMEOUT, Address, Handshake

log = structlog.get_logger(__name__)

_READ_SIZE = 262144
_RETURN = (60, 50)
_ACK, _NACK = (60, 80), (60, 120)
_CHANNEL_CLOSE, _CHANNEL_FLOW = (20, 40), (20, 20)
_CHANNEL_OPEN_OK, _SELECT_OK = (20, 11), (85, 11)
_BLOCKING_ERRORS = (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


class ConfirmLink:
    """An open connection and its confirm channel; make one with :meth:`open`.

    Args:
        on_confirm: called with the delivery tag, ``multiple`` and whether it
            is an ack (or a nack), for each confirm.
        on_return: called with the message id of a mandatory publish that no
            queue took; the broker sends it before the message's confirm.
        on_channel_closed: called with the :class:`ChannelClosed` of a channel
            the broker closed; what was published on it and not yet confirmed
            will never be. A new channel opens at once.
        on_ready: called when that new channel is ready; delivery tags start
            again at 1.
    """

    def __init__(
        self,
        sock: socket.socket,
        *,
        heartbeat: int,
        frame_max: int,
        channel: int,
        on_confirm: Callable[[int, bool, bool], None],
        on_return: Callable[[str | None], None],
        on_channel_closed: Callable[[ChannelClosed], None],
        on_ready: Callable[[], None],
    ) -> None:
        self.on_confirm, self.on_return = on_confirm, on_return
        self.on_channel_closed, self.on_ready = on_channel_closed, on_ready
        self.ready = True
        self.closed: ConnectionLost | None = None
        self._sock = sock
        self._heartbeat = heartbeat
        self._frame_max = frame_max
        self._channel = channel
        self._reader = codec.FrameReader()
        self._out: list[bytes] = []
        self._sending = memoryview(b"")
        self._returning: list[Any] | None = None  # [message id, bytes still to come]
        self._last_read = self._last_write = time.monotonic()
        self._waker, self._woken = socket.socketpair()
        self._waker.setblocking(False)
        self._woken.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._woken, selectors.EVENT_READ)
        self._selector.register(sock, selectors.EVENT_READ)
        self._watching_writes = False
        self._tls_pending: Callable[[], int] | None = getattr(sock, "pending", None)

    @classmethod
    def open(
        cls,
        url: str,
        *,
        name: str,
        heartbeat: int,
        tls: ssl.SSLContext | None = None,
        timeout: float = HANDSHAKE_TIMEOUT,
        **callbacks: Any,
    ) -> ConfirmLink:
        """Connect to the broker of an ``amqp://`` or ``amqps://`` URL and open a confirm channel.

        Args:
            callbacks: the callbacks of :class:`ConfirmLink`.

        Raises:
            AuthenticationFailed: the broker refused the credentials.
            ConnectionLost: the broker closed the connection during the
                handshake (a vhost the user may not open, say).
            OSError: the broker cannot be reached (``ssl.SSLError`` included).
            TimeoutError: the handshake did not finish in time.
        """
        address = Address.of(url, tls=tls is not None)
        deadline = time.monotonic() + timeout
        sock = socket.create_connection((address.host, address.port), timeout=timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if tls is not None:
                sock = tls.wrap_socket(sock, server_hostname=address.host)
            handshake = Handshake(sock, deadline)
            frame_max, heartbeat = handshake.connection(
                vhost=address.vhost,
                user=address.user,
                password=address.password,
                name=name,
                heartbeat=heartbeat,
            )
            handshake.confirm_channel(1)
            sock.settimeout(None)
            sock.setblocking(False)
            link = cls(sock, heartbeat=heartbeat, frame_max=frame_max, channel=1, **callbacks)
            link._reader = handshake.reader
            return link
        except BaseException:
            sock.close()
            raise

    # ------------------------------------------------------------ any thread

    def wake(self) -> None:
        """End the current (or the next) wait of :meth:`pump`; safe from any thread."""
        with contextlib.suppress(OSError):  # full (already woken) or closed
            self._waker.send(b"\0")

    # ------------------------------------------------------------ the pumping thread

    def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: codec.Properties,
        *,
        mandatory: bool,
    ) -> None:
        """Queue one publish on the channel; :meth:`pump` sends it.

        Its delivery tag is one more than the last publish's since the channel
        was ready.

        Raises:
            ConnectionLost: the connection is gone.
            ValueError: the exchange or routing key is over 255 bytes.
            TypeError: a header value that no field table can hold.
        """
        if self.closed is not None:
            raise self.closed.with_traceback(None)
        self._out.append(
            codec.publish_frames(
                self._channel,
                exchange,
                routing_key,
                body,
                properties,
                mandatory=mandatory,
                frame_max=self._frame_max,
            )
        )

    def flush(self) -> None:
        """Send what is queued, as far as the socket takes it now, without waiting or reading.

        Raises:
            ConnectionLost: the connection is gone.
        """
        if self.closed is not None:
            raise self.closed.with_traceback(None)
        try:
            self._send()
        except OSError as exc:
            lost = ConnectionLost(f"connection lost: {exc}")
            self._lose(lost)
            raise lost from exc

    def pump(self, timeout: float) -> None:
        """Send what is queued, then wait up to ``timeout`` for frames and handle them.

        Returns early once some frames were handled, or on :meth:`wake`.

        Raises:
            ConnectionLost: the connection is gone (the broker closed it, the
                socket failed, or the broker stayed silent two heartbeat intervals).
        """
        if self.closed is not None:
            raise self.closed.with_traceback(None)
        try:
            self._beat()
            if self._out or self._sending:
                self._send()
            wait = timeout
            if self._heartbeat:
                wait = min(wait, self._heartbeat / 2)
            self._watch_writes(bool(self._sending))
            for key, events in self._selector.select(wait):
                if key.fileobj is self._woken:
                    with contextlib.suppress(*_BLOCKING_ERRORS):
                        self._woken.recv(4096)
                    continue
                if events & selectors.EVENT_WRITE:
                    self._send()
                if events & selectors.EVENT_READ:
                    self._read()
        except ConnectionLost as exc:
            self._lose(exc)
            raise
        except (OSError, codec.FrameError, ValueError, KeyError) as exc:
            lost = ConnectionLost(f"connection lost: {exc}")
            self._lose(lost)
            raise lost from exc

    def close(self, timeout: float) -> None:
        """Close the connection politely, or drop it if the broker does not answer in time."""
        if self.closed is None:
            self._out.append(
                codec.rare_frame(spec.Connection.Close(200, "Normal shutdown", 0, 0), 0)
            )
            deadline = time.monotonic() + timeout
            with contextlib.suppress(ConnectionLost):
                while self.closed is None and time.monotonic() < deadline:
                    self.pump(deadline - time.monotonic())
        self._lose(ConnectionLost("closed by the client", 200))

    # ------------------------------------------------------------ I/O

    def _send(self) -> None:
        if not self._sending:
            out, self._out = self._out, []
            self._sending = memoryview(out[0] if len(out) == 1 else b"".join(out))
        try:
            sent = self._sock.send(self._sending)
        except _BLOCKING_ERRORS:
            return
        self._sending = self._sending[sent:]
        self._last_write = time.monotonic()
        if not self._sending and self._out:
            self._send()

    def _read(self) -> bool:
        """Read and handle whatever the socket holds; whether there was anything."""
        got = False
        while True:
            try:
                data = self._sock.recv(_READ_SIZE)
            except _BLOCKING_ERRORS:
                return got
            if not data:
                raise ConnectionLost("connection closed by the broker")
            got = True
            self._last_read = time.monotonic()
            for kind, number, payload in self._reader.feed(data):
                if number == 0:
                    self._on_connection_frame(kind, payload)
                elif number == self._channel:
                    self._on_channel_frame(kind, payload)
            # A short read emptied the socket, unless TLS holds decrypted bytes back.
            if len(data) < _READ_SIZE and not (self._tls_pending and self._tls_pending()):
                return got

    def _watch_writes(self, on: bool) -> None:
        if on != self._watching_writes:
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if on else 0)
            self._selector.modify(self._sock, events)
            self._watching_writes = on

    def _beat(self) -> None:
        if not self._heartbeat:
            return
        now = time.monotonic()
        if now - self._last_read > 2 * self._heartbeat:
            log.warning("amqp.heartbeat_missed", heartbeat=self._heartbeat)
            raise ConnectionLost("no heartbeat from the broker")
        if now - self._last_write > self._heartbeat / 2 and not self._out:
            self._out.append(codec.HEARTBEAT_FRAME)

    def _lose(self, reason: ConnectionLost) -> None:
        if self.closed is not None and self._sock.fileno() == -1:
            return
        self.closed = self.closed or reason
        self.ready = False
        self._selector.close()
        for sock in (self._sock, self._waker, self._woken):
            with contextlib.suppress(OSError):
                sock.close()

    # ------------------------------------------------------------ frames

    def _on_connection_frame(self, kind: int, payload: memoryview) -> None:
        if kind != codec.METHOD:
            return  # heartbeats: their arrival is all that counts
        method = codec.rare_method(kind, 0, payload)
        if isinstance(method, spec.Connection.Close):
            with contextlib.suppress(OSError):
                self._sock.send(codec.rare_frame(spec.Connection.CloseOk(), 0))
            raise ConnectionLost(method.reply_text, method.reply_code)
        if isinstance(method, spec.Connection.CloseOk):
            raise ConnectionLost("closed by the client", 200)
        if isinstance(method, spec.Connection.Blocked):
            log.warning("amqp.blocked", reason=method.reason)
        elif isinstance(method, spec.Connection.Unblocked):
            log.info("amqp.unblocked")

    def _on_channel_frame(self, kind: int, payload: memoryview) -> None:
        if kind != codec.METHOD:
            self._on_returned_content(kind, payload)
            return
        which = codec.method_id(payload)
        if which in (_ACK, _NACK):
            confirm = codec.confirm(payload, which == _ACK)
            self.on_confirm(confirm.delivery_tag, confirm.multiple, confirm.ack)
        elif which == _RETURN:
            self._returning = [None, -1]
        elif which == _CHANNEL_CLOSE:
            method = codec.rare_method(kind, self._channel, payload)
            assert isinstance(method, spec.Channel.Close)
            self._out.append(codec.rare_frame(spec.Channel.CloseOk(), self._channel))
            self._reopen()
            self.on_channel_closed(
                ChannelClosed.of(method.reply_code or 0, method.reply_text or "")
            )
        elif which == _CHANNEL_OPEN_OK:
            self._out.append(codec.rare_frame(spec.Confirm.Select(), self._channel))
        elif which == _SELECT_OK:
            self.ready = True
            self.on_ready()
        elif which == _CHANNEL_FLOW:  # the broker asks to pause or resume: acknowledged
            method = codec.rare_method(kind, self._channel, payload)
            assert isinstance(method, spec.Channel.Flow)
            self._out.append(codec.rare_frame(spec.Channel.FlowOk(method.active), self._channel))

    def _on_returned_content(self, kind: int, payload: memoryview) -> None:
        returning = self._returning
        if returning is None:
            return
        if kind == codec.HEADER:
            size, properties = codec.content_header(payload)
            returning[0], returning[1] = properties.message_id, size
        elif kind == codec.BODY:
            returning[1] -= len(payload)
        if returning[1] == 0:
            self._returning = None
            self.on_return(returning[0])

    def renew(self) -> None:
        """Close the channel and open a new one; :attr:`ready` is False until ``on_ready``.

        Delivery tags start again at 1. Call it with no publish awaiting its confirm:
        those would never be confirmed.
        """
        self._out.append(codec.rare_frame(spec.Channel.Close(200, "renewed", 0, 0), self._channel))
        self._reopen()

    def _reopen(self) -> None:
        # A new number: frames still on their way for the old channel are ignored.
        self.ready = False
        self._returning = None
        self._channel = self._channel % CHANNEL_MAX + 1
        self._out.append(codec.rare_frame(spec.Channel.Open(), self._channel))
