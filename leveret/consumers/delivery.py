"""Deliveries as :mod:`leveret.amqp` hands them over: reading them, settling them, reporting them.

The client-specific half of the worker: turning a delivery into the
client-neutral :class:`~leveret.wire.Delivery`, the properties of a retry or
dead-letter copy, and the :class:`Outcome` reported for each delivery.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import structlog

from leveret import amqp, retry, wire
from leveret.consumers.context import Context, HandlerPublisher
from leveret.messages import Message

log = structlog.get_logger("leveret.consumers.worker")


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to one delivery; logged, and passed to ``on_outcome``."""

    message_id: str | None
    type: str | None
    version: int | None
    queue: str
    attempt: int
    outcome: str
    duration: float
    reason: str | None = None
    error: str | None = None


class Acks:
    """The acks of one consuming channel, coalesced into ``basic.ack multiple=True``.

    Deliveries whose handlers finish in the same pass of the event loop are
    acked with one frame when that is safe: a multiple ack settles every
    unsettled delivery up to its tag, so it covers only tags below the lowest
    delivery still being processed. Acks above it go one by one. Nothing is
    held back: the frames are written within the pass that settled the
    deliveries, after the handlers returned, as before.

    Every delivery on the channel must be registered with :meth:`delivered`
    and leave through :meth:`ack` or :meth:`reject`. Frames are written the
    moment they are decided (writing does not wait), so a multiple ack never
    overtakes a single ack or a reject of a tag it covers.
    """

    def __init__(self, channel: amqp.Channel) -> None:
        self.channel = channel
        self._unsettled: set[int] = set()
        self._gathering: list[int] | None = None
        self._sent: asyncio.Future[None] | None = None

    def delivered(self, tag: int) -> None:
        """Count a delivery as unsettled until it is acked or rejected."""
        self._unsettled.add(tag)

    def reject(self, tag: int, *, requeue: bool) -> None:
        """Reject a delivery at once (``basic.reject``).

        Raises:
            leveret.amqp.AMQPError: the channel is closed; the delivery will come back.
        """
        self._unsettled.discard(tag)
        self.channel.basic_reject(tag, requeue=requeue)

    async def ack(self, tag: int) -> None:
        """Ack a processed delivery, with the others settled in this loop pass.

        Raises:
            leveret.amqp.AMQPError: the channel is closed; the delivery will come back.
        """
        if self._gathering is not None:  # another delivery's ack is gathering: join it
            self._gathering.append(tag)
            assert self._sent is not None
            await asyncio.shield(self._sent)
            return
        loop = asyncio.get_running_loop()
        self._gathering, sent = [tag], loop.create_future()
        self._sent = sent
        try:
            await asyncio.sleep(0)  # the deliveries settled in this pass join
            tags, self._gathering = self._gathering, None
            self._write(tags)
        except BaseException as exc:
            if self._sent is sent:
                self._gathering = None
            if isinstance(exc, asyncio.CancelledError):
                sent.cancel()
            else:
                sent.set_exception(exc)
                sent.exception()  # marked as retrieved: this task raises it too
            raise
        sent.set_result(None)

    def _write(self, tags: list[int]) -> None:
        tags.sort()
        self._unsettled.difference_update(tags)
        # Tags below every delivery still in a handler can go in one frame.
        floor = min(self._unsettled, default=None)
        covered = [t for t in tags if floor is None or t < floor]
        if covered:
            self.channel.basic_ack(covered[-1], multiple=len(covered) > 1)
        for tag in tags[len(covered) :]:
            self.channel.basic_ack(tag)


def to_delivery(dm: amqp.Deliver) -> wire.Delivery:
    """Turn a delivery into the client-neutral :class:`~leveret.wire.Delivery`."""
    props = dm.properties
    return wire.Delivery(
        body=dm.body,
        exchange=dm.exchange,
        routing_key=dm.routing_key,
        message_id=props.message_id,
        type=props.type,
        content_type=props.content_type,
        correlation_id=props.correlation_id,
        timestamp=props.timestamp,
        redelivered=dm.redelivered,
        headers=props.headers or {},
    )


def republished(props: amqp.Properties, headers: dict[str, Any]) -> amqp.Properties:
    """The properties of a retry or dead-letter copy: the original's, new headers.

    ``expiration`` is dropped (the tier's TTL decides) and so is ``user_id``
    (the broker checks it against the republishing connection's user).
    """
    return amqp.Properties(
        content_type=props.content_type,
        content_encoding=props.content_encoding,
        headers=headers,
        delivery_mode=2,
        priority=props.priority,
        correlation_id=props.correlation_id,
        reply_to=props.reply_to,
        message_id=props.message_id,
        timestamp=props.timestamp or int(time.time()),
        type=props.type,
        app_id=props.app_id,
    )


def context_for(
    queue: str, delivery: wire.Delivery, message: Message, publisher: HandlerPublisher | None
) -> Context:
    return Context(
        message_id=delivery.message_id or "",
        type=message.message_type,
        version=message.message_version,
        queue=queue,
        attempt=delivery.attempt,
        redelivered=delivery.redelivered,
        correlation_id=delivery.correlation_id,
        headers=delivery.headers,
        publisher=publisher,
    )


def report(
    queue: str, delivery: wire.Delivery, decision: retry.Decision, outcome: str, duration: float
) -> Outcome:
    """Log the one line of a settled delivery and return its :class:`Outcome`."""
    failed = decision if isinstance(decision, retry.Republish) else None
    record = Outcome(
        message_id=delivery.message_id,
        type=delivery.type,
        version=delivery.version,
        queue=queue,
        attempt=delivery.attempt,
        outcome=outcome,
        duration=duration,
        reason=failed.reason if failed else None,
        error=failed.error if failed else None,
    )
    fields: dict[str, Any] = {
        "outcome": outcome,
        "type": record.type,
        "version": record.version,
        "duration_ms": round(duration * 1000, 2),
    }
    if failed:
        fields.update(reason=record.reason, error=record.error)
    if outcome == "processed":
        log.info("message.processed", **fields)
    elif outcome == "dead_lettered":
        log.error("message.dead_lettered", **fields)
    else:
        log.warning(f"message.{outcome}", **fields)
    return record
