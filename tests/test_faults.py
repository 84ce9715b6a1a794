"""Faults: crashes, restarts, dropped and stalled connections. Nothing may be lost.

Each test is bounded in count and time and ends with exact accounting by
message id (see tests/ledger.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from structlog.contextvars import merge_contextvars
from structlog.testing import capture_logs

from leveret import App, Context, Publisher, Worker, admin, amqp, connection, dlq
from leveret.errors import LeveretError
from tests import apps
from tests.apps import Task
from tests.conftest import Pipeline, rabbitmqctl
from tests.ledger import Ledger, outcomes_in, spawn_worker
from tests.proxy import Proxy


def report(scenario: str, ledger: Ledger, **extra: object) -> None:
    """Print the figures of a scenario (``pytest -s`` shows them; docs/reliability.md has them)."""
    print(f"reliability: {scenario} {json.dumps({**ledger.summary(), **extra})}")


class SteadyPublisher(threading.Thread):
    """Publishes ``count`` tasks, 50 a second, recording every confirmed id."""

    def __init__(self, url: str, exchange: str, count: int) -> None:
        super().__init__()
        self.url, self.exchange, self.count = url, exchange, count
        self.ledger = Ledger()
        self.errors: list[BaseException] = []
        self.start()

    def run(self) -> None:
        try:
            with Publisher(self.url, reconnect_timeout=90) as pub:
                for n in range(self.count):
                    self.ledger.published.add(pub.publish(Task(n=n), exchange=self.exchange))
                    time.sleep(0.02)
        except BaseException as exc:  # the test reports it
            self.errors.append(exc)


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()


def test_sigkill_mid_handler_is_redelivered_and_the_others_keep_going(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    logs = [tmp_path / f"worker{i}.log" for i in range(3)]
    procs = [
        spawn_worker(
            pipeline.url,
            pipeline.queue,
            pipeline.exchange,
            log,
            "--concurrency",
            "2",
            LEVERET_TEST_MARKERS=str(markers),
        )
        for log in logs
    ]
    ledger = Ledger()
    try:
        with Publisher(pipeline.url) as pub:
            for n in range(30):
                ledger.published.add(
                    pub.publish(Task(n=n, sleep_ms=300), exchange=pipeline.exchange)
                )
        wait_until(lambda: any(markers.glob("*.started")), 30, "a handler to start")
        victim = next(markers.glob("*.started"))
        victim_pid = int(victim.read_text())
        os.kill(victim_pid, signal.SIGKILL)
        killed_at = time.monotonic()
        killed = victim.name.split(".")[0]
        wait_until(lambda: len(list(markers.glob("*.done"))) == 30, 60, "every task to finish")
        assert (markers / f"{killed}.done").exists(), "the killed task was never finished elsewhere"
    finally:
        stop_all(procs)
    survivors = [lg for lg, p in zip(logs, procs, strict=True) if p.pid != victim_pid]
    for log in logs:
        ledger.record_outcomes(outcomes_in(log.read_text()))
    report("sigkill", ledger)
    assert not ledger.lost, ledger.summary()
    assert sum(len(outcomes_in(lg.read_text())) for lg in survivors) >= 20
    assert time.monotonic() - killed_at < 60


def test_a_message_that_kills_every_worker_ends_in_the_dead_letter_queue(
    broker_url: str, names: Callable[[str], str], tmp_path: Path
) -> None:
    queue, exchange = names("poison"), names("ex")
    app = apps.build_app(queue, exchange, delivery_limit=2)
    admin.apply(broker_url, app.topology)
    ledger = Ledger()
    starts = 0
    try:
        with Publisher(broker_url) as pub:
            poison = pub.publish(Task(n=0, exit_process=True), exchange=exchange)
            for n in range(1, 6):
                ledger.published.add(pub.publish(Task(n=n), exchange=exchange))
        log = tmp_path / "worker.log"
        deadline = time.monotonic() + 90
        # A supervisor (a container runtime, say) restarts the worker each time it dies.
        while time.monotonic() < deadline:
            starts += 1
            proc = spawn_worker(
                broker_url,
                queue,
                exchange,
                log,
                "--concurrency",
                "1",
                LEVERET_TEST_DELIVERY_LIMIT="2",
            )
            try:
                proc.wait(8)
            except subprocess.TimeoutExpired:
                stop_all([proc])
                break  # it stayed up: the poison is gone
            assert starts <= 6, "the worker keeps dying: the delivery limit did not hold"
        ledger.record_outcomes(outcomes_in(log.read_text()))
        letters = {d.message_id: d for d in dlq.browse(broker_url, queue)}
        assert letters[poison].reason == "delivery_limit"
        report("poison", ledger)
        assert not ledger.lost, ledger.summary()
        assert starts >= 3  # it did die on the poison, more than once
    finally:
        admin.delete(broker_url, app.topology)


async def test_broker_stop_and_start_while_publishing_and_consuming(
    pipeline: Pipeline, running: Callable[..., Worker]
) -> None:
    running()
    publisher = SteadyPublisher(pipeline.url, pipeline.exchange, 150)
    ledger, errors = publisher.ledger, publisher.errors
    await pipeline.wait(lambda: len(pipeline.finals("processed")) >= 20, timeout=30)
    await asyncio.to_thread(rabbitmqctl, "stop_app")
    await asyncio.sleep(1)
    await asyncio.to_thread(rabbitmqctl, "start_app")
    await asyncio.to_thread(rabbitmqctl, "await_startup")
    await asyncio.to_thread(publisher.join, 120)
    assert not errors, errors
    await pipeline.wait(
        lambda: set(o.message_id for o in pipeline.finals("processed")) >= ledger.published,
        timeout=60,
    )
    ledger.record_outcomes(
        [{"outcome": o.outcome, "message_id": o.message_id} for o in pipeline.outcomes]
    )
    assert len(ledger.published) == 150
    report("broker-restart", ledger)
    assert not ledger.lost, ledger.summary()
    conn = connection.connect(pipeline.url)
    try:
        assert conn.channel().queue_declare(pipeline.queue, passive=True).method.consumer_count == 1
    finally:
        conn.close()


async def test_connections_cut_and_stalled_by_a_proxy(pipeline: Pipeline) -> None:
    with Proxy() as proxy:
        url = proxy.url(heartbeat=1)
        worker = Worker(pipeline.app, url, on_outcome=pipeline.outcomes.append)
        task = asyncio.create_task(worker.run())
        publisher = SteadyPublisher(url, pipeline.exchange, 200)
        ledger, errors = publisher.ledger, publisher.errors
        await pipeline.wait(lambda: len(pipeline.finals("processed")) >= 20)
        proxy.cut()
        await pipeline.wait(lambda: len(pipeline.finals("processed")) >= 60, timeout=30)
        proxy.stall()
        await asyncio.sleep(5)  # several heartbeat intervals: both sides give up
        proxy.resume()
        await asyncio.to_thread(publisher.join, 120)
        assert not errors, errors
        await pipeline.wait(
            lambda: {o.message_id for o in pipeline.finals("processed")} >= ledger.published,
            timeout=60,
        )
        worker.stop()
        await task
    ledger.record_outcomes(
        [{"outcome": o.outcome, "message_id": o.message_id} for o in pipeline.outcomes]
    )
    report("proxy-cut-and-stall", ledger)
    assert not ledger.lost, ledger.summary()
    assert proxy.connections >= 5  # the worker's and the publisher's, re-made twice


async def test_crash_between_the_retry_republish_and_the_ack_loses_nothing(
    pipeline: Pipeline, running: Callable[..., Worker], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The copy is confirmed, the original not yet acked: at worst a duplicate."""
    original = amqp.Channel.basic_publish
    crashed: list[str] = []

    async def confirm_then_crash(self: amqp.Channel, body: bytes, **kwargs: Any) -> None:
        await original(self, body, **kwargs)
        if str(kwargs.get("exchange", "")).endswith(".retry") and not crashed:
            crashed.append("yes")
            await self.conn.close()  # the worker "dies" before it can ack

    monkeypatch.setattr(amqp.Channel, "basic_publish", confirm_then_crash)
    running()
    message_id = pipeline.publish(Task(n=1, fail_times=1))
    await pipeline.wait(
        lambda: any(o.message_id == message_id for o in pipeline.finals("processed")), timeout=30
    )
    await asyncio.sleep(1)  # the second copy, if any, arrives within this
    assert crashed
    processed = [o for o in pipeline.finals("processed") if o.message_id == message_id]
    assert 1 <= len(processed) <= 2


async def test_a_handler_longer_than_the_heartbeat_keeps_its_connection(pipeline: Pipeline) -> None:
    app = App(pipeline.topology)

    @app.handler(Task, queue=pipeline.queue)
    def slow(message: Task, ctx: Context) -> None:
        time.sleep(4)  # four heartbeat intervals, in the thread pool

    url = connection.with_query(pipeline.url, heartbeat=1)
    with capture_logs(processors=[merge_contextvars]) as logs:
        worker = Worker(app, url, on_outcome=pipeline.outcomes.append)
        task = asyncio.create_task(worker.run())
        pipeline.publish(Task(n=1))
        await pipeline.wait(lambda: len(pipeline.finals("processed")) == 1, timeout=30)
        worker.stop()
        await task
    events = [e["event"] for e in logs]
    assert "worker.connection_lost" not in events and "worker.resumed" not in events
    assert [o.attempt for o in pipeline.outcomes] == [1]


def test_publish_errors_are_leveret_errors() -> None:
    """A caller catching LeveretError sees every publish failure (checked by the tests above)."""
    from leveret.errors import BrokerUnavailable, NotConfirmed, TopologyMissing, Unroutable

    for error in (BrokerUnavailable, NotConfirmed, TopologyMissing, Unroutable):
        assert issubclass(error, LeveretError)
