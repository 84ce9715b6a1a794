"""Message types and an app for tests, importable by worker subprocesses.

The queue and exchange names come from ``LEVERET_TEST_QUEUE`` and
``LEVERET_TEST_EXCHANGE`` so each test can run a worker process on names of its own.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

from pydantic import Field

from leveret import App, Binding, Context, Exchange, Message, Queue, RetryPolicy, Topology
from leveret.topology import QueueType


class Task(Message, type="test.task", version=1, routing_key="task"):
    """A task that sleeps, then fails ``fail_times`` times (or at random, or kills its process)."""

    n: int = 0
    fail_times: int = Field(default=0, ge=0)
    sleep_ms: int = Field(default=0, ge=0)
    fail_rate: float = Field(default=0.0, ge=0, le=1)
    exit_process: bool = False


class TaskV2(Message, type="test.task", version=2, routing_key="task"):
    """Version 2 of the test task."""

    n: int = 0
    fail_times: int = Field(default=0, ge=0)
    sleep_ms: int = Field(default=0, ge=0)
    fail_rate: float = Field(default=0.0, ge=0, le=1)
    exit_process: bool = False
    label: str = ""


def topology(
    queue: str,
    exchange: str,
    *,
    delays: tuple[float, ...] = (0.2, 0.4),
    max_attempts: int = 3,
    delivery_limit: int | None = 20,
    queue_type: QueueType = "quorum",
) -> Topology:
    """A one-queue topology on the given names."""
    return Topology(
        exchanges=(Exchange(exchange),),
        queues=(
            Queue(
                queue,
                bindings=(Binding(exchange, "task"),),
                retry=RetryPolicy(delays, max_attempts),
                queue_type=queue_type,
                delivery_limit=delivery_limit,
            ),
        ),
    )


def build_app(
    queue: str,
    exchange: str,
    *,
    marker_dir: str | None = None,
    delivery_limit: int | None = 20,
    queue_type: QueueType = "quorum",
) -> App:
    """An app whose sync handler sleeps and fails as the task says.

    With ``marker_dir``, the handler writes ``<n>.started`` (holding its process
    id) when it begins and ``<n>.done`` (holding the message id) when it ends, so
    a test can act in the middle of a handler.
    """
    app = App(topology(queue, exchange, delivery_limit=delivery_limit, queue_type=queue_type))

    @app.handler(Task, TaskV2, queue=queue)
    def handle(message: Task | TaskV2, ctx: Context) -> None:
        marker = Path(marker_dir) if marker_dir else None
        if marker:
            (marker / f"{message.n}.started").write_text(str(os.getpid()))
        if message.exit_process:
            os._exit(3)  # a handler that takes its worker down with it
        time.sleep(message.sleep_ms / 1000)
        if ctx.attempt <= message.fail_times:
            raise RuntimeError(f"task {message.n} fails on attempt {ctx.attempt}")
        if message.fail_rate and random.random() < message.fail_rate:
            raise RuntimeError(f"task {message.n} fails at random on attempt {ctx.attempt}")
        if marker:
            (marker / f"{message.n}.done").write_text(ctx.message_id)

    return app


def _from_environment() -> App | None:
    queue = os.environ.get("LEVERET_TEST_QUEUE")
    exchange = os.environ.get("LEVERET_TEST_EXCHANGE")
    if not queue or not exchange:
        return None
    limit = os.environ.get("LEVERET_TEST_DELIVERY_LIMIT")
    return build_app(
        queue,
        exchange,
        marker_dir=os.environ.get("LEVERET_TEST_MARKERS"),
        delivery_limit=int(limit) if limit else 20,
    )


app = _from_environment()
