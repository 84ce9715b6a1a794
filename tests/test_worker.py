"""The worker against the real broker: ack after processing, retries, dead letters."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable
from typing import Any

import pika
import pytest
from structlog.contextvars import merge_contextvars
from structlog.testing import capture_logs

from leveret import (
    App,
    Binding,
    Context,
    DeadLetter,
    Exchange,
    Outcome,
    Publisher,
    Queue,
    Retry,
    RetryPolicy,
    Topology,
    Worker,
    admin,
    amqp,
    connection,
    wire,
)
from leveret.consumers import worker as worker_module
from leveret.consumers.worker import freeze_heap
from leveret.errors import BrokerUnavailable, ConfigurationError, TopologyMissing
from leveret.topology import dead_letter_queue, retry_exchange
from tests import apps
from tests.apps import Task, TaskV2
from tests.conftest import Pipeline, rabbitmqctl, refusing


def raw_publish(
    p: Pipeline,
    body: bytes,
    *,
    type: str | None = "test.task",
    headers: dict[str, Any] | None = None,
    content_type: str | None = "application/json",
    message_id: str = "raw-1",
) -> None:
    """Publish bytes the way a careless client might, bypassing the publisher's checks."""
    conn = connection.connect(p.url)
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        props = pika.BasicProperties(
            content_type=content_type,
            type=type,
            message_id=message_id,
            headers=headers if headers is not None else {wire.VERSION: 1},
            delivery_mode=2,
        )
        ch.basic_publish(p.exchange, "task", body, props, mandatory=True)
    finally:
        conn.close()


async def test_processes_and_acks(pipeline: Pipeline, running: Callable[..., Worker]) -> None:
    running()
    ids = [pipeline.publish(Task(n=i)) for i in range(5)]
    await pipeline.wait(lambda: len(pipeline.finals("processed")) == 5)
    assert sorted(str(o.message_id) for o in pipeline.outcomes) == sorted(ids)
    assert all(o.attempt == 1 for o in pipeline.outcomes)
    assert pipeline.depth(pipeline.queue) == 0


async def test_accepts_every_declared_version(
    pipeline: Pipeline, names: Callable[[str], str]
) -> None:
    app = App(pipeline.topology)
    seen: list[tuple[int, str]] = []

    @app.handler(Task, TaskV2, queue=pipeline.queue)
    async def handle(message: Task | TaskV2, ctx: Context) -> None:
        seen.append((ctx.version, type(message).__name__))

    worker = Worker(app, pipeline.url, on_outcome=pipeline.outcomes.append)
    task = asyncio.create_task(worker.run())
    pipeline.publish(Task(n=1))
    pipeline.publish(TaskV2(n=2, label="x"))
    await pipeline.wait(lambda: len(pipeline.finals("processed")) == 2)
    worker.stop()
    await task
    assert sorted(seen) == [(1, "Task"), (2, "TaskV2")]


async def test_fails_once_then_succeeds_on_retry(
    pipeline: Pipeline, running: Callable[..., Worker]
) -> None:
    running()
    message_id = pipeline.publish(Task(n=1, fail_times=1))
    await pipeline.wait(lambda: len(pipeline.finals("processed")) == 1)
    retried = pipeline.finals("retry_scheduled")
    assert [(o.message_id, o.attempt) for o in retried] == [(message_id, 1)]
    assert pipeline.finals("processed")[0].attempt == 2
    assert pipeline.finals("processed")[0].message_id == message_id


async def test_exact_attempts_then_dead_letter_with_headers(
    pipeline: Pipeline, running: Callable[..., Worker]
) -> None:
    running()
    message_id = pipeline.publish(Task(n=7, fail_times=99), correlation_id="job-7")
    dlq = dead_letter_queue(pipeline.queue)
    # The worker reports an outcome after settling it, so wait for both.
    await pipeline.wait(lambda: pipeline.depth(dlq) == 1 and len(pipeline.outcomes) == 3)
    assert [(o.attempt, o.outcome) for o in pipeline.outcomes] == [
        (1, "retry_scheduled"),
        (2, "retry_scheduled"),
        (3, "dead_lettered"),
    ]
    assert {o.message_id for o in pipeline.outcomes} == {message_id}
    props, body = pipeline.get(dlq)  # type: ignore[misc]
    h = props.headers
    assert props.message_id == message_id
    assert props.correlation_id == "job-7"
    assert h[wire.RETRY_COUNT] == 3
    assert h[wire.REASON] == wire.HANDLER_ERROR
    assert h[wire.ERROR_TYPE] == "RuntimeError"
    assert h[wire.ERROR_MESSAGE] == "task 7 fails on attempt 3"
    assert "RuntimeError" in h[wire.ERROR_TRACEBACK]
    assert h[wire.ORIGINAL_EXCHANGE] == pipeline.exchange
    assert h[wire.ORIGINAL_ROUTING_KEY] == "task"
    assert h[wire.FAILED_QUEUE] == pipeline.queue
    assert h[wire.FAILED_BY].startswith(pipeline.queue + "@")
    assert h[wire.FIRST_FAILED_AT] < h[wire.LAST_FAILED_AT]
    assert Task.from_json(body) == Task(n=7, fail_times=99)
    assert pipeline.depth(pipeline.queue) == 0


@pytest.mark.parametrize(
    ("body", "kwargs", "reason"),
    [
        (b"{not json", {}, "invalid-json"),
        (b"\xff\xfe\x00", {}, "invalid-json"),
        (b'{"n": 1}', {"content_type": "text/plain"}, "invalid-content-type"),
        (b'{"n": 1}', {"content_type": None}, "invalid-content-type"),
        (b"3", {}, "schema-violation"),
        (b'"text"', {}, "schema-violation"),
        (b'{"n": ' + b"[" * 5000 + b"]" * 5000 + b"}", {}, "invalid-json"),
        (b'{"n": 1}', {"type": "test.nobody-handles-this"}, "unknown-type"),
        (b'{"n": 1}', {"type": None}, "unknown-type"),
        (b'{"n": 1}', {"headers": {wire.VERSION: 9}}, "unknown-version"),
        (b'{"n": 1}', {"headers": {}}, "unknown-version"),
        (b'{"n": 1}', {"headers": {wire.VERSION: "1"}}, "unknown-version"),
        (b'{"n": "one"}', {}, "schema-violation"),
        (b"[1, 2]", {}, "schema-violation"),
    ],
)
async def test_bad_input_goes_straight_to_the_dead_letter_queue(
    pipeline: Pipeline,
    running: Callable[..., Worker],
    body: bytes,
    kwargs: dict[str, Any],
    reason: str,
) -> None:
    running()
    raw_publish(pipeline, body, **kwargs)
    pipeline.publish(Task(n=2))  # the worker keeps going
    dlq = dead_letter_queue(pipeline.queue)
    await pipeline.wait(
        lambda: (
            pipeline.depth(dlq) == 1
            and len(pipeline.finals("processed")) == 1
            and len(pipeline.finals("dead_lettered")) == 1
        )
    )
    props, dead_body = pipeline.get(dlq)  # type: ignore[misc]
    assert dead_body == body
    assert props.headers[wire.REASON] == reason
    assert props.headers[wire.RETRY_COUNT] == 1
    assert props.headers[wire.ERROR_MESSAGE]
    assert [o.attempt for o in pipeline.finals("dead_lettered")] == [1]
    assert not pipeline.finals("retry_scheduled")


async def test_a_body_over_the_size_limit_is_dead_lettered(
    pipeline: Pipeline, running: Callable[..., Worker]
) -> None:
    running(max_size=64)
    raw_publish(pipeline, b'{"n": 1, "pad": "' + b"x" * 100 + b'"}')
    dlq = dead_letter_queue(pipeline.queue)
    await pipeline.wait(lambda: pipeline.depth(dlq) == 1)
    props, _ = pipeline.get(dlq)  # type: ignore[misc]
    assert props.headers[wire.REASON] == "too-large"
    assert "over the limit of 64" in props.headers[wire.ERROR_MESSAGE]


async def test_a_huge_header_does_not_break_the_retry(pipeline: Pipeline) -> None:
    """A copy must fit in a frame, or its publish would close the channel every time."""
    app = App(pipeline.topology)
    seen: list[dict[str, object]] = []

    @app.handler(Task, queue=pipeline.queue)
    def flaky(message: Task, ctx: Context) -> None:
        seen.append(dict(ctx.headers))
        if ctx.attempt == 1:
            raise RuntimeError("x" * 5000)

    worker = Worker(app, pipeline.url, on_outcome=pipeline.outcomes.append)
    task = asyncio.create_task(worker.run())
    # Fits in a frame as published; with leveret's headers added it would not.
    pipeline.publish(Task(n=1), headers={"blob": "x" * 127_000, "small": "kept"})
    await pipeline.wait(lambda: len(pipeline.finals("processed")) == 1)
    worker.stop()
    await task
    retried = seen[1]
    assert "blob" not in retried
    assert retried["small"] == "kept"
    assert retried[wire.DROPPED_HEADERS] == "blob"
    assert retried[wire.RETRY_COUNT] == 1


async def test_handler_timeout_counts_as_a_failed_attempt(
    pipeline: Pipeline, names: Callable[[str], str]
) -> None:
    app = App(pipeline.topology)

    @app.handler(Task, queue=pipeline.queue, timeout=0.2)
    async def slow(message: Task, ctx: Context) -> None:
        if ctx.attempt == 1:
            await asyncio.sleep(5)

    worker = Worker(app, pipeline.url, on_outcome=pipeline.outcomes.append)
    task = asyncio.create_task(worker.run())
    pipeline.publish(Task(n=1))
    await pipeline.wait(lambda: len(pipeline.finals("processed")) == 1)
    worker.stop()
    await task
    first = pipeline.finals("retry_scheduled")[0]
    assert first.attempt == 1
    assert "exceeded its timeout of 0.2s" in (first.error or "")


async def test_handler_can_give_up_or_ask_for_retry(pipeline: Pipeline) -> None:
    app = App(pipeline.topology)

    @app.handler(Task, queue=pipeline.queue)
    def decide(message: Task, ctx: Context) -> None:
        if message.n == 1 and ctx.attempt == 1:
            raise Retry("not yet")
        if message.n == 2:
            raise DeadLetter("customer deleted")

    worker = Worker(app, pipeline.url, on_outcome=pipeline.outcomes.append)
    task = asyncio.create_task(worker.run())
    pipeline.publish(Task(n=1))
    pipeline.publish(Task(n=2))
    dlq = dead_letter_queue(pipeline.queue)
    await pipeline.wait(lambda: len(pipeline.finals("processed")) == 1 and pipeline.depth(dlq) == 1)
    worker.stop()
    await task
    props, _ = pipeline.get(dlq)  # type: ignore[misc]
    assert props.headers[wire.REASON] == "dead-letter"
    assert props.headers[wire.ERROR_MESSAGE] == "customer deleted"
    assert pipeline.finals("retry_scheduled")[0].error == "not yet"


async def test_retry_returns_only_to_the_queue_that_failed(
    broker_url: str, names: Callable[[str], str]
) -> None:
    exchange = names("ex")
    failing_q, other_q = names("failing"), names("other")
    base = Topology(
        exchanges=(Exchange(exchange),),
        queues=(
            Queue(failing_q, bindings=(Binding(exchange, "task"),), retry=RetryPolicy((0.1,), 3)),
            Queue(other_q, bindings=(Binding(exchange, "task"),), retry=RetryPolicy((0.1,), 3)),
        ),
    )
    admin.apply(broker_url, base)
    try:
        seen: dict[str, list[int]] = {failing_q: [], other_q: []}
        app = App(base)

        @app.handler(Task, queue=failing_q)
        def fails(message: Task, ctx: Context) -> None:
            seen[failing_q].append(ctx.attempt)
            if ctx.attempt < 3:
                raise RuntimeError("again")

        @app.handler(Task, queue=other_q)
        def succeeds(message: Task, ctx: Context) -> None:
            seen[other_q].append(ctx.attempt)

        outcomes: list[Outcome] = []
        worker = Worker(app, broker_url, on_outcome=outcomes.append)
        task = asyncio.create_task(worker.run())
        with Publisher(broker_url) as pub:
            pub.publish(Task(n=1), exchange=exchange)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15
        while len([o for o in outcomes if o.outcome == "processed"]) < 2 and loop.time() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # a stray retry copy would arrive within this
        worker.stop()
        await task
        assert seen == {failing_q: [1, 2, 3], other_q: [1]}
    finally:
        admin.delete(broker_url, base)


async def test_plain_reject_from_any_client_lands_in_the_dead_letter_queue(
    pipeline: Pipeline,
) -> None:
    message_id = pipeline.publish(Task(n=1))
    pipeline.reject_one()
    dlq = dead_letter_queue(pipeline.queue)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while pipeline.depth(dlq) == 0 and loop.time() < deadline:
        await asyncio.sleep(0.05)
    props, _ = pipeline.get(dlq)  # type: ignore[misc]
    assert props.message_id == message_id
    assert props.headers["x-death"][0]["reason"] == "rejected"


async def test_reconnects_after_the_broker_closes_all_connections(
    pipeline: Pipeline, running: Callable[..., Worker]
) -> None:
    running(concurrency=2)
    first = [pipeline.publish(Task(n=i, sleep_ms=20)) for i in range(20)]
    await pipeline.wait(lambda: len(pipeline.finals("processed")) >= 3)
    await asyncio.to_thread(rabbitmqctl, "close_all_connections", "test: connection drop")
    second = [pipeline.publish(Task(n=100 + i)) for i in range(10)]
    expected = set(first + second)
    await pipeline.wait(
        lambda: {o.message_id for o in pipeline.finals("processed")} >= expected, timeout=40
    )
    assert pipeline.depth(pipeline.queue) == 0
    # The consumer came back: the broker sees one again.
    conn = connection.connect(pipeline.url)
    try:
        assert conn.channel().queue_declare(pipeline.queue, passive=True).method.consumer_count == 1
    finally:
        conn.close()


async def test_missing_topology_is_one_clear_error(
    broker_url: str, names: Callable[[str], str]
) -> None:
    from tests.apps import build_app

    app = build_app(names("never-declared"), names("ex"))
    with pytest.raises(
        TopologyMissing, match=r"missing on the broker: queue '.*never-declared'.*topology apply"
    ):
        await Worker(app, broker_url).run()


async def test_unreachable_broker_at_start_is_an_error(pipeline: Pipeline) -> None:
    worker = Worker(pipeline.app, "amqp://guest:secret@127.0.0.1:1/")
    with pytest.raises(BrokerUnavailable, match="no RabbitMQ broker reachable") as caught:
        await worker.run()
    assert "secret" not in str(caught.value)


async def test_one_log_line_per_outcome_with_the_message_context(
    pipeline: Pipeline, running: Callable[..., Worker]
) -> None:
    with capture_logs(processors=[merge_contextvars]) as logs:
        running()
        ok = pipeline.publish(Task(n=1))
        flaky = pipeline.publish(Task(n=2, fail_times=1))
        await pipeline.wait(lambda: len(pipeline.finals("processed")) == 2)
    outcomes = [e for e in logs if "outcome" in e]
    assert [
        (e["event"], e["message_id"], e["attempt"]) for e in outcomes if e["message_id"] == flaky
    ] == [
        ("message.retry_scheduled", flaky, 1),
        ("message.processed", flaky, 2),
    ]
    line = next(e for e in outcomes if e["message_id"] == ok)
    assert line["outcome"] == "processed"
    assert (line["type"], line["version"], line["queue"]) == ("test.task", 1, pipeline.queue)
    assert line["duration_ms"] >= 0
    retry = next(e for e in outcomes if e["event"] == "message.retry_scheduled")
    assert retry["error"] == "task 2 fails on attempt 1"
    assert retry["reason"] == "handler-error"
    assert retry["log_level"] == "warning"


async def test_handlers_publish_follow_up_tasks_correlated_with_their_job(
    pipeline: Pipeline,
) -> None:
    sync_app, async_app = App(pipeline.topology), App(pipeline.topology)
    children: list[tuple[int, str | None]] = []

    @sync_app.handler(Task, queue=pipeline.queue)
    def fan_out(message: Task, ctx: Context) -> None:  # a sync handler: ctx.publish
        if message.n > 0:
            for i in range(1, 4):
                ctx.publish(Task(n=-i), exchange=pipeline.exchange)
        else:
            children.append((message.n, ctx.correlation_id))

    @async_app.handler(Task, queue=pipeline.queue)
    async def fan_out_async(message: Task, ctx: Context) -> None:  # async: await ctx.apublish
        if message.n > 0:
            await ctx.apublish(Task(n=-9), exchange=pipeline.exchange)
        else:
            children.append((message.n, ctx.correlation_id))
        with pytest.raises(ConfigurationError, match=r"await ctx\.apublish"):
            ctx.publish(Task(n=0), exchange=pipeline.exchange)

    for app, expected in ((sync_app, 4), (async_app, 6)):
        worker = Worker(app, pipeline.url, on_outcome=pipeline.outcomes.append)
        task = asyncio.create_task(worker.run())
        pipeline.publish(Task(n=1), correlation_id="job-42")
        await pipeline.wait(lambda: len(pipeline.finals("processed")) == expected)  # noqa: B023
        worker.stop()
        await task
    assert sorted(children) == [(-9, "job-42"), (-3, "job-42"), (-2, "job-42"), (-1, "job-42")]


def test_freeze_heap_leaves_only_new_objects_to_the_collector() -> None:
    gc.collect()
    tracked = len(gc.get_objects())
    try:
        freeze_heap()
        assert gc.get_freeze_count() >= tracked // 2
        assert len(gc.get_objects()) < tracked // 10  # what a full collection still walks
    finally:
        gc.unfreeze()


async def worker_on(p: Pipeline) -> tuple[Worker, asyncio.Task[None]]:
    worker = Worker(p.app, p.url, on_outcome=p.outcomes.append)
    return worker, asyncio.create_task(worker.run())


async def test_a_refused_retry_copy_is_sent_again_until_the_broker_takes_it(
    classic: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[amqp.Channel] = []
    open_channel = amqp.Connection.channel

    async def counting(self: amqp.Connection) -> amqp.Channel:
        opened.append(await open_channel(self))
        return opened[-1]

    monkeypatch.setattr(amqp.Connection, "channel", counting)
    tier = classic.topology.queue(classic.queue).tier_queues()[0][0]
    with refusing(tier) as end, capture_logs(processors=[merge_contextvars]) as logs:
        worker, running = await worker_on(classic)
        try:
            message_id = classic.publish(Task(n=1, fail_times=1))
            await classic.wait(lambda: any(e["event"] == "message.republish_refused" for e in logs))
            at_refusal = len(opened)
            await asyncio.sleep(0.5)  # sent again meanwhile, and refused again
            assert classic.outcomes == []  # neither acked nor dead-lettered
            # Each resend on a channel of its own, closed after it.
            assert len(opened) > at_refusal
            assert all(ch.is_closed for ch in opened[at_refusal:-1])
            end()
            await classic.wait(lambda: len(classic.finals("processed")) == 1)
        finally:
            worker.stop()
            await asyncio.wait_for(running, 40)
    assert [(o.message_id, o.attempt, o.outcome) for o in classic.outcomes] == [
        (message_id, 1, "retry_scheduled"),
        (message_id, 2, "processed"),
    ]
    refused = [e for e in logs if e["event"] == "message.republish_refused"]
    assert len(refused) == 1  # one line a delivery, however often it is sent again
    assert refused[0]["log_level"] == "warning"
    assert refused[0]["exchange"] == retry_exchange(classic.queue)
    assert refused[0]["message_id"] == message_id
    assert any(e["event"] == "worker.channel_renewed" for e in logs)
    assert not any(e["event"] == "worker.resumed" for e in logs)  # no reconnect
    assert classic.depth(dead_letter_queue(classic.queue)) == 0


async def test_a_nacked_publish_from_a_handler_fails_the_attempt_and_renews_the_channel(
    broker_url: str, names: Callable[[str], str]
) -> None:
    queue, exchange, side = names("work"), names("ex"), names("side")
    # Retries a second apart: time enough to end the refusal before the next attempt.
    topology = apps.topology(
        queue, exchange, delays=(1.0, 1.0), queue_type="classic", delivery_limit=None
    )
    app = App(topology)

    @app.handler(Task, queue=queue)
    async def follow_up(message: Task, ctx: Context) -> None:
        await ctx.apublish(Task(n=message.n + 100), exchange=exchange, routing_key="side")

    admin.apply(broker_url, topology)
    with connection.connect(broker_url) as conn:
        ch = conn.channel()
        ch.queue_declare(side, durable=True)
        ch.queue_bind(side, exchange, "side")
    p = Pipeline(broker_url, queue, exchange, topology, app)
    try:
        with refusing(side) as end, capture_logs() as logs:
            worker, running = await worker_on(p)
            try:
                message_id = p.publish(Task(n=1))
                await p.wait(lambda: len(p.outcomes) == 1)
                end()
                await p.wait(lambda: len(p.finals("processed")) == 1)
            finally:
                worker.stop()
                await asyncio.wait_for(running, 40)
        assert [(o.message_id, o.attempt, o.outcome) for o in p.outcomes] == [
            (message_id, 1, "retry_scheduled"),
            (message_id, 2, "processed"),
        ]
        scheduled = next(e for e in logs if e["event"] == "message.retry_scheduled")
        assert "nacked" in scheduled["error"]
        assert sum(e["event"] == "worker.channel_renewed" for e in logs) == 1
        assert not any(e["event"] == "worker.resumed" for e in logs)  # no reconnect
        assert p.depth(side) == 1
    finally:
        with connection.connect(broker_url) as conn:
            conn.channel().queue_delete(side)
        admin.delete(broker_url, topology)


async def test_a_retry_copy_refused_for_too_long_is_dead_lettered(
    classic: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker_module, "REPUBLISH_PATIENCE", 1.0)
    tier = classic.topology.queue(classic.queue).tier_queues()[0][0]
    with refusing(tier), capture_logs() as logs:
        worker, running = await worker_on(classic)
        try:
            message_id = classic.publish(Task(n=1, fail_times=1))
            await classic.wait(lambda: len(classic.outcomes) == 1)
        finally:
            worker.stop()
            await asyncio.wait_for(running, 40)
    assert [(o.message_id, o.outcome) for o in classic.outcomes] == [(message_id, "dead_lettered")]
    failed = next(e for e in logs if e["event"] == "message.republish_failed")
    assert "nack" in failed["error"]
    assert 0.5 <= failed["refused_for"] <= 1.0
    props, _ = classic.get(dead_letter_queue(classic.queue))  # type: ignore[misc]
    assert props.message_id == message_id
    assert props.headers["x-death"][0]["reason"] == "rejected"
