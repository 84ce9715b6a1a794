"""The demo pipeline shipped with leveret: ``leveret demo`` runs it end to end.

Two message types on one direct exchange:

* ``demo.export`` (versions 1 and 2): a report export, the seed of most web apps'
  first background job; version 2 adds optional columns, a compatible change.
* ``leveret.conformance`` (version 1): a task that fails ``fail_times`` times
  and sleeps ``sleep_ms`` milliseconds per attempt, to exercise the failure
  path on purpose; any language's worker can implement it in a few lines.

Retry tiers are short (1 s, 2 s; 3 attempts) so the demo finishes in seconds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Literal

import structlog
from pydantic import Field

from leveret import conformance
from leveret.conformance import Conformance, Receipt
from leveret.consumers import App, Context, Outcome, Worker
from leveret.messages import Message
from leveret.publisher import AsyncPublisher
from leveret.status import JobStatus
from leveret.topology import Binding, Exchange, Queue, RetryPolicy, Topology

log = structlog.get_logger(__name__)

EXCHANGE = "leveret.demo"
QUEUE = "leveret.demo.tasks"


class ExportRequested(
    Message, type="demo.export", version=1, exchange=EXCHANGE, routing_key="export"
):
    """A user asked for an export of their report."""

    user_id: int = Field(ge=1)
    format: Literal["csv", "xlsx"] = "csv"


class ExportRequestedV2(
    Message, type="demo.export", version=2, exchange=EXCHANGE, routing_key="export"
):
    """Version 2: the user may pick the columns."""

    user_id: int = Field(ge=1)
    format: Literal["csv", "xlsx"] = "csv"
    columns: list[str] | None = None


TOPOLOGY = Topology(
    exchanges=(Exchange(EXCHANGE),),
    queues=(
        Queue(
            QUEUE,
            bindings=(Binding(EXCHANGE, "export"), Binding(EXCHANGE, "conformance")),
            retry=RetryPolicy(delays=(1.0, 2.0), max_attempts=3),
        ),
    ),
)

app = App(TOPOLOGY, messages=[Receipt, JobStatus])


@app.handler(ExportRequested, ExportRequestedV2, queue=QUEUE, track=True)
async def export(message: ExportRequested | ExportRequestedV2, ctx: Context) -> str:
    """Pretend to build the export (a real one would stream rows to a file).

    Tracked: its status (started, progress, succeeded) goes to ``leveret.status``.
    """
    columns = getattr(message, "columns", None) or ["id", "name", "total"]
    for part in (1, 2):
        await asyncio.sleep(0.025)
        await ctx.aprogress(part * 50, f"wrote part {part} of 2")
    log.info("demo.export_written", user_id=message.user_id, format=message.format, columns=columns)
    return f"exports/{ctx.message_id}.{message.format}"


app.handler(Conformance, queue=QUEUE)(conformance.handle)


# --- running the demo ---------------------------------------------------------

DEMO_TIMEOUT = 50.0


def batch() -> list[tuple[Message, str]]:
    """The demo's messages, each with what should become of it."""
    return [
        (ExportRequested(user_id=1, format="csv"), "processed on attempt 1"),
        (
            ExportRequestedV2(user_id=2, format="xlsx", columns=["id", "total"]),
            "processed on attempt 1",
        ),
        (Conformance(note="succeeds at once"), "processed on attempt 1"),
        (Conformance(fail_times=1, note="fails once"), "processed on attempt 2"),
        (Conformance(fail_times=99, note="always fails"), "dead-letter queue after 3 attempts"),
    ]


async def run(urls: str | Sequence[str]) -> list[dict[str, str]]:
    """Run the demo: apply the topology, start a worker, publish, follow every message.

    Returns:
        One row per message: id, type, what was expected, where it ended.

    Raises:
        BrokerUnavailable: no broker to run against.
    """
    # Here, not at the top: both use pika, and `leveret worker` imports this
    # module for its default app without ever running the demo.
    from leveret import admin, dlq

    await asyncio.to_thread(admin.apply, urls, app.topology)
    finals: dict[str, Outcome] = {}
    done = asyncio.Event()
    ids: list[str] = []

    def record(outcome: Outcome) -> None:
        if outcome.message_id in ids and outcome.outcome in ("processed", "dead_lettered"):
            finals[outcome.message_id] = outcome
            if len(finals) == len(ids):
                done.set()

    worker = Worker(app, urls, concurrency=4, on_outcome=record)
    running = asyncio.create_task(worker.run())
    rows = []
    try:
        async with AsyncPublisher(urls) as publisher:
            for message, expected in batch():
                message_id = await publisher.publish(message)
                ids.append(message_id)
                rows.append(
                    {
                        "id": message_id,
                        "type": f"{message.message_type} v{message.message_version}",
                        "expected": expected,
                    }
                )
        await asyncio.wait_for(_until(done, running), DEMO_TIMEOUT)
    finally:
        worker.stop()
        await running
    in_dlq = {d.message_id: d for d in await asyncio.to_thread(dlq.browse, urls, QUEUE, limit=1000)}
    for row in rows:
        outcome = finals[row["id"]]
        if outcome.outcome == "processed":
            row["ended"] = f"processed on attempt {outcome.attempt}"
        elif row["id"] in in_dlq:
            dead = in_dlq[row["id"]]
            row["ended"] = (
                f"dead-letter queue after {dead.attempts} attempts ({dead.reason}: {dead.error})"
            )
        else:
            row["ended"] = "dead-lettered, but not found in the dead-letter queue"
    return rows


async def _until(done: asyncio.Event, running: asyncio.Task[None]) -> None:
    """Wait for ``done``, but fail at once if the worker died."""
    waiter = asyncio.create_task(done.wait())
    await asyncio.wait({waiter, running}, return_when=asyncio.FIRST_COMPLETED)
    if not done.is_set():
        waiter.cancel()
        running.result()  # raises the worker's error
        raise RuntimeError("the worker stopped before the demo finished")
