"""The status store's consumer: a leveret app that records every job status event.

Run it as any worker, next to the pipeline's own::

    LEVERET_STATUS_DB=postgresql+psycopg://app@db/app leveret worker leveret.status.app:app

It consumes ``leveret.status.store``, bound to the ``leveret.status`` exchange
for every job id, and writes each event into the :class:`JobStore` named by
``LEVERET_STATUS_DB`` (default ``sqlite:///leveret-jobs.db``). Records whose last
event is older than ``LEVERET_STATUS_TTL`` seconds (default 7 days) are deleted,
checked at most once a minute. When a batch closes, it publishes the batch's
``then`` message (with the batch id as correlation id) before it acks the event
that closed it. Its own failures (the database is down) go
through its retry tiers like any task's, and its dead-letter queue keeps what
could not be recorded.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from datetime import timedelta

import structlog

from leveret import tracing, wire
from leveret.consumers import App, Context
from leveret.status.events import EXCHANGE, JobStatus, Then
from leveret.status.store import DEFAULT_TTL, DEFAULT_URL, Closed, JobStore
from leveret.topology import Binding, Exchange, Queue, RetryPolicy, Topology

log = structlog.get_logger(__name__)

QUEUE = "leveret.status.store"
EXPIRE_EVERY = 60.0


def topology(queue: str = QUEUE) -> Topology:
    """The status exchange and the store's queue (every job id)."""
    return Topology(
        exchanges=(Exchange(EXCHANGE, "topic"),),
        queues=(
            Queue(
                queue,
                bindings=(Binding(EXCHANGE, "#"),),
                retry=RetryPolicy(delays=(1.0, 5.0, 30.0, 120.0), max_attempts=8),
            ),
        ),
    )


def build_app(
    store: Callable[[], JobStore] | JobStore | None = None,
    *,
    queue: str = QUEUE,
    ttl: timedelta | None = None,
) -> App:
    """The store's app. ``store`` may be a store, or a function that makes one on first use."""
    app = App(topology(queue))
    opened: list[JobStore] = [store] if isinstance(store, JobStore) else []
    guard = threading.Lock()
    expired_at = [0.0]
    keep = ttl or timedelta(seconds=float(os.environ.get("LEVERET_STATUS_TTL", 0))) or DEFAULT_TTL

    def the_store() -> JobStore:
        with guard:
            if not opened:
                make = store if callable(store) else _from_environment
                opened.append(make())
            return opened[0]

    @app.handler(JobStatus, queue=queue)
    def record(event: JobStatus, ctx: Context) -> None:
        jobs = the_store()

        def closed(batch: Closed) -> None:
            log.info(
                "status.batch_closed",
                batch_id=batch.batch_id,
                succeeded=batch.succeeded,
                failed=len(batch.failed),
                then=batch.then.type if batch.then else None,
            )
            if batch.then is not None and ctx.publisher is not None:
                ctx.publisher.send(then_envelope(batch.batch_id, batch.then))

        if not jobs.apply(event, ctx.message_id, on_close=closed):
            log.info("status.duplicate_event", job_id=event.job_id, event_id=ctx.message_id)
        if time.monotonic() - expired_at[0] > EXPIRE_EVERY:
            expired_at[0] = time.monotonic()
            removed = jobs.expire(keep)
            if removed:
                log.info("status.expired", jobs=removed, older_than_s=keep.total_seconds())

    return app


def then_envelope(batch_id: str, then: Then) -> wire.Envelope:
    """The message a closed batch publishes, correlated with the batch.

    It continues the current trace: the member's whose end closed the batch.
    """
    trace_headers, span = tracing.outgoing(
        {},
        exchange=then.exchange,
        routing_key=then.routing_key,
        message_id=then.message_id,
        type=then.type,
    )
    return wire.Envelope(
        exchange=then.exchange,
        routing_key=then.routing_key,
        body=then.body.encode(),
        message_id=then.message_id,
        type=then.type,
        headers={wire.VERSION: then.version, **trace_headers},
        timestamp=wire.now_seconds(),
        correlation_id=batch_id,
        span=span,
    )


def _from_environment() -> JobStore:
    return JobStore(os.environ.get("LEVERET_STATUS_DB", DEFAULT_URL))


app = build_app()
