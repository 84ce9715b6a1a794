"""What the in-memory broker holds: a message's properties, a queued message, a publish."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from leveret import wire


@dataclass(frozen=True)
class Properties:
    """The AMQP basic properties of a message, as a plain client sets them."""

    content_type: str | None = wire.CONTENT_TYPE
    content_encoding: str | None = None
    headers: dict[str, Any] = field(default_factory=dict)
    delivery_mode: int | None = 2
    priority: int | None = None
    correlation_id: str | None = None
    reply_to: str | None = None
    expiration: str | None = None
    """Milliseconds, as a string (AMQP's per-message TTL)."""
    message_id: str | None = None
    timestamp: int | None = None
    type: str | None = None
    user_id: str | None = None
    app_id: str | None = None

    @classmethod
    def of(cls, env: wire.Envelope, app_id: str | None = None) -> Properties:
        """The properties the publishers send for an envelope."""
        return cls(
            content_type=env.content_type,
            headers=dict(env.headers),
            message_id=env.message_id,
            type=env.type,
            timestamp=env.timestamp,
            correlation_id=env.correlation_id,
            app_id=app_id,
        )


@dataclass(frozen=True)
class Held:
    """A message in a queue, with the route it was delivered by.

    Args:
        seq: the order of arrival on the broker, across queues.
        due: the virtual time (seconds) at which it expires, or None.
    """

    body: bytes
    properties: Properties
    exchange: str
    routing_key: str
    seq: int
    due: float | None = None

    @property
    def headers(self) -> dict[str, Any]:
        """The message's headers."""
        return self.properties.headers

    def delivery(self) -> wire.Delivery:
        """The client-neutral delivery a consumer of this message sees."""
        p = self.properties
        return wire.Delivery(
            body=self.body,
            exchange=self.exchange,
            routing_key=self.routing_key,
            message_id=p.message_id,
            type=p.type,
            content_type=p.content_type,
            correlation_id=p.correlation_id,
            timestamp=p.timestamp,
            redelivered=False,
            headers=p.headers,
        )


@dataclass(frozen=True)
class Published:
    """One publish the broker took, by a test or by a handler (``ctx.publish``).

    Args:
        queues: where it landed; empty when it was unroutable (the publisher
            got :class:`~leveret.errors.Unroutable`, which job status events
            with no status store listening ignore).
        by: ``"test"``, or the queue whose handler published it.
    """

    exchange: str
    routing_key: str
    body: bytes
    properties: Properties
    queues: tuple[str, ...]
    by: str

    @property
    def type(self) -> str | None:
        """The message type."""
        return self.properties.type

    @property
    def message_id(self) -> str | None:
        """The message id."""
        return self.properties.message_id

    @property
    def headers(self) -> dict[str, Any]:
        """The headers."""
        return self.properties.headers

    @property
    def version(self) -> int | None:
        """The ``leveret-version`` header."""
        value = self.headers.get(wire.VERSION)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    def json(self) -> Any:
        """The body, decoded."""
        return json.loads(self.body)
