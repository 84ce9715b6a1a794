"""leveret: task pipelines on RabbitMQ that workers in any language can join.

The nouns: :class:`Message` (a typed, versioned payload), :class:`Topology`
(exchanges, queues, retry tiers, dead-letter queues), :class:`Publisher` and
:class:`AsyncPublisher`, :class:`App` (handlers) and :class:`Worker`.
"""

from typing import TYPE_CHECKING, Any

from leveret.consumers import App, Context, Outcome, Worker
from leveret.errors import (
    BrokerUnavailable,
    ConfigurationError,
    DeadLetter,
    DecodeError,
    LeveretError,
    MessageError,
    MessageTooLarge,
    NotConfirmed,
    PublishError,
    Retry,
    SchemaViolation,
    TopologyError,
    TopologyMismatch,
    TopologyMissing,
    UnknownMessageType,
    UnknownVersion,
    Unroutable,
)
from leveret.messages import Message, Model
from leveret.publisher.aio import AsyncPublisher
from leveret.topology import Binding, Exchange, Queue, RetryPolicy, Topology

if TYPE_CHECKING:
    from leveret.publisher.sync import Publisher


def __getattr__(name: str) -> Any:
    # The blocking publisher (pika) loads on first use: a worker talks through
    # leveret.amqp only, and pika would add to every worker's memory.
    if name == "Publisher":
        from leveret.publisher.sync import Publisher

        return Publisher
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__version__ = "0.1.0"

__all__ = [
    "App",
    "AsyncPublisher",
    "Binding",
    "BrokerUnavailable",
    "ConfigurationError",
    "Context",
    "DeadLetter",
    "DecodeError",
    "Exchange",
    "LeveretError",
    "Message",
    "MessageError",
    "MessageTooLarge",
    "Model",
    "NotConfirmed",
    "Outcome",
    "PublishError",
    "Publisher",
    "Queue",
    "Retry",
    "RetryPolicy",
    "SchemaViolation",
    "Topology",
    "TopologyError",
    "TopologyMismatch",
    "TopologyMissing",
    "UnknownMessageType",
    "UnknownVersion",
    "Unroutable",
    "Worker",
]
