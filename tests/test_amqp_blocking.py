"""The blocking confirm link under the sync publisher, against the real broker."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from leveret import amqp, connection
from leveret.amqp.blocking import ConfirmLink
from tests.conftest import RefusedURLs
from tests.proxy import Proxy
from tests.test_amqp import PROPS


class Recorder:
    """The callbacks of a link, recorded."""

    def __init__(self) -> None:
        self.acked: set[int] = set()
        self.nacked: set[int] = set()
        self.returned: list[str | None] = []
        self.closed: list[amqp.ChannelClosed] = []
        self.ready = 0
        self.sent = 0

    def callbacks(self) -> dict[str, Any]:
        return {
            "on_confirm": self.confirm,
            "on_return": self.returned.append,
            "on_channel_closed": self.closed.append,
            "on_ready": self.on_ready,
        }

    def confirm(self, tag: int, multiple: bool, ack: bool) -> None:
        tags = range(max([0, *self.acked, *self.nacked]) + 1, tag + 1) if multiple else [tag]
        (self.acked if ack else self.nacked).update(tags)

    def on_ready(self) -> None:
        self.ready += 1

    def publish(self, link: ConfirmLink, body: bytes, **route: Any) -> None:
        route = {"exchange": "", "properties": PROPS, "mandatory": True, **route}
        link.publish(route.pop("exchange"), route.pop("routing_key"), body, **route)
        self.sent += 1

    def pump_until(self, link: ConfirmLink, done: Callable[[], bool], timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, "the broker did not answer in time"
            link.pump(1)


def open_link(url: str, rec: Recorder, heartbeat: int = 30) -> ConfirmLink:
    return ConfirmLink.open(url, name="test-blocking", heartbeat=heartbeat, **rec.callbacks())


def test_pipelined_publishes_are_confirmed_in_order_with_their_properties(
    broker_url: str, quorum_queue: str
) -> None:
    rec = Recorder()
    link = open_link(broker_url, rec)
    try:
        for i in range(500):
            rec.publish(link, b"%d" % i, routing_key=quorum_queue)
        big = bytes(range(256)) * 2000  # 512 KB: many frames, many partial writes
        rec.publish(link, big, routing_key=quorum_queue)
        rec.pump_until(link, lambda: len(rec.acked) == 501)
        assert rec.acked == set(range(1, 502)) and not rec.nacked and not rec.returned
    finally:
        link.close(5)
    assert link.closed is not None and link.closed.code == 200
    with connection.connect(broker_url) as check:
        ch = check.channel()
        _, props, body = ch.basic_get(quorum_queue, auto_ack=True)
        assert body == b"0" and props.message_id == "m-1" and props.headers["price"] is not None
        assert props.app_id == "billing" and props.timestamp == PROPS.timestamp
        assert ch.queue_declare(quorum_queue, passive=True).method.message_count == 500


def test_a_return_comes_before_its_confirm_and_a_missing_exchange_reopens_the_channel(
    broker_url: str, quorum_queue: str
) -> None:
    rec = Recorder()
    link = open_link(broker_url, rec)
    try:
        rec.publish(link, b"x", routing_key=quorum_queue + ".nobody")
        rec.pump_until(link, lambda: 1 in rec.acked)
        assert rec.returned == ["m-1"]  # recorded before the ack that settles it
        rec.publish(link, b"x", exchange=quorum_queue + ".none", routing_key="")
        rec.publish(link, b"dropped with the channel", routing_key=quorum_queue)
        rec.pump_until(link, lambda: rec.ready == 1)
        (closed,) = rec.closed
        assert isinstance(closed, amqp.ChannelNotFound) and "no exchange" in closed.text
        assert link.ready
        rec.acked.clear()
        rec.publish(link, b"after", routing_key=quorum_queue)  # tags start again at 1
        rec.pump_until(link, lambda: 1 in rec.acked)
    finally:
        link.close(5)
    with connection.connect(broker_url) as check:
        ch = check.channel()
        assert ch.queue_declare(quorum_queue, passive=True).method.message_count == 1
        assert ch.basic_get(quorum_queue, auto_ack=True)[2] == b"after"


def test_refused_credentials_vhost_and_port(refused: RefusedURLs) -> None:
    with pytest.raises(amqp.AuthenticationFailed, match="ACCESS_REFUSED"):
        open_link(refused.wrong_password, Recorder())
    with pytest.raises(amqp.ConnectionLost) as lost:
        open_link(refused.missing_vhost, Recorder())
    assert lost.value.code == 530
    with pytest.raises(OSError):
        open_link(refused.closed_port, Recorder())


def test_a_silent_broker_is_noticed_after_two_heartbeats(quorum_queue: str) -> None:
    with Proxy() as proxy:
        rec = Recorder()
        link = open_link(proxy.url(), rec, heartbeat=1)
        proxy.stall()
        rec.publish(link, b"x", routing_key=quorum_queue)
        started = time.monotonic()
        with pytest.raises(amqp.ConnectionLost, match="heartbeat"):
            rec.pump_until(link, lambda: False, timeout=10)
        assert time.monotonic() - started < 5
        with pytest.raises(amqp.ConnectionLost):
            link.pump(0)


def test_an_idle_link_keeps_its_heartbeats(quorum_queue: str) -> None:
    with Proxy() as proxy:
        rec = Recorder()
        link = open_link(proxy.url(), rec, heartbeat=1)
        try:
            deadline = time.monotonic() + 3.5  # past two intervals, pumping as the publisher does
            while time.monotonic() < deadline:
                link.pump(0.3)
            rec.publish(link, b"x", routing_key=quorum_queue)
            rec.pump_until(link, lambda: 1 in rec.acked, timeout=10)
        finally:
            link.close(5)


def test_a_cut_connection_fails_the_pump_and_every_later_call(quorum_queue: str) -> None:
    with Proxy() as proxy:
        rec = Recorder()
        link = open_link(proxy.url(), rec)
        rec.publish(link, b"x", routing_key=quorum_queue)
        rec.pump_until(link, lambda: 1 in rec.acked)
        proxy.cut()
        with pytest.raises(amqp.ConnectionLost):
            rec.pump_until(link, lambda: False, timeout=10)
        with pytest.raises(amqp.ConnectionLost):
            rec.publish(link, b"y", routing_key=quorum_queue)
        link.close(1)  # nothing left to close: returns at once


def test_wake_ends_a_wait_from_another_thread(broker_url: str) -> None:
    rec = Recorder()
    link = open_link(broker_url, rec)
    try:
        threading.Timer(0.2, link.wake).start()
        started = time.monotonic()
        link.pump(20)
        assert time.monotonic() - started < 5
    finally:
        link.close(5)
