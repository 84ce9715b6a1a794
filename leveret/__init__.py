"""leveret: task pipelines on RabbitMQ that workers in any language can join.

The nouns: :class:`Message` (a typed, versioned payload), :class:`Topology`
(exchanges, queues, retry tiers, dead-letter queues), :class:`Publisher` and
:class:`AsyncPublisher`, :class:`App` (handlers) and :class:`Worker`.
"""

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
from leveret.publisher.sync import Publisher
from leveret.topology import Binding, Exchange, Queue, RetryPolicy, Topology

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
