"""Opening a connection: what both clients say, and the blocking client's exchanges.

:class:`leveret.amqp.connection.Connection` (asyncio) and :class:`Handshake`
(a blocking socket, for :mod:`leveret.amqp.blocking`) send the same frames,
made here: the address a URL names, ``connection.start-ok`` with the same
capabilities, ``connection.tune-ok`` with the same limits, and the same
errors for refused credentials and vhosts.
"""

from __future__ import annotations

import contextlib
import socket
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from pamqp import commands as spec

from leveret.amqp import codec
from leveret.amqp.errors import AuthenticationFailed, ChannelClosed, ConnectionLost

HANDSHAKE_TIMEOUT = 10.0
FRAME_MAX = 131072
CHANNEL_MAX = 2047
CAPABILITIES: dict[str, Any] = {
    "publisher_confirms": True,
    "consumer_cancel_notify": True,
    "basic.nack": True,
    "connection.blocked": True,
    "authentication_failure_close": True,
}


@dataclass(frozen=True)
class Address:
    """Where an ``amqp://`` or ``amqps://`` URL points, and as whom.

    A URL without credentials logs in as RabbitMQ's default user, as pika and
    the other clients do; the caller's URL (from its settings) is what names
    any other user.
    """

    host: str
    port: int
    vhost: str
    user: str
    password: str

    @classmethod
    def of(cls, url: str, *, tls: bool) -> Address:
        """The address of a URL; ``tls`` picks the default port."""
        parts = urlsplit(url)
        path = parts.path[1:] if parts.path.startswith("/") else parts.path
        return cls(
            host=parts.hostname or "localhost",
            port=parts.port or (5671 if tls else 5672),
            vhost=unquote(path) if path else "/",
            user=unquote(parts.username or "guest"),
            password=unquote(parts.password or "guest"),
        )


def start_ok(name: str, user: str, password: str) -> bytes:
    """The ``connection.start-ok`` frame: who we are, what we can do, PLAIN credentials."""
    properties: dict[str, Any] = {
        "product": "leveret",
        "connection_name": name,
        "capabilities": CAPABILITIES,
    }
    method = spec.Connection.StartOk(properties, "PLAIN", f"\0{user}\0{password}")
    return codec.rare_frame(method, 0)


def tune_ok(tune: spec.Connection.Tune, *, heartbeat: int, vhost: str) -> tuple[bytes, int, int]:
    """The answer to ``connection.tune`` and the ``connection.open`` after it.

    Returns:
        The two frames, the frame size and the heartbeat interval agreed on.
    """
    # The smaller of the two intervals, or the one side's if the other has none.
    beat = min((v for v in (tune.heartbeat, heartbeat) if v), default=0)
    frame_max = min(tune.frame_max or FRAME_MAX, FRAME_MAX)
    channel_max = min(tune.channel_max or CHANNEL_MAX, CHANNEL_MAX)
    frames = codec.rare_frame(
        spec.Connection.TuneOk(channel_max, frame_max, beat), 0
    ) + codec.rare_frame(spec.Connection.Open(virtual_host=vhost), 0)
    return frames, frame_max, beat


def closed_by_broker(close: spec.Connection.Close, *, opened: bool) -> ConnectionLost:
    """The error of a ``connection.close`` from the broker.

    Refused credentials before the connection opened; otherwise the connection
    lost, with the broker's reason.
    """
    code, text = close.reply_code, close.reply_text
    if code == 403 and not opened:
        return AuthenticationFailed(text, code)
    return ConnectionLost(text, code)


class Handshake:
    """The blocking exchanges of opening: the connection, then a confirm channel."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock, self.deadline = sock, deadline
        self.reader = codec.FrameReader()
        self._frames: list[tuple[int, int, memoryview]] = []
        self._opened = False

    def connection(
        self, *, vhost: str, user: str, password: str, name: str, heartbeat: int
    ) -> tuple[int, int]:
        """Open the connection; its frame size and heartbeat interval."""
        self._send(codec.PROTOCOL_HEADER)
        self._expect(0, spec.Connection.Start)
        self._send(start_ok(name, user, password))
        tune = self._expect(0, spec.Connection.Tune)
        frames, frame_max, beat = tune_ok(tune, heartbeat=heartbeat, vhost=vhost)
        self._send(frames)
        self._expect(0, spec.Connection.OpenOk)
        self._opened = True
        return frame_max, beat

    def confirm_channel(self, number: int) -> None:
        """Open a channel and put it in confirm mode."""
        self._send(codec.rare_frame(spec.Channel.Open(), number))
        self._expect(number, spec.Channel.OpenOk)
        self._send(codec.rare_frame(spec.Confirm.Select(), number))
        self._expect(number, spec.Confirm.SelectOk)

    def _send(self, data: bytes) -> None:
        self.sock.settimeout(max(self.deadline - time.monotonic(), 0.001))
        self.sock.sendall(data)

    def _expect(self, number: int, kind: type[Any]) -> Any:
        while True:
            while not self._frames:
                remaining = self.deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no {kind.__name__} from the broker in time")
                self.sock.settimeout(remaining)
                try:
                    data = self.sock.recv(65536)
                except TimeoutError:
                    raise
                except OSError as exc:
                    raise ConnectionLost(f"connection lost: {exc}") from exc
                if not data:
                    raise ConnectionLost("connection closed by the broker during the handshake")
                self._frames.extend(self.reader.feed(data))
            frame_kind, channel, payload = self._frames.pop(0)
            if frame_kind != codec.METHOD:
                continue
            method = codec.rare_method(frame_kind, channel, payload)
            if isinstance(method, spec.Connection.Close):
                with contextlib.suppress(OSError):
                    self.sock.sendall(codec.rare_frame(spec.Connection.CloseOk(), 0))
                raise closed_by_broker(method, opened=self._opened)
            if isinstance(method, spec.Channel.Close):
                raise ChannelClosed.of(method.reply_code or 0, method.reply_text or "")
            if channel == number and isinstance(method, kind):
                return method
