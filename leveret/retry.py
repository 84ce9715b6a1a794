"""Settling a delivery: the one pure decision behind ack, retry and dead-letter.

A consumer never needs the retry policy. On a transient failure it republishes
the message to ``<queue>.retry`` with the retry count plus one; the topology
routes it to the tier of that count, or (no tier bound for it) through the
alternate exchange to the dead-letter queue. On a permanent failure it
publishes to ``<queue>.dead``. Either way it acks the original only after the
republish is confirmed. This module builds those republishes; the I/O loops in
:mod:`leveret.consumers` perform them.
"""

from __future__ import annotations

import linecache
import traceback as tb
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from leveret import topology, wire
from leveret.errors import DeadLetter, MessageError

MAX_ERROR_MESSAGE = 1024
MAX_TRACEBACK = 4096
MAX_HEADER_VALUE = 1024
MAX_FRAMES = 40
"""Innermost frames written per exception: the header keeps only its last 4 KiB anyway."""
MAX_CHAIN = 3
"""Exceptions of a ``__cause__``/``__context__`` chain written, innermost last."""
MAX_HEADERS = 64 * 1024
"""Budget for a copy's header table. The properties must fit in one frame
(RabbitMQ's frame_max is 128 KiB by default): a copy that did not would close
the channel, and the message would come back again and again."""
_CAUSE = "\nThe above exception was the direct cause of the following exception:\n\n"
_CONTEXT = "\nDuring handling of the above exception, another exception occurred:\n\n"


@dataclass(frozen=True, slots=True)
class Ack:
    """Processed: acknowledge the delivery."""

    outcome: str = "processed"


@dataclass(frozen=True, slots=True)
class Republish:
    """Failed: publish this copy (with confirms), then ack the original.

    If the copy is not confirmed, the original is rejected without requeue, so
    the queue's own dead-letter exchange still keeps it.
    """

    exchange: str
    headers: dict[str, Any]
    outcome: str
    reason: str
    error: str

    routing_key: str = ""


Decision = Ack | Republish


def failure(
    delivery: wire.Delivery,
    queue: str,
    exc: BaseException,
    *,
    consumer: str,
    max_attempts: int | None = None,
    now: datetime | None = None,
) -> Republish:
    """Decide where a failed delivery goes.

    A :class:`~leveret.errors.MessageError` (bad JSON, unknown type or version,
    schema violation) or a :class:`~leveret.errors.DeadLetter` raised by the
    handler goes straight to the dead-letter queue; anything else is transient
    and goes down the retry path.

    Args:
        delivery: the failed delivery.
        queue: the queue it was consumed from (whose retry path it takes).
        exc: what went wrong.
        consumer: who failed it, for the ``leveret-failed-by`` header.
        max_attempts: the queue's policy, when the consumer knows it: only to
            label the outcome (the broker routes by the count either way).
        now: the failure time (for tests).
    """
    stamp = (now or datetime.now(UTC)).isoformat(timespec="milliseconds")
    permanent = isinstance(exc, MessageError | DeadLetter)
    if isinstance(exc, MessageError):
        reason = exc.reason
    elif isinstance(exc, DeadLetter):
        reason = "dead-letter"
    else:
        reason = wire.HANDLER_ERROR
    message = truncate(str(exc) or type(exc).__name__, MAX_ERROR_MESSAGE)
    # x- headers belong to the broker (x-death and friends); our own count is
    # the truth, so the copy carries none of them.
    headers = {k: v for k, v in delivery.headers.items() if not k.startswith("x-")}
    headers.update(
        {
            wire.RETRY_COUNT: delivery.retry_count + 1,
            wire.REASON: reason,
            wire.ERROR_TYPE: truncate(type(exc).__name__, MAX_HEADER_VALUE),
            wire.ERROR_MESSAGE: message,
            wire.LAST_FAILED_AT: stamp,
            wire.FAILED_BY: truncate(consumer, MAX_HEADER_VALUE),
            wire.FAILED_QUEUE: queue,
        }
    )
    headers.setdefault(wire.FIRST_FAILED_AT, stamp)
    headers.setdefault(wire.ORIGINAL_EXCHANGE, delivery.exchange)
    headers.setdefault(wire.ORIGINAL_ROUTING_KEY, delivery.routing_key)
    if exc.__traceback__ is not None and not permanent:
        headers[wire.ERROR_TRACEBACK] = truncate(format_traceback(exc), MAX_TRACEBACK, keep="end")
    else:
        headers.pop(wire.ERROR_TRACEBACK, None)
    fit(headers, MAX_HEADERS)
    if permanent:
        return Republish(
            exchange=topology.dead_exchange(queue),
            headers=headers,
            outcome="dead_lettered",
            reason=reason,
            error=message,
        )
    exhausted = max_attempts is not None and delivery.attempt >= max_attempts
    return Republish(
        exchange=topology.retry_exchange(queue),
        headers=headers,
        outcome="dead_lettered" if exhausted else "retry_scheduled",
        reason=reason,
        error=message,
    )


def format_traceback(exc: BaseException) -> str:
    """The stack trace of ``exc`` for a person reading a dead letter, made cheaply.

    The familiar shape (``File "...", line N, in f`` and the line's source, then
    ``Type: message``, with causes first), but without what makes
    :func:`traceback.format_exception` slow on Python 3.11+: it stats every
    source file again and parses each line with :mod:`ast` to draw ``^^^^``
    markers. Source lines come from :mod:`linecache` as already cached, and
    only the innermost :data:`MAX_FRAMES` frames of each exception are written.
    """
    chain: list[tuple[BaseException, str]] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    link = ""
    while current is not None and id(current) not in seen and len(chain) < MAX_CHAIN:
        seen.add(id(current))
        chain.append((current, link))
        if current.__cause__ is not None:
            current, link = current.__cause__, _CAUSE
        elif current.__context__ is not None and not current.__suppress_context__:
            current, link = current.__context__, _CONTEXT
        else:
            current = None
    parts: list[str] = []
    for error, link in reversed(chain):
        frames = list(tb.walk_tb(error.__traceback__))
        if frames:
            parts.append("Traceback (most recent call last):\n")
            if len(frames) > MAX_FRAMES:
                parts.append(f"  [{len(frames) - MAX_FRAMES} outer frames left out]\n")
                frames = frames[-MAX_FRAMES:]
            for frame, lineno in frames:
                code = frame.f_code
                parts.append(f'  File "{code.co_filename}", line {lineno}, in {code.co_name}\n')
                line = linecache.getline(code.co_filename, lineno, frame.f_globals).strip()
                if line:
                    parts.append(f"    {line}\n")
        text = str(error)
        parts.append(
            f"{type(error).__qualname__}: {text}\n" if text else f"{type(error).__qualname__}\n"
        )
        if link:
            parts.append(link)
    return "".join(parts)


def fit(headers: dict[str, Any], budget: int) -> None:
    """Shrink a header table in place until its encoded size is within ``budget``.

    The traceback goes first, then the largest application headers, whose names
    are recorded in ``leveret-dropped-headers``. leveret's own headers stay.
    """
    if encoded_size(headers) <= budget:
        return
    headers.pop(wire.ERROR_TRACEBACK, None)
    dropped = []
    own = {k for k in headers if k.startswith("leveret-")}
    by_size = sorted(
        (k for k in headers if k not in own), key=lambda k: -encoded_size({k: headers[k]})
    )
    for name in by_size:
        if encoded_size(headers) <= budget:
            break
        del headers[name]
        dropped.append(name)
    if dropped:
        headers[wire.DROPPED_HEADERS] = truncate(",".join(dropped), MAX_HEADER_VALUE)


def encoded_size(value: Any) -> int:
    """An upper bound of the AMQP field-table encoding of a header value, in bytes."""
    if isinstance(value, dict):
        return 4 + sum(1 + len(str(k).encode()) + 1 + encoded_size(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return 4 + sum(1 + encoded_size(v) for v in value)
    if isinstance(value, str):
        return 4 + len(value.encode("utf-8", errors="replace"))
    if isinstance(value, bytes):
        return 4 + len(value)
    return 9  # numbers, booleans, timestamps, decimals, void


def truncate(text: str, limit: int, *, keep: str = "start") -> str:
    """Cut ``text`` to at most ``limit`` UTF-8 bytes, marking the cut.

    Args:
        text: the text to cut.
        limit: the largest size in bytes.
        keep: ``"start"`` keeps the beginning, ``"end"`` the end (for tracebacks,
            whose last lines say the most).
    """
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    marker = "…[truncated]"
    room = limit - len(marker.encode("utf-8"))
    if keep == "end":
        return marker + data[-room:].decode("utf-8", errors="ignore")
    return data[:room].decode("utf-8", errors="ignore") + marker
