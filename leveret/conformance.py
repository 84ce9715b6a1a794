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

from pydantic import Field

from leveret.messages import Message

EXCHANGE = "leveret.demo"


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
