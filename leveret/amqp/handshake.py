"""Opening a connection and a confirm channel over a blocking socket, frame by frame.

The synchronous counterpart of what :class:`leveret.amqp.connection.Connection`
does in ``data_received`` while it opens: the same frames, the same
capabilities, the same errors for refused credentials and vhosts.
"""

from __future__ import annotations

import contextlib
import socket
import time
from typing import Any

from pamqp import commands as spec

from leveret.amqp import codec
from leveret.amqp.connection import CAPABILITIES, FRAME_MAX
from leveret.amqp.errors import AuthenticationFailed, ChannelClosed, ConnectionLost

CHANNEL_MAX = 2047


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
        properties: dict[str, Any] = {
            "product": "leveret",
            "connection_name": name,
            "capabilities": CAPABILITIES,
        }
        credentials = f"\0{user}\0{password}"
        start_ok = spec.Connection.StartOk(properties, "PLAIN", credentials)
        self._send(codec.rare_frame(start_ok, 0))
        tune = self._expect(0, spec.Connection.Tune)
        assert isinstance(tune, spec.Connection.Tune)
        # The smaller of the two intervals, or the one side's if the other has none.
        beat = min((v for v in (tune.heartbeat, heartbeat) if v), default=0)
        frame_max = min(tune.frame_max or FRAME_MAX, FRAME_MAX)
        channel_max = min(tune.channel_max or CHANNEL_MAX, CHANNEL_MAX)
        self._send(
            codec.rare_frame(spec.Connection.TuneOk(channel_max, frame_max, beat), 0)
            + codec.rare_frame(spec.Connection.Open(virtual_host=vhost), 0)
        )
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
                code, text = method.reply_code, method.reply_text
                if code == 403 and not self._opened:
                    raise AuthenticationFailed(text, code)
                raise ConnectionLost(text, code)
            if isinstance(method, spec.Channel.Close):
                raise ChannelClosed.of(method.reply_code or 0, method.reply_text or "")
            if channel == number and isinstance(method, kind):
                return method
