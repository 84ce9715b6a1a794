"""AMQP 0-9-1 frames: splitting a byte stream into frames, and the frames of the hot path.

A delivery is three frames (``basic.deliver``, a content header, a body) and a
confirmed publish three out and one back. Those, and the settling frames, are
read and written here with :mod:`struct` directly; every other method (the
handshake, declares, ``channel.close`` ...) is rare and goes through pamqp's
marshalling, which handles the whole protocol but costs tens of microseconds a
frame. A message's properties are :class:`Properties`, a plain value object.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from pamqp import frame as pamqp_frame
from pamqp.base import Frame as PamqpFrame

METHOD, HEADER, BODY, HEARTBEAT = 1, 2, 3, 8
FRAME_END = 0xCE
FRAME_END_BYTE = b"\xce"
PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
HEARTBEAT_FRAME = b"\x08\x00\x00\x00\x00\x00\x00\xce"
FRAME_OVERHEAD = 8  # type, channel, size and the end byte
BASIC = 60
DELIVER, ACK, REJECT, NACK, PUBLISH = 60, 80, 90, 120, 40

_frame_head = struct.Struct(">BHI")
_method_head = struct.Struct(">BHIHH")
_u8 = struct.Struct(">B")
_u16 = struct.Struct(">H")
_u32 = struct.Struct(">I")
_u64 = struct.Struct(">Q")
_header_head = struct.Struct(">HHQH")
_header_prefix = struct.Struct(">HHQ")
_settle_frame = struct.Struct(">BHIHHQBB")
_deliver_tag = struct.Struct(">QB")
_I8, _I16 = struct.Struct(">b"), struct.Struct(">h")
_I32, _I64 = struct.Struct(">i"), struct.Struct(">q")
_F32, _F64 = struct.Struct(">f"), struct.Struct(">d")


class FrameError(Exception):
    """Bytes that are not AMQP 0-9-1: the connection cannot go on."""


@dataclass(slots=True)
class Properties:
    """The properties of a message (the ``basic`` class's content header).

    ``timestamp`` is seconds since the epoch, as on the wire; ``type`` is the
    message type property.
    """

    content_type: str | None = None
    content_encoding: str | None = None
    headers: dict[str, Any] | None = None
    delivery_mode: int | None = None
    priority: int | None = None
    correlation_id: str | None = None
    reply_to: str | None = None
    expiration: str | None = None
    message_id: str | None = None
    timestamp: int | None = None
    type: str | None = None
    user_id: str | None = None
    app_id: str | None = None
    cluster_id: str | None = None


# Property flags, highest bit first, in the order the values follow on the wire.
_AFTER_PRIORITY = (
    (0x0400, "correlation_id"),
    (0x0200, "reply_to"),
    (0x0100, "expiration"),
    (0x0080, "message_id"),
)
_AFTER_TIMESTAMP = (
    (0x0020, "type"),
    (0x0010, "user_id"),
    (0x0008, "app_id"),
    (0x0004, "cluster_id"),
)


@dataclass(slots=True)
class Deliver:
    """A ``basic.deliver`` (or ``basic.return``) with its content, once complete."""

    consumer_tag: str
    delivery_tag: int
    redelivered: bool
    exchange: str
    routing_key: str
    properties: Properties = field(default_factory=Properties)
    body: bytes = b""


@dataclass(slots=True)
class Confirm:
    """A publisher confirm: ``basic.ack`` or ``basic.nack`` from the broker."""

    delivery_tag: int
    multiple: bool
    ack: bool


# ---------------------------------------------------------------- reading


class FrameReader:
    """Cuts the bytes read from the socket into frames.

    A frame split across reads is kept until it is whole; the pieces of a large
    one are joined once, when the last arrives, not at every read.
    """

    def __init__(self) -> None:
        self._pieces: list[bytes] = []
        self._held = 0
        self._need = 7  # bytes needed before anything can be cut

    def feed(self, data: bytes) -> list[tuple[int, int, memoryview]]:
        """The whole frames now available, as ``(type, channel, payload)``.

        Raises:
            FrameError: a frame does not end with the frame-end byte.
        """
        self._pieces.append(data)
        self._held += len(data)
        if self._held < self._need:
            return []
        data = self._pieces[0] if len(self._pieces) == 1 else b"".join(self._pieces)
        view = memoryview(data)
        out = []
        pos, end = 0, len(data)
        need = 7
        while end - pos >= 7:
            kind, channel, size = _frame_head.unpack_from(data, pos)
            stop = pos + 7 + size
            if stop >= end:
                need = stop + 1 - pos
                break
            if data[stop] != FRAME_END:
                raise FrameError(f"frame of type {kind} on channel {channel} has no frame-end")
            out.append((kind, channel, view[pos + 7 : stop]))
            pos = stop + 1
        rest = data[pos:] if pos < end else b""
        self._pieces = [rest] if rest else []
        self._held = len(rest)
        self._need = need
        return out


def method_id(payload: memoryview) -> tuple[int, int]:
    """The class and method id of a method frame's payload."""
    return _u16.unpack_from(payload, 0)[0], _u16.unpack_from(payload, 2)[0]


def rare_method(kind: int, channel: int, payload: memoryview) -> PamqpFrame:
    """Any method frame, decoded by pamqp (the handshake, declares, closes ...)."""
    raw = _frame_head.pack(kind, channel, len(payload)) + bytes(payload) + FRAME_END_BYTE
    _, _, value = pamqp_frame.unmarshal(raw)
    if not isinstance(value, PamqpFrame):
        raise FrameError(f"a method frame held {type(value).__name__}")
    return value


def deliver(payload: memoryview) -> Deliver:
    """A ``basic.deliver``'s arguments (class and method id already read)."""
    pos = 4
    tag, pos = _shortstr(payload, pos)
    delivery_tag, bits = _deliver_tag.unpack_from(payload, pos)
    exchange, pos = _shortstr(payload, pos + 9)
    routing_key, pos = _shortstr(payload, pos)
    return Deliver(tag, delivery_tag, bool(bits & 1), exchange, routing_key)


def confirm(payload: memoryview, ack: bool) -> Confirm:
    """A ``basic.ack`` or ``basic.nack`` from the broker."""
    delivery_tag, bits = _deliver_tag.unpack_from(payload, 4)
    return Confirm(delivery_tag, bool(bits & 1), ack)


def content_header(payload: memoryview) -> tuple[int, Properties]:
    """The body size and the properties of a content header frame."""
    _class, _weight, size, flags = _header_head.unpack_from(payload, 0)
    if flags & 1:
        raise FrameError("property flags continue past 16 bits, which basic does not have")
    if not flags:
        return size, Properties()
    buf = bytes(payload)  # slicing bytes and decoding beats going through the view
    pos = 14
    values: list[Any] = []
    for bit, kind in _PROPERTY_KINDS:
        if not flags & bit:
            values.append(None)
        elif kind == _TEXT:
            end = pos + 1 + buf[pos]
            values.append(buf[pos + 1 : end].decode("utf-8", "replace"))
            pos = end
        elif kind == _OCTET:
            values.append(buf[pos])
            pos += 1
        elif kind == _STAMP:
            values.append(_u64.unpack_from(buf, pos)[0])
            pos += 8
        else:
            table, pos = _table(buf, pos)
            values.append(table)
    return size, Properties(*values)


_TEXT, _TABLE, _OCTET, _STAMP = range(4)
_PROPERTY_KINDS = (  # the flag bit and kind of each property, in Properties' field order
    (0x8000, _TEXT),
    (0x4000, _TEXT),
    (0x2000, _TABLE),
    (0x1000, _OCTET),
    (0x0800, _OCTET),
    (0x0400, _TEXT),
    (0x0200, _TEXT),
    (0x0100, _TEXT),
    (0x0080, _TEXT),
    (0x0040, _STAMP),
    (0x0020, _TEXT),
    (0x0010, _TEXT),
    (0x0008, _TEXT),
    (0x0004, _TEXT),
)


def _shortstr(buf: bytes | memoryview, pos: int) -> tuple[str, int]:
    n = buf[pos]
    end = pos + 1 + n
    return str(buf[pos + 1 : end], "utf-8", "replace"), end


def _longstr(buf: bytes | memoryview, pos: int) -> tuple[bytes, int]:
    n = _u32.unpack_from(buf, pos)[0]
    end = pos + 4 + n
    return bytes(buf[pos + 4 : end]), end


def _table(buf: bytes | memoryview, pos: int) -> tuple[dict[str, Any], int]:
    n = _u32.unpack_from(buf, pos)[0]
    pos += 4
    end = pos + n
    table: dict[str, Any] = {}
    while pos < end:
        key, pos = _shortstr(buf, pos)
        table[key], pos = _value(buf, pos)
    return table, end


def _value(buf: bytes | memoryview, pos: int) -> tuple[Any, int]:
    kind = buf[pos]
    pos += 1
    if kind == 0x53:  # S: long string, text where it decodes
        raw, pos = _longstr(buf, pos)
        try:
            return raw.decode(), pos
        except UnicodeDecodeError:
            return raw, pos
    if kind in _FIXED:
        fmt, convert = _FIXED[kind]
        value = fmt.unpack_from(buf, pos)[0]
        return (convert(value) if convert else value), pos + fmt.size
    if kind == 0x46:  # F: table
        return _table(buf, pos)
    if kind == 0x41:  # A: array
        n = _u32.unpack_from(buf, pos)[0]
        pos += 4
        end = pos + n
        items = []
        while pos < end:
            item, pos = _value(buf, pos)
            items.append(item)
        return items, end
    if kind == 0x56:  # V: void
        return None, pos
    if kind == 0x78:  # x: byte array
        return _longstr(buf, pos)
    if kind == 0x44:  # D: decimal
        scale = buf[pos]
        digits = _I32.unpack_from(buf, pos + 1)[0]
        return Decimal(digits).scaleb(-scale), pos + 5
    raise FrameError(f"unknown field type {chr(kind)!r} in a table")


def _stamp(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


_FIXED: dict[int, tuple[struct.Struct, Any]] = {
    ord("t"): (_u8, bool),
    ord("b"): (_I8, None),
    ord("B"): (_u8, None),
    ord("s"): (_I16, None),
    ord("u"): (_u16, None),
    ord("I"): (_I32, None),
    ord("i"): (_u32, None),
    ord("l"): (_I64, None),
    ord("L"): (_u64, None),
    ord("f"): (_F32, None),
    ord("d"): (_F64, None),
    ord("T"): (_u64, _stamp),
}


# ---------------------------------------------------------------- writing


def rare_frame(method: PamqpFrame, channel: int) -> bytes:
    """Any method frame, encoded by pamqp."""
    return pamqp_frame.marshal(method, channel)


def settle_frame(channel: int, method: int, tag: int, bits: int) -> bytes:
    """``basic.ack``, ``basic.reject`` or ``basic.nack`` for a delivery tag."""
    return _settle_frame.pack(METHOD, channel, 13, BASIC, method, tag, bits, FRAME_END)


def publish_frames(
    channel: int,
    exchange: str,
    routing_key: str,
    body: bytes,
    properties: Properties,
    *,
    mandatory: bool,
    frame_max: int,
) -> bytes:
    """The method, content header and body frames of one ``basic.publish``, joined."""
    ex, rk = _short(exchange), _short(routing_key)
    method = b"".join(
        (
            _method_head.pack(METHOD, channel, 7 + len(ex) + len(rk), BASIC, PUBLISH),
            b"\x00\x00",
            ex,
            rk,
            b"\x01" if mandatory else b"\x00",
            FRAME_END_BYTE,
        )
    )
    props = _properties(properties)
    header = b"".join(
        (
            _frame_head.pack(HEADER, channel, _header_prefix.size + len(props)),
            _header_prefix.pack(BASIC, 0, len(body)),
            props,
            FRAME_END_BYTE,
        )
    )
    parts = [method, header]
    chunk = frame_max - FRAME_OVERHEAD
    for start in range(0, len(body), chunk):
        piece = body[start : start + chunk]
        parts += (_frame_head.pack(BODY, channel, len(piece)), piece, FRAME_END_BYTE)
    return b"".join(parts)


def _properties(p: Properties) -> bytes:
    """The property flags and values of a content header."""
    flags = 0
    parts: list[bytes] = []
    if p.content_type is not None:
        flags |= 0x8000
        parts.append(_short(p.content_type))
    if p.content_encoding is not None:
        flags |= 0x4000
        parts.append(_short(p.content_encoding))
    if p.headers is not None:
        flags |= 0x2000
        parts.append(encode_table(p.headers))
    if p.delivery_mode is not None:
        flags |= 0x1000
        parts.append(_u8.pack(p.delivery_mode))
    if p.priority is not None:
        flags |= 0x0800
        parts.append(_u8.pack(p.priority))
    for bit, name in _AFTER_PRIORITY:
        value = getattr(p, name)
        if value is not None:
            flags |= bit
            parts.append(_short(value))
    if p.timestamp is not None:
        flags |= 0x0040
        parts.append(_u64.pack(p.timestamp))
    for bit, name in _AFTER_TIMESTAMP:
        value = getattr(p, name)
        if value is not None:
            flags |= bit
            parts.append(_short(value))
    return _u16.pack(flags) + b"".join(parts)


def _short(text: str) -> bytes:
    raw = text.encode()
    n = len(raw)
    if n > 255:
        raise ValueError(f"a short string holds at most 255 bytes, not {n}")
    return _LENGTH[n] + raw


_LENGTH = [bytes((n,)) for n in range(256)]


def encode_table(table: dict[str, Any]) -> bytes:
    """A field table: each key a short string, each value typed by its Python type."""
    body = b"".join([_short(str(k)) + _encode_value(v) for k, v in table.items()])
    return _u32.pack(len(body)) + body


def _encode_value(value: Any) -> bytes:
    if isinstance(value, str):
        raw = value.encode()
        return b"S" + _u32.pack(len(raw)) + raw
    if isinstance(value, bool):
        return b"t" + _u8.pack(value)
    if isinstance(value, int):
        if -(2**31) <= value < 2**31:
            return b"I" + _I32.pack(value)
        return b"l" + _I64.pack(value)
    if isinstance(value, float):
        return b"d" + _F64.pack(value)
    if value is None:
        return b"V"
    if isinstance(value, dict):
        return b"F" + encode_table(value)
    if isinstance(value, list | tuple):
        items = b"".join(_encode_value(v) for v in value)
        return b"A" + _u32.pack(len(items)) + items
    if isinstance(value, bytes | bytearray):
        return b"x" + _u32.pack(len(value)) + bytes(value)
    if isinstance(value, datetime):
        return b"T" + _u64.pack(int(value.timestamp()))
    if isinstance(value, Decimal):
        exponent = value.as_tuple().exponent
        scale = -int(exponent) if isinstance(exponent, int) and exponent < 0 else 0
        unscaled = int(value.scaleb(scale))
        return b"D" + _u8.pack(scale) + _I32.pack(unscaled)
    raise TypeError(f"a {type(value).__name__} cannot go in an AMQP field table")
