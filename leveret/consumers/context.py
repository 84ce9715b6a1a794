"""What a handler gets besides its message: the delivery's facts, and a way to publish.

A handler that starts more work (a follow-up task, one chunk per hundred rows)
publishes through its context, on the worker's own confirm channel:
``ctx.publish(...)`` in a sync handler, ``await ctx.apublish(...)`` in an async
one. The new message is correlated with the delivery's job unless told otherwise.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import structlog

from leveret import tracing, wire
from leveret.consumers.confirms import Confirms
from leveret.errors import ConfigurationError, LeveretError, Unroutable
from leveret.messages import Message
from leveret.publisher.aio import publish_on
from leveret.publisher.core import PublisherCore, amqp_properties
from leveret.status.events import BATCH_TYPE, JobStatus, Then, timestamp

log = structlog.get_logger(__name__)
T = TypeVar("T")

BATCH_WINDOW = 100
"""Batch members published at once, their confirms awaited together."""


class HandlerPublisher:
    """Publishes from inside handlers on the worker's confirm channel.

    Args:
        core: the envelope rules (size limit, app id).
        channel: the worker's confirm channel.
        loop: the worker's event loop (sync handlers run on other threads).
    """

    def __init__(
        self,
        core: PublisherCore,
        channel: Confirms,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.core = core
        self.channel = channel
        self.loop = loop

    async def apublish(self, message: Message, **options: Any) -> str:
        """Publish and wait for the confirm; takes :meth:`Publisher.publish`'s options."""
        env = self.core.envelope(message, **options)
        await self.asend(env)
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

    async def asend(self, env: wire.Envelope) -> None:
        """Publish a ready envelope and wait for the confirm."""
        with tracing.sending(env.span):
            await publish_on(self.channel, env, amqp_properties(env, self.core.app_id))

    def send(self, env: wire.Envelope) -> None:
        """The same, from a sync handler's thread."""
        self._from_thread(self.asend(env), "asend")

    async def abatch(
        self,
        members: Iterable[Message],
        then: Message | None,
        batch_id: str | None,
        exchange: str | None,
    ) -> str:
        """Open a batch, then publish its members; see :meth:`Context.abatch`."""
        batch_id = batch_id or wire.new_message_id()
        tasks = list(members)
        spec = None
        if then is not None:
            # Only its routing, id and body: the status store publishes it, in
            # a trace of its own. This envelope's span is never ended, so never exported.
            env = self.core.envelope(then, exchange=exchange, correlation_id=batch_id)
            spec = Then(
                exchange=env.exchange,
                routing_key=env.routing_key,
                type=env.type,
                version=then.message_version,
                message_id=env.message_id,
                body=env.body.decode(),
            )
        opened = JobStatus(
            job_id=batch_id,
            state="started",
            at=timestamp(),
            type=BATCH_TYPE,
            batch_size=len(tasks),
            message=f"0 of {len(tasks)} done",
            then=spec,
        )
        # Unlike other status, a batch's opening must arrive: only the status
        # store can tell when its members finished. Unroutable raises.
        await self.apublish(opened, routing_key=batch_id)
        for start in range(0, len(tasks), BATCH_WINDOW):
            window = tasks[start : start + BATCH_WINDOW]
            await asyncio.gather(
                *(
                    self.apublish(t, exchange=exchange, batch_id=batch_id, correlation_id=batch_id)
                    for t in window
                )
            )
        return batch_id

    def status(self, event: JobStatus) -> None:
        """The same, from a sync handler's thread."""
        self._from_thread(self.astatus(event), "aprogress")

    def batch(
        self,
        members: Iterable[Message],
        then: Message | None,
        batch_id: str | None,
        exchange: str | None,
    ) -> str:
        """The same, from a sync handler's thread."""
        return self._from_thread(self.abatch(members, then, batch_id, exchange), "abatch")

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

    def batch(
        self,
        members: Iterable[Message],
        *,
        then: Message | None = None,
        batch_id: str | None = None,
        exchange: str | None = None,
    ) -> str:
        """Publish tasks as one batch, from a sync handler; returns the batch's job id.

        The batch is a job of its own in the status store, which counts its
        members as they finish ("37 of 100 done") and, once all of them did,
        publishes ``then`` (correlated with the batch) and closes the batch:
        succeeded, or failed with the members that failed. Members report their
        end whether or not their handler is tracked. Needs the status store
        (:mod:`leveret.status.app`) running. ``exchange`` overrides the message
        classes' exchange for the members and ``then``; each keeps its routing key.

        Raises:
            Unroutable: no status store is bound to ``leveret.status``.
        """
        return self._publisher().batch(members, then, batch_id, exchange)

    async def abatch(
        self,
        members: Iterable[Message],
        *,
        then: Message | None = None,
        batch_id: str | None = None,
        exchange: str | None = None,
    ) -> str:
        """The same, from an async handler."""
        return await self._publisher().abatch(members, then, batch_id, exchange)

    def _publisher(self) -> HandlerPublisher:
        if self.publisher is None:
            raise ConfigurationError("this context has no publisher (it is not in a worker)")
        return self.publisher

    def _correlated(self, options: dict[str, Any]) -> dict[str, Any]:
        options.setdefault("correlation_id", self.correlation_id or self.message_id)
        return options
