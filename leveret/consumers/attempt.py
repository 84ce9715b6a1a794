"""One attempt at a delivery, without I/O: from the delivery to the decision.

Enter the delivery's trace (:func:`leveret.tracing.handle`), resolve the
delivery (:meth:`App.resolve`), build the handler's :class:`Context`
(:func:`~leveret.consumers.delivery.context_for`), report a tracked job's start
and success, call the handler under its timeout (sync handlers on a thread),
and on any exception take the decision from :func:`leveret.retry.failure`.
The :class:`~leveret.consumers.Worker` and the in-memory broker of
:mod:`leveret.testing` both run deliveries through here; they differ only in
how they settle the decision.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from structlog.contextvars import bind_contextvars

from leveret import retry, tracing, wire
from leveret.consumers.app import App, Handler
from leveret.consumers.context import Context, HandlerPublisher
from leveret.consumers.delivery import context_for
from leveret.errors import SchemaViolation
from leveret.messages import Message
from leveret.status.events import EXCHANGE as STATUS_EXCHANGE
from leveret.status.events import JobStatus, State, timestamp
from leveret.topology import RetryPolicy

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Attempt:
    """What one attempt decided, the context of a tracked job (to report its end), its trace."""

    decision: retry.Decision
    tracked: Context | None = None
    trace: tracing.Handling | None = None


async def attempt(
    app: App,
    queue: str,
    delivery: wire.Delivery,
    *,
    publisher: HandlerPublisher | None,
    executor: Executor,
    consumer: str,
    max_size: int,
    can_report: bool,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> Attempt:
    """Run one delivery through its handler and decide how to settle it.

    The delivery's trace becomes the current one, and its message id, queue,
    attempt and trace id are bound to the log lines, for the rest of the
    caller's context: run each delivery in a task of its own, as the worker
    does, and call :func:`settled` after settling it, in the same task.

    Args:
        app: the handlers.
        queue: the queue the delivery came from.
        delivery: the delivery.
        publisher: what ``ctx.publish`` and the job status go through.
        executor: where sync handlers run.
        consumer: who fails it, for ``leveret-failed-by`` (``<queue>@<host>:<pid>``).
        max_size: the largest body accepted.
        can_report: the status exchange exists (batch members report their end).
        now: the time of a failure.
    """
    number = delivery.attempt
    trace = tracing.handle(
        queue,
        delivery.headers,
        exchange=delivery.exchange,
        routing_key=delivery.routing_key,
        message_id=delivery.message_id,
        type=delivery.type,
        attempt=number,
    )
    bind_contextvars(
        message_id=delivery.message_id, queue=queue, attempt=number, trace_id=trace.trace_id
    )
    tracked: Context | None = None
    member = isinstance(delivery.headers.get(wire.BATCH), str)
    if member and can_report:
        # A batch member reports its end even when it never reaches a handler
        # (invalid JSON, an unknown type): its batch counts on it.
        tracked = bare_context(queue, delivery, publisher)
    try:
        handler, message = app.resolve(queue, delivery, max_size=max_size)
        ctx = context_for(queue, delivery, message, publisher)
        if handler.track or tracked is not None:
            tracked = ctx
            await status(ctx, "started")
        elif member:
            log.error(
                "status.batch_member_unreported",
                hint=f"no {STATUS_EXCHANGE!r} exchange: apply a tracked app's topology",
            )
        result = await call(handler, message, ctx, executor)
        if tracked:
            # Before the ack: a crash in between repeats the task, never leaves
            # a finished job looking unfinished.
            await status(ctx, "succeeded", result=result if isinstance(result, str) else None)
        return Attempt(retry.Ack(), tracked, trace)
    except Exception as exc:  # every failure is settled, never raised
        trace.failed(exc)
        policy = app.topology.queue(queue).retry
        decision = retry.failure(
            delivery,
            queue,
            exc,
            consumer=consumer,
            max_attempts=policy.max_attempts,
            now=now(),
        )
        return Attempt(decision, tracked, trace)


def bare_context(
    queue: str, delivery: wire.Delivery, publisher: HandlerPublisher | None
) -> Context:
    """The context of a delivery that has no valid message yet (to report its status)."""
    return Context(
        message_id=delivery.message_id or "",
        type=delivery.type or "",
        version=delivery.version or 0,
        queue=queue,
        attempt=delivery.attempt,
        redelivered=delivery.redelivered,
        correlation_id=delivery.correlation_id,
        headers=delivery.headers,
        publisher=publisher,
    )


async def call(handler: Handler, message: Message, ctx: Context, executor: Executor) -> object:
    """Call a handler under its timeout: async ones on the loop, sync ones on ``executor``.

    Raises:
        TimeoutError: the handler ran past its timeout.
    """
    try:
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for wraps the
        # coroutine in one more task per call.
        async with asyncio.timeout(handler.timeout):
            if handler.is_async:
                result = handler.func(message, ctx)
                assert inspect.isawaitable(result)
                return await result
            # copy_context: the handler's log lines keep the delivery's bound context.
            run = contextvars.copy_context().run
            return await asyncio.get_running_loop().run_in_executor(
                executor, run, handler.func, message, ctx
            )
    except TimeoutError as exc:
        raise TimeoutError(
            f"handler {handler.name} exceeded its timeout of {handler.timeout}s"
        ) from exc


async def settled(
    done: Attempt, outcome: str, policy: RetryPolicy, *, now: datetime | None = None
) -> None:
    """After an attempt was settled: a tracked job is retrying, or failed for good.

    Then the delivery's span ends, with the outcome.
    """
    ctx = done.tracked
    failed = done.decision if isinstance(done.decision, retry.Republish) else None
    try:
        if ctx is None or failed is None:
            return
        if outcome == "retry_scheduled":
            due = (now or datetime.now(UTC)) + timedelta(seconds=policy.delay_for(ctx.attempt))
            await status(ctx, "retrying", error=failed.error, next_attempt_at=timestamp(due))
        elif outcome == "dead_lettered":
            await status(ctx, "failed", reason=failed.reason, error=failed.error)
    finally:
        if done.trace is not None:
            done.trace.settled(outcome, failed.reason if failed else None)


async def status(ctx: Context, state: State, **fields: Any) -> None:
    """Publish a tracked job's status through the context's publisher."""
    if ctx.publisher is None or not ctx.message_id:
        return
    batch = ctx.headers.get(wire.BATCH)
    common: dict[str, Any] = {
        "job_id": ctx.message_id,
        "state": state,
        "at": timestamp(),
        "type": ctx.type,
        "attempt": ctx.attempt,
        "batch_id": batch if isinstance(batch, str) else None,
    }
    try:
        event = JobStatus(**common, **fields)
    except SchemaViolation as exc:  # a result reference too long, say: report the state
        log.warning("status.invalid", state=state, error=str(exc))
        event = JobStatus(**common)
    await ctx.publisher.astatus(event)
