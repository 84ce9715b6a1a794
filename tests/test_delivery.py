"""Coalesced acks on a real channel: one multiple ack only where every lower tag is settled."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pika
import pytest

from leveret import amqp, connection
from leveret.consumers.delivery import Acks


def record(channel: amqp.Channel, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int, bool]]:
    """Record the settling frames written on a real channel, as they go out."""
    frames: list[tuple[str, int, bool]] = []
    ack, reject = channel.basic_ack, channel.basic_reject

    def recorded_ack(delivery_tag: int, *, multiple: bool = False) -> None:
        frames.append(("ack", delivery_tag, multiple))
        ack(delivery_tag, multiple=multiple)

    def recorded_reject(delivery_tag: int, *, requeue: bool) -> None:
        frames.append(("reject", delivery_tag, False))
        reject(delivery_tag, requeue=requeue)

    monkeypatch.setattr(channel, "basic_ack", recorded_ack)
    monkeypatch.setattr(channel, "basic_reject", recorded_reject)
    return frames


async def test_acks_coalesce_only_below_the_lowest_unsettled_tag(
    broker_url: str, names: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = names("acks")
    blocking = connection.connect(broker_url)
    setup = blocking.channel()
    setup.queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum"})
    setup.confirm_delivery()
    for i in range(10):
        setup.basic_publish("", queue, str(i).encode(), pika.BasicProperties(delivery_mode=2))
    conn = await amqp.connect(broker_url, name="test-acks", heartbeat=30)
    try:
        channel = await conn.channel()
        frames = record(channel, monkeypatch)
        await channel.basic_qos(10)
        got: list[amqp.Deliver] = []
        consumer = await channel.basic_consume(queue, got.append)
        for _ in range(100):
            if len(got) == 10:
                break
            await asyncio.sleep(0.05)
        tags = sorted(d.delivery_tag for d in got)
        t = dict(enumerate(tags, 1))  # t[1] .. t[10]
        acks = Acks(channel)
        for tag in tags:
            acks.delivered(tag)

        await asyncio.gather(*(acks.ack(t[k]) for k in (2, 1, 3)))  # one pass, out of order
        await asyncio.gather(*(acks.ack(t[k]) for k in (4, 6, 7)))  # 5 is still in a handler
        acks.reject(t[5], requeue=False)
        await asyncio.gather(*(acks.ack(t[k]) for k in (8, 10, 9)))
        assert frames == [
            ("ack", t[3], True),
            ("ack", t[4], False),
            ("ack", t[6], False),
            ("ack", t[7], False),
            ("reject", t[5], False),
            ("ack", t[10], True),
        ]
        await channel.basic_cancel(consumer)
        await channel.close()  # anything left unacked would go back to the queue
        check = await conn.channel()
        assert await check.queue_declare(queue) == (0, 0)
    finally:
        await conn.close()
        setup.queue_delete(queue)
        blocking.close()
