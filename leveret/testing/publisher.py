"""The handlers' publisher, in memory: ``ctx.publish`` and job status into the fake broker."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from leveret import wire
from leveret.consumers.context import HandlerPublisher
from leveret.messages import Message
from leveret.publisher.core import PublisherCore


class MemoryPublisher(HandlerPublisher):
    """A :class:`HandlerPublisher` whose confirm channel is the in-memory broker.

    Only the sending is replaced: envelopes come from the same
    :meth:`PublisherCore.envelope`, and ``publish`` from a sync handler's
    thread, job status (an unroutable event ignored) and batches run the
    worker's own code.

    Args:
        core: the envelope rules.
        send: routes an envelope; raises as the broker would.
    """

    def __init__(self, core: PublisherCore, send: Callable[[wire.Envelope], None]) -> None:
        self.core = core
        self._send = send

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Take publishes from sync handlers' threads on this loop (the running one)."""
        self.loop = loop

    async def apublish(self, message: Message, **options: Any) -> str:
        """Build the envelope and route it; takes :meth:`Publisher.publish`'s options."""
        env = self.core.envelope(message, **options)
        self._send(env)
        return env.message_id

    async def asend(self, env: wire.Envelope) -> None:
        """Route a ready envelope."""
        self._send(env)
