"""FastStream's RabbitBroker (on aio-pika) with a pydantic-typed subscriber, as its docs show.

Its defaults already confirm every publish and ack after the handler (``REJECT_ON_ERROR``); a
message is persistent only with ``persist=True`` and a queue durable only with ``durable=True``,
both set here. The queue is classic; the subscriber has no prefetch limit (FastStream's default);
the handler's argument is a pydantic model, so every body is validated; FastStream logs two
lines per message at INFO by default, kept (to a file). It has no delayed retry, so the retry
scenario does not apply. Consumer: ``python -m bench.systems.faststream_`` (``FastStream.run``).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any, Literal

from faststream import FastStream
from faststream.rabbit import RabbitBroker, RabbitQueue
from pydantic import BaseModel, Field

from bench import common
from bench.systems import System as Base

WINDOW = 1000


class BenchTask(BaseModel):
    id: str
    n: int = Field(ge=0)
    sent: float
    user_id: int = Field(ge=1)
    format: Literal["csv", "xlsx"] = "csv"
    pad: str = ""


def build(url: str, queue: str, records: str = "") -> tuple[RabbitBroker, RabbitQueue]:
    broker = RabbitBroker(url)
    rq = RabbitQueue(queue, durable=True)
    rec = common.Recorder(records)

    @broker.subscriber(rq)
    async def handle(body: BenchTask) -> None:
        rec.ok(body.id, time.time(), body.sent)

    return broker, rq


class _Caller:
    def __init__(self, broker: RabbitBroker, queue: RabbitQueue) -> None:
        self.broker, self.queue = broker, queue

    async def send(self, payload: dict[str, Any]) -> Any:
        return await self.broker.publish(payload, queue=self.queue, persist=True)

    async def close(self) -> None:
        pass


class _Batcher:
    def __init__(self, broker: RabbitBroker, caller: _Caller) -> None:
        self.broker, self.caller = broker, caller

    async def run(self, payloads: list[dict[str, Any]]) -> None:
        await common.in_window(self.caller.send, payloads, WINDOW)

    async def close(self) -> None:
        await self.broker.stop()


class System(Base):
    name = "faststream"
    is_async = True
    batch_async = True
    batch_api = f"{WINDOW} concurrent broker.publish() calls"
    concurrent_api = batch_api
    retry_api = None
    consumer_desc = "`FastStream.run`, default prefetch (unlimited), classic queue, pydantic model"

    def __init__(self, url: str, tag: str, params: dict[str, Any]) -> None:
        super().__init__(url, tag, params)
        self._broker: RabbitBroker | None = None
        self._caller: _Caller | None = None

    async def _open(self) -> tuple[RabbitBroker, _Caller]:
        broker = RabbitBroker(self.url)
        await broker.connect()
        rq = RabbitQueue(self.queue, durable=True)
        await broker.declare_queue(rq)
        return broker, _Caller(broker, rq)

    def declare(self) -> None:
        async def go() -> None:
            broker, _ = await self._open()
            await broker.stop()

        asyncio.run(go())

    async def acaller(self) -> Any:
        if self._caller is None:
            self._broker, self._caller = await self._open()
        return self._caller

    async def aclose(self) -> None:
        if self._broker is not None:
            await self._broker.stop()
            self._broker = None

    async def abatcher(self, warm: bool = True) -> Any:
        broker, caller = await self._open()
        if warm:
            await caller.send(common.warm_payload())
        return _Batcher(broker, caller)

    def extract_id(self, body: bytes) -> str:
        return str(json.loads(body)["id"])

    def consumer_argv(self, python: str) -> list[str]:
        return [python, "-m", "bench.systems.faststream_"]


if __name__ == "__main__":
    _broker, _ = build(
        os.environ["BENCH_URL"], os.environ["BENCH_QUEUE"], os.environ["BENCH_RECORDS"]
    )
    asyncio.run(FastStream(_broker).run())
