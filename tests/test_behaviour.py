"""One set of behaviour tests, run against the in-memory broker and against RabbitMQ.

Each scenario talks to a :class:`Side`: publish, run until a condition holds,
read the dead letters, replay them. On ``memory`` the side is a
:class:`leveret.testing.Broker` whose clock jumps over the retry tiers; on
``rabbitmq`` it is a real :class:`leveret.Worker` on unique names, with tiers of
0.2 s and 0.4 s. The same assertions pass on both, so the fake cannot drift
from what the broker and the worker do.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

import pika
import pika.exceptions
import pytest
from structlog.contextvars import merge_contextvars
from structlog.testing import capture_logs

from leveret import (
    App,
    AsyncPublisher,
    Binding,
    Context,
    DeadLetter,
    Exchange,
    Message,
    Outcome,
    Queue,
    RetryPolicy,
    Topology,
    TopologyMissing,
    Unroutable,
    Worker,
    admin,
    connection,
    delay,
    dlq,
    tracing,
    wire,
)
from leveret.testing import Broker, Properties
from leveret.topology import dead_letter_queue


class Job(Message, type="behaviour.job", version=1, routing_key="job"):
    n: int = 0
    fail_times: int = 0
    give_up: bool = False
    forward: bool = False


class Forwarded(Message, type="behaviour.forwarded", version=1, routing_key="forwarded"):
    n: int = 0
    back: bool = False


def build_app(
    queue: str,
    other: str,
    exchange: str,
    seen: list[tuple[str, Any]],
    broken: set[int],
    traces: list[Trace],
) -> App:
    """Two queues on one exchange: an async handler on ``queue``, a sync one on ``other``.

    Both record the trace of each delivery (``traces``); ``Job.forward`` and
    ``Forwarded.back`` make each publish to the other.
    """
    app = App(
        Topology(
            exchanges=(Exchange(exchange),),
            queues=(
                Queue(queue, (Binding(exchange, "job"),), RetryPolicy((0.2, 0.4), 3)),
                Queue(other, (Binding(exchange, "forwarded"),), RetryPolicy((0.2,), 2)),
            ),
            delayed=True,
        )
    )

    @app.handler(Job, queue=queue)
    async def job(message: Job, ctx: Context) -> None:
        traces.append(Trace.of(ctx, message.n))
        if message.give_up or message.n in broken:
            raise DeadLetter(f"job {message.n} cannot be done")
        if ctx.attempt <= message.fail_times:
            raise RuntimeError(f"job {message.n} fails on attempt {ctx.attempt}")
        if message.forward:
            await ctx.apublish(Forwarded(n=message.n), exchange=exchange)

    @app.handler(Forwarded, queue=other)
    def forwarded(message: Forwarded, ctx: Context) -> None:
        traces.append(Trace.of(ctx, message.n))
        seen.append((ctx.queue, ctx.correlation_id))
        if message.back:
            ctx.publish(Job(n=message.n + 1, forward=True), exchange=exchange)

    return app


@dataclass(frozen=True)
class Trace:
    """What a handler saw of its delivery's trace."""

    queue: str
    n: int
    attempt: int
    traceparent: Any
    tracestate: Any
    current: tracing.TraceContext | None
    """The trace the handler runs in: what its publishes continue."""

    @classmethod
    def of(cls, ctx: Context, n: int) -> Trace:
        return cls(
            ctx.queue,
            n,
            ctx.attempt,
            ctx.headers.get(tracing.TRACEPARENT),
            ctx.headers.get(tracing.TRACESTATE),
            tracing.current(),
        )

    @property
    def context(self) -> tracing.TraceContext:
        found = tracing.parse(self.traceparent, self.tracestate)
        assert found is not None, f"no valid traceparent: {self.traceparent!r}"
        return found


class Side(Protocol):
    queue: str
    other: str
    exchange: str
    outcomes: list[Outcome]
    seen: list[tuple[str, Any]]
    broken: set[int]
    traces: list[Trace]
    app: App

    async def publish(self, message: Message, **options: Any) -> str: ...
    async def publish_raw(self, body: bytes, properties: Properties) -> None: ...
    async def settle(self, done: Callable[[], bool]) -> None: ...
    async def dead_letters(self) -> list[dlq.DeadLetter]: ...
    async def depth(self, queue: str) -> int: ...
    async def replay(self) -> list[str]: ...


class MemorySide:
    def __init__(self, queue: str, other: str, exchange: str) -> None:
        self.queue, self.other, self.exchange = queue, other, exchange
        self.seen: list[tuple[str, Any]] = []
        self.broken: set[int] = set()  # jobs whose handler gives up, until "fixed"
        self.traces: list[Trace] = []
        self.app = build_app(queue, other, exchange, self.seen, self.broken, self.traces)
        self.broker = Broker(self.app)
        self.outcomes = self.broker.processed

    async def publish(self, message: Message, **options: Any) -> str:
        options.setdefault("exchange", self.exchange)
        return self.broker.publish(message, **options)

    async def publish_raw(self, body: bytes, properties: Properties) -> None:
        self.broker.publish_raw(
            body, exchange=self.exchange, routing_key="job", properties=properties
        )

    async def settle(self, done: Callable[[], bool]) -> None:
        await self.broker.arun_until_idle(advance=True)
        assert done(), f"not done once idle; outcomes: {self.outcomes}"

    async def dead_letters(self) -> list[dlq.DeadLetter]:
        return self.broker.dead_letters(self.queue)

    async def depth(self, queue: str) -> int:
        return self.broker.depth(queue)

    async def replay(self) -> list[str]:
        return self.broker.replay(self.queue)


class RabbitSide:
    def __init__(self, url: str, queue: str, other: str, exchange: str) -> None:
        self.url, self.queue, self.other, self.exchange = url, queue, other, exchange
        self.seen: list[tuple[str, Any]] = []
        self.broken: set[int] = set()  # jobs whose handler gives up, until "fixed"
        self.traces: list[Trace] = []
        self.app = build_app(queue, other, exchange, self.seen, self.broken, self.traces)
        self.outcomes: list[Outcome] = []
        self.worker = Worker(self.app, url, on_outcome=self.outcomes.append)

    async def publish(self, message: Message, **options: Any) -> str:
        options.setdefault("exchange", self.exchange)
        async with AsyncPublisher(self.url) as publisher:
            return await publisher.publish(message, **options)

    async def publish_raw(self, body: bytes, properties: Properties) -> None:
        def send() -> None:
            conn = connection.connect(self.url)
            try:
                ch = conn.channel()
                ch.confirm_delivery()
                p = properties
                props = pika.BasicProperties(
                    content_type=p.content_type,
                    headers=p.headers,
                    delivery_mode=2,
                    message_id=p.message_id,
                    type=p.type,
                    timestamp=p.timestamp,
                )
                ch.basic_publish(self.exchange, "job", body, props, mandatory=True)
            except pika.exceptions.UnroutableError as exc:
                raise Unroutable(str(exc)) from exc
            finally:
                conn.close()

        await asyncio.to_thread(send)

    async def settle(self, done: Callable[[], bool]) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15
        while not done():
            assert loop.time() < deadline, f"timed out; outcomes: {self.outcomes}"
            await asyncio.sleep(0.02)

    async def dead_letters(self) -> list[dlq.DeadLetter]:
        return await asyncio.to_thread(dlq.browse, self.url, self.queue)

    async def depth(self, queue: str) -> int:
        def count() -> int:
            conn = connection.connect(self.url)
            try:
                return int(conn.channel().queue_declare(queue, passive=True).method.message_count)
            finally:
                conn.close()

        return await asyncio.to_thread(count)

    async def replay(self) -> list[str]:
        return await asyncio.to_thread(dlq.replay, self.url, self.queue)


@pytest.fixture(params=["memory", pytest.param("rabbitmq", marks=pytest.mark.broker)])
async def side(request: pytest.FixtureRequest, names: Callable[[str], str]) -> AsyncIterator[Side]:
    queue, other, exchange = names("work"), names("other"), names("ex")
    if request.param == "memory":
        yield MemorySide(queue, other, exchange)
        return
    url: str = request.getfixturevalue("broker_url")
    real = RabbitSide(url, queue, other, exchange)
    admin.apply(url, real.app.topology)
    task = asyncio.create_task(real.worker.run())
    try:
        yield real
    finally:
        real.worker.stop()
        await asyncio.wait_for(task, 30)
        admin.delete(url, real.app.topology)


def finals(side: Side) -> list[tuple[str, int, str]]:
    return [(o.queue, o.attempt, o.outcome) for o in side.outcomes]


async def test_a_valid_message_is_processed_once_and_acked(side: Side) -> None:
    message_id = await side.publish(Job(n=1))
    await side.settle(lambda: len(side.outcomes) == 1)
    assert finals(side) == [(side.queue, 1, "processed")]
    assert side.outcomes[0].message_id == message_id
    assert await side.depth(side.queue) == 0
    assert await side.dead_letters() == []


async def test_a_transient_failure_is_retried_then_processed(side: Side) -> None:
    await side.publish(Job(n=2, fail_times=2))
    await side.settle(lambda: any(o.outcome == "processed" for o in side.outcomes))
    assert finals(side) == [
        (side.queue, 1, "retry_scheduled"),
        (side.queue, 2, "retry_scheduled"),
        (side.queue, 3, "processed"),
    ]
    assert await side.dead_letters() == []


async def test_attempts_run_out_through_the_tiers_into_the_dlq(side: Side) -> None:
    message_id = await side.publish(Job(n=3, fail_times=99))
    await side.settle(lambda: any(o.outcome == "dead_lettered" for o in side.outcomes))
    assert finals(side) == [
        (side.queue, 1, "retry_scheduled"),
        (side.queue, 2, "retry_scheduled"),
        (side.queue, 3, "dead_lettered"),
    ]
    (letter,) = await side.dead_letters()
    assert (letter.message_id, letter.type, letter.version) == (message_id, "behaviour.job", 1)
    assert (letter.attempts, letter.reason) == (3, "attempts-exhausted")
    assert letter.error == "job 3 fails on attempt 3"
    h = letter.headers
    assert h[wire.RETRY_COUNT] == 3
    assert h[wire.REASON] == "handler-error"
    assert h[wire.ERROR_TYPE] == "RuntimeError"
    assert h[wire.FAILED_QUEUE] == side.queue
    assert str(h[wire.FAILED_BY]).startswith(f"{side.queue}@")
    assert (h[wire.ORIGINAL_EXCHANGE], h[wire.ORIGINAL_ROUTING_KEY]) == (side.exchange, "job")
    assert h[wire.FIRST_FAILED_AT] < h[wire.LAST_FAILED_AT]
    assert "RuntimeError: job 3 fails on attempt 3" in h[wire.ERROR_TRACEBACK]
    assert "x-death" not in h  # the worker's copy, not the broker's dead-lettering
    assert await side.depth(side.queue) == 0


BAD_INPUT = {
    "unknown-type": (b'{"n": 1}', Properties(type="behaviour.nope", headers={wire.VERSION: 1})),
    "unknown-version": (b'{"n": 1}', Properties(type="behaviour.job", headers={wire.VERSION: 9})),
    "no-version": (b'{"n": 1}', Properties(type="behaviour.job")),
    "string-version": (b'{"n": 1}', Properties(type="behaviour.job", headers={wire.VERSION: "1"})),
    "schema-violation": (
        b'{"n": "1"}',
        Properties(type="behaviour.job", headers={wire.VERSION: 1}),
    ),
    "invalid-json": (b'{"n": ', Properties(type="behaviour.job", headers={wire.VERSION: 1})),
    "invalid-content-type": (
        b'{"n": 1}',
        Properties(content_type="text/plain", type="behaviour.job", headers={wire.VERSION: 1}),
    ),
}
REASONS = {"no-version": "unknown-version", "string-version": "unknown-version"}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
async def test_bad_input_is_dead_lettered_at_once_with_its_reason(side: Side, case: str) -> None:
    body, props = BAD_INPUT[case]
    await side.publish_raw(body, Properties(**{**vars(props), "message_id": f"bad-{case}"}))
    await side.settle(lambda: len(side.outcomes) == 1)
    assert finals(side) == [(side.queue, 1, "dead_lettered")]
    (letter,) = await side.dead_letters()
    assert letter.message_id == f"bad-{case}"
    assert letter.reason == REASONS.get(case, case)
    assert letter.headers[wire.RETRY_COUNT] == 1
    assert wire.ERROR_TRACEBACK not in letter.headers
    assert letter.body == body


async def test_a_handler_that_gives_up_dead_letters_at_once(side: Side) -> None:
    await side.publish(Job(n=4, give_up=True, fail_times=99))
    await side.settle(lambda: len(side.outcomes) == 1)
    assert finals(side) == [(side.queue, 1, "dead_lettered")]
    (letter,) = await side.dead_letters()
    assert (letter.reason, letter.attempts, letter.error) == (
        "dead-letter",
        1,
        "job 4 cannot be done",
    )
    assert letter.headers[wire.ERROR_TYPE] == "DeadLetter"


async def test_a_handler_publishes_to_the_other_queue(side: Side) -> None:
    message_id = await side.publish(Job(n=5, forward=True))
    await side.settle(lambda: len(side.outcomes) == 2)
    # Outcomes are reported after the ack, so the follow-up's may come first.
    assert sorted(finals(side)) == sorted(
        [(side.queue, 1, "processed"), (side.other, 1, "processed")]
    )
    assert {o.type for o in side.outcomes if o.queue == side.other} == {"behaviour.forwarded"}
    # Correlated with the job that published it.
    assert side.seen == [(side.other, message_id)]


async def test_a_delayed_message_waits_in_the_delay_levels(side: Side) -> None:
    await side.publish(Job(n=8), delay=timedelta(seconds=1))
    assert await side.depth(side.queue) == 0
    assert await side.depth(delay.level_name(0)) >= 1  # shared by the vhost on RabbitMQ
    await side.settle(lambda: len(side.outcomes) == 1)
    assert finals(side) == [(side.queue, 1, "processed")]


async def test_an_unroutable_publish_raises(side: Side) -> None:
    with pytest.raises(Unroutable):
        await side.publish(Job(n=6), routing_key="nowhere")
    with pytest.raises(TopologyMissing):
        await side.publish(Job(n=6), exchange=side.exchange + ".missing")
    assert await side.depth(side.queue) == 0


async def test_a_replayed_dead_letter_goes_through_again(side: Side) -> None:
    side.broken.add(7)
    message_id = await side.publish(Job(n=7))
    await side.settle(lambda: len(side.outcomes) == 1)
    assert [d.message_id for d in await side.dead_letters()] == [message_id]
    side.broken.discard(7)  # the fix is deployed
    assert await side.replay() == [message_id]
    await side.settle(lambda: len(side.outcomes) == 2)
    assert finals(side)[1] == (side.queue, 1, "processed")
    assert side.outcomes[1].message_id == message_id
    assert await side.dead_letters() == []
    assert await side.depth(dead_letter_queue(side.queue)) == 0


# Trace context: every message carries a traceparent (docs/contract.md, "Trace context").

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT = f"00-{TRACE_ID}-b7ad6b7169203331-01"


async def test_follow_ups_of_sync_and_async_handlers_continue_the_callers_trace(
    side: Side,
) -> None:
    # The caller's traceparent (a web request's) is the parent. The sync handler
    # on `other` publishes a job; the async handler on `queue` forwards it back.
    await side.publish(
        Forwarded(n=10, back=True), headers={"traceparent": PARENT, "tracestate": "rojo=1"}
    )
    await side.settle(lambda: len(side.outcomes) == 3)
    # Outcomes are reported after the ack, so a follow-up may be reported first.
    assert sorted((o.queue, o.outcome) for o in side.outcomes) == sorted(
        [(side.other, "processed"), (side.queue, "processed"), (side.other, "processed")]
    )
    # A handler starts only once the one before it published.
    assert [(t.queue, t.n) for t in side.traces] == [
        (side.other, 10),
        (side.queue, 11),
        (side.other, 11),
    ]
    sent = [t.context for t in side.traces]
    assert [(c.trace_id, c.flags, c.state) for c in sent] == [(TRACE_ID, "01", "rojo=1")] * 3
    # Each message is a child of its own: a parent-id of its own.
    assert len({c.parent_id for c in sent} | {"b7ad6b7169203331"}) == 4
    for t in side.traces:
        assert t.current is not None and t.current.trace_id == TRACE_ID


async def test_a_message_published_outside_any_trace_starts_a_new_one(side: Side) -> None:
    await side.publish(Job(n=12))
    await side.publish(Job(n=12))
    await side.settle(lambda: len(side.outcomes) == 2)
    first, second = (t.context for t in side.traces)
    assert first.trace_id != second.trace_id
    assert (first.flags, first.state) == (second.flags, second.state) == ("01", None)


async def test_retry_and_dead_letter_copies_keep_the_traceparent(side: Side) -> None:
    await side.publish(Job(n=13, fail_times=99))
    await side.settle(lambda: any(o.outcome == "dead_lettered" for o in side.outcomes))
    assert [t.attempt for t in side.traces] == [1, 2, 3]
    (traceparent,) = {t.traceparent for t in side.traces}  # the same message each time
    assert tracing.parse(traceparent) is not None
    (letter,) = await side.dead_letters()
    assert letter.headers[tracing.TRACEPARENT] == traceparent


async def test_a_malformed_traceparent_starts_a_new_trace(side: Side) -> None:
    malformed = PARENT.upper()
    await side.publish_raw(
        Job(n=14, forward=True).to_json(),
        Properties(
            type="behaviour.job",
            message_id="bad-trace",
            headers={wire.VERSION: 1, "traceparent": malformed, "tracestate": "rojo=1"},
        ),
    )
    await side.settle(lambda: len(side.outcomes) == 2)
    assert [o.outcome for o in side.outcomes] == ["processed", "processed"]
    job, forwarded = side.traces
    assert job.traceparent == malformed  # the handler sees the header as it came
    assert job.current is not None and job.current.trace_id != TRACE_ID
    # The follow-up continues the new trace, without the malformed one's tracestate.
    assert forwarded.context.trace_id == job.current.trace_id
    assert forwarded.context.state is None


async def test_the_log_lines_of_a_delivery_carry_its_trace_id(side: Side) -> None:
    with capture_logs(processors=[merge_contextvars]) as logs:
        await side.publish(Job(n=15), headers={"traceparent": PARENT})
        await side.settle(lambda: len(side.outcomes) == 1)
    (line,) = [
        e for e in logs if e["event"] == "message.processed" and e.get("queue") == side.queue
    ]
    assert line["trace_id"] == TRACE_ID
