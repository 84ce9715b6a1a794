"""The worker's confirm channel: what retry copies, dead letters and handlers publish on.

A nack renews it: from then on publishes go through a new channel, and the old
one closes once the confirms it still owes have come. RabbitMQ before 3.12.5
keeps nacking on a channel whose quorum-queue client learned a queue's members
while the queue's record still named a stopped node as its leader; a new
channel learns them afresh (docs/cluster.md). Nacks for other reasons (a queue
at its length limit) cost one channel opening each.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from leveret import amqp

log = structlog.get_logger(__name__)


class Confirms:
    """A confirm channel that a nack replaces; publish through :meth:`basic_publish`.

    Args:
        channel: an open channel in confirm mode.
        on_lost: called when the broker or a lost connection ends the current
            channel (not a channel this object closed after renewing it).
    """

    def __init__(self, channel: amqp.Channel, *, on_lost: Callable[[], None]) -> None:
        self.channel = channel
        self._on_lost = on_lost
        self._renewing = asyncio.Lock()
        self._retiring: set[asyncio.Task[None]] = set()
        self._watch(channel)

    async def basic_publish(
        self,
        body: bytes,
        *,
        exchange: str,
        routing_key: str,
        properties: amqp.Properties,
        mandatory: bool = True,
    ) -> None:
        """Publish on the current channel and wait for the confirm.

        Raises:
            Nacked: the broker nacked it; the channel is renewed before this is raised.
            Returned, ChannelClosed, ConnectionLost: as :meth:`amqp.Channel.basic_publish`.
        """
        for last in (False, True):
            channel = self.channel
            try:
                await channel.basic_publish(
                    body,
                    exchange=exchange,
                    routing_key=routing_key,
                    properties=properties,
                    mandatory=mandatory,
                )
                return
            except amqp.Nacked:
                await self.renew(channel)
                raise
            except amqp.ChannelClosed:
                # Written to a renewed channel just before it closed: send it again, once.
                if last or channel is self.channel or channel.conn.is_closed:
                    raise

    async def renew(self, nacked: amqp.Channel) -> None:
        """Open a new channel in place of ``nacked``, unless another task already did."""
        async with self._renewing:
            if nacked is not self.channel or nacked.is_closed:
                return
            fresh = await nacked.conn.channel()
            await fresh.confirm_select()
            self._watch(fresh)
            self.channel = fresh
        task = asyncio.get_running_loop().create_task(nacked.close_when_confirmed())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)
        log.info("worker.channel_renewed", reason="nack", channel=fresh.number)

    def _watch(self, channel: amqp.Channel) -> None:
        def closed(_: amqp.AMQPError) -> None:
            if channel is self.channel:
                self._on_lost()

        channel.close_callbacks.append(closed)
