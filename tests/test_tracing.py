"""W3C trace context: parsing, formatting, children and roots, the current trace (no broker)."""

from __future__ import annotations

import asyncio
import contextvars
import re
from collections.abc import Callable

import pytest

from leveret import (
    App,
    AsyncPublisher,
    Binding,
    Context,
    Exchange,
    Message,
    Outcome,
    Publisher,
    Queue,
    RetryPolicy,
    Topology,
    Worker,
    admin,
    tracing,
)
from leveret.testing import Broker
from leveret.tracing import TraceContext

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
VALID = f"00-{TRACE_ID}-{PARENT_ID}-01"
FORMAT = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")


def test_a_valid_traceparent_is_read() -> None:
    assert tracing.parse(VALID) == TraceContext(TRACE_ID, PARENT_ID, "01")
    assert tracing.parse(VALID.replace("-01", "-00")) == TraceContext(TRACE_ID, PARENT_ID, "00")


def test_a_traceparent_is_written_as_it_was_read() -> None:
    for flags in ("00", "01", "03"):
        value = f"00-{TRACE_ID}-{PARENT_ID}-{flags}"
        context = tracing.parse(value)
        assert context is not None
        assert context.traceparent == value


def test_bytes_are_read_as_amqp_clients_may_hand_them_over() -> None:
    assert tracing.parse(VALID.encode(), b"vendor=1") == TraceContext(
        TRACE_ID, PARENT_ID, "01", "vendor=1"
    )


INVALID = {
    "empty": "",
    "uppercase hex": VALID.upper(),
    "version 01": "01" + VALID[2:],
    "version ff": "ff" + VALID[2:],
    "trailing data": VALID + "-extra",
    "short trace-id": f"00-{TRACE_ID[:-1]}-{PARENT_ID}-01",
    "long parent-id": f"00-{TRACE_ID}-{PARENT_ID}0-01",
    "not hex": f"00-{TRACE_ID[:-1]}g-{PARENT_ID}-01",
    "all-zero trace-id": f"00-{'0' * 32}-{PARENT_ID}-01",
    "all-zero parent-id": f"00-{TRACE_ID}-{'0' * 16}-01",
    "one-digit flags": f"00-{TRACE_ID}-{PARENT_ID}-1",
    "underscores": VALID.replace("-", "_"),
    "whitespace": f" {VALID}",
    "newline": f"{VALID}\n",
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_a_malformed_traceparent_is_none(case: str) -> None:
    assert tracing.parse(INVALID[case]) is None


@pytest.mark.parametrize("value", [None, 1, 1.5, True, ["x"], {"traceparent": VALID}])
def test_a_traceparent_that_is_not_text_is_none(value: object) -> None:
    assert tracing.parse(value) is None


def test_tracestate_is_kept_unchanged_with_a_valid_traceparent_only() -> None:
    state = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
    assert tracing.of({"traceparent": VALID, "tracestate": state}) == TraceContext(
        TRACE_ID, PARENT_ID, "01", state
    )
    assert tracing.of({"traceparent": "nonsense", "tracestate": state}) is None
    assert tracing.of({"tracestate": state}) is None
    assert tracing.of({}) is None


def test_an_empty_tracestate_is_no_tracestate() -> None:
    context = tracing.of({"traceparent": VALID, "tracestate": ""})
    assert context is not None and context.state is None
    assert context.headers() == {"traceparent": VALID}


def test_headers_carry_tracestate_when_there_is_one() -> None:
    assert TraceContext(TRACE_ID, PARENT_ID, "01", "a=1").headers() == {
        "traceparent": VALID,
        "tracestate": "a=1",
    }


def test_a_child_keeps_the_trace_the_flags_and_the_state() -> None:
    parent = TraceContext(TRACE_ID, PARENT_ID, "00", "a=1")
    children = [tracing.child(parent) for _ in range(20)]
    for c in children:
        assert (c.trace_id, c.flags, c.state) == (TRACE_ID, "00", "a=1")
        assert tracing.parse(c.traceparent) == TraceContext(TRACE_ID, c.parent_id, "00")
    ids = {c.parent_id for c in children}
    assert PARENT_ID not in ids
    assert len(ids) == len(children)


def test_a_root_is_a_new_sampled_trace() -> None:
    roots = [tracing.root() for _ in range(20)]
    for r in roots:
        assert FORMAT.fullmatch(r.traceparent)
        assert r.flags == "01" and r.state is None
        assert tracing.parse(r.traceparent) == r
    assert len({r.trace_id for r in roots}) == len(roots)


def test_outside_any_trace_there_is_no_current_trace() -> None:
    assert contextvars.Context().run(tracing.current) is None


def test_continuing_sets_the_current_trace_for_a_block() -> None:
    context = TraceContext(TRACE_ID, PARENT_ID)

    def inside() -> None:
        with tracing.continuing(context):
            assert tracing.current() == context
        assert tracing.current() is None

    contextvars.Context().run(inside)


def test_outgoing_continues_the_callers_traceparent_before_the_current_trace() -> None:
    other = TraceContext("1" * 32, "2" * 16)

    def inside() -> None:
        with tracing.continuing(other):
            given, _ = tracing.outgoing(
                {"traceparent": VALID}, exchange="e", routing_key="k", message_id="m", type="t"
            )
            current, _ = tracing.outgoing(
                {}, exchange="e", routing_key="k", message_id="m", type="t"
            )
        assert given["traceparent"].split("-")[1] == TRACE_ID
        assert current["traceparent"].split("-")[1] == other.trace_id

    contextvars.Context().run(inside)


def test_a_delivery_without_a_valid_traceparent_starts_a_new_trace() -> None:
    def handled(headers: dict[str, object]) -> tracing.Handling:
        return tracing.handle("q", headers)

    fresh = [contextvars.Context().run(handled, {"traceparent": "bad"}) for _ in range(2)]
    assert fresh[0].trace_id != fresh[1].trace_id
    assert fresh[0].context.flags == "01"
    kept = contextvars.Context().run(handled, {"traceparent": VALID})
    assert kept.trace_id == TRACE_ID


async def test_handle_sets_the_current_trace_for_the_rest_of_its_task() -> None:
    async def delivery() -> TraceContext | None:
        tracing.handle("q", {"traceparent": VALID})
        await asyncio.sleep(0)
        return tracing.current()

    inside = await asyncio.create_task(delivery())
    assert inside is not None and inside.trace_id == TRACE_ID
    # The task's context ended with it.
    assert tracing.current() is None


class Job(Message, type="tracing.job", version=1, routing_key="job"):
    n: int = 0


def test_job_status_events_carry_the_deliverys_trace() -> None:
    app = App(
        Topology(
            exchanges=(Exchange("ex"),),
            queues=(Queue("q", (Binding("ex", "job"),), RetryPolicy((1,), 2)),),
        )
    )

    @app.handler(Job, queue="q", track=True)
    def handle(message: Job, ctx: Context) -> None:
        if ctx.attempt == 1:
            raise RuntimeError("once")
        ctx.progress(50)

    broker = Broker(app)
    broker.publish(Job(), exchange="ex", headers={"traceparent": VALID})
    broker.run_until_idle(advance=True)
    events = broker.published(type="leveret.job.status")
    assert [e.json()["state"] for e in events] == [
        "started",
        "retrying",
        "started",
        "progress",
        "succeeded",
    ]
    contexts = [tracing.of(e.headers) for e in events]
    assert all(c is not None and c.trace_id == TRACE_ID for c in contexts)
    assert len({c.parent_id for c in contexts if c is not None} | {PARENT_ID}) == 6


def test_batch_members_carry_the_deliverys_trace() -> None:
    app = App(
        Topology(
            exchanges=(Exchange("ex"),),
            queues=(
                Queue("q", (Binding("ex", "job"),), RetryPolicy((1,), 2)),
                Queue("members", (Binding("ex", "member"),), RetryPolicy((1,), 2)),
            ),
        )
    )

    @app.handler(Job, queue="q", track=True)  # tracked: the topology has leveret.status
    def fan_out(message: Job, ctx: Context) -> None:
        ctx.batch([Member(n=i) for i in range(3)], exchange="ex")

    @app.handler(Member, queue="members")
    def member(message: Member, ctx: Context) -> None:
        pass

    broker = Broker(app)
    broker.bind("jobs", "leveret.status", "#")
    broker.publish(Job(), exchange="ex", headers={"traceparent": VALID})
    broker.run_until_idle()
    members = broker.published(type="tracing.member")
    assert len(members) == 3
    assert {c.trace_id for c in map(tracing.of, (m.headers for m in members)) if c} == {TRACE_ID}


class Member(Message, type="tracing.member", version=1, routing_key="member"):
    n: int = 0


class Start(Message, type="tracing.start", version=1, routing_key="start"):
    n: int = 0


async def test_a_plain_publisher_inside_a_handler_continues_the_trace(
    broker_url: str, names: Callable[[str], str]
) -> None:
    # Not ctx.publish: a Publisher (sync handler) and an AsyncPublisher (async
    # handler) the application made itself, as a handler calling a library may.
    sync_q, async_q, done_q, exchange = names("sync"), names("async"), names("done"), names("ex")
    app = App(
        Topology(
            exchanges=(Exchange(exchange),),
            queues=(
                Queue(sync_q, (Binding(exchange, "start"),), RetryPolicy((0.2,), 2)),
                Queue(async_q, (Binding(exchange, "start"),), RetryPolicy((0.2,), 2)),
                Queue(done_q, (Binding(exchange, "job"),), RetryPolicy((0.2,), 2)),
            ),
        )
    )
    seen: dict[int, tracing.TraceContext | None] = {}

    @app.handler(Start, queue=sync_q)
    def with_publisher(message: Start, ctx: Context) -> None:
        with Publisher(broker_url) as publisher:
            publisher.publish(Job(n=1), exchange=exchange)

    @app.handler(Start, queue=async_q)
    async def with_async_publisher(message: Start, ctx: Context) -> None:
        async with AsyncPublisher(broker_url) as publisher:
            await publisher.publish(Job(n=2), exchange=exchange)

    @app.handler(Job, queue=done_q)
    def done(message: Job, ctx: Context) -> None:
        seen[message.n] = tracing.of(ctx.headers)

    admin.apply(broker_url, app.topology)
    outcomes: list[Outcome] = []
    worker = Worker(app, broker_url, on_outcome=outcomes.append)
    task = asyncio.create_task(worker.run())
    try:
        async with AsyncPublisher(broker_url) as publisher:
            await publisher.publish(Start(), exchange=exchange, headers={"traceparent": VALID})
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15
        while len(outcomes) < 4:
            assert loop.time() < deadline, f"timed out; outcomes: {outcomes}"
            await asyncio.sleep(0.02)
    finally:
        worker.stop()
        await asyncio.wait_for(task, 30)
        admin.delete(broker_url, app.topology)
    assert {o.outcome for o in outcomes} == {"processed"}
    assert sorted(seen) == [1, 2]
    for context in seen.values():
        assert context is not None
        assert (context.trace_id, context.flags) == (TRACE_ID, "01")
