"""Exceptions raised by leveret.

Every exception leveret raises derives from :class:`LeveretError`, so one
``except LeveretError`` catches them all. pika's exceptions and those of
leveret's asyncio AMQP client (:mod:`leveret.amqp`) are translated at the
adapter boundary (``raise ... from exc``) and never leak.

    LeveretError
    ├── ConfigurationError          bad settings, a URL that cannot be parsed, an app not found
    ├── TopologyError               the broker's topology differs from, or lacks, what is described
    │   ├── TopologyMismatch        a queue or exchange exists with other arguments
    │   └── TopologyMissing         a queue or exchange the code needs does not exist
    ├── MessageError                a message that cannot be accepted as it is
    │   ├── DecodeError             the body is not JSON (or not UTF-8)
    │   │   └── InvalidContentType  the content type is missing or not application/json
    │   ├── UnknownMessageType      no model is registered for the type
    │   ├── UnknownVersion          the type is known, the version is not
    │   ├── SchemaViolation         the payload does not match the model's schema
    │   └── MessageTooLarge         the encoded body exceeds the size limit
    ├── PublishError                the broker did not take the message
    │   ├── Unroutable              no queue is bound for the exchange and routing key
    │   └── NotConfirmed            the broker nacked the message or never confirmed it
    ├── BrokerUnavailable           the broker cannot be reached, or refused the credentials
    └── AccessRefused               the user may not do this (a permission is missing)

Handlers may raise two control-flow signals that are not errors: :class:`Retry`
(retry now, through the queue's tiers) and :class:`DeadLetter` (give up now, with
a reason). They are logged as outcomes.
"""

from __future__ import annotations

import re


class LeveretError(Exception):
    """Base class of every exception leveret raises."""


class ConfigurationError(LeveretError):
    """Settings that cannot work: a bad URL, an app that cannot be imported."""


class TopologyError(LeveretError):
    """The broker's topology is not the one described."""


class TopologyMismatch(TopologyError):
    """An exchange or queue exists with arguments other than the described ones."""


class TopologyMissing(TopologyError):
    """An exchange or queue that the code relies on does not exist."""


class MessageError(LeveretError):
    """A message that cannot be accepted as it is.

    Attributes:
        reason: a stable, machine-readable reason (``invalid-json``,
            ``unknown-type``, ``unknown-version``, ``schema-violation``,
            ``too-large``); consumers record it in the ``leveret-reason`` header.
    """

    reason = "invalid-message"


class DecodeError(MessageError):
    """The body is not valid UTF-8 JSON."""

    reason = "invalid-json"


class InvalidContentType(DecodeError):
    """The content type is missing or is not ``application/json``."""

    reason = "invalid-content-type"


class UnknownMessageType(MessageError):
    """No model is registered (or handled) for the message type."""

    reason = "unknown-type"


class UnknownVersion(MessageError):
    """The message type is known but this version of it is not."""

    reason = "unknown-version"


class SchemaViolation(MessageError):
    """The payload does not match the schema of its type and version."""

    reason = "schema-violation"


class MessageTooLarge(MessageError):
    """The encoded message exceeds the configured size limit."""

    reason = "too-large"


class PublishError(LeveretError):
    """The broker did not take responsibility for a message."""


class Unroutable(PublishError):
    """The message was returned: no queue is bound for its exchange and routing key."""


class NotConfirmed(PublishError):
    """The broker nacked the message, or the connection dropped before the confirm."""


class BrokerUnavailable(LeveretError):
    """The broker cannot be reached, or it refused the connection."""


class AccessRefused(LeveretError):
    """The broker refused an operation: the user lacks a permission for it."""

    @classmethod
    def from_reply(cls, reply_text: object) -> AccessRefused:
        """Build the error from the broker's ``ACCESS_REFUSED - ...`` reply text."""
        text = str(reply_text)
        found = re.search(r"ACCESS_REFUSED - (.*?refused for user '[^']*')", text)
        text = found.group(1) if found else text.split("ACCESS_REFUSED - ", 1)[-1]
        return cls(
            f"access refused: {text}; see `leveret topology users` for the permissions a role needs"
        )


class Retry(Exception):
    """Raised by a handler to send the message down the retry path.

    Args:
        reason: why the attempt failed; recorded in the message's error headers.
    """

    def __init__(self, reason: str = "retry requested") -> None:
        super().__init__(reason)


class DeadLetter(Exception):
    """Raised by a handler to send the message to the dead-letter queue at once.

    Args:
        reason: why the message can never succeed; recorded in its headers.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
