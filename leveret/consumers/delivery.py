"""Deliveries as aiormq hands them over: reading them, settling them, reporting them.

The client-specific half of the worker: turning an aiormq delivery into the
client-neutral :class:`~leveret.wire.Delivery`, the properties of a retry or
dead-letter copy, and the :class:`Outcome` reported for each delivery.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiormq.abc
import structlog
from pamqp import commands as spec

from leveret import retry, wire
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


def delivery_tag(dm: aiormq.abc.DeliveredMessage) -> int:
    assert isinstance(dm.delivery, spec.Basic.Deliver)
    return int(dm.delivery.delivery_tag or 0)


def to_delivery(dm: aiormq.abc.DeliveredMessage) -> wire.Delivery:
    """Turn an aiormq delivery into the client-neutral :class:`~leveret.wire.Delivery`."""
    assert isinstance(dm.delivery, spec.Basic.Deliver)
    props = dm.header.properties
    stamp = props.timestamp
    return wire.Delivery(
        body=dm.body,
        exchange=dm.delivery.exchange or "",
        routing_key=dm.delivery.routing_key or "",
        message_id=props.message_id,
        type=props.message_type,
        content_type=props.content_type,
        correlation_id=props.correlation_id,
        timestamp=int(stamp.timestamp()) if isinstance(stamp, datetime) else None,
        redelivered=bool(getattr(dm.delivery, "redelivered", False)),
        headers=props.headers or {},
    )


def republished(props: spec.Basic.Properties, headers: dict[str, Any]) -> spec.Basic.Properties:
    """The properties of a retry or dead-letter copy: the original's, new headers.

    ``expiration`` is dropped (the tier's TTL decides) and so is ``user_id``
    (the broker checks it against the republishing connection's user).
    """
    return spec.Basic.Properties(
        content_type=props.content_type,
        content_encoding=props.content_encoding,
        headers=headers,
        delivery_mode=2,
        priority=props.priority,
        correlation_id=props.correlation_id,
        reply_to=props.reply_to,
        message_id=props.message_id,
        timestamp=props.timestamp or datetime.now(UTC),
        message_type=props.message_type,
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
    level = {"processed": log.info, "dead_lettered": log.error}.get(outcome, log.warning)
    level(f"message.{outcome}", **fields)
    return record
