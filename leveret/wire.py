"""The wire format: AMQP properties and headers, the same for every language.

``docs/contract.md`` is the prose version of this module. Header names carry no
``x-`` prefix on purpose: RabbitMQ's headers exchange ignores binding arguments
that start with ``x-``, and the retry count is routed on.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

CONTENT_TYPE = "application/json"

VERSION = "leveret-version"
"""Schema version of the body, an integer."""
RETRY_COUNT = "leveret-retry-count"
"""Failed attempts so far, an integer; absent (0) on the first delivery."""
REASON = "leveret-reason"
"""Why the last attempt failed: ``handler-error`` or a permanent reason."""
ERROR_TYPE = "leveret-error-type"
ERROR_MESSAGE = "leveret-error-message"
ERROR_TRACEBACK = "leveret-error-traceback"
FIRST_FAILED_AT = "leveret-first-failed-at"
LAST_FAILED_AT = "leveret-last-failed-at"
FAILED_BY = "leveret-failed-by"
FAILED_QUEUE = "leveret-failed-queue"
ORIGINAL_EXCHANGE = "leveret-original-exchange"
ORIGINAL_ROUTING_KEY = "leveret-original-routing-key"

DROPPED_HEADERS = "leveret-dropped-headers"
"""Names of application headers left out of a retry copy to keep it within a frame."""
BATCH = "leveret-batch-id"
"""Set on each member of a batch: the batch's job id (see leveret.status)."""

DEFAULT_MAX_SIZE = 1024 * 1024
"""Largest body published or accepted by default (1 MiB): queues are for tasks, not files."""

HANDLER_ERROR = "handler-error"
"""The reason recorded for a transient failure (an exception in a handler)."""


@dataclass(frozen=True, slots=True)
class Envelope:
    """A message ready to publish: body, routing and the contract's properties.

    The sync and async publishers both turn an :class:`Envelope` into their
    client's message object; nothing else differs between them.
    """

    exchange: str
    routing_key: str
    body: bytes
    message_id: str
    type: str
    headers: dict[str, Any]
    timestamp: int
    correlation_id: str | None = None
    content_type: str = CONTENT_TYPE
    span: Any = field(default=None, compare=False, repr=False)
    """The OpenTelemetry PRODUCER span of this publish, or None: ended by whoever
    sends the envelope, once the broker confirmed it (``leveret.tracing.sent``)."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """A received message, client-neutral: what the consumer core decides on."""

    body: bytes
    exchange: str
    routing_key: str
    message_id: str | None = None
    type: str | None = None
    content_type: str | None = None
    correlation_id: str | None = None
    timestamp: int | None = None
    redelivered: bool = False
    headers: Mapping[str, Any] = field(default_factory=dict)

    @property
    def version(self) -> int | None:
        """The schema version header, when it is an integer."""
        value = self.headers.get(VERSION)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @property
    def retry_count(self) -> int:
        """Failed attempts before this delivery (0 on the first)."""
        value = self.headers.get(RETRY_COUNT, 0)
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    @property
    def attempt(self) -> int:
        """The number of this attempt, from 1."""
        return self.retry_count + 1


_UUID4_CLEAR = ~((0xF << 76) | (0x3 << 62))
_UUID4_SET = (0x4 << 76) | (0x2 << 62)


def new_message_id() -> str:
    """Return a fresh message id (a UUID4 string).

    The 122 random bits come from :mod:`random` (seeded from the system's
    randomness, and again in a forked child), as OpenTelemetry's ids do: an id
    must be unique, not secret, and this is five times faster than
    :func:`uuid.uuid4`, which asks the kernel each time.
    """
    h = "%032x" % (random.getrandbits(128) & _UUID4_CLEAR | _UUID4_SET)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def now_seconds() -> int:
    """Return the AMQP timestamp for now (whole seconds since the epoch)."""
    return int(time.time())
