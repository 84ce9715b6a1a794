"""Raw pika: the least a careful user writes by hand for the same guarantees.

Same queue type as leveret (quorum unless ``queue_type`` says otherwise), persistent messages,
publisher confirms, manual ack after the handler, ``json.loads`` of every body (no schema), no
log line. Retry by hand: republish to a TTL queue (10 ms) that dead-letters back, wait for the
confirm, then ack. Consumer: ``python -m bench.systems.pika_`` (BlockingConnection, one thread).
"""

from __future__ import annotations

import collections
import json
import os
import signal
import time
from typing import Any

import pika
import pika.exceptions

from bench import common
from bench.systems import Caller
from bench.systems import System as Base

PREFETCH = 8
"""Prefetch of the hand-written consumers: the same as leveret's default (its concurrency, 8)."""
WINDOW = 1000
RETRY_DELAY_MS = 10
PROPS = pika.BasicProperties(content_type="application/json", delivery_mode=2)


def queue_args(queue_type: str) -> dict[str, Any]:
    return {"x-queue-type": queue_type}


def delay_args(queue: str, queue_type: str) -> dict[str, Any]:
    return {
        "x-queue-type": queue_type,
        "x-message-ttl": RETRY_DELAY_MS,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": queue,
    }


class _BlockingCaller(Caller):
    """One BlockingConnection per thread (pika connections are not thread-safe)."""

    def __init__(self, url: str, queue: str) -> None:
        self.queue = queue
        self.conn = pika.BlockingConnection(pika.URLParameters(url))
        self.ch = self.conn.channel()
        self.ch.confirm_delivery()

    def send(self, payload: dict[str, Any]) -> Any:
        body = json.dumps(payload).encode()
        self.ch.basic_publish("", self.queue, body, PROPS, mandatory=True)

    def close(self) -> None:
        if self.conn.is_open:
            self.conn.close()


class _SelectBatcher:
    """pika's asynchronous SelectConnection: up to WINDOW unconfirmed publishes in flight."""

    def __init__(self, url: str, queue: str, warm: bool) -> None:
        self.queue = queue
        self.error: BaseException | None = None
        self.pending: collections.deque[int] = collections.deque()
        self.seq = 0
        self.nacked = 0
        self.returned = 0
        self.items: list[dict[str, Any]] = []
        self.i = 0
        self.conn = pika.SelectConnection(
            pika.URLParameters(url),
            on_open_callback=lambda c: c.channel(on_open_callback=self._channel),
            on_open_error_callback=self._failed,
            on_close_callback=lambda c, e: c.ioloop.stop(),
        )
        self.conn.ioloop.start()  # until the channel is in confirm mode
        if self.error is not None:
            raise self.error
        if warm:
            self.run([common.warm_payload()])

    def _failed(self, conn: Any, exc: BaseException) -> None:
        self.error = exc
        conn.ioloop.stop()

    def _channel(self, ch: Any) -> None:
        self.ch = ch
        ch.add_on_return_callback(self._on_return)
        ch.confirm_delivery(self._on_confirm, callback=lambda _f: self.conn.ioloop.stop())

    def _on_return(self, *_: Any) -> None:
        self.returned += 1

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        tag = method.delivery_tag
        if isinstance(method, pika.spec.Basic.Nack):
            self.nacked += 1
        if method.multiple:
            while self.pending and self.pending[0] <= tag:
                self.pending.popleft()
        elif self.pending and self.pending[0] == tag:
            self.pending.popleft()
        else:
            self.pending.remove(tag)
        self._fill()
        if not self.pending and self.i >= len(self.items):
            self.conn.ioloop.stop()

    def _fill(self) -> None:
        while self.i < len(self.items) and len(self.pending) < WINDOW:
            body = json.dumps(common.stamp(self.items[self.i])).encode()
            self.ch.basic_publish("", self.queue, body, PROPS, mandatory=True)
            self.seq += 1
            self.pending.append(self.seq)
            self.i += 1

    def run(self, payloads: list[dict[str, Any]]) -> None:
        self.items, self.i = payloads, 0
        self._fill()
        if self.pending:
            self.conn.ioloop.start()
        if self.nacked or self.returned:
            raise RuntimeError(f"{self.nacked} nacked, {self.returned} returned")

    def close(self) -> None:
        if self.conn.is_open:
            self.conn.close()
            self.conn.ioloop.start()


class System(Base):
    name = "pika"
    batch_api = f"SelectConnection, {WINDOW} unconfirmed in flight"
    retry_api = "by hand: republish to a 10 ms TTL queue, confirm, then ack"

    def __init__(self, url: str, tag: str, params: dict[str, Any]) -> None:
        super().__init__(url, tag, params)
        self.queue_type = params.get("queue_type") or "quorum"
        prefetch = params.get("prefetch") or PREFETCH
        self.consumer_desc = (
            f"BlockingConnection, one thread, prefetch {prefetch}, {self.queue_type} queue, "
            "json.loads"
        )

    def declare(self) -> None:
        self.declare_named(self.queue)

    def declare_named(self, queue: str) -> None:
        """The work queue and its 10 ms delay queue (also used by the aio-pika system)."""
        conn = pika.BlockingConnection(pika.URLParameters(self.url))
        ch = conn.channel()
        ch.queue_declare(queue, durable=True, arguments=queue_args(self.queue_type))
        ch.queue_declare(
            f"{queue}.delay", durable=True, arguments=delay_args(queue, self.queue_type)
        )
        conn.close()

    def queues(self) -> list[str]:
        return [self.queue, f"{self.queue}.delay"]

    def caller(self) -> Caller:
        return _BlockingCaller(self.url, self.queue)

    def batcher(self, warm: bool = True) -> Any:
        return _SelectBatcher(self.url, self.queue, warm)

    def extract_id(self, body: bytes) -> str:
        return str(json.loads(body)["id"])

    def consumer_argv(self, python: str) -> list[str]:
        return [python, "-m", "bench.systems.pika_"]


def consume() -> None:
    url, queue = os.environ["BENCH_URL"], os.environ["BENCH_QUEUE"]
    prefetch = int(os.environ.get("BENCH_PREFETCH") or PREFETCH)
    retry = common.env_mode() == "retry"
    rec = common.Recorder()
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    ch.basic_qos(prefetch_count=prefetch)
    pub = conn.channel()
    pub.confirm_delivery()
    delay_queue = f"{queue}.delay"

    def on_message(ch: Any, method: Any, props: Any, body: bytes) -> None:
        start = time.time()
        payload = json.loads(body)
        if retry and not (props.headers or {}).get("bench-retry"):
            rec.fail(payload["id"], start)
            copy = pika.BasicProperties(
                content_type=props.content_type, delivery_mode=2, headers={"bench-retry": 1}
            )
            try:
                pub.basic_publish("", delay_queue, body, copy, mandatory=True)
            except (pika.exceptions.NackError, pika.exceptions.UnroutableError):
                ch.basic_reject(method.delivery_tag, requeue=False)
                return
            ch.basic_ack(method.delivery_tag)
            return
        rec.ok(payload["id"], start, payload["sent"])
        ch.basic_ack(method.delivery_tag)

    ch.basic_consume(queue, on_message)
    signal.signal(signal.SIGTERM, lambda *_: conn.add_callback_threadsafe(ch.stop_consuming))
    ch.start_consuming()
    conn.close()


if __name__ == "__main__":
    consume()
