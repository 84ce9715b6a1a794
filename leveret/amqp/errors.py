"""What the AMQP client raises; translated into :mod:`leveret.errors` by its callers.

::

    AMQPError
    ├── ConnectionLost           the socket closed, the broker closed the connection,
    │   │                        or heartbeats stopped: every channel on it is gone
    │   └── AuthenticationFailed the broker refused the credentials
    ├── ChannelClosed            the broker closed one channel (reply code and text)
    │   ├── ChannelNotFound      404: a queue or exchange that does not exist
    │   └── ChannelAccessRefused 403: the user may not do that
    ├── Returned                 a mandatory publish that no queue took
    └── Nacked                   the broker did not take a publish (basic.nack)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

import structlog

log = structlog.get_logger(__name__)
E = TypeVar("E", bound="AMQPError")


def tell(callbacks: Iterable[Callable[[E], None]], error: E) -> None:
    """Call each close callback with the error that ended a connection or channel."""
    for callback in callbacks:
        try:
            callback(error)
        except Exception:  # a broken callback must not stop the others
            log.exception("amqp.close_callback_failed")


class AMQPError(Exception):
    """Base of the client's errors."""


class ConnectionLost(AMQPError):
    """The connection is gone; ``code`` and ``text`` say why when the broker closed it."""

    def __init__(self, text: str, code: int | None = None) -> None:
        super().__init__(f"{code} {text}" if code else text)
        self.code = code
        self.text = text


class AuthenticationFailed(ConnectionLost):
    """The broker refused the credentials."""


class ChannelClosed(AMQPError):
    """The broker closed a channel, with the reply code and text of ``channel.close``."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(f"{code} {text}")
        self.code = code
        self.text = text

    @staticmethod
    def of(code: int, text: str) -> ChannelClosed:
        """The exception for a reply code: the subclass where there is one."""
        kind = {404: ChannelNotFound, 403: ChannelAccessRefused}.get(code, ChannelClosed)
        return kind(code, text)


class ChannelNotFound(ChannelClosed):
    """404 NOT_FOUND: the queue or exchange does not exist."""


class ChannelAccessRefused(ChannelClosed):
    """403 ACCESS_REFUSED: the user's permissions do not allow it."""


class Returned(AMQPError):
    """A mandatory publish the broker returned: no queue is bound for its routing key."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(f"{code} {text}")
        self.code = code
        self.text = text


class Nacked(AMQPError):
    """The broker answered a publish with ``basic.nack``: it did not take the message."""
