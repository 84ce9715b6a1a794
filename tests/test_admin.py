"""Declaring, verifying and inspecting the topology on the real broker."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace

import aio_pika
import pamqp.commands
import pamqp.encode
import pika
import pytest

from leveret import Publisher, RetryPolicy, admin, connection, wire
from leveret.errors import TopologyMismatch, TopologyMissing
from leveret.topology import dead_letter_queue
from tests import apps
from tests.conftest import Pipeline


def test_apply_is_idempotent(pipeline: Pipeline) -> None:
    first = admin.apply(pipeline.url, pipeline.topology)
    assert admin.apply(pipeline.url, pipeline.topology) == first
    admin.verify(pipeline.url, pipeline.topology)


def test_changed_arguments_give_one_line_that_says_what_differs(pipeline: Pipeline) -> None:
    changed = apps.topology(pipeline.queue, pipeline.exchange, delays=(0.2, 0.5))
    with pytest.raises(TopologyMismatch) as caught:
        admin.apply(pipeline.url, changed)
    message = str(caught.value)
    assert "\n" not in message
    assert "x-message-ttl" in message
    assert message.startswith(f"queue '{pipeline.queue}.retry.2' exists with other arguments")


def test_changed_queue_type_is_reported(pipeline: Pipeline) -> None:
    queue = replace(pipeline.topology.queues[0], queue_type="classic")
    changed = replace(pipeline.topology, queues=(queue,))
    with pytest.raises(
        TopologyMismatch,
        match=rf"queue '{pipeline.queue}.dlq' exists with other arguments.*x-queue-type",
    ):
        admin.apply(pipeline.url, changed)


def test_verify_names_everything_missing(broker_url: str, names: Callable[[str], str]) -> None:
    top = apps.topology(names("absent"), names("ex"))
    with pytest.raises(TopologyMissing) as caught:
        admin.verify(broker_url, top)
    text = str(caught.value)
    for what in ("work'", "work.retry'", "work.dead'", "work.dlq'"):
        assert what.replace("work", "absent") in text
    assert "leveret topology apply" in text


def test_stats_list_work_retry_and_dead_letter_queues(pipeline: Pipeline) -> None:
    pipeline.publish(apps.Task(n=1))
    rows = admin.stats(pipeline.url, pipeline.topology)
    assert [(r.name, r.role, r.messages) for r in rows] == [
        (pipeline.queue, "work", 1),
        (f"{pipeline.queue}.retry.1", "retry 200ms", 0),
        (f"{pipeline.queue}.retry.2", "retry 400ms", 0),
        (dead_letter_queue(pipeline.queue), "dead-letter", 0),
    ]


async def test_lowering_max_attempts_removes_the_old_bindings(pipeline: Pipeline) -> None:
    """A count that no longer has a tier must fall through to the dead-letter queue."""
    queue = replace(pipeline.topology.queues[0], retry=RetryPolicy((0.2, 0.4), max_attempts=2))
    admin.apply(pipeline.url, replace(pipeline.topology, queues=(queue,)))
    # A consumer's second failure: count 2, which was bound to tier 2 before.
    conn = connection.connect(pipeline.url)
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.basic_publish(
            f"{pipeline.queue}.retry",
            "",
            b"{}",
            pika.BasicProperties(headers={wire.RETRY_COUNT: 2}, delivery_mode=2),
            mandatory=True,
        )
    finally:
        conn.close()
    await asyncio.sleep(0.2)
    assert pipeline.depth(dead_letter_queue(pipeline.queue)) == 1
    assert pipeline.depth(f"{pipeline.queue}.retry.2") == 0


async def test_retry_count_routes_as_an_integer_of_any_width(pipeline: Pipeline) -> None:
    """The headers exchange compares integer values, whatever AMQP width a client sends.

    pika writes 1 as a 32-bit field (as the bindings were declared), aiormq as an
    8-bit one; both must reach tier 1. A string "1" must not: it falls through.
    """
    assert pamqp.encode.table_integer(1)[:1] == b"b"  # aiormq's width for 1
    conn = connection.connect(pipeline.url)
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        for value in (1, "1"):
            ch.basic_publish(
                f"{pipeline.queue}.retry",
                "",
                b"{}",
                pika.BasicProperties(headers={wire.RETRY_COUNT: value}, delivery_mode=2),
                mandatory=True,
            )
    finally:
        conn.close()
    aio = await aio_pika.connect(pipeline.url)
    try:
        ch2 = await (await aio.channel()).get_underlay_channel()
        await ch2.basic_publish(
            b"{}",
            exchange=f"{pipeline.queue}.retry",
            routing_key="",
            properties=pamqp.commands.Basic.Properties(headers={wire.RETRY_COUNT: 1}),
        )
    finally:
        await aio.close()
    # Tier 1 holds them 200 ms, then hands them back to the work queue.
    await asyncio.sleep(0.6)
    assert pipeline.depth(pipeline.queue) == 2
    assert pipeline.depth(dead_letter_queue(pipeline.queue)) == 1


def test_publisher_needs_no_configure_permission(pipeline: Pipeline) -> None:
    """Publishing never declares: it works against a topology applied by someone else."""
    with Publisher(pipeline.url) as pub:
        pub.publish(apps.Task(n=1), exchange=pipeline.exchange)
    assert pipeline.depth(pipeline.queue) == 1
