"""OpenTelemetry spans for publishing and handling, imported only when it is installed.

:mod:`leveret.tracing` imports this module on first use and falls back to its
pure rules when the import fails. A publish makes a PRODUCER span,
``<exchange> publish``; handling a delivery makes a CONSUMER span,
``<queue> process``, whose parent is the delivery's ``traceparent``. The ids of
those spans are the ones the messages carry, so a trace viewer shows a
pipeline across languages as one tree, even where a worker (Node, Ruby, Go)
sends no spans of its own. Attributes follow the messaging semantic
conventions. Until an application configures an SDK, no span is made and the
pure rules decide the headers.
"""

from __future__ import annotations

from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import (
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)

from leveret import __version__
from leveret.tracing import TraceContext

SYSTEM = "rabbitmq"
DEFAULT_EXCHANGE = "amq.default"
"""The destination name of the default exchange (``""``), as the conventions name it."""


def active() -> TraceContext | None:
    """The context of the active span, when there is a valid one."""
    found = trace.get_current_span().get_span_context()
    if not found.is_valid:
        return None
    return TraceContext(
        format(found.trace_id, "032x"),
        format(found.span_id, "016x"),
        format(found.trace_flags, "02x"),
        found.trace_state.to_header() or None,
    )


def producer(
    parent: TraceContext | None,
    *,
    exchange: str,
    routing_key: str,
    message_id: str,
    type: str,
) -> tuple[Span | None, TraceContext | None]:
    """Start the PRODUCER span of a publish.

    Returns:
        The span, and the context its message carries: the span's own; or no
        span and None without an SDK, for the pure rules to decide.
    """
    tracer = _tracer()
    if tracer is None:
        return None, None
    destination = exchange or DEFAULT_EXCHANGE
    span = tracer.start_span(
        f"{destination} publish",
        context=_parent(parent),
        kind=SpanKind.PRODUCER,
        attributes={
            "messaging.system": SYSTEM,
            "messaging.operation": "publish",
            "messaging.destination.name": destination,
            "messaging.rabbitmq.destination.routing_key": routing_key,
            "messaging.message.id": message_id,
            "leveret.message.type": type,
        },
    )
    return span, _own(span, parent)


def end_producer(span: Span, error: BaseException | None) -> None:
    """End a PRODUCER span: the broker confirmed the message, or ``error`` stopped it."""
    if error is not None:
        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, str(error) or type(error).__name__))
    span.end()


def consumer(
    parent: TraceContext | None,
    *,
    queue: str,
    exchange: str = "",
    routing_key: str = "",
    message_id: str | None = None,
    type: str | None = None,
    attempt: int = 1,
) -> tuple[Span | None, TraceContext | None]:
    """Start the CONSUMER span of a delivery and make it the active span.

    It stays active for the rest of the current context (the delivery's task),
    so spans the handler makes, and its publishes, are its children.

    Returns:
        The span, and the context the handler runs in (as :func:`producer`).
    """
    tracer = _tracer()
    if tracer is None:
        return None, None
    attributes: dict[str, Any] = {
        "messaging.system": SYSTEM,
        "messaging.operation": "process",
        "messaging.destination.name": exchange or DEFAULT_EXCHANGE,
        "messaging.rabbitmq.destination.routing_key": routing_key,
        "messaging.destination.subscription.name": queue,
        "leveret.attempt": attempt,
    }
    if message_id is not None:
        attributes["messaging.message.id"] = message_id
    if type is not None:
        attributes["leveret.message.type"] = type
    span = tracer.start_span(
        f"{queue} process", context=_parent(parent), kind=SpanKind.CONSUMER, attributes=attributes
    )
    # Never detached: the delivery's task, and its context, end with the delivery.
    otel_context.attach(trace.set_span_in_context(span))
    return span, _own(span, parent)


def record_failure(span: Span, error: BaseException) -> None:
    """Mark a CONSUMER span failed: the handler raised, or the message was invalid."""
    span.record_exception(error)
    span.set_status(Status(StatusCode.ERROR, str(error) or type(error).__name__))


def end_consumer(span: Span, outcome: str, reason: str | None) -> None:
    """End a CONSUMER span with what became of the delivery."""
    span.set_attribute("leveret.outcome", outcome)
    if reason is not None:
        span.set_attribute("leveret.reason", reason)
    if outcome in ("retry_scheduled", "dead_lettered"):
        span.add_event(f"leveret.{outcome}", {"leveret.reason": reason or ""})
    span.end()


_tracers: tuple[trace.TracerProvider, trace.Tracer] | None = None


def _tracer() -> trace.Tracer | None:
    """leveret's tracer from the provider in force at each call; None while there is no SDK.

    The API alone makes spans that record nothing and have no ids of their
    own: making them would cost every message time for nothing.
    """
    global _tracers
    provider = trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
        return None
    if _tracers is None or _tracers[0] is not provider:
        _tracers = (provider, provider.get_tracer("leveret", __version__))
    return _tracers[1]


def _parent(parent: TraceContext | None) -> otel_context.Context:
    # An empty context, not the current one, when there is no parent: the
    # caller already looked at the active span (tracing.current).
    if parent is None:
        return otel_context.Context()
    remote = SpanContext(
        trace_id=int(parent.trace_id, 16),
        span_id=int(parent.parent_id, 16),
        is_remote=True,
        trace_flags=TraceFlags(int(parent.flags, 16)),
        trace_state=TraceState.from_header([parent.state]) if parent.state else None,
    )
    return trace.set_span_in_context(NonRecordingSpan(remote), otel_context.Context())


def _own(span: Span, parent: TraceContext | None) -> TraceContext | None:
    made = span.get_span_context()
    if not made.is_valid or (parent is not None and made.span_id == int(parent.parent_id, 16)):
        return None  # the API without an SDK hands the parent back
    if parent is None:
        # A new trace: the sampler's decision is its flags (sampled or not,
        # and W3C's random-trace-id bit when the SDK sets it).
        return TraceContext(
            format(made.trace_id, "032x"),
            format(made.span_id, "016x"),
            format(made.trace_flags, "02x"),
        )
    # Within a trace the contract keeps the flags and the tracestate unchanged.
    return TraceContext(parent.trace_id, format(made.span_id, "016x"), parent.flags, parent.state)
