"""The conformance message types: what any language's worker implements to be tested.

``leveret.conformance`` is a task that fails on purpose, so a harness can drive a
consumer through every path of the contract. A conformant handler:

1. sleeps ``sleep_ms`` milliseconds;
2. fails (a transient failure) while the attempt number is at most ``fail_times``;
3. otherwise, when ``receipt_exchange`` is set, publishes a
   ``leveret.conformance.receipt`` (with confirms) to that exchange and
   ``receipt_routing_key``, then returns, so the message is acked.

The receipt lets the harness count, by message id, how many times each task was
processed and on which attempt, whatever the language of the consumer.
"""

from __future__ import annotations

import time

from pydantic import Field

from leveret.consumers import App, Context
from leveret.messages import Message
from leveret.topology import Binding, Exchange, Queue, RetryPolicy, Topology

EXCHANGE = "leveret.demo"
ROUTING_KEY = "conformance"


class Conformance(
    Message, type="leveret.conformance", version=1, exchange=EXCHANGE, routing_key="conformance"
):
    """A task that fails on purpose: attempts up to ``fail_times`` fail."""

    fail_times: int = Field(default=0, ge=0)
    sleep_ms: int = Field(default=0, ge=0, le=600_000)
    note: str | None = None
    receipt_exchange: str | None = None
    receipt_routing_key: str | None = None


class Receipt(Message, type="leveret.conformance.receipt", version=1):
    """What a consumer publishes when it processed a conformance task."""

    message_id: str = Field(min_length=1)
    attempt: int = Field(ge=1)
    consumer: str = Field(min_length=1)


class ConformanceFailure(RuntimeError):
    """The failure a conformance task asks for."""


def handle(message: Conformance, ctx: Context) -> None:
    """The conformance handler: sleep, fail while asked to, then send the receipt.

    A sync handler on purpose: it runs in the worker's thread pool.
    """
    if message.sleep_ms:
        time.sleep(message.sleep_ms / 1000)
    if ctx.attempt <= message.fail_times:
        raise ConformanceFailure(
            f"failing on purpose: attempt {ctx.attempt} of {message.fail_times}"
        )
    if message.receipt_exchange is not None:
        receipt = Receipt(message_id=ctx.message_id, attempt=ctx.attempt, consumer="python")
        ctx.publish(
            receipt,
            exchange=message.receipt_exchange,
            routing_key=message.receipt_routing_key or "",
        )


def topology(queue: str) -> Topology:
    """The topology the conformance battery declares around a queue."""
    exchange = f"{queue}.ex"
    return Topology(
        exchanges=(Exchange(exchange),),
        queues=(
            Queue(
                queue,
                bindings=(Binding(exchange, ROUTING_KEY),),
                retry=RetryPolicy(delays=(0.2, 0.4), max_attempts=3),
            ),
        ),
    )


def app(queue: str) -> App:
    """A Python app that passes the battery on ``queue``."""
    conformant = App(topology(queue), messages=[Receipt])
    conformant.handler(Conformance, queue=queue)(handle)
    return conformant
