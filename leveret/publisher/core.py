"""What both publishers share: building the envelope and checking it.

No I/O here. :class:`leveret.publisher.Publisher` (:mod:`leveret.amqp.blocking`) and
:class:`leveret.publisher.AsyncPublisher` (:mod:`leveret.amqp`) only send what
:meth:`PublisherCore.envelope` builds, with :func:`amqp_properties`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from leveret import amqp, connection, tracing, wire
from leveret import delay as leveret_delay
from leveret.errors import BrokerUnavailable, ConfigurationError, MessageTooLarge
from leveret.messages import Message

DEFAULT_MAX_SIZE = wire.DEFAULT_MAX_SIZE

RECONNECT_TIMEOUT = 30.0
"""Seconds a publish keeps trying to reach the broker before it gives up."""

_TRACE = frozenset((tracing.TRACEPARENT, tracing.TRACESTATE))


class PublisherCore:
    """Settings and envelope rules shared by the sync and async publishers.

    :class:`~leveret.publisher.Publisher` and :class:`~leveret.publisher.AsyncPublisher`
    derive from it and add only their I/O loop.

    Args:
        urls: the broker URL, or several (a cluster's nodes).
        max_size: largest body in bytes; larger messages are refused before sending.
        reconnect_timeout: seconds to keep reconnecting before a publish fails.
        app_id: written into the ``app_id`` property, to tell publishers apart.
    """

    def __init__(
        self,
        urls: str | Sequence[str],
        *,
        max_size: int = DEFAULT_MAX_SIZE,
        reconnect_timeout: float = RECONNECT_TIMEOUT,
        app_id: str | None = None,
    ) -> None:
        self.urls = tuple(connection.split_urls(urls))
        self.max_size = max_size
        self.reconnect_timeout = reconnect_timeout
        self.app_id = app_id

    @property
    def where(self) -> str:
        """The broker addresses, redacted, for messages."""
        return connection.describe(self.urls)

    def envelope(
        self,
        message: Message,
        *,
        exchange: str | None = None,
        routing_key: str | None = None,
        message_id: str | None = None,
        correlation_id: str | None = None,
        headers: Mapping[str, Any] | None = None,
        delay: timedelta | None = None,
        at: datetime | None = None,
        batch_id: str | None = None,
    ) -> wire.Envelope:
        """Build the envelope of ``message``: body, routing, properties and headers.

        With ``delay`` or ``at``, the envelope goes to the delay levels, which
        hand the message to its exchange when it is due (:mod:`leveret.delay`).
        ``batch_id`` makes it a member of a batch (``Context.batch``).

        The message gets its ``traceparent`` here (:mod:`leveret.tracing`): a
        child of the one in ``headers`` when the caller passes one, else of the
        current trace (the delivery a handler is processing), else a new trace.
        With OpenTelemetry, a PRODUCER span starts here too; whoever sends the
        envelope ends it (:func:`leveret.tracing.sent`).

        Raises:
            ConfigurationError: no exchange or routing key, given or defaulted;
                a delay out of range, or both ``delay`` and ``at``.
            MessageTooLarge: the body exceeds ``max_size``.
        """
        if not isinstance(message, Message) or not hasattr(message, "message_type"):
            raise ConfigurationError(
                f"publish takes an instance of a Message subclass with a type and version, "
                f"got {type(message).__name__}"
            )
        exchange = exchange if exchange is not None else message.default_exchange
        routing_key = routing_key if routing_key is not None else message.default_routing_key
        if exchange is None or routing_key is None:
            raise ConfigurationError(
                f"{message.message_type} v{message.message_version}: no exchange or routing key; "
                "pass them to publish() or set them on the message class"
            )
        body = message.to_json()
        if len(body) > self.max_size:
            raise MessageTooLarge(
                f"{message.message_type} v{message.message_version}: body is {len(body)} bytes, "
                f"over the limit of {self.max_size}"
            )
        given = headers or {}
        # leveret-* headers belong to the contract: a caller cannot forge a retry
        # count or a failure reason. A caller's traceparent is a parent, not the
        # message's own: the trace headers are made below.
        all_headers = {
            k: v for k, v in given.items() if not k.startswith("leveret-") and k not in _TRACE
        }
        all_headers[wire.VERSION] = message.message_version
        if batch_id is not None:
            all_headers[wire.BATCH] = batch_id
        wait = 0 if delay is None and at is None else leveret_delay.seconds(delay, at)
        message_id = message_id or wire.new_message_id()
        # Last, once nothing can fail: a span started here ends when it is sent.
        trace_headers, span = tracing.outgoing(
            given,
            exchange=exchange,
            routing_key=routing_key,
            message_id=message_id,
            type=message.message_type,
        )
        all_headers.update(trace_headers)
        if wait:
            route = leveret_delay.route(exchange, wait)
            exchange = route.exchange
            all_headers.update(route.headers)
        return wire.Envelope(
            exchange=exchange,
            routing_key=routing_key,
            body=body,
            message_id=message_id,
            type=message.message_type,
            headers=all_headers,
            timestamp=wire.now_seconds(),
            correlation_id=correlation_id,
            span=span,
        )


def amqp_properties(env: wire.Envelope, app_id: str | None = None) -> amqp.Properties:
    """The AMQP properties of an envelope."""
    return amqp.Properties(
        content_type=env.content_type,
        delivery_mode=2,
        message_id=env.message_id,
        type=env.type,
        timestamp=int(env.timestamp),
        correlation_id=env.correlation_id,
        headers=env.headers,
        app_id=app_id,
    )


def envelopes(
    core: PublisherCore, messages: Iterable[Message], **options: Any
) -> list[wire.Envelope]:
    """The envelopes of ``messages``, all with the same options (``publish_many``)."""
    return [core.envelope(m, **options) for m in messages]


def gave_up(urls: Sequence[str], cause: BaseException | None) -> BrokerUnavailable:
    """The error of a publish that stopped reconnecting.

    The broker's refusal when that was the last thing that happened (a wrong
    password, a vhost not created yet), else the broker unreachable.
    """
    while cause is not None:
        if isinstance(cause, BrokerUnavailable):
            return BrokerUnavailable(str(cause))
        cause = cause.__cause__
    return BrokerUnavailable(connection.unreachable(urls))


def heartbeat(url: str) -> int:
    """The heartbeat interval a URL asks for (``?heartbeat=``), or leveret's default."""
    return int(dict(parse_qsl(urlsplit(url).query)).get("heartbeat", connection.HEARTBEAT))


def refusal(url: str, exc: amqp.ConnectionLost) -> BrokerUnavailable | None:
    """The error of a node that refused the credentials or the vhost, or None if it did not."""
    if isinstance(exc, amqp.AuthenticationFailed):
        return BrokerUnavailable(f"broker at {connection.redact(url)} refused the credentials")
    if exc.code == 530:  # NOT_ALLOWED: no such vhost, or not this user's
        return BrokerUnavailable(
            f"broker at {connection.redact(url)} denied access to the vhost: {exc.text}"
        )
    return None


def unroutable(env: wire.Envelope) -> str:
    """The message of :class:`~leveret.errors.Unroutable` for an envelope."""
    return (
        f"message {env.message_id} ({env.type}) is unroutable: no queue is bound to exchange "
        f"{env.exchange!r} with routing key {env.routing_key!r}"
    )


def missing_exchange(env: wire.Envelope) -> str:
    """The message of :class:`~leveret.errors.TopologyMissing` for a publish."""
    if leveret_delay.EXCHANGE_HEADER in env.headers:
        return (
            f"delay level {env.exchange!r} does not exist; set delayed=True on the "
            "topology and run `leveret topology apply`"
        )
    return f"exchange {env.exchange!r} does not exist; run `leveret topology apply`"
