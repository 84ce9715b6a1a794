"""The worker: consumes an app's queues and settles every delivery.

Async handlers run on the event loop, sync handlers in a thread pool, so the
connection's heartbeats never wait for a handler. A delivery is acked only
after its handler returned; a failure is republished (retry tier or dead-letter
queue, see :mod:`leveret.retry`) and the original acked only once the copy is
confirmed.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import os
import signal
import socket
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import structlog

from leveret import amqp, connection, health, retry, wire
from leveret.consumers.app import App
from leveret.consumers.attempt import attempt, settled
from leveret.consumers.confirms import Confirms
from leveret.consumers.context import HandlerPublisher
from leveret.consumers.delivery import (
    Acks,
    Outcome,
    report,
    republished,
    to_delivery,
)
from leveret.consumers.probes import ProbeServer
from leveret.errors import (
    AccessRefused,
    BrokerUnavailable,
    ConfigurationError,
    TopologyMissing,
)
from leveret.metrics import WorkerMetrics
from leveret.publisher.aio import CONNECTION_ERRORS, connect
from leveret.publisher.core import PublisherCore
from leveret.status.events import EXCHANGE as STATUS_EXCHANGE
from leveret.topology import worker_needs

log = structlog.get_logger(__name__)

CHECK_INTERVAL = 5.0
"""Seconds between checks that the consumers are still registered."""

REPUBLISH_PATIENCE = 30.0
"""Seconds a failed delivery's copy is sent again while the broker nacks it.

A quorum queue refuses publishes for a while after its leader moves to another
node; a copy still refused after this long is dead-lettered instead.
"""


class Worker:
    """Run an app's handlers against the broker until stopped.

    Args:
        app: the app whose handlers run.
        urls: the broker URL, or several (a cluster's nodes).
        queues: the queues to consume (default: every queue with a handler).
        concurrency: handlers running at once.
        prefetch: unacked deliveries the broker may send ahead (default: ``concurrency``).
        grace: seconds in-flight handlers get to finish on shutdown.
        health_file: a file touched every few seconds while the worker is live
            (see :mod:`leveret.health`), for images without HTTP.
        http_port: serve ``/livez``, ``/readyz`` and ``/metrics`` on this port
            (:mod:`leveret.consumers.probes`); None serves nothing, 0 picks a port.
        http_host: the address those endpoints listen on.
        stall_after: seconds with messages waiting and none settled before the
            worker counts as stalled, and its probes fail.
        on_outcome: called with an :class:`Outcome` for every settled delivery.
        max_size: the largest body accepted; larger ones are dead-lettered.
    """

    def __init__(
        self,
        app: App,
        urls: str | Sequence[str],
        *,
        queues: Sequence[str] | None = None,
        concurrency: int = 8,
        prefetch: int | None = None,
        grace: float = 30.0,
        health_file: str | Path | None = None,
        http_port: int | None = None,
        http_host: str = "127.0.0.1",
        stall_after: float = health.STALL_AFTER,
        on_outcome: Callable[[Outcome], None] | None = None,
        max_size: int = wire.DEFAULT_MAX_SIZE,
    ) -> None:
        self.app = app
        self.urls = connection.split_urls(urls)
        self.queues = list(queues) if queues else app.queues()
        if not self.queues:
            raise ConfigurationError("the app has no handlers, so there is nothing to consume")
        for q in self.queues:
            if q not in app.handlers:
                raise ConfigurationError(f"queue {q!r} has no handler in the app")
        if concurrency < 1:
            raise ConfigurationError("concurrency must be at least 1")
        self.concurrency = concurrency
        self.prefetch = prefetch or concurrency
        self.grace = grace
        self.health_file = Path(health_file) if health_file else None
        self.health = health.Health(
            tuple(self.queues), stall_after=stall_after, now=time.monotonic()
        )
        self.metrics = WorkerMetrics()
        self.probes = (
            ProbeServer(self.health, self.metrics, host=http_host, port=http_port)
            if http_port is not None
            else None
        )
        self.on_outcome = on_outcome
        self.max_size = max_size
        self._core = PublisherCore(self.urls, max_size=max_size)
        self._handler_publisher: HandlerPublisher | None = None
        self.identity = f"{socket.gethostname()}:{os.getpid()}"
        self._executor = ThreadPoolExecutor(concurrency, thread_name_prefix="leveret-handler")
        self._slots = asyncio.Semaphore(concurrency)
        self._inflight: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._stop = asyncio.Event()
        self._can_report = False  # set by _verify: the status exchange exists

    def stop(self) -> None:
        """Ask the worker to shut down gracefully (safe from a signal handler)."""
        self._stop.set()

    async def run(self, *, install_signal_handlers: bool = False) -> None:
        """Consume until :meth:`stop` (or SIGTERM/SIGINT, if installed), reconnecting as needed.

        Raises:
            BrokerUnavailable: the broker cannot be reached at start.
            TopologyMissing: a queue or exchange the worker needs does not exist.
            AccessRefused: the user may not consume the queue.
        """
        loop = asyncio.get_running_loop()
        if install_signal_handlers:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.stop)
        started = False
        delay = 0.5
        try:
            if self.probes is not None:
                await self.probes.start()
            while not self._stop.is_set():
                try:
                    started = await self._session(started)
                    delay = 0.5
                except BrokerUnavailable:
                    if not started:
                        raise
                    log.warning("worker.broker_unavailable", retry_in=delay)
                except (*CONNECTION_ERRORS, amqp.ChannelClosed) as exc:
                    if isinstance(exc, amqp.ChannelAccessRefused):
                        raise AccessRefused.from_reply(exc.text) from exc
                    if isinstance(exc, amqp.ChannelNotFound) and not started:
                        raise TopologyMissing(f"{exc}; run `leveret topology apply`") from exc
                    log.warning(
                        "worker.connection_lost",
                        error=connection.redact(str(exc)) or type(exc).__name__,
                    )
                if not self._stop.is_set():
                    await _wait(self._stop, delay)
                    delay = min(delay * 2, 10.0)
        finally:
            if install_signal_handlers:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
            self._executor.shutdown(wait=False, cancel_futures=True)
            if self.probes is not None:
                await self.probes.close()
            if started:
                log.info("worker.stopped")

    async def _session(self, started: bool) -> bool:
        """One connection's life: consume until stopped or the connection drops."""
        conn = await connect(self.urls, name=f"leveret-worker {self.identity}")
        lost = asyncio.Event()
        monitor: asyncio.Task[None] | None = None
        try:
            conn.close_callbacks.append(lambda _: lost.set())
            check = await self._channel(conn, lost, watch=False)
            await self._verify(conn)
            publish = Confirms(
                await self._channel(conn, lost, confirms=True, watch=False), on_lost=lost.set
            )
            self._handler_publisher = HandlerPublisher(
                self._core, publish, asyncio.get_running_loop()
            )
            consume = await self._channel(conn, lost, prefetch=self.prefetch)
            acks = Acks(consume)
            tags: list[str] = []
            for queue in self.queues:
                tags.append(
                    await consume.basic_consume(queue, self._deliver_to(queue, acks, publish))
                )
            self.health.connection_up(time.monotonic())
            self.metrics.connected.set(1)
            if started:
                self.metrics.reconnects.inc()
            await self._check_consumers(check)
            log.info(
                "worker.consuming" if not started else "worker.resumed",
                queues=self.queues,
                concurrency=self.concurrency,
                prefetch=self.prefetch,
                broker=connection.describe(self.urls),
            )
            started = True
            self._stopping = False
            monitor = asyncio.create_task(self._monitor(check, lost))
            await _first(self._stop, lost)
            if self._stop.is_set() and not lost.is_set():
                await self._drain(consume, tags)
            return started
        finally:
            self.health.connection_down(time.monotonic())
            self.metrics.connected.set(0)
            if monitor is not None:
                monitor.cancel()
            if not conn.is_closed:
                with contextlib.suppress(*CONNECTION_ERRORS):
                    await conn.close()

    async def _channel(
        self,
        conn: amqp.Connection,
        lost: asyncio.Event,
        *,
        confirms: bool = False,
        prefetch: int | None = None,
        watch: bool = True,
    ) -> amqp.Channel:
        ch = await conn.channel()
        if confirms:
            await ch.confirm_select()
        if prefetch:
            await ch.basic_qos(prefetch)
        if watch:
            # A channel closed by the broker takes its consumers with it while the
            # connection stays up: treat it as a lost connection and start over.
            ch.close_callbacks.append(lambda _: lost.set())
        return ch

    async def _verify(self, conn: amqp.Connection) -> None:
        missing = []
        tracks = self.app.tracks(self.queues)
        needed = worker_needs(self.app.topology, self.queues)
        if tracks:
            needed.append(("exchange", STATUS_EXCHANGE))
        for kind, name in needed:
            if not await _exists(conn, kind, name):
                missing.append(f"{kind} {name!r}")
        # Tracked handlers need the status exchange. Batch members on other
        # queues report to it when it exists: publishing to a missing exchange
        # would close the channel the worker settles on.
        self._can_report = tracks or await _exists(conn, "exchange", STATUS_EXCHANGE)
        if missing:
            raise TopologyMissing(
                "missing on the broker: " + ", ".join(missing) + "; run `leveret topology apply`"
            )

    async def _check_consumers(self, ch: amqp.Channel) -> None:
        # A reconnect that leaves zero consumers is the classic silent failure of
        # "robust" connections: ask the broker rather than trust the client.
        consumers: dict[str, int] = {}
        waiting: dict[str, int] = {}
        for queue in self.queues:
            waiting[queue], consumers[queue] = await ch.queue_declare(queue, passive=True)
        self.health.checked(consumers, waiting, time.monotonic())
        self.metrics.checked(consumers, waiting)
        for queue, count in consumers.items():
            if count == 0:
                raise amqp.ConnectionLost(f"no consumer registered on {queue!r}")

    async def _monitor(self, ch: amqp.Channel, lost: asyncio.Event) -> None:
        reported = ""  # the readiness reason last logged: log changes, not every check
        while not lost.is_set():
            try:
                await self._check_consumers(ch)
            except (*CONNECTION_ERRORS, amqp.AMQPError) as exc:
                log.error("worker.consumers_lost", error=str(exc))
                lost.set()
                return
            now = time.monotonic()
            ready, live = self.health.readiness(now), self.health.liveness(now)
            self.metrics.ready.set(1 if ready.ok else 0)
            if ready.reason != reported and not self._stopping:
                if ready.ok:
                    log.info("worker.ready")
                else:
                    log.warning("worker.unready", reason=ready.reason, live=live.ok)
                reported = ready.reason
            if self.health_file is not None and live.ok:
                self.health_file.write_text(str(time.time()))
            await asyncio.sleep(CHECK_INTERVAL)

    async def _drain(self, consume: amqp.Channel, tags: list[str]) -> None:
        """Stop taking messages and let in-flight handlers finish within the grace period."""
        self._stopping = True
        self.health.draining(time.monotonic())
        for tag in tags:
            try:
                await consume.basic_cancel(tag)
            except (*CONNECTION_ERRORS, amqp.AMQPError):
                return
        pending = set(self._inflight)
        log.info("worker.draining", in_flight=len(pending), grace=self.grace)
        if pending:
            _done, left = await asyncio.wait(pending, timeout=self.grace)
            if left:
                log.warning("worker.grace_expired", unfinished=len(left))
                for task in left:
                    task.cancel()

    def _deliver_to(
        self,
        queue: str,
        acks: Acks,
        publish: Confirms,
    ) -> Callable[[amqp.Deliver], None]:
        gauge = self.metrics.in_flight.labels(queue)  # looked up once, not per delivery
        loop = asyncio.get_running_loop()
        inflight = self._inflight

        async def handle(delivery: amqp.Deliver) -> None:
            gauge.inc()
            try:
                async with self._slots:
                    await self._process(queue, delivery, acks, publish)
            finally:
                gauge.dec()

        def on_message(delivery: amqp.Deliver) -> None:
            # Called as the delivery is read: each one is handled in a task of its own.
            acks.delivered(delivery.delivery_tag)
            if self._stopping:
                with contextlib.suppress(amqp.AMQPError):
                    acks.reject(delivery.delivery_tag, requeue=True)
                return
            task = loop.create_task(handle(delivery))
            inflight.add(task)
            task.add_done_callback(_finished)

        def _finished(task: asyncio.Task[None]) -> None:
            inflight.discard(task)
            if not task.cancelled() and (exc := task.exception()) is not None:
                log.error("worker.delivery_failed", error=repr(exc))

        return on_message

    async def _process(
        self,
        queue: str,
        dm: amqp.Deliver,
        acks: Acks,
        publish: Confirms,
    ) -> None:
        delivery = to_delivery(dm)
        start = time.perf_counter()
        # The delivery's task has a context of its own (a copy of the reader's),
        # so what attempt() binds to the log lines ends with the task.
        done = await attempt(
            self.app,
            queue,
            delivery,
            publisher=self._handler_publisher,
            executor=self._executor,
            consumer=f"{queue}@{self.identity}",
            max_size=self.max_size,
            can_report=self._can_report,
        )
        outcome = await self._settle(dm, done.decision, acks, publish)
        await settled(done, outcome, self.app.topology.queue(queue).retry)
        record = report(queue, delivery, done.decision, outcome, time.perf_counter() - start)
        self.metrics.settled(record)
        self.health.settled(time.monotonic())
        if self.on_outcome is not None:
            self.on_outcome(record)

    async def _settle(
        self,
        dm: amqp.Deliver,
        decision: retry.Decision,
        acks: Acks,
        publish: Confirms,
    ) -> str:
        tag = dm.delivery_tag
        try:
            if isinstance(decision, retry.Ack):
                await acks.ack(tag)
                return decision.outcome
            began = time.monotonic()
            try:
                await _republish(dm, decision, publish, deadline=began + REPUBLISH_PATIENCE)
            except (amqp.Returned, amqp.Nacked, amqp.ChannelClosed) as exc:
                log.error(
                    "message.republish_failed",
                    error=str(exc),
                    exchange=decision.exchange,
                    refused_for=round(time.monotonic() - began, 3),
                )
                # Never ack a message whose copy the broker did not take: rejecting
                # it sends it down the queue's own dead-letter exchange instead.
                acks.reject(tag, requeue=False)
                return "dead_lettered"
            await acks.ack(tag)
            return decision.outcome
        except (*CONNECTION_ERRORS, amqp.AMQPError) as exc:
            log.warning("message.settle_failed", error=str(exc) or type(exc).__name__)
            return "redelivery_pending"


async def _republish(
    dm: amqp.Deliver, decision: retry.Republish, publish: Confirms, *, deadline: float
) -> None:
    """Publish a failed delivery's copy, sending it again while the broker nacks it.

    Each nack renews the channel first (:mod:`leveret.consumers.confirms`).

    Raises:
        Nacked: still nacked at ``deadline``.
        Returned: no queue is bound for it.
        ChannelClosed: the broker closed the channel over it.
    """
    properties = republished(dm.properties, decision.headers)
    pause = 0.05
    for refusals in itertools.count():
        try:
            await publish.basic_publish(
                dm.body,
                exchange=decision.exchange,
                routing_key=decision.routing_key,
                properties=properties,
                mandatory=True,
            )
            return
        except amqp.Nacked:
            now = time.monotonic()
            if now + pause > deadline:
                raise
            if not refusals:  # once a delivery: the outcome's line says how it ended
                log.warning(
                    "message.republish_refused",
                    exchange=decision.exchange,
                    sending_again_for=round(deadline - now, 3),
                )
        await asyncio.sleep(pause)
        pause = min(pause * 2, 2.0)


def freeze_heap() -> None:
    """Put what a worker process loaded at start out of the garbage collector's sight.

    The app, its modules and their schemas live as long as the process; a full
    collection that walks them takes 10-20 ms here, during which no delivery
    is read. Frozen, they are never walked again. For the process's owner to
    call once the app is loaded (``leveret worker`` does), not for a library.
    """
    gc.collect()
    gc.freeze()


async def _exists(conn: amqp.Connection, kind: str, name: str) -> bool:
    """Whether a queue or exchange exists (a passive declare, on a channel of its own)."""
    ch = await conn.channel()
    try:
        if kind == "queue":
            await ch.queue_declare(name, passive=True)
        else:
            await ch.exchange_declare(name, passive=True)
    except amqp.ChannelNotFound:
        return False
    await ch.close()
    return True


async def _first(*events: asyncio.Event) -> None:
    waiters = [asyncio.create_task(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


async def _wait(event: asyncio.Event, timeout: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout)
