"""The in-memory broker's own behaviour: time, routing, status, its faces (no RabbitMQ)."""

from __future__ import annotations

import pytest

from leveret import (
    App,
    Binding,
    ConfigurationError,
    Context,
    Exchange,
    Message,
    Queue,
    RetryPolicy,
    Topology,
    Unroutable,
    wire,
)
from leveret.testing import Broker, Properties, Runaway, broker_fixture
from leveret.testing.routing import headers_match, topic_matches


class Ping(Message, type="memory.ping", version=1, exchange="ex", routing_key="ping"):
    fail_times: int = 0
    echo: bool = False


class Note(Message, type="memory.note", version=1, exchange="events", routing_key="a.b.c"):
    text: str = ""


def make_app(*, track: bool = False) -> App:
    app = App(
        Topology(
            exchanges=(Exchange("ex"), Exchange("events", "topic")),
            queues=(
                Queue("q", (Binding("ex", "ping"),), RetryPolicy((5, 30), 3)),
                Queue("notes", (Binding("events", "a.#"),)),
            ),
        )
    )

    @app.handler(Ping, queue="q", track=track)
    async def ping(message: Ping, ctx: Context) -> str:
        if ctx.attempt <= message.fail_times:
            raise RuntimeError("not yet")
        await ctx.aprogress(50, "half way")
        if message.echo:
            await ctx.apublish(Ping(echo=True))
        return "/results/1"

    return app


broker = broker_fixture(make_app)


def test_a_retry_waits_in_its_tier_until_the_clock_passes_its_ttl(broker: Broker) -> None:
    broker.publish(Ping(fail_times=1))
    assert [o.outcome for o in broker.run_until_idle()] == ["retry_scheduled"]
    assert broker.depth("q.retry.1") == 1
    assert broker.advance(4.9) == []
    assert broker.depth("q.retry.1") == 1
    (back,) = broker.advance(0.1)
    assert (back.attempt, back.outcome) == (2, "processed")
    assert broker.clock == 5.0


def test_advance_without_running_only_moves_messages(broker: Broker) -> None:
    broker.publish(Ping(fail_times=1))
    broker.run_until_idle()
    assert broker.advance(10, run=False) == []
    (held,) = broker.messages("q")
    # Back from the tier as RabbitMQ delivers it: through the default exchange.
    assert (held.exchange, held.routing_key) == ("", "q")
    assert held.headers["x-death"][0]["reason"] == "expired"
    assert held.headers[wire.RETRY_COUNT] == 1


def test_a_topic_exchange_routes_by_pattern(broker: Broker) -> None:
    broker.publish(Note(text="hi"))
    with pytest.raises(Unroutable):
        broker.publish(Note(), routing_key="b.a")
    assert broker.depth("notes") == 1
    note, unrouted = broker.published(type="memory.note")
    assert (note.queues, note.json(), note.by) == (("notes",), {"text": "hi"}, "test")
    assert (unrouted.routing_key, unrouted.queues) == ("b.a", ())


def test_raw_bytes_can_be_unroutable_too(broker: Broker) -> None:
    with pytest.raises(Unroutable):
        broker.publish_raw(b"{}", exchange="ex", routing_key="nowhere", properties=Properties())


def test_a_tracked_handler_reports_its_job() -> None:
    tracked = Broker(make_app(track=True))
    message_id = tracked.publish(Ping(fail_times=1))
    tracked.run_until_idle(advance=True)
    states = [p.json()["state"] for p in tracked.published(type="leveret.job.status")]
    assert states == ["started", "retrying", "started", "progress", "succeeded"]
    last = tracked.published(type="leveret.job.status")[-1]
    assert (last.routing_key, last.json()["result"], last.by) == (message_id, "/results/1", "q")


def test_a_handler_that_publishes_forever_is_stopped(broker: Broker) -> None:
    broker.publish(Ping(echo=True))
    with pytest.raises(Runaway):
        broker.run_until_idle(max_deliveries=20)
    assert broker.depth("q") == 1  # the next one is still there


async def test_inside_an_event_loop_the_async_face_is_needed(broker: Broker) -> None:
    broker.publish(Ping())
    with pytest.raises(ConfigurationError, match="arun_until_idle"):
        broker.run_until_idle()
    (done,) = await broker.arun_until_idle()
    assert done.outcome == "processed"


def test_a_sync_handler_publishes_from_its_thread() -> None:
    app = App(Topology(exchanges=(Exchange("ex"),), queues=(Queue("q", (Binding("ex", "ping"),)),)))
    ids: list[str] = []

    @app.handler(Ping, queue="q")
    def ping(message: Ping, ctx: Context) -> None:
        if not message.echo:
            ids.append(ctx.publish(Ping(echo=True)))

    memory = Broker(app)
    memory.publish(Ping())
    assert [o.outcome for o in memory.run_until_idle()] == ["processed", "processed"]
    (echo,) = memory.published(by="q")
    assert echo.message_id == ids[0]


def test_routing_compares_header_values_with_their_types() -> None:
    assert headers_match({"x-match": "all", "k": 1}, {"k": 1})
    assert not headers_match({"x-match": "all", "k": 1}, {"k": "1"})
    assert not headers_match({"x-match": "all", "k": 1}, {"k": True})
    assert headers_match({"x-match": "any", "k": 1, "j": 2}, {"j": 2})
    assert topic_matches(["a", "#"], ["a"])
    assert not topic_matches(["a", "*"], ["a", "b", "c"])
