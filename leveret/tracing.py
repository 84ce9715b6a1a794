"""W3C trace context on every message: one request followed through a whole pipeline.

Every message carries ``traceparent`` (``00-<trace-id>-<parent-id>-<flags>``)
and, when its parent had one, ``tracestate``. A message published while a
handler runs continues the delivery's trace (same trace-id and flags, a new
parent-id); one published outside any trace starts a new one. A delivery
without a valid ``traceparent`` is never an error: it starts a new trace. The
rules are in ``docs/contract.md`` ("Trace context"), the same for every language.

The pure rules (:func:`parse`, :func:`child`, :func:`root`) and the trace of
the code running now (:func:`current`) are here. With OpenTelemetry installed,
publishing and handling also make spans, whose ids are the ones the headers
carry; that code is in :mod:`leveret.otel`, imported on first use only.
"""

from __future__ import annotations

import contextlib
import random
import re
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from types import ModuleType
from typing import Any

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
NEW_TRACE_FLAGS = "01"
"""The flags of a trace that starts here: sampled."""

_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_ZERO_TRACE = "0" * 32
_ZERO_PARENT = "0" * 16


@dataclass(frozen=True, slots=True)
class TraceContext:
    """Where a message or a piece of work stands in a trace.

    Args:
        trace_id: 32 lowercase hex digits, never all zeros.
        parent_id: 16 lowercase hex digits, never all zeros: the span (the
            publish, the handling) that what follows is a child of.
        flags: 2 hex digits; ``01`` is sampled.
        state: the ``tracestate`` header, copied unchanged, or None.
    """

    trace_id: str
    parent_id: str
    flags: str = NEW_TRACE_FLAGS
    state: str | None = None

    @property
    def traceparent(self) -> str:
        """The ``traceparent`` header value."""
        return f"00-{self.trace_id}-{self.parent_id}-{self.flags}"

    def headers(self) -> dict[str, str]:
        """The trace headers of a message in this context."""
        found = {TRACEPARENT: self.traceparent}
        if self.state is not None:
            found[TRACESTATE] = self.state
        return found


def parse(traceparent: object, tracestate: object = None) -> TraceContext | None:
    """Read a ``traceparent`` header, and its ``tracestate``; None when it is not valid.

    Valid is version ``00`` exactly: lowercase hex of the right lengths, and
    neither the trace-id nor the parent-id all zeros. A ``tracestate`` is kept
    only with a valid ``traceparent`` (as W3C asks), and unchanged. AMQP clients
    hand a long string over as ``str`` or ``bytes``: both are read.
    """
    text = _text(traceparent)
    if text is None:
        return None
    found = _TRACEPARENT.fullmatch(text)
    if found is None:
        return None
    trace_id, parent_id, flags = found.groups()
    if trace_id == _ZERO_TRACE or parent_id == _ZERO_PARENT:
        return None
    return TraceContext(trace_id, parent_id, flags, _text(tracestate) or None)


def of(headers: Mapping[str, Any]) -> TraceContext | None:
    """The trace context a message's headers carry, or None (absent or malformed)."""
    return parse(headers.get(TRACEPARENT), headers.get(TRACESTATE))


def child(parent: TraceContext) -> TraceContext:
    """The context of a message sent on behalf of ``parent``: same trace, a parent-id of its own."""
    return TraceContext(parent.trace_id, _random_hex(8), parent.flags, parent.state)


def root() -> TraceContext:
    """A new trace: random trace-id and parent-id, sampled."""
    return TraceContext(_random_hex(16), _random_hex(8))


def _random_hex(size: int) -> str:
    # Unique, not secret: random (seeded from the system, and again after a
    # fork), as OpenTelemetry's own id generator does.
    while True:
        value = random.getrandbits(size * 8)
        if value:  # all zeros is the format's "invalid"
            return format(value, f"0{size * 2}x")


def _text(value: object) -> str | None:
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return value if isinstance(value, str) else None


# The trace of the code running now.

_CURRENT: ContextVar[TraceContext | None] = ContextVar("leveret_trace", default=None)


def current() -> TraceContext | None:
    """The trace the code running now belongs to, or None.

    Inside a handler, the delivery's (:func:`handle`). With OpenTelemetry, the
    active span's, when one is active and of the same trace (a span the
    handler made itself, or a web framework's request span outside any handler).
    """
    ours = _CURRENT.get()
    telemetry = _otel()
    if telemetry is not None:
        active: TraceContext | None = telemetry.active()
        if active is not None and (ours is None or active.trace_id == ours.trace_id):
            return active
    return ours


@contextlib.contextmanager
def continuing(context: TraceContext | None) -> Iterator[None]:
    """Make ``context`` the current trace for a block (None: no trace)."""
    token = _CURRENT.set(context)
    try:
        yield
    finally:
        _CURRENT.reset(token)


# Publishing


def outgoing(
    given: Mapping[str, Any], *, exchange: str, routing_key: str, message_id: str, type: str
) -> tuple[dict[str, str], Any]:
    """The trace headers of a message about to be published, and its producer span.

    The parent is the ``traceparent`` in the caller's ``headers=`` when it is
    valid (a web app passing on its request's trace), else :func:`current`; with
    no parent, the message starts a new trace.

    Returns:
        ``traceparent`` (and ``tracestate``), and the OpenTelemetry span to end
        once the message is sent (:func:`sent`), or None without OpenTelemetry.
    """
    parent = of(given) or current()
    span = None
    context = None
    telemetry = _otel()
    if telemetry is not None:
        span, context = telemetry.producer(
            parent, exchange=exchange, routing_key=routing_key, message_id=message_id, type=type
        )
    if context is None:
        context = child(parent) if parent is not None else root()
    return context.headers(), span


def sent(span: Any, error: BaseException | None = None) -> None:
    """End a publish's producer span (:func:`outgoing`): confirmed, or failed with ``error``."""
    if span is not None:
        telemetry = _otel()
        assert telemetry is not None  # a span was made, so it was imported
        telemetry.end_producer(span, error)


@contextlib.contextmanager
def sending(span: Any) -> Iterator[None]:
    """End a producer span when the block that sends its message ends, failed if it raised."""
    try:
        yield
    except BaseException as exc:
        sent(span, exc)
        raise
    sent(span)


# Handling


@dataclass(frozen=True, slots=True)
class Handling:
    """The trace of one delivery being handled.

    Args:
        context: the trace the handler runs in; what it publishes are children.
        span: the OpenTelemetry CONSUMER span, or None.
    """

    context: TraceContext
    span: Any = None

    @property
    def trace_id(self) -> str:
        """The delivery's trace-id, for its log lines."""
        return self.context.trace_id

    def failed(self, error: BaseException) -> None:
        """Record the handler's (or the message's) failure on the span."""
        if self.span is not None:
            telemetry = _otel()
            assert telemetry is not None
            telemetry.record_failure(self.span, error)

    def settled(self, outcome: str, reason: str | None = None) -> None:
        """End the span once the delivery is settled: processed, retrying or dead-lettered."""
        if self.span is not None:
            telemetry = _otel()
            assert telemetry is not None
            telemetry.end_consumer(self.span, outcome, reason)


def handle(queue: str, headers: Mapping[str, Any], **attributes: Any) -> Handling:
    """Enter the trace of a delivery, for the rest of the current context.

    The delivery's ``traceparent`` is the parent; without a valid one the
    delivery starts a new trace. Sets :func:`current` (and, with OpenTelemetry,
    the active span) without resetting it: call it in the delivery's own task,
    whose context ends with it, as the worker runs each delivery.

    Args:
        queue: the queue the delivery came from.
        headers: the delivery's headers.
        attributes: the delivery's facts for the span (``exchange``,
            ``routing_key``, ``message_id``, ``type``, ``attempt``).
    """
    parent = of(headers)
    span = None
    context = None
    telemetry = _otel()
    if telemetry is not None:
        span, context = telemetry.consumer(parent, queue=queue, **attributes)
    if context is None:
        context = parent if parent is not None else root()
    _CURRENT.set(context)
    return Handling(context, span)


# OpenTelemetry, when it can be imported.

_telemetry: ModuleType | None = None
_looked = False


def _otel() -> ModuleType | None:
    """:mod:`leveret.otel` when OpenTelemetry is installed, else None; imported once."""
    global _telemetry, _looked
    if not _looked:
        try:
            from leveret import otel
        except ImportError:
            otel = None  # type: ignore[assignment]
        _telemetry, _looked = otel, True
    return _telemetry
