"""OpenTelemetry spans: PRODUCER per publish, CONSUMER per delivery, linked by traceparent.

Each test installs an SDK exporting to memory as the provider in force, for
that test only; afterwards the API is back to doing nothing. Without
OpenTelemetry at all, a subprocess that cannot import it checks that the
headers still follow the contract and that nothing tried to import it.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

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
    Unroutable,
    Worker,
    admin,
    tracing,
)
from leveret.publisher.core import PublisherCore
from leveret.testing import Broker

CORE = PublisherCore("amqp://localhost/")  # builds envelopes only: never connects
PARENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
PARENT = f"00-{PARENT_TRACE}-b7ad6b7169203331-01"


class Start(Message, type="otel.start", version=1, routing_key="start"):
    n: int = 0
    give_up: bool = False


class Next(Message, type="otel.next", version=1, routing_key="next"):
    n: int = 0
    fail_times: int = 0


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    """An SDK exporting finished spans to memory, the provider in force for this test."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    # Not trace.set_tracer_provider: that may be called once per process, and
    # the other tests run with the API alone.
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: provider)
    yield exporter
    provider.shutdown()


def build_app(start: str, following: str, exchange: str, seen: list[dict[str, Any]]) -> App:
    """An async handler on ``start`` publishes a Next; a sync one on ``following`` takes it."""
    app = App(
        Topology(
            exchanges=(Exchange(exchange),),
            queues=(
                Queue(start, (Binding(exchange, "start"),), RetryPolicy((0.2,), 2)),
                Queue(following, (Binding(exchange, "next"),), RetryPolicy((0.2,), 2)),
            ),
        )
    )

    @app.handler(Start, queue=start)
    async def begin(message: Start, ctx: Context) -> None:
        if message.give_up:
            raise DeadLetter("nothing to start")
        await ctx.apublish(Next(n=message.n, fail_times=1), exchange=exchange)

    @app.handler(Next, queue=following)
    def go_on(message: Next, ctx: Context) -> None:
        # A span of the handler's own, on the handler's thread: a child of the delivery's.
        with trace.get_tracer_provider().get_tracer("test").start_as_current_span("work") as work:
            seen.append({"headers": dict(ctx.headers), "work": work.get_span_context()})
        if ctx.attempt <= message.fail_times:
            raise RuntimeError("not yet")

    return app


def by_name(finished: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in finished if s.name == name]


def ids(span: ReadableSpan) -> tuple[str, str]:
    context = span.get_span_context()
    assert context is not None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


def parent_id(span: ReadableSpan) -> str | None:
    return format(span.parent.span_id, "016x") if span.parent is not None else None


# Publishing


def test_a_publish_makes_a_producer_span_whose_ids_the_message_carries(
    spans: InMemorySpanExporter,
) -> None:
    env = CORE.envelope(Start(n=1), exchange="orders", message_id="m-1")
    assert spans.get_finished_spans() == ()  # it ends once sent
    tracing.sent(env.span)
    (span,) = spans.get_finished_spans()
    assert (span.name, span.kind, span.parent) == ("orders publish", SpanKind.PRODUCER, None)
    assert span.attributes == {
        "messaging.system": "rabbitmq",
        "messaging.operation": "publish",
        "messaging.destination.name": "orders",
        "messaging.rabbitmq.destination.routing_key": "start",
        "messaging.message.id": "m-1",
        "leveret.message.type": "otel.start",
    }
    sent = tracing.of(env.headers)
    assert sent is not None
    assert (sent.trace_id, sent.parent_id) == ids(span)


def test_the_default_exchange_is_named_as_the_conventions_say(
    spans: InMemorySpanExporter,
) -> None:
    tracing.sent(CORE.envelope(Start(n=1), exchange="", routing_key="q").span)
    (span,) = spans.get_finished_spans()
    assert span.name == "amq.default publish"


def test_a_callers_traceparent_is_the_producer_spans_parent(spans: InMemorySpanExporter) -> None:
    env = CORE.envelope(
        Start(n=1), exchange="orders", headers={"traceparent": PARENT, "tracestate": "rojo=1"}
    )
    tracing.sent(env.span)
    (span,) = spans.get_finished_spans()
    assert ids(span)[0] == PARENT_TRACE
    assert parent_id(span) == "b7ad6b7169203331"
    sent = tracing.of(env.headers)
    assert sent is not None
    assert (sent.trace_id, sent.parent_id, sent.flags, sent.state) == (
        *ids(span),
        "01",
        "rojo=1",
    )


def test_an_active_span_is_the_parent_of_a_publish(spans: InMemorySpanExporter) -> None:
    # A web framework's request span, say.
    tracer = trace.get_tracer_provider().get_tracer("web")
    with tracer.start_as_current_span("GET /export") as request:
        env = CORE.envelope(Start(n=1), exchange="orders")
    tracing.sent(env.span)
    producer = by_name(spans.get_finished_spans(), "orders publish")[0]
    context = request.get_span_context()
    assert parent_id(producer) == format(context.span_id, "016x")
    assert ids(producer)[0] == format(context.trace_id, "032x")


def test_a_failed_publish_ends_its_span_with_an_error(
    spans: InMemorySpanExporter, names: Callable[[str], str]
) -> None:
    broker = Broker(build_app(names("start"), names("next"), names("ex"), []))
    with pytest.raises(Unroutable):
        broker.publish(Start(n=1), exchange=names("ex"), routing_key="nowhere")
    (span,) = spans.get_finished_spans()
    assert span.status.status_code == StatusCode.ERROR
    assert [e.name for e in span.events] == ["exception"]


# Handling


def assert_pipeline(finished: tuple[ReadableSpan, ...], start: str, following: str) -> None:
    """publish → start process → publish → following process (failed, retried, processed)."""
    producers = by_name(finished, f"{start.rsplit('.', 1)[0]}.ex publish")
    # The test's publish starts the trace; the handler's is a child.
    (first,) = [s for s in producers if s.parent is None]
    (second,) = [s for s in producers if s.parent is not None]
    assert first.kind == SpanKind.PRODUCER and second.kind == SpanKind.PRODUCER
    (began,) = by_name(finished, f"{start} process")
    failed, done = sorted(
        by_name(finished, f"{following} process"), key=lambda s: s.start_time or 0
    )
    trace_id = ids(first)[0]
    assert {ids(s)[0] for s in (first, second, began, failed, done)} == {trace_id}
    assert parent_id(first) is None
    assert parent_id(began) == ids(first)[1]
    assert parent_id(second) == ids(began)[1]
    assert parent_id(failed) == parent_id(done) == ids(second)[1]
    assert began.kind == failed.kind == SpanKind.CONSUMER
    assert began.attributes is not None
    assert began.attributes["messaging.destination.subscription.name"] == start
    assert began.attributes["leveret.outcome"] == "processed"
    assert began.status.status_code == StatusCode.UNSET
    assert failed.status.status_code == StatusCode.ERROR
    assert failed.attributes is not None and done.attributes is not None
    assert (failed.attributes["leveret.outcome"], failed.attributes["leveret.attempt"]) == (
        "retry_scheduled",
        1,
    )
    assert [e.name for e in failed.events] == ["exception", "leveret.retry_scheduled"]
    assert (done.attributes["leveret.outcome"], done.attributes["leveret.attempt"]) == (
        "processed",
        2,
    )


def assert_seen(seen: list[dict[str, Any]], finished: tuple[ReadableSpan, ...], q: str) -> None:
    """The handler saw the producer span's context, and its own span was the delivery's child."""
    (second,) = [s for s in finished if s.name.endswith("publish") and s.parent is not None]
    consumers = by_name(finished, f"{q} process")
    flags = format(second.context.trace_flags, "02x")  # the SDK's, from the root span
    for record in seen:
        assert record["headers"]["traceparent"] == f"00-{ids(second)[0]}-{ids(second)[1]}-{flags}"
    works = {format(r["work"].span_id, "016x") for r in seen}
    assert {s.name for s in finished if format(s.context.span_id, "016x") in works} == {"work"}
    assert {parent_id(s) for s in finished if s.name == "work"} == {ids(c)[1] for c in consumers}


def test_spans_link_up_through_handlers_in_the_memory_broker(
    spans: InMemorySpanExporter, names: Callable[[str], str]
) -> None:
    start, following, exchange = names("start"), names("next"), names("ex")
    seen: list[dict[str, Any]] = []
    broker = Broker(build_app(start, following, exchange, seen))
    broker.publish(Start(n=1), exchange=exchange)
    broker.run_until_idle(advance=True)
    assert [o.outcome for o in broker.processed] == ["processed", "retry_scheduled", "processed"]
    finished = spans.get_finished_spans()
    assert_pipeline(finished, start, following)
    assert_seen(seen, finished, following)


def test_a_dead_letter_is_recorded_on_the_consumer_span(
    spans: InMemorySpanExporter, names: Callable[[str], str]
) -> None:
    start, exchange = names("start"), names("ex")
    broker = Broker(build_app(start, names("next"), exchange, []))
    broker.publish(Start(n=1, give_up=True), exchange=exchange)
    broker.run_until_idle()
    (span,) = by_name(spans.get_finished_spans(), f"{start} process")
    assert span.status.status_code == StatusCode.ERROR
    assert span.attributes is not None
    assert (span.attributes["leveret.outcome"], span.attributes["leveret.reason"]) == (
        "dead_lettered",
        "dead-letter",
    )
    assert [e.name for e in span.events] == ["exception", "leveret.dead_lettered"]


async def test_spans_link_up_across_a_real_broker_round_trip(
    spans: InMemorySpanExporter, broker_url: str, names: Callable[[str], str]
) -> None:
    start, following, exchange = names("start"), names("next"), names("ex")
    seen: list[dict[str, Any]] = []
    app = build_app(start, following, exchange, seen)
    outcomes: list[Outcome] = []
    admin.apply(broker_url, app.topology)
    worker = Worker(app, broker_url, on_outcome=outcomes.append)
    task = asyncio.create_task(worker.run())
    try:
        async with AsyncPublisher(broker_url) as publisher:
            await publisher.publish(Start(n=1), exchange=exchange)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15
        while len(outcomes) < 3:
            assert loop.time() < deadline, f"timed out; outcomes: {outcomes}"
            await asyncio.sleep(0.02)
    finally:
        worker.stop()
        await asyncio.wait_for(task, 30)
        admin.delete(broker_url, app.topology)
    # Reported after each ack: the follow-up's first attempt may be reported first.
    assert sorted((o.queue, o.attempt, o.outcome) for o in outcomes) == sorted(
        [(start, 1, "processed"), (following, 1, "retry_scheduled"), (following, 2, "processed")]
    )
    finished = spans.get_finished_spans()
    assert_pipeline(finished, start, following)
    assert_seen(seen, finished, following)


# Without OpenTelemetry

WITHOUT = """
import sys


class NoOpenTelemetry:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "opentelemetry":
            raise ImportError(f"no module named {name!r}")


sys.meta_path.insert(0, NoOpenTelemetry())

from leveret import App, Binding, Context, Exchange, Message, Queue, RetryPolicy, Topology
from leveret import tracing
from leveret.testing import Broker


class Job(Message, type="plain.job", version=1, routing_key="job"):
    n: int = 0


app = App(Topology(
    exchanges=(Exchange("ex"),),
    queues=(Queue("q", (Binding("ex", "job"),), RetryPolicy((1,), 2)),),
))
seen = []


@app.handler(Job, queue="q")
def handle(message, ctx):
    seen.append(ctx.headers["traceparent"])
    if message.n < 2:
        ctx.publish(Job(n=message.n + 1), exchange="ex")


broker = Broker(app)
broker.publish(Job(n=0), exchange="ex", headers={"traceparent": PARENT})
broker.run_until_idle()
contexts = [tracing.parse(value) for value in seen]
assert len(contexts) == 3 and all(contexts), seen
assert {c.trace_id for c in contexts} == {PARENT.split("-")[1]}, seen
assert len({c.parent_id for c in contexts}) == 3, seen
loaded = sorted(m for m in sys.modules if m.startswith(("opentelemetry", "leveret.otel")))
assert not loaded, loaded
print("ok")
"""


def test_without_opentelemetry_the_headers_follow_the_contract_alone() -> None:
    script = f"PARENT = {PARENT!r}\n" + textwrap.dedent(WITHOUT)
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "ok"


def test_opentelemetry_is_imported_on_the_first_publish_only() -> None:
    script = textwrap.dedent(
        """
        import sys
        import leveret, leveret.testing, leveret.consumers.worker, leveret.publisher.sync
        from leveret.publisher.core import PublisherCore
        from leveret import Message

        class Job(Message, type="plain.job", version=1, routing_key="job"):
            n: int = 0

        before = any(m.startswith("opentelemetry") for m in sys.modules)
        PublisherCore("amqp://localhost/").envelope(Job(), exchange="ex")
        print(before, "leveret.otel" in sys.modules)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1].split() == ["False", "True"]
