"""leveret's AMQP client: its frames against pamqp's, and its behaviour against the real broker."""

from __future__ import annotations

import asyncio
import struct
import traceback
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pamqp.frame
import pytest
from pamqp import commands as spec
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

from leveret import amqp, connection
from leveret.amqp import codec
from tests.conftest import RefusedURLs
from tests.proxy import Proxy

HEADERS: dict[str, Any] = {
    "text": "ünïcode",
    "small": 1,
    "negative": -70000,
    "big": 2**40,
    "flag": True,
    "ratio": 0.25,
    "nothing": None,
    "list": [1, "two", {"three": 3}],
    "nested": {"x-death": [{"count": 2, "reason": "expired"}]},
    "raw": b"\x00\xff",
    "when": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
    "price": Decimal("12.34"),
}
PROPS = amqp.Properties(
    content_type="application/json",
    content_encoding="utf-8",
    headers=HEADERS,
    delivery_mode=2,
    priority=3,
    correlation_id="job-1",
    reply_to="replies",
    expiration="60000",
    message_id="m-1",
    timestamp=1_790_000_000,
    type="invoice.created",
    user_id="guest",
    app_id="billing",
    cluster_id="c",
)


def split(data: bytes) -> list[tuple[int, int, bytes]]:
    return [(k, c, bytes(p)) for k, c, p in codec.FrameReader().feed(data)]


# ------------------------------------------------------------ codec, no broker


def test_a_publish_is_what_pamqp_reads() -> None:
    data = codec.publish_frames(
        5, "ex", "rk", b"x" * 300, PROPS, mandatory=True, frame_max=128 + codec.FRAME_OVERHEAD
    )
    frames = []
    while data:
        used, channel, value = pamqp.frame.unmarshal(data)
        frames.append((channel, value))
        data = data[used:]
    assert all(channel == 5 for channel, _ in frames)
    method, header = frames[0][1], frames[1][1]
    assert isinstance(method, spec.Basic.Publish)
    assert (method.exchange, method.routing_key, method.mandatory) == ("ex", "rk", True)
    assert isinstance(header, ContentHeader) and header.body_size == 300
    p = header.properties
    assert (p.message_id, p.message_type, p.app_id, p.priority) == (
        "m-1",
        "invoice.created",
        "billing",
        3,
    )
    assert p.timestamp == datetime.fromtimestamp(PROPS.timestamp or 0, UTC)
    assert p.headers is not None and p.headers["text"] == "ünïcode"
    assert p.headers["nested"] == {"x-death": [{"count": 2, "reason": "expired"}]}
    bodies = [v for _, v in frames[2:]]
    assert all(isinstance(v, ContentBody) for v in bodies)
    assert [len(v.value) for v in bodies if isinstance(v, ContentBody)] == [128, 128, 44]


def test_properties_and_every_table_type_come_back_as_written() -> None:
    data = codec.publish_frames(1, "", "q", b"{}", PROPS, mandatory=False, frame_max=4096)
    (_, _, _), (kind, _, header), (_, _, body) = codec.FrameReader().feed(data)
    assert kind == codec.HEADER
    size, props = codec.content_header(header)
    assert size == 2 and bytes(body) == b"{}"
    assert props == PROPS


def test_a_delivery_written_by_pamqp_is_read_field_by_field() -> None:
    deliver = spec.Basic.Deliver(
        consumer_tag="ctag", delivery_tag=2**40, redelivered=True, exchange="ex", routing_key="rk"
    )
    table: dict[str, Any] = {
        "b": 1,  # pamqp writes small integers in 8 bits, others in 16, 32, 64
        "s": 300,
        "I": 70000,
        "l": 2**40,
        "f": 1.5,
        "t": False,
        "S": "text",
        "A": [1, [2]],
        "F": {"k": "v"},
        "T": datetime(2026, 1, 2, tzinfo=UTC),
    }
    header = ContentHeader(
        body_size=3, properties=spec.Basic.Properties(message_id="m", headers=table, priority=1)
    )
    data = pamqp.frame.marshal(deliver, 7) + pamqp.frame.marshal(header, 7)
    (_, channel, method), (_, _, head) = codec.FrameReader().feed(data)
    assert channel == 7 and codec.method_id(method) == (codec.BASIC, codec.DELIVER)
    d = codec.deliver(method)
    assert (d.consumer_tag, d.delivery_tag, d.redelivered, d.exchange, d.routing_key) == (
        "ctag",
        2**40,
        True,
        "ex",
        "rk",
    )
    size, props = codec.content_header(head)
    assert size == 3 and props.message_id == "m" and props.priority == 1
    assert props.headers == table


def test_frames_cut_anywhere_come_out_whole() -> None:
    data = codec.publish_frames(1, "e", "k", b"body" * 100, PROPS, mandatory=True, frame_max=64)
    data += codec.HEARTBEAT_FRAME
    whole = split(data)
    for size in (1, 2, 7, 8, 13, 100):
        reader = codec.FrameReader()
        got = []
        for i in range(0, len(data), size):
            got += [(k, c, bytes(p)) for k, c, p in reader.feed(data[i : i + size])]
        assert got == whole, size
    assert whole[-1] == (codec.HEARTBEAT, 0, b"")


def test_a_frame_without_its_end_byte_is_refused() -> None:
    bad = struct.pack(">BHI", codec.METHOD, 1, 2) + b"\x00\x00" + b"\x00"
    with pytest.raises(codec.FrameError, match="frame-end"):
        codec.FrameReader().feed(bad)


def test_values_a_table_cannot_hold_are_refused() -> None:
    with pytest.raises(TypeError, match="object"):
        codec.encode_table({"x": object()})
    with pytest.raises(ValueError, match="255"):
        codec.publish_frames(
            1, "e" * 256, "", b"", amqp.Properties(), mandatory=True, frame_max=4096
        )


# ------------------------------------------------------------ against the broker


@pytest.fixture
async def conn(broker_url: str) -> AsyncIterator[amqp.Connection]:
    c = await amqp.connect(broker_url, name="test-amqp", heartbeat=30)
    yield c
    await c.close()


async def test_pipelined_publishes_are_confirmed_and_consumed_with_their_properties(
    conn: amqp.Connection, quorum_queue: str
) -> None:
    pub = await conn.channel()
    await pub.confirm_select()
    sent = [
        pub.publish_nowait(b"%d" % i, exchange="", routing_key=quorum_queue, properties=PROPS)
        for i in range(500)
    ]
    await asyncio.wait_for(asyncio.gather(*(f for f in sent if f is not None)), 30)
    assert None not in sent  # a confirm channel gives every publish a future
    big = bytes(range(256)) * 2000  # 512 KB: several frames each way
    await pub.basic_publish(
        big, exchange="", routing_key=quorum_queue, properties=amqp.Properties()
    )
    sub = await conn.channel()
    await sub.basic_qos(50)
    got: list[amqp.Deliver] = []
    done = asyncio.Event()

    def on_message(d: amqp.Deliver) -> None:
        got.append(d)
        sub.basic_ack(d.delivery_tag)
        if len(got) == 501:
            done.set()

    await sub.basic_consume(quorum_queue, on_message)
    await asyncio.wait_for(done.wait(), 30)
    assert [d.body for d in got[:500]] == [b"%d" % i for i in range(500)]
    assert got[0].properties == PROPS and got[0].routing_key == quorum_queue
    assert got[500].body == big
    assert await sub.queue_declare(quorum_queue) == (0, 1)


async def test_unroutable_and_missing_exchange_fail_their_publish_only(
    conn: amqp.Connection, quorum_queue: str
) -> None:
    ch = await conn.channel()
    await ch.confirm_select()
    with pytest.raises(amqp.Returned, match="NO_ROUTE"):
        await ch.basic_publish(
            b"x", exchange="", routing_key=quorum_queue + ".none", properties=PROPS
        )
    await ch.basic_publish(
        b"x", exchange="", routing_key=quorum_queue, properties=PROPS
    )  # still open
    closed: list[amqp.AMQPError] = []
    ch.close_callbacks.append(closed.append)
    with pytest.raises(amqp.ChannelNotFound, match="no exchange"):
        await ch.basic_publish(
            b"x", exchange=quorum_queue + ".none", routing_key="", properties=PROPS
        )
    assert ch.is_closed and isinstance(closed[0], amqp.ChannelNotFound)
    depths = []
    for _ in range(3):  # the same error every time, without a traceback that grows
        with pytest.raises(amqp.ChannelNotFound) as raised:
            ch.basic_ack(1)
        depths.append(len(traceback.extract_tb(raised.value.__traceback__)))
    assert depths[0] == depths[-1]
    other = await conn.channel()  # the connection is unharmed
    assert await other.queue_declare(quorum_queue) == (1, 0)
    with pytest.raises(amqp.ChannelNotFound):
        await other.queue_declare(quorum_queue + ".none")


async def test_a_deleted_queue_ends_its_consumers_channel(
    conn: amqp.Connection, quorum_queue: str, broker_url: str
) -> None:
    ch = await conn.channel()
    ended = asyncio.get_running_loop().create_future()

    def broken(error: amqp.AMQPError) -> None:
        raise RuntimeError("a broken callback")

    ch.close_callbacks += [broken, ended.set_result]  # the broken one does not stop the next
    await ch.basic_consume(quorum_queue, lambda d: None)
    with connection.connect(broker_url) as blocking:
        blocking.channel().queue_delete(quorum_queue)
    error = await asyncio.wait_for(ended, 10)
    assert isinstance(error, amqp.ChannelClosed) and "cancelled" in str(error)
    assert not conn.is_closed


async def test_refused_credentials_vhost_and_port(refused: RefusedURLs) -> None:
    with pytest.raises(amqp.AuthenticationFailed, match="ACCESS_REFUSED"):
        await amqp.connect(refused.wrong_password, name="t", heartbeat=30)
    with pytest.raises(amqp.ConnectionLost) as lost:
        await amqp.connect(refused.missing_vhost, name="t", heartbeat=30)
    assert lost.value.code == 530
    with pytest.raises(OSError):
        await amqp.connect(refused.closed_port, name="t", heartbeat=30)


async def test_a_silent_broker_is_noticed_after_two_heartbeats(quorum_queue: str) -> None:
    with Proxy() as proxy:
        conn = await amqp.connect(proxy.url(), name="test-heartbeat", heartbeat=1)
        ch = await conn.channel()
        await ch.confirm_select()
        proxy.stall()
        pending = ch.publish_nowait(b"x", exchange="", routing_key=quorum_queue, properties=PROPS)
        reason = await asyncio.wait_for(conn.closed, 10)
        assert "heartbeat" in str(reason)
        assert pending is not None
        with pytest.raises(amqp.ConnectionLost):
            await pending
        assert ch.is_closed


async def test_a_cut_connection_fails_what_waits_on_it(quorum_queue: str, broker_url: str) -> None:
    with Proxy() as proxy:
        conn = await amqp.connect(proxy.url(), name="test-cut", heartbeat=30)
        ch = await conn.channel()
        await ch.confirm_select()
        await ch.basic_publish(b"x", exchange="", routing_key=quorum_queue, properties=PROPS)
        lost: list[amqp.ConnectionLost] = []
        conn.close_callbacks.append(lost.append)
        proxy.stall()
        pending = ch.publish_nowait(b"y", exchange="", routing_key=quorum_queue, properties=PROPS)
        proxy.cut()
        with pytest.raises(amqp.ConnectionLost):
            await asyncio.wait_for(pending or asyncio.sleep(0), 10)
        assert conn.is_closed and len(lost) == 1
        with pytest.raises(amqp.ConnectionLost):
            await conn.channel()
    with connection.connect(broker_url) as check:
        assert check.channel().queue_declare(quorum_queue, passive=True).method.message_count == 1
