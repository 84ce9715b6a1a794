"""What a handler gets besides its message: the delivery's facts, and a way to publish.

A handler that starts more work (a follow-up task, one chunk per hundred rows)
publishes through its context, on the worker's own confirm channel:
``ctx.publish(...)`` in a sync handler, ``await ctx.apublish(...)`` in an async
one. The new message is correlated with the delivery's job unless told otherwise.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiormq.abc

from leveret.errors import ConfigurationError
from leveret.messages import Message
from leveret.publisher.aio import amqp_properties, publish_on
from leveret.publisher.core import PublisherCore


class HandlerPublisher:
    """Publishes from inside handlers on the worker's confirm channel.

    Args:
        core: the envelope rules (size limit, app id).
        channel: the worker's channel in confirm mode.
        loop: the worker's event loop (sync handlers run on other threads).
    """

    def __init__(
        self,
        core: PublisherCore,
        channel: aiormq.abc.AbstractChannel,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.core = core
        self.channel = channel
        self.loop = loop

    async def apublish(self, message: Message, **options: Any) -> str:
        """Publish and wait for the confirm; takes :meth:`Publisher.publish`'s options."""
        env = self.core.envelope(message, **options)
        await publish_on(self.channel, env, amqp_properties(env, self.core.app_id))
        return env.message_id

    def publish(self, message: Message, **options: Any) -> str:
        """The same, from a sync handler's thread."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            future = asyncio.run_coroutine_threadsafe(self.apublish(message, **options), self.loop)
            return future.result()
        raise ConfigurationError("in an async handler, use `await ctx.apublish(...)`")


@dataclass(frozen=True, slots=True)
class Context:
    """What a handler knows about the delivery besides the message itself."""

    message_id: str
    type: str
    version: int
    queue: str
    attempt: int
    redelivered: bool
    correlation_id: str | None
    headers: Mapping[str, Any]
    publisher: HandlerPublisher | None = field(default=None, repr=False, compare=False)

    def publish(self, message: Message, **options: Any) -> str:
        """Publish a message from a sync handler, with confirms; returns its id.

        Takes the options of :meth:`leveret.Publisher.publish`. The correlation
        id defaults to this delivery's (or its message id), tying the new task
        to the same job.

        Raises:
            ConfigurationError: called from an async handler, or outside a worker.
        """
        return self._publisher().publish(message, **self._correlated(options))

    async def apublish(self, message: Message, **options: Any) -> str:
        """Publish a message from an async handler, with confirms; returns its id."""
        return await self._publisher().apublish(message, **self._correlated(options))

    def _publisher(self) -> HandlerPublisher:
        if self.publisher is None:
            raise ConfigurationError("this context has no publisher (it is not in a worker)")
        return self.publisher

    def _correlated(self, options: dict[str, Any]) -> dict[str, Any]:
        options.setdefault("correlation_id", self.correlation_id or self.message_id)
        return options
