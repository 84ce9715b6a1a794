"""Dramatiq with RabbitmqBroker and its default middleware, plus ``confirm_delivery=True``
(off by default) so that a send waits for the broker like every other system here.

Its queues are classic durable queues (``Q``, ``Q.DQ`` for delayed messages, ``Q.XQ`` for dead
ones); messages are persistent; a message is acked after the actor returned. Retry: the actor's
``min_backoff=10`` (ms) puts the first retry 10-20 ms later (jitter). Consumer: the ``dramatiq``
CLI with one worker process (``--processes 1``; its default would be one per core) and the
default 8 threads; prefetch is Dramatiq's default, twice the threads.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker

from bench import common
from bench.systems import Caller
from bench.systems import System as Base

THREADS = 8


def build(
    url: str, queue: str, *, confirm: bool = True, mode: str = "drain", records: str = ""
) -> Any:
    """The broker and the actor (the same definition in the publisher and the worker)."""
    broker = RabbitmqBroker(url=url, confirm_delivery=confirm)
    dramatiq.set_broker(broker)
    rec = common.Recorder(records)
    fail_first = mode == "retry"
    failed: set[str] = set()
    lock = threading.Lock()

    def bench_task(payload: dict[str, Any]) -> None:
        start = time.time()
        if fail_first:
            with lock:  # the first attempt of each id fails (one worker process: memory is enough)
                first = payload["id"] not in failed
                failed.add(payload["id"])
            if first:
                rec.fail(payload["id"], start)
                raise RuntimeError("first attempt fails on purpose")
        rec.ok(payload["id"], start, payload["sent"])

    actor = dramatiq.actor(
        bench_task,
        actor_name="bench_task",
        queue_name=queue,
        broker=broker,
        max_retries=3,
        min_backoff=10,
        max_backoff=1000,
    )
    return broker, actor


if os.environ.get("BENCH_QUEUE"):  # the worker process: the CLI imports this module
    broker, bench_task = build(
        os.environ["BENCH_URL"],
        os.environ["BENCH_QUEUE"],
        mode=common.env_mode(),
        records=os.environ["BENCH_RECORDS"],
    )


class _Caller(Caller):
    def __init__(self, actor: Any) -> None:
        self.actor = actor

    def send(self, payload: dict[str, Any]) -> Any:
        return self.actor.send(payload)


class _Batcher:
    def __init__(self, actor: Any) -> None:
        self.actor = actor

    def run(self, payloads: list[dict[str, Any]]) -> None:
        dramatiq.group([self.actor.message(common.stamp(p)) for p in payloads]).run()

    def close(self) -> None:
        pass


class System(Base):
    name = "dramatiq"
    batch_api = "dramatiq.group(...).run() (one confirmed publish after another)"
    retry_api = "max_retries=3, min_backoff=10 ms (delay queue Q.DQ, held by the worker)"

    def __init__(self, url: str, tag: str, params: dict[str, Any]) -> None:
        super().__init__(url, tag, params)
        self.broker, self.actor = build(url, self.queue)
        self.consumer_desc = (
            f"`dramatiq --processes 1 --threads {THREADS}`, prefetch {2 * THREADS}, classic queue"
        )

    def declare(self) -> None:
        self.broker.declare_queue(self.queue, ensure=True)

    def queues(self) -> list[str]:
        return [self.queue, f"{self.queue}.DQ", f"{self.queue}.XQ"]

    def caller(self) -> Caller:
        # The broker keeps a channel per thread: share it, as an app would.
        return _Caller(self.actor)

    def batcher(self, warm: bool = True) -> Any:
        if warm:
            self.actor.send(common.warm_payload())
        return _Batcher(self.actor)

    def prefill(self, payloads: list[dict[str, Any]]) -> None:
        # Untimed: without confirms, then the driver checks the queue's depth.
        fast = RabbitmqBroker(url=self.url, confirm_delivery=False)
        for p in payloads:
            fast.enqueue(self.actor.message(p))
        fast.close()
        dramatiq.set_broker(self.broker)

    def extract_id(self, body: bytes) -> str:
        return str(json.loads(body)["args"][0]["id"])

    def consumer_argv(self, python: str) -> list[str]:
        exe = str(Path(python).parent / "dramatiq")
        return [exe, "bench.systems.dramatiq_", "--processes", "1", "--threads", str(THREADS)]

    def close(self) -> None:
        self.broker.close()
