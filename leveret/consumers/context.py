"""What a handler gets besides its message: the delivery's facts, and a way to publish.

A handler that starts more work (a follow-up task, one chunk per hundred rows)
publishes through its context, on the worker's own confirm channel:
``ctx.publish(...)`` in a sync handler, ``await ctx.apublish(...)`` in an async
one. The new message is correlated with the delivery's job unless told otherwise.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiormq.abc
import structlog

from leveret.errors import ConfigurationError, LeveretError, Unroutable
from leveret.messages import Message
from leveret.publisher.aio import amqp_properties, publish_on
from leveret.publisher.core import PublisherCore
from leveret.status.events import JobStatus, timestamp

log = structlog.get_logger(__name__)
T = TypeVar("T")


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
        return self._from_thread(self.apublish(message, **options), "apublish")

    async def astatus(self, event: JobStatus) -> None:
        """Publish a job status event, keyed by its job id.

        Status is reported, not required: a failure to publish it is logged and
        never fails the task. With nothing bound to the job id (no status store
        running), the event is dropped, as a log line nobody reads.
        """
        try:
            await self.apublish(event, routing_key=event.job_id)
        except Unroutable:
            log.debug("status.unroutable", job_id=event.job_id, state=event.state)
        except LeveretError as exc:
            log.warning(
                "status.not_published", job_id=event.job_id, state=event.state, error=str(exc)
            )

    def status(self, event: JobStatus) -> None:
        """The same, from a sync handler's thread."""
        self._from_thread(self.astatus(event), "aprogress")

    def _from_thread(self, work: Coroutine[Any, Any, T], instead: str) -> T:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run_coroutine_threadsafe(work, self.loop).result()
        work.close()
        raise ConfigurationError(f"in an async handler, use `await ctx.{instead}(...)`")


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

    def progress(self, percent: float | None = None, message: str | None = None) -> None:
        """Report this job's progress from a sync handler: a percent, a line of text.

        Published to ``leveret.status`` keyed by this message's id, for a status
        store or a page to follow (:mod:`leveret.status`). Never fails the task.
        """
        self._publisher().status(self._progress(percent, message))

    async def aprogress(self, percent: float | None = None, message: str | None = None) -> None:
        """The same, from an async handler."""
        await self._publisher().astatus(self._progress(percent, message))

    def _progress(self, percent: float | None, message: str | None) -> JobStatus:
        return JobStatus(
            job_id=self.message_id,
            state="progress",
            at=timestamp(),
            type=self.type,
            attempt=self.attempt,
            percent=percent,
            message=message,
        )

    def _publisher(self) -> HandlerPublisher:
        if self.publisher is None:
            raise ConfigurationError("this context has no publisher (it is not in a worker)")
        return self.publisher

    def _correlated(self, options: dict[str, Any]) -> dict[str, Any]:
        options.setdefault("correlation_id", self.correlation_id or self.message_id)
        return options
