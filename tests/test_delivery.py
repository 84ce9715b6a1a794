"""Coalesced acks on a real channel: one multiple ack only where every lower tag is settled."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiormq
import aiormq.abc

from leveret.consumers.delivery import Acks, delivery_tag


class Recording:
    """A real aiormq channel that also records the settling frames written on it."""

    def __init__(self, channel: aiormq.abc.AbstractChannel) -> None:
        self.channel = channel
        self.frames: list[tuple[str, int, bool]] = []

    async def basic_ack(self, tag: int, multiple: bool = False, wait: bool = True) -> None:
        self.frames.append(("ack", tag, multiple))
        await self.channel.basic_ack(tag, multiple=multiple, wait=wait)

    async def basic_reject(self, tag: int, *, requeue: bool = True) -> None:
        self.frames.append(("reject", tag, False))
        await self.channel.basic_reject(tag, requeue=requeue)


async def test_acks_coalesce_only_below_the_lowest_unsettled_tag(
    broker_url: str, names: Callable[[str], str]
) -> None:
    conn = await aiormq.connect(broker_url)
    try:
        channel = await conn.channel()
        queue = names("acks")
        await channel.queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum"})
        for i in range(10):
            await channel.basic_publish(str(i).encode(), routing_key=queue)
        await channel.basic_qos(prefetch_count=10)
        got: list[aiormq.abc.DeliveredMessage] = []

        async def on_message(dm: aiormq.abc.DeliveredMessage) -> None:
            got.append(dm)

        await channel.basic_consume(queue, on_message, no_ack=False)
        for _ in range(100):
            if len(got) == 10:
                break
            await asyncio.sleep(0.05)
        tags = sorted(delivery_tag(dm) for dm in got)
        t = dict(enumerate(tags, 1))  # t[1] .. t[10]
        recording = Recording(channel)
        acks = Acks(recording)  # type: ignore[arg-type]
        for tag in tags:
            acks.delivered(tag)

        await asyncio.gather(*(acks.ack(t[k]) for k in (2, 1, 3)))  # one pass, out of order
        await asyncio.gather(*(acks.ack(t[k]) for k in (4, 6, 7)))  # 5 is still in a handler
        await acks.reject(t[5], requeue=False)
        await asyncio.gather(*(acks.ack(t[k]) for k in (8, 10, 9)))
        assert recording.frames == [
            ("ack", t[3], True),
            ("ack", t[4], False),
            ("ack", t[6], False),
            ("ack", t[7], False),
            ("reject", t[5], False),
            ("ack", t[10], True),
        ]
        await channel.basic_cancel(got[0].delivery.consumer_tag)  # type: ignore[union-attr,arg-type]
        await channel.close()  # anything left unacked would go back to the queue
        check = await conn.channel()
        ok: Any = await check.queue_declare(queue, passive=True)
        assert ok.message_count == 0
        await check.queue_delete(queue)
    finally:
        await conn.close()
