"""Delayed delivery without a broker plugin: binary delay levels.

A delay of ``d`` whole seconds is written in binary; level ``k`` waits ``2**k``
seconds. A message passes through the levels from its highest set bit down to
level 0 and waits only in the levels whose bit is set, so 5 s = 4 s + 1 s. Each
level is a queue with one fixed ``x-message-ttl``: every message in it waits
the same time, so none waits behind a longer one (a per-message TTL in a
shared queue would hold a short delay behind a long one at its head).

On the broker (declared by ``leveret topology apply`` when the topology has
``delayed=True``)::

    leveret.delay.<k>        headers exchange, k = 0 .. LEVELS-1: a message whose
                             header leveret-delay-<k> is 1 goes to queue
                             leveret.delay.<k>; any other falls through to its
                             alternate exchange, the next level down
    leveret.delay.<k>        queue, x-message-ttl 2**k s, dead-letters to the
                             exchange of level k-1 (level 0: leveret.delay.deliver)
    leveret.delay.deliver    headers exchange, bound to each exchange E of the
                             topology by leveret-delay-exchange = E; the message
                             keeps its routing key all the way, so E routes it as
                             if it had been published to E directly
    leveret.delay.unroutable fanout exchange and queue, the alternate exchange of
                             leveret.delay.deliver: a due message whose exchange
                             has no binding waits there, visible, not dropped

A publisher sends a delayed message to the exchange of its highest level with
the headers from :func:`route`. The queues are quorum queues that dead-letter
at least once, like the retry tiers, so nothing is lost on the way.

Accuracy: delays are whole seconds, rounded up, from 1 s to ``MAX_DELAY``
(``2**LEVELS - 1`` s, about 48 days). A message is due no earlier than asked;
each level it passes adds the broker's dead-lettering latency (milliseconds).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from leveret.errors import ConfigurationError

PREFIX = "leveret.delay"
LEVELS = 22
"""Delay levels 0 .. 21: the longest delay is 2**22 - 1 seconds, about 48 days.

Level 21's TTL, 2**21 s in milliseconds, is the largest power of two below
2**32 ms: a queue TTL beyond that exceeds what an Erlang timer can hold.
"""

MAX_DELAY = timedelta(seconds=2**LEVELS - 1)

EXCHANGE_HEADER = "leveret-delay-exchange"
"""The exchange a delayed message is published to once it is due."""

DUE_HEADER = "leveret-delay-due"
"""When the message is due, ISO 8601 UTC: for people and tools, not routing."""

DELIVER = f"{PREFIX}.deliver"
UNROUTABLE = f"{PREFIX}.unroutable"


def level_name(level: int) -> str:
    """The exchange and the queue of one delay level (the same name for both)."""
    return f"{PREFIX}.{level}"


def level_header(level: int) -> str:
    """The header that sends a message into a level's queue when it is 1."""
    return f"{PREFIX.replace('.', '-')}-{level}"


@dataclass(frozen=True)
class Route:
    """Where to publish a delayed message, and the headers that carry it down."""

    exchange: str
    headers: dict[str, Any]
    seconds: int


def seconds(delay: timedelta | None = None, at: datetime | None = None) -> int:
    """Whole seconds to wait, rounded up, for ``delay`` or until ``at`` (not both).

    A delay of zero, or a time in the past, is 0: publish at once.

    Raises:
        ConfigurationError: both or neither given, a naive ``at``, a negative
            delay, or one longer than ``MAX_DELAY``.
    """
    if (delay is None) == (at is None):
        raise ConfigurationError("give either delay= or at=, not both")
    if at is not None:
        if at.tzinfo is None or at.utcoffset() is None:
            raise ConfigurationError(f"at= must be timezone-aware, got the naive {at.isoformat()}")
        delay = max(at - datetime.now(UTC), timedelta(0))
    assert delay is not None
    if delay < timedelta(0):
        raise ConfigurationError(f"delay must not be negative, got {delay}")
    if delay > MAX_DELAY:
        raise ConfigurationError(f"delay {delay} is longer than the longest, {MAX_DELAY}")
    return math.ceil(delay.total_seconds())


def route(exchange: str, wait: int, *, now: datetime | None = None) -> Route:
    """The route of a message due in ``wait`` seconds (at least 1) to ``exchange``."""
    if not 1 <= wait < 2**LEVELS:
        raise ConfigurationError(f"a delay is 1 to {2**LEVELS - 1} seconds, got {wait}")
    due = (now or datetime.now(UTC)) + timedelta(seconds=wait)
    headers: dict[str, Any] = {
        EXCHANGE_HEADER: exchange,
        DUE_HEADER: due.isoformat(timespec="milliseconds"),
    }
    headers.update({level_header(k): 1 for k in range(LEVELS) if wait >> k & 1})
    return Route(level_name(wait.bit_length() - 1), headers, wait)


def level_binding(level: int) -> dict[str, Any]:
    """Binding arguments of a level's queue to the level's exchange."""
    return {"x-match": "all", level_header(level): 1}


def deliver_binding(exchange: str) -> dict[str, Any]:
    """Binding arguments of an exchange to ``leveret.delay.deliver``."""
    return {"x-match": "all", EXCHANGE_HEADER: exchange}


def level_names() -> list[str]:
    """Every level's name, from level 0."""
    return [level_name(k) for k in range(LEVELS)]
