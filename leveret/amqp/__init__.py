"""leveret's own AMQP 0-9-1 client, under the worker and both publishers.

It does what those need and no more: an asyncio connection with heartbeats
(:mod:`~leveret.amqp.connection`), channels that consume, settle, declare
passively and publish with confirms (:mod:`~leveret.amqp.channel`), a blocking
confirm channel on a plain socket for the sync :class:`Publisher`
(:mod:`~leveret.amqp.blocking`, opened by :mod:`~leveret.amqp.handshake`), and
the frames they share (:mod:`~leveret.amqp.codec`). Deliveries go from the
socket to the consumer's callback in the same pass of the event loop, with the
frames of the hot path (deliver, content header, body, ack, publish) read and
written by hand; docs/performance.md has the figures that asked for it.
"""

from leveret.amqp.channel import Channel
from leveret.amqp.codec import Deliver, Properties
from leveret.amqp.connection import Connection, connect
from leveret.amqp.errors import (
    AMQPError,
    AuthenticationFailed,
    ChannelAccessRefused,
    ChannelClosed,
    ChannelNotFound,
    ConnectionLost,
    Nacked,
    Returned,
)

__all__ = [
    "AMQPError",
    "AuthenticationFailed",
    "Channel",
    "ChannelAccessRefused",
    "ChannelClosed",
    "ChannelNotFound",
    "Connection",
    "ConnectionLost",
    "Deliver",
    "Nacked",
    "Properties",
    "Returned",
    "connect",
]
