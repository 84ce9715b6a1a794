"""leveret with its defaults: quorum queues, persistent messages, publisher confirms, ack after
the handler, schema validation of every body, one JSON log line per message.

The consumer, ``python -m bench.systems.leveret_``, does what ``leveret --json-logs worker``
does (configure JSON logs on stderr, build a :class:`~leveret.Worker` with concurrency 8 and run
it with signal handlers), through the library rather than the CLI module; its stderr (the JSON
log, one line per message) goes to a file. The app below is built from the environment.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from bench import common
from bench.systems import Caller
from bench.systems import System as Base
from leveret import (
    App,
    AsyncPublisher,
    Binding,
    Context,
    Exchange,
    Message,
    Queue,
    RetryPolicy,
    Topology,
    Worker,
    logs,
)
from leveret.consumers.worker import freeze_heap

if TYPE_CHECKING:
    from leveret import Publisher

RETRY = RetryPolicy(delays=(0.01, 0.1, 1.0), max_attempts=4)
"""The retry scenario's policy: the first retry after 10 ms."""
WINDOW = 1000
"""Concurrent publish() calls in flight in the concurrent scenario."""


class BenchTask(Message, type="bench.task", version=1, routing_key="task"):
    """The benchmark payload, validated strictly on both ends like any leveret message."""

    id: str
    n: int = Field(ge=0)
    sent: float
    user_id: int = Field(ge=1)
    format: Literal["csv", "xlsx"] = "csv"
    pad: str = ""


def topology(queue: str, queue_type: str = "quorum") -> Topology:
    return Topology(
        exchanges=(Exchange(f"{queue}.ex"),),
        queues=(
            Queue(
                queue,
                bindings=(Binding(f"{queue}.ex", "task"),),
                retry=RETRY,
                queue_type=queue_type,  # type: ignore[arg-type]
            ),
        ),
    )


def build_app(queue: str, mode: str, records: str, queue_type: str = "quorum") -> App:
    app = App(topology(queue, queue_type))
    rec = common.Recorder(records)
    fail_first = mode == "retry"

    @app.handler(BenchTask, queue=queue)
    async def handle(message: BenchTask, ctx: Context) -> None:
        start = time.time()
        if fail_first and ctx.attempt == 1:
            rec.fail(message.id, start)
            raise RuntimeError("first attempt fails on purpose")
        rec.ok(message.id, start, message.sent)

    return app


def _from_environment() -> App | None:
    queue = os.environ.get("BENCH_QUEUE")
    if not queue:
        return None
    return build_app(
        queue,
        common.env_mode(),
        os.environ["BENCH_RECORDS"],
        os.environ.get("BENCH_QUEUE_TYPE") or "quorum",
    )


app = _from_environment()


class _SyncCaller(Caller):
    def __init__(self, publisher: Publisher, exchange: str) -> None:
        self.publisher, self.exchange = publisher, exchange

    def send(self, payload: dict[str, Any]) -> Any:
        return self.publisher.publish(BenchTask(**payload), exchange=self.exchange)


class _Batcher:
    """``Publisher.publish_many``: every message sent, then every confirm awaited."""

    def __init__(self, pub: Publisher, exchange: str) -> None:
        self.pub, self.exchange = pub, exchange

    def run(self, payloads: list[dict[str, Any]]) -> None:
        self.pub.publish_many((BenchTask(**p) for p in payloads), exchange=self.exchange)

    def close(self) -> None:
        self.pub.close()


class _Concurrent:
    """Many concurrent ``AsyncPublisher.publish()`` calls: confirms pipelined on one channel."""

    def __init__(self, pub: AsyncPublisher, exchange: str) -> None:
        self.pub, self.exchange = pub, exchange

    async def send(self, payload: dict[str, Any]) -> Any:
        return await self.pub.publish(BenchTask(**payload), exchange=self.exchange)

    async def run(self, payloads: list[dict[str, Any]]) -> None:
        await common.in_window(self.send, payloads, WINDOW)

    async def close(self) -> None:
        await self.pub.close()


class System(Base):
    name = "leveret"
    batch_api = "Publisher.publish_many (all sent, then all confirms awaited)"
    concurrent_api = f"AsyncPublisher, {WINDOW} concurrent publish() calls"
    retry_api = "RetryPolicy(delays=(0.01, 0.1, 1.0)): TTL tier queue, confirm, then ack"

    def __init__(self, url: str, tag: str, params: dict[str, Any]) -> None:
        super().__init__(url, tag, params)
        # The driver's side (publishers): JSON lines at INFO on stderr, which the orchestrator
        # sends to a file, as an app embedding leveret would configure it.
        logs.configure(json=True, level="INFO")
        self.queue_type = params.get("queue_type") or "quorum"
        self.topology = topology(self.queue, self.queue_type)
        self.exchange = f"{self.queue}.ex"
        self._publisher: Publisher | None = None
        concurrency = params.get("concurrency") or 8
        prefetch = params.get("prefetch") or concurrency
        self.consumer_desc = (
            "`Worker` as `leveret worker` runs it, "
            f"concurrency {concurrency}, prefetch {prefetch}, "
            f"{self.queue_type} queue, async handler, JSON log to a file"
        )

    def declare(self) -> None:
        from leveret import admin

        admin.apply(self.url, self.topology)

    def queues(self) -> list[str]:
        q = self.topology.queues[0]
        return [self.queue, *(t for t, _ in q.tier_queues()), f"{self.queue}.dlq"]

    def exchanges(self) -> list[str]:
        return [self.exchange, f"{self.queue}.retry", f"{self.queue}.dead"]

    def caller(self) -> Caller:
        # One Publisher shared by every thread: what the README tells a Flask/Django app to do.
        from leveret import Publisher

        if self._publisher is None:
            self._publisher = Publisher(self.url)
        return _SyncCaller(self._publisher, self.exchange)

    def batcher(self, warm: bool = True) -> Any:
        from leveret import Publisher

        pub = Publisher(self.url)
        if warm:
            pub.publish(BenchTask(**common.warm_payload()), exchange=self.exchange)
        return _Batcher(pub, self.exchange)

    async def aconcurrent(self, warm: bool = True) -> Any:
        pub = AsyncPublisher(self.url)
        if warm:
            await pub.publish(BenchTask(**common.warm_payload()), exchange=self.exchange)
        return _Concurrent(pub, self.exchange)

    def extract_id(self, body: bytes) -> str:
        return str(json.loads(body)["id"])

    def consumer_argv(self, python: str) -> list[str]:
        return [python, "-m", "bench.systems.leveret_"]

    def close(self) -> None:
        if self._publisher is not None:
            self._publisher.close()


def consume() -> None:
    """What ``leveret --json-logs worker bench.systems.leveret_:app --concurrency 8`` does."""
    assert app is not None, "BENCH_QUEUE is not set"
    logs.configure(json=True, level="INFO")
    concurrency = int(os.environ.get("BENCH_CONCURRENCY") or 8)
    prefetch = int(os.environ.get("BENCH_PREFETCH") or 0) or None
    worker = Worker(app, os.environ["BENCH_URL"], concurrency=concurrency, prefetch=prefetch)
    freeze_heap()
    asyncio.run(worker.run(install_signal_handlers=True))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    consume()
