"""Delayed delivery through the binary delay levels, on the real broker."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pika
import pytest

from leveret import (
    AsyncPublisher,
    Binding,
    Exchange,
    Publisher,
    Queue,
    RetryPolicy,
    Topology,
    admin,
    delay,
    permissions,
)
from leveret.errors import ConfigurationError, TopologyMissing
from tests import apps

# --- routes, without a broker ---------------------------------------------------


@pytest.mark.parametrize(
    ("wait", "levels", "first"),
    [(1, [0], 0), (2, [1], 1), (5, [0, 2], 2), (7, [0, 1, 2], 2), (3600, [4, 9, 10, 11], 11)],
)
def test_a_delay_takes_the_levels_of_its_set_bits(wait: int, levels: list[int], first: int) -> None:
    route = delay.route("ex", wait)
    assert route.exchange == delay.level_name(first)
    assert sorted(k for k in range(delay.LEVELS) if delay.level_header(k) in route.headers) == (
        levels
    )
    assert sum(2**k for k in levels) == wait
    assert route.headers[delay.EXCHANGE_HEADER] == "ex"


def test_delays_are_whole_seconds_rounded_up() -> None:
    assert delay.seconds(timedelta(milliseconds=1)) == 1
    assert delay.seconds(timedelta(seconds=2.2)) == 3
    assert delay.seconds(timedelta(0)) == 0
    assert delay.seconds(at=datetime.now(UTC) - timedelta(hours=1)) == 0
    assert 59 <= delay.seconds(at=datetime.now(UTC) + timedelta(minutes=1)) <= 60
    assert delay.seconds(delay.MAX_DELAY) == 2**delay.LEVELS - 1


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"delay": timedelta(seconds=-1)}, "negative"),
        ({"delay": delay.MAX_DELAY + timedelta(seconds=1)}, "longer than the longest"),
        ({"at": datetime(2030, 1, 1)}, "timezone-aware"),
        ({"delay": timedelta(1), "at": datetime.now(UTC)}, "not both"),
    ],
)
def test_bad_delays_are_refused_clearly(kwargs: dict[str, object], says: str) -> None:
    with pytest.raises(ConfigurationError, match=says):
        delay.seconds(**kwargs)  # type: ignore[arg-type]


def test_the_longest_level_fits_a_broker_timer() -> None:
    ttls = [
        op.arguments["x-message-ttl"]
        for op in Topology(delayed=True).declarations()
        if getattr(op, "name", "").startswith("leveret.delay.") and hasattr(op, "arguments")
        if op.arguments and "x-message-ttl" in op.arguments
    ]
    assert len(ttls) == delay.LEVELS
    assert max(ttls) < 2**32


def test_a_delayed_topology_lets_its_publisher_write_to_the_levels() -> None:
    topology = Topology(exchanges=(Exchange("shop"),), delayed=True)
    publisher = permissions.roles(topology)[0]
    write = re.compile(publisher.write)
    assert write.match("shop")
    assert all(write.match(name) for name in delay.level_names())
    assert not write.match(delay.DELIVER)


# --- on the broker ----------------------------------------------------------------


@dataclass
class Delayed:
    url: str
    exchange: str
    queue: str

    def arrivals(self, ids: set[str], timeout: float) -> dict[str, float]:
        """Consume the queue until every id arrived; monotonic arrival times by id."""
        arrived: dict[str, float] = {}
        conn = pika.BlockingConnection(pika.URLParameters(self.url))
        try:
            ch = conn.channel()
            deadline = time.monotonic() + timeout
            for method, props, _body in ch.consume(self.queue, inactivity_timeout=0.02):
                if method is not None:
                    arrived.setdefault(props.message_id, time.monotonic())
                    ch.basic_ack(method.delivery_tag)
                if ids <= arrived.keys() or time.monotonic() > deadline:
                    break
            ch.cancel()
        finally:
            conn.close()
        return arrived


@pytest.fixture
def delayed(broker_url: str, names: Callable[[str], str]) -> Iterator[Delayed]:
    queue, exchange = names("work"), names("ex")
    topology = Topology(
        exchanges=(Exchange(exchange),),
        queues=(Queue(queue, bindings=(Binding(exchange, "task"),), retry=RetryPolicy((1.0,), 2)),),
        delayed=True,
    )
    admin.apply(broker_url, topology)
    yield Delayed(broker_url, exchange, queue)
    admin.delete(broker_url, topology)


@pytest.mark.timeout(60)
def test_no_message_waits_behind_a_longer_one(delayed: Delayed) -> None:
    with Publisher(delayed.url) as publisher:
        started = time.monotonic()
        sent = {
            wait: publisher.publish(
                apps.Task(n=wait), exchange=delayed.exchange, delay=timedelta(seconds=wait)
            )
            for wait in (7, 3, 1, 2)  # the longest first
        }
        now = publisher.publish(apps.Task(n=0), exchange=delayed.exchange)

    arrived = delayed.arrivals({now, *sent.values()}, timeout=20)

    late = {wait: arrived[sent[wait]] - started - wait for wait in sent}
    # Never early; late by at most the dead-lettering of a few levels.
    assert all(-0.05 <= lateness < 1.0 for lateness in late.values()), late
    assert arrived[now] - started < 1.0
    assert sorted(sent, key=lambda w: arrived[sent[w]]) == [1, 2, 3, 7]


@pytest.mark.timeout(30)
async def test_the_async_publisher_delays_until_a_time(delayed: Delayed) -> None:
    due = datetime.now(UTC) + timedelta(seconds=2)
    async with AsyncPublisher(delayed.url) as publisher:
        message_id = await publisher.publish(apps.Task(n=1), exchange=delayed.exchange, at=due)

    arrived = delayed.arrivals({message_id}, timeout=10)

    assert message_id in arrived
    assert datetime.now(UTC) >= due


@pytest.mark.timeout(30)
def test_a_delayed_message_arrives_as_if_published_directly(delayed: Delayed) -> None:
    with Publisher(delayed.url) as publisher:
        message_id = publisher.publish(
            apps.Task(n=3),
            exchange=delayed.exchange,
            delay=timedelta(seconds=1),
            correlation_id="job-3",
            headers={"tenant": "acme"},
        )
    conn = pika.BlockingConnection(pika.URLParameters(delayed.url))
    try:
        ch = conn.channel()
        deadline = time.monotonic() + 10
        method = None
        while method is None and time.monotonic() < deadline:
            method, props, body = ch.basic_get(delayed.queue, auto_ack=True)
            time.sleep(0.05)
    finally:
        conn.close()
    assert method is not None, "the delayed message never arrived"
    assert method.routing_key == "task"
    assert props.message_id == message_id
    assert props.correlation_id == "job-3"
    assert props.type == "test.task"
    assert props.headers["leveret-version"] == 1
    assert props.headers["tenant"] == "acme"
    assert props.headers[delay.EXCHANGE_HEADER] == delayed.exchange
    assert apps.Task.from_json(body) == apps.Task(n=3)


@pytest.mark.timeout(30)
def test_a_due_message_with_nowhere_to_go_waits_in_the_unroutable_queue(
    delayed: Delayed, names: Callable[[str], str]
) -> None:
    lonely = names("lonely")  # an exchange the deliver exchange has no binding for
    with Publisher(delayed.url) as publisher:
        message_id = publisher.publish(
            apps.Task(n=4), exchange=lonely, routing_key="task", delay=timedelta(seconds=1)
        )
    conn = pika.BlockingConnection(pika.URLParameters(delayed.url))
    found = None
    try:
        ch = conn.channel()
        deadline = time.monotonic() + 10
        while found is None and time.monotonic() < deadline:
            # Other tests may leave theirs here too: take only ours.
            for method, props, _body in ch.consume(delay.UNROUTABLE, inactivity_timeout=0.2):
                if method is None:
                    break
                if props.message_id == message_id:
                    ch.basic_ack(method.delivery_tag)
                    found = props
                    break
                ch.basic_nack(method.delivery_tag, requeue=True)
            ch.cancel()
    finally:
        conn.close()
    assert found is not None, "the message was not kept"
    assert found.headers[delay.EXCHANGE_HEADER] == lonely


def test_leveret_queues_shows_the_delay_levels_that_hold_messages(delayed: Delayed) -> None:
    topology = Topology(exchanges=(Exchange(delayed.exchange),), delayed=True)
    with Publisher(delayed.url) as publisher:
        message_id = publisher.publish(
            apps.Task(n=5), exchange=delayed.exchange, delay=timedelta(seconds=4)
        )
    rows = {r.name: r for r in admin.stats(delayed.url, topology)}
    assert rows[delay.UNROUTABLE].exists
    assert rows[delay.level_name(2)].role == "delay 4s"
    assert rows[delay.level_name(2)].messages >= 1
    # Levels without messages are left out of the listing.
    assert all(
        rows[delay.level_name(k)].messages
        for k in range(delay.LEVELS)
        if delay.level_name(k) in rows
    )
    assert message_id in delayed.arrivals({message_id}, timeout=10)


def test_publishing_delayed_without_the_levels_says_what_to_do(
    broker_url: str, names: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(delay, "PREFIX", names("nolevels"))
    with Publisher(broker_url) as publisher, pytest.raises(TopologyMissing, match="delayed=True"):
        publisher.publish(
            apps.Task(), exchange="amq.direct", routing_key="x", delay=timedelta(seconds=1)
        )
