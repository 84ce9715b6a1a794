"""Raw aio-pika: the asyncio counterpart of :mod:`bench.systems.pika_`, the client under leveret's
AsyncPublisher and Worker.

Same queue type as leveret, persistent messages, confirms, manual ack after the handler,
``json.loads``, no schema and no log line; retry by hand through a 10 ms TTL queue.
Consumer: ``python -m bench.systems.aiopika_`` (prefetch 8, one event loop).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from typing import Any

import aio_pika

from bench import common
from bench.systems import System as Base
from bench.systems.pika_ import PREFETCH

WINDOW = 1000


def _message(payload: dict[str, Any]) -> aio_pika.Message:
    return aio_pika.Message(
        json.dumps(payload).encode(),
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
    )


class _Caller:
    """Callers share one connection and one confirm channel: asyncio callers are tasks."""

    def __init__(self, exchange: Any, queue: str) -> None:
        self.exchange, self.queue = exchange, queue

    async def send(self, payload: dict[str, Any]) -> Any:
        return await self.exchange.publish(_message(payload), self.queue, mandatory=True)

    async def close(self) -> None:
        pass


class _Batcher:
    def __init__(self, conn: Any, caller: _Caller) -> None:
        self.conn, self.caller = conn, caller

    async def run(self, payloads: list[dict[str, Any]]) -> None:
        await common.in_window(self.caller.send, payloads, WINDOW)

    async def close(self) -> None:
        await self.conn.close()


class System(Base):
    name = "aiopika"
    is_async = True
    batch_async = True
    batch_api = f"{WINDOW} concurrent publish() calls on one confirm channel"
    concurrent_api = batch_api
    retry_api = "by hand: republish to a 10 ms TTL queue, confirm, then ack"

    def __init__(self, url: str, tag: str, params: dict[str, Any]) -> None:
        super().__init__(url, tag, params)
        self.queue_type = params.get("queue_type") or "quorum"
        self._conn: Any = None
        self._caller: _Caller | None = None
        prefetch = params.get("prefetch") or PREFETCH
        self.consumer_desc = (
            f"one event loop, prefetch {prefetch}, {self.queue_type} queue, json.loads"
        )

    def declare(self) -> None:
        from bench.systems.pika_ import System as PikaSystem

        PikaSystem(self.url, self.tag, self.params).declare_named(self.queue)

    def queues(self) -> list[str]:
        return [self.queue, f"{self.queue}.delay"]

    async def _open(self) -> tuple[Any, _Caller]:
        conn = await aio_pika.connect(self.url)
        ch = await conn.channel(publisher_confirms=True, on_return_raises=True)
        return conn, _Caller(ch.default_exchange, self.queue)

    async def acaller(self) -> Any:
        if self._caller is None:
            self._conn, self._caller = await self._open()
        return self._caller

    async def aclose(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    async def abatcher(self, warm: bool = True) -> Any:
        conn, caller = await self._open()
        if warm:
            await caller.send(common.warm_payload())
        return _Batcher(conn, caller)

    def extract_id(self, body: bytes) -> str:
        return str(json.loads(body)["id"])

    def consumer_argv(self, python: str) -> list[str]:
        return [python, "-m", "bench.systems.aiopika_"]


async def consume() -> None:
    url, queue_name = os.environ["BENCH_URL"], os.environ["BENCH_QUEUE"]
    prefetch = int(os.environ.get("BENCH_PREFETCH") or PREFETCH)
    retry = common.env_mode() == "retry"
    rec = common.Recorder()
    conn = await aio_pika.connect(url)
    ch = await conn.channel()
    await ch.set_qos(prefetch_count=prefetch)
    pub = await conn.channel(publisher_confirms=True, on_return_raises=True)
    queue = await ch.get_queue(queue_name)
    delay_queue = f"{queue_name}.delay"

    async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        start = time.time()
        payload = json.loads(message.body)
        if retry and not (message.headers or {}).get("bench-retry"):
            rec.fail(payload["id"], start)
            copy = aio_pika.Message(
                message.body,
                content_type=message.content_type,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                headers={"bench-retry": 1},
            )
            try:
                await pub.default_exchange.publish(copy, delay_queue, mandatory=True)
            except aio_pika.exceptions.DeliveryError:
                await message.reject(requeue=False)
                return
            await message.ack()
            return
        rec.ok(payload["id"], start, payload["sent"])
        await message.ack()

    await queue.consume(on_message)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await conn.close()


if __name__ == "__main__":
    asyncio.run(consume())
