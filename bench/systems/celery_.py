"""Celery on RabbitMQ (py-amqp), set to the same guarantees as the others: ``task_acks_late=True``
(Celery acks *before* running a task by default) and ``confirm_publish=True`` (off by default).

Messages are persistent, the queue a classic durable one, JSON serialisation, no result backend.
Retry: ``self.retry(countdown=0.01)`` (a new message with an ETA the worker holds in memory).
Consumer: ``celery worker`` with its default prefork pool and one child (``--concurrency 1``:
one process runs tasks, beside the main process that talks to the broker); prefetch is
Celery's default, 4 x concurrency. Log level is the CLI's default (WARNING).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from celery import Celery, group

from bench import common
from bench.systems import Caller
from bench.systems import System as Base

CONCURRENCY = 1


def build(
    url: str, queue: str, *, confirm: bool = True, mode: str = "drain", records: str = ""
) -> tuple[Any, Any]:
    """The app and the task (the same definition in the publisher and the worker)."""
    app = Celery("bench", broker=url, set_as_current=False)
    app.conf.update(
        task_acks_late=True,
        broker_transport_options={"confirm_publish": confirm},
        task_default_queue=queue,
        broker_connection_retry_on_startup=True,
    )
    rec = common.Recorder(records)
    fail_first = mode == "retry"

    @app.task(bind=True, name="bench_task", max_retries=3)
    def bench_task(self: Any, payload: dict[str, Any]) -> None:
        start = time.time()
        if fail_first and self.request.retries == 0:
            rec.fail(payload["id"], start)
            raise self.retry(countdown=0.01)
        rec.ok(payload["id"], start, payload["sent"])

    return app, bench_task


if os.environ.get("BENCH_QUEUE"):  # the worker process: `celery -A bench.systems.celery_`
    app, bench_task = build(
        os.environ["BENCH_URL"],
        os.environ["BENCH_QUEUE"],
        mode=common.env_mode(),
        records=os.environ["BENCH_RECORDS"],
    )


class _Caller(Caller):
    def __init__(self, task: Any) -> None:
        self.task = task

    def send(self, payload: dict[str, Any]) -> Any:
        return self.task.apply_async(args=(payload,))


class _Batcher:
    def __init__(self, task: Any) -> None:
        self.task = task

    def run(self, payloads: list[dict[str, Any]]) -> None:
        group(self.task.s(common.stamp(p)) for p in payloads).apply_async()

    def close(self) -> None:
        pass


class System(Base):
    name = "celery"
    batch_api = "celery.group(...).apply_async() (one producer, confirmed one by one)"
    retry_api = "self.retry(countdown=0.01) (ETA message held by the worker)"

    def __init__(self, url: str, tag: str, params: dict[str, Any]) -> None:
        super().__init__(url, tag, params)
        self.app, self.task = build(url, self.queue)
        self.consumer_desc = (
            f"`celery worker` prefork, concurrency {CONCURRENCY}, prefetch {4 * CONCURRENCY}, "
            "acks_late, classic queue"
        )

    def declare(self) -> None:
        with self.app.connection_for_write() as conn:
            self.app.amqp.queues[self.queue].bind(conn.default_channel).declare()

    def exchanges(self) -> list[str]:
        # The worker also declares Celery's fixed-name exchanges (remote control, events):
        # nothing else on a benchmark broker uses them, so they go too.
        return [self.queue, "celeryev", "celery.pidbox", "reply.celery.pidbox"]

    def caller(self) -> Caller:
        return _Caller(self.task)

    def batcher(self, warm: bool = True) -> Any:
        if warm:
            self.task.apply_async(args=(common.warm_payload(),))
        return _Batcher(self.task)

    def prefill(self, payloads: list[dict[str, Any]]) -> None:
        # Untimed: without confirms, then the driver checks the queue's depth.
        app, task = build(self.url, self.queue, confirm=False)
        with app.producer_or_acquire() as producer:
            for p in payloads:
                task.apply_async(args=(p,), producer=producer)
        app.close()

    def extract_id(self, body: bytes) -> str:
        return str(json.loads(body)[0][0]["id"])

    def consumer_argv(self, python: str) -> list[str]:
        exe = str(Path(python).parent / "celery")
        return [
            exe,
            "-A",
            "bench.systems.celery_",
            "worker",
            "--pool",
            "prefork",
            "--concurrency",
            str(CONCURRENCY),
            "--hostname",
            f"bench-{self.tag}@%h",
        ]

    def close(self) -> None:
        self.app.close()
