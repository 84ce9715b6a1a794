"""Publishers against the real broker: confirms, routing errors, threads, reconnects."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from urllib.parse import urlsplit

import pytest

from leveret import AsyncPublisher, Publisher, tracing, wire
from leveret.errors import (
    BrokerUnavailable,
    MessageTooLarge,
    NotConfirmed,
    TopologyMissing,
    Unroutable,
)
from tests.apps import Task
from tests.conftest import Pipeline, RefusedURLs, rabbitmqctl, refusing


def test_publish_sets_the_contract_properties(pipeline: Pipeline) -> None:
    with Publisher(pipeline.url, app_id="billing") as pub:
        message_id = pub.publish(
            Task(n=3), exchange=pipeline.exchange, correlation_id="req-1", headers={"tenant": "a"}
        )
    props, body = pipeline.get(pipeline.queue)  # type: ignore[misc]
    assert props.message_id == message_id
    assert props.type == "test.task"
    assert props.content_type == "application/json"
    assert props.delivery_mode == 2
    assert props.correlation_id == "req-1"
    assert props.app_id == "billing"
    assert props.timestamp > 0
    own = {
        k: v for k, v in props.headers.items() if not k.startswith("x-")
    }  # quorum adds x-delivery-count
    assert tracing.parse(own.pop(tracing.TRACEPARENT)) is not None
    assert own == {wire.VERSION: 1, "tenant": "a"}
    assert body == Task(n=3).to_json()
    assert body.startswith(b'{"n":3,"fail_times":0')


def test_unroutable_message_raises(pipeline: Pipeline) -> None:
    with Publisher(pipeline.url) as pub, pytest.raises(Unroutable, match="no queue is bound"):
        pub.publish(Task(n=1), exchange=pipeline.exchange, routing_key="nobody-listens")
    # The publisher is still usable afterwards.
    with Publisher(pipeline.url) as pub:
        pub.publish(Task(n=2), exchange=pipeline.exchange)
    assert pipeline.depth(pipeline.queue) == 1


def test_missing_exchange_raises_and_the_publisher_recovers(
    pipeline: Pipeline, names: Callable[[str], str]
) -> None:
    with Publisher(pipeline.url) as pub:
        with pytest.raises(TopologyMissing, match="does not exist; run `leveret topology apply`"):
            pub.publish(Task(n=1), exchange=names("nowhere"))
        pub.publish(Task(n=2), exchange=pipeline.exchange)
    assert pipeline.depth(pipeline.queue) == 1


def test_too_large_is_refused_before_sending(pipeline: Pipeline) -> None:
    with Publisher(pipeline.url, max_size=10) as pub, pytest.raises(MessageTooLarge):
        pub.publish(Task(n=1), exchange=pipeline.exchange)
    assert pipeline.depth(pipeline.queue) == 0


def test_many_threads_share_one_publisher(pipeline: Pipeline) -> None:
    ids: list[str] = []
    errors: list[BaseException] = []
    with Publisher(pipeline.url) as pub:

        def work(start: int) -> None:
            try:
                for i in range(start, start + 25):
                    ids.append(pub.publish(Task(n=i), exchange=pipeline.exchange))
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(k * 100,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert not errors
    assert len(set(ids)) == 200
    assert pipeline.depth(pipeline.queue) == 200


def test_sync_publisher_survives_a_dropped_connection(pipeline: Pipeline) -> None:
    with Publisher(pipeline.url) as pub:
        pub.publish(Task(n=1), exchange=pipeline.exchange)
        rabbitmqctl("close_all_connections", "test: publisher drop")
        pub.publish(Task(n=2), exchange=pipeline.exchange)
    assert pipeline.depth(pipeline.queue) == 2


def test_unreachable_broker_raises_after_the_reconnect_timeout() -> None:
    with (
        Publisher("amqp://guest:pw@127.0.0.1:1/", reconnect_timeout=0.5) as pub,
        pytest.raises(BrokerUnavailable, match="no RabbitMQ broker reachable") as caught,
    ):
        pub.publish(Task(n=1), exchange="x")
    assert "pw@" not in str(caught.value)


async def test_refused_credentials_are_named_when_both_faces_give_up(
    pipeline: Pipeline, refused: RefusedURLs
) -> None:
    """Retried (the user may not exist yet), then reported as refused, not as unreachable."""
    wrong = refused.wrong_password
    with (
        Publisher(wrong, reconnect_timeout=0.5) as pub,
        pytest.raises(BrokerUnavailable, match="refused the credentials") as caught,
    ):
        pub.publish(Task(n=1), exchange=pipeline.exchange)
    assert f":{urlsplit(wrong).password}@" not in str(caught.value)
    async with AsyncPublisher(wrong, reconnect_timeout=0.5) as apub:
        with pytest.raises(BrokerUnavailable, match="refused the credentials"):
            await apub.publish(Task(n=1), exchange=pipeline.exchange)


def test_a_header_no_field_table_holds_fails_that_message_only(pipeline: Pipeline) -> None:
    with Publisher(pipeline.url) as pub:
        with pytest.raises(NotConfirmed, match="cannot go in an AMQP field table"):
            pub.publish(Task(n=1), exchange=pipeline.exchange, headers={"tags": {"a", "b"}})
        pub.publish(Task(n=2), exchange=pipeline.exchange)
    assert pipeline.depth(pipeline.queue) == 1


async def test_async_publisher_pipelines_concurrent_confirms(pipeline: Pipeline) -> None:
    async with AsyncPublisher(pipeline.url) as pub:
        ids = await asyncio.gather(
            *(pub.publish(Task(n=i), exchange=pipeline.exchange) for i in range(200))
        )
    assert len(set(ids)) == 200
    assert pipeline.depth(pipeline.queue) == 200


async def test_async_publisher_errors_match_the_sync_ones(
    pipeline: Pipeline, names: Callable[[str], str]
) -> None:
    async with AsyncPublisher(pipeline.url) as pub:
        with pytest.raises(Unroutable):
            await pub.publish(Task(n=1), exchange=pipeline.exchange, routing_key="nobody")
        with pytest.raises(TopologyMissing):
            await pub.publish(Task(n=1), exchange=names("nowhere"))
        await pub.publish(Task(n=2), exchange=pipeline.exchange)
    assert pipeline.depth(pipeline.queue) == 1


async def test_async_publisher_survives_a_dropped_connection(pipeline: Pipeline) -> None:
    async with AsyncPublisher(pipeline.url) as pub:
        await pub.publish(Task(n=1), exchange=pipeline.exchange)
        await asyncio.to_thread(rabbitmqctl, "close_all_connections", "test: publisher drop")
        await pub.publish(Task(n=2), exchange=pipeline.exchange)
    assert pipeline.depth(pipeline.queue) == 2


def queued(p: Pipeline) -> list[int]:
    """The tasks in the work queue, in order (taken)."""
    tasks = []
    while (got := p.get(p.queue)) is not None:
        tasks.append(json.loads(got[1])["n"])
    return tasks


def test_after_a_nack_the_publisher_sends_on_a_new_channel(classic: Pipeline) -> None:
    def channel_number() -> int:
        assert pub._link is not None and pub._link._conn is not None
        return pub._link._conn._channel

    with Publisher(classic.url) as pub:
        pub.publish(Task(n=0), exchange=classic.exchange)
        first = channel_number()
        with refusing(classic.queue), pytest.raises(NotConfirmed, match="nacked"):
            pub.publish(Task(n=1), exchange=classic.exchange)
        pub.publish(Task(n=2), exchange=classic.exchange)
        assert channel_number() != first
    assert queued(classic) == [2]  # a limit of zero pushed out the first one


async def test_after_a_nack_the_async_publisher_sends_on_a_new_channel(classic: Pipeline) -> None:
    async with AsyncPublisher(classic.url) as pub:
        await pub.publish(Task(n=0), exchange=classic.exchange)
        first = pub._channel
        assert first is not None
        with refusing(classic.queue):
            nacked, sent = await asyncio.gather(
                pub.publish(Task(n=1), exchange=classic.exchange),
                pub.publish(Task(n=2), exchange=classic.exchange),
                return_exceptions=True,
            )
        assert isinstance(nacked, NotConfirmed) and isinstance(sent, NotConfirmed)
        await pub.publish(Task(n=3), exchange=classic.exchange)
        assert pub._channel is not first
        for _ in range(100):  # closed once its confirms came, not left open
            if first.is_closed:
                break
            await asyncio.sleep(0.01)
        assert first.is_closed
    assert queued(classic) == [3]  # a limit of zero pushed out the first one


async def test_async_unreachable_broker_raises() -> None:
    async with AsyncPublisher("amqp://guest:pw@127.0.0.1:1/", reconnect_timeout=0.5) as pub:
        with pytest.raises(BrokerUnavailable):
            await pub.publish(Task(n=1), exchange="x")


def test_publish_many_sends_all_then_waits_for_all_confirms(pipeline: Pipeline) -> None:
    with Publisher(pipeline.url) as pub:
        ids = pub.publish_many((Task(n=i) for i in range(300)), exchange=pipeline.exchange)
    assert len(set(ids)) == 300
    assert pipeline.depth(pipeline.queue) == 300
    first = pipeline.get(pipeline.queue)
    assert first is not None and first[0].message_id == ids[0]  # in order


def test_publish_many_raises_the_first_error_and_still_sends_the_rest(
    pipeline: Pipeline,
) -> None:
    with Publisher(pipeline.url) as pub:
        envs = [pub.envelope(Task(n=i), exchange=pipeline.exchange) for i in range(10)]
        envs[4] = pub.envelope(Task(n=4), exchange=pipeline.exchange, routing_key="nobody")
        with pytest.raises(Unroutable, match=envs[4].message_id):
            pub.send_many(envs)
    assert pipeline.depth(pipeline.queue) == 9


def test_threads_sharing_a_publisher_have_their_confirms_pipelined(pipeline: Pipeline) -> None:
    """Eight threads at once: several messages await their confirms together on one channel."""
    from leveret.publisher import sync

    most = 0
    drain = sync._Link._io_drain

    def watched(link: sync._Link) -> None:
        nonlocal most
        drain(link)
        most = max(most, len(link._unconfirmed))

    errors: list[BaseException] = []
    with Publisher(pipeline.url) as pub:
        pub.publish(Task(n=0), exchange=pipeline.exchange)
        link = pub._link
        assert link is not None
        link._io_drain = lambda: watched(link)  # type: ignore[method-assign]
        gate = threading.Barrier(8)

        def work() -> None:
            try:
                gate.wait()
                for i in range(30):
                    pub.publish(Task(n=i), exchange=pipeline.exchange)
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=work) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert pub._link is link  # one connection throughout
    assert not errors
    assert most > 1  # not one publish in flight at a time
    assert pipeline.depth(pipeline.queue) == 241


def test_a_missing_exchange_fails_only_the_messages_sent_to_it(
    pipeline: Pipeline, names: Callable[[str], str]
) -> None:
    """The broker closes the channel over one message; the others in flight go out again."""
    with Publisher(pipeline.url) as pub:
        envs = [pub.envelope(Task(n=i), exchange=pipeline.exchange) for i in range(50)]
        envs[20] = pub.envelope(Task(n=20), exchange=names("nowhere"))
        with pytest.raises(TopologyMissing, match="does not exist"):
            pub.send_many(envs)
        pub.publish(Task(n=99), exchange=pipeline.exchange)
    # Those before the bad one may have been taken twice (confirmed or not); none is lost.
    got = set()
    while (item := pipeline.get(pipeline.queue)) is not None:
        got.add(item[0].message_id)
    assert got >= {e.message_id for i, e in enumerate(envs) if i != 20}


async def test_async_publish_many(pipeline: Pipeline) -> None:
    async with AsyncPublisher(pipeline.url) as pub:
        ids = await pub.publish_many((Task(n=i) for i in range(200)), exchange=pipeline.exchange)
        with pytest.raises(Unroutable):
            await pub.publish_many(
                [Task(n=1), Task(n=2)], exchange=pipeline.exchange, routing_key="nobody"
            )
    assert len(set(ids)) == 200
    assert pipeline.depth(pipeline.queue) == 200
