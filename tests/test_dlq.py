"""Dead-letter queues: list, replay, purge."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pika
import pytest

from leveret import Worker, connection, dlq, wire
from leveret.errors import TopologyMissing
from leveret.topology import dead_letter_queue
from tests.apps import Task
from tests.conftest import Pipeline


async def dead_letter(p: Pipeline, running: Callable[..., Worker], count: int) -> list[str]:
    """Publish tasks that always fail and wait until all are dead-lettered."""
    running()
    ids = [p.publish(Task(n=i, fail_times=99)) for i in range(count)]
    await p.wait(lambda: p.depth(dead_letter_queue(p.queue)) == count)
    return ids


async def test_list_shows_why_and_leaves_messages_in_place(
    pipeline: Pipeline, running: Callable[..., Worker]
) -> None:
    ids = await dead_letter(pipeline, running, 2)
    letters = dlq.browse(pipeline.url, pipeline.queue)
    assert sorted(str(d.message_id) for d in letters) == sorted(ids)  # both failed in parallel
    first = next(d for d in letters if d.message_id == ids[0])
    assert (first.type, first.version, first.attempts, first.reason) == (
        "test.task",
        1,
        3,
        "attempts-exhausted",
    )
    assert first.error == "task 0 fails on attempt 3"
    assert first.failed_at.startswith("20")
    assert pipeline.depth(dead_letter_queue(pipeline.queue)) == 2
    assert len(dlq.browse(pipeline.url, pipeline.queue, limit=1)) == 1


async def test_list_reads_a_plain_reject(pipeline: Pipeline) -> None:
    pipeline.publish(Task(n=1))
    pipeline.reject_one()
    await asyncio.sleep(0.1)
    (letter,) = dlq.browse(pipeline.url, pipeline.queue)
    assert (letter.reason, letter.attempts) == ("rejected", 1)


async def test_replay_resets_the_count_and_keeps_the_id(
    pipeline: Pipeline, running: Callable[..., Worker]
) -> None:
    ids = await dead_letter(pipeline, running, 3)
    replayed = dlq.replay(pipeline.url, pipeline.queue, ids=[ids[1]])
    assert replayed == [ids[1]]
    # Back in the work queue, failing again from attempt 1, while the others stay.
    await pipeline.wait(
        lambda: (
            [o.attempt for o in pipeline.outcomes if o.message_id == ids[1]] == [1, 2, 3, 1, 2, 3]
        )
    )
    await pipeline.wait(lambda: pipeline.depth(dead_letter_queue(pipeline.queue)) == 3)
    again = {d.message_id: d for d in dlq.browse(pipeline.url, pipeline.queue)}
    assert set(again) == set(ids)
    assert again[ids[1]].attempts == 3


async def test_replay_with_a_limit(pipeline: Pipeline, running: Callable[..., Worker]) -> None:
    await dead_letter(pipeline, running, 3)
    assert len(dlq.replay(pipeline.url, pipeline.queue, limit=2)) == 2


async def test_replay_goes_only_to_the_work_queue(pipeline: Pipeline) -> None:
    """Replayed copies skip the exchange: nothing else bound to the key sees them."""
    props = pika.BasicProperties(
        message_id="m-1",
        type="test.task",
        headers={wire.VERSION: 1, wire.RETRY_COUNT: 3, wire.REASON: "handler-error"},
        delivery_mode=2,
    )
    conn = connection.connect(pipeline.url)
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.basic_publish(f"{pipeline.queue}.dead", "", b'{"n": 1}', props, mandatory=True)
    finally:
        conn.close()
    assert dlq.replay(pipeline.url, pipeline.queue) == ["m-1"]
    got, body = pipeline.get(pipeline.queue)  # type: ignore[misc]
    assert got.message_id == "m-1"
    assert body == b'{"n": 1}'
    assert wire.RETRY_COUNT not in got.headers and wire.REASON not in got.headers
    assert got.headers[wire.VERSION] == 1


async def test_purge(pipeline: Pipeline, running: Callable[..., Worker]) -> None:
    await dead_letter(pipeline, running, 2)
    assert dlq.purge(pipeline.url, pipeline.queue) == 2
    assert pipeline.depth(dead_letter_queue(pipeline.queue)) == 0


def test_a_queue_that_does_not_exist_is_one_clear_error(
    broker_url: str, names: Callable[[str], str]
) -> None:
    missing = names("missing")
    with pytest.raises(
        TopologyMissing, match=rf"no queue '{missing}\.dlq'.*leveret topology apply"
    ):
        dlq.browse(broker_url, missing)
    with pytest.raises(TopologyMissing):
        dlq.purge(broker_url, missing)
