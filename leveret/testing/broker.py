"""The in-memory broker: an app's topology, its handlers, and a clock the test moves.

Publishing builds the envelope with :meth:`PublisherCore.envelope`, as the real
publishers do, and routes it through the exchanges the topology declares
(:mod:`leveret.testing.routing`). Running delivers each ready message to its
handler through the worker's decision (:mod:`leveret.consumers.attempt`) and
settles it as the worker does: an ack, or a copy to ``Q.retry`` or ``Q.dead``
that the bindings send on to a tier or to ``Q.dlq``. A tier gives the message
back when the virtual clock passes its TTL, as RabbitMQ does when its
``x-message-ttl`` runs out.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, TypeVar

import pika
import structlog

from leveret import dlq, tracing, wire
from leveret import retry as leveret_retry
from leveret.consumers.app import App
from leveret.consumers.attempt import attempt, settled
from leveret.consumers.delivery import Outcome, report
from leveret.errors import ConfigurationError, LeveretError, TopologyMissing, Unroutable
from leveret.messages import Message
from leveret.publisher.core import PublisherCore, missing_exchange, unroutable
from leveret.status.events import EXCHANGE as STATUS_EXCHANGE
from leveret.testing.publisher import MemoryPublisher
from leveret.testing.records import Held, Properties, Published
from leveret.testing.vhost import Vhost
from leveret.topology import dead_letter_queue

log = structlog.get_logger(__name__)
T = TypeVar("T")

MAX_DELIVERIES = 10_000
"""Deliveries one run may make before it stops, suspecting a loop."""


class Runaway(LeveretError):
    """A run made more deliveries than its limit: a handler that publishes forever?"""


class Broker:
    """An in-memory RabbitMQ holding one app's topology, for the app's handler tests.

    Args:
        app: the app whose topology is declared and whose handlers run.
        queues: the queues consumed (default: every queue with a handler).
        max_size: the largest body published or accepted, as the worker's.
        app_id: the ``app_id`` property of what is published.
    """

    def __init__(
        self,
        app: App,
        *,
        queues: Sequence[str] | None = None,
        max_size: int = wire.DEFAULT_MAX_SIZE,
        app_id: str | None = None,
    ) -> None:
        self.app = app
        self.consumed = list(queues) if queues else app.queues()
        for q in self.consumed:
            if q not in app.handlers:
                raise ConfigurationError(f"queue {q!r} has no handler in the app")
        self.vhost = Vhost(app.topology.declarations())
        self.max_size = max_size
        self.core = PublisherCore("amqp://leveret.testing/", max_size=max_size, app_id=app_id)
        self.processed: list[Outcome] = []
        """Every settled delivery, in order: the worker's :class:`Outcome` records."""
        self.identity = f"{socket.gethostname()}:{os.getpid()}"
        self._published: list[Published] = []
        self._by = "test"
        self._publisher = MemoryPublisher(self.core, lambda env: self._send(env, self._by))
        self._can_report = (
            app.tracks(self.consumed) or STATUS_EXCHANGE in self.vhost.routes.exchanges
        )

    @property
    def now(self) -> datetime:
        """The virtual time."""
        return self.vhost.now

    @property
    def clock(self) -> float:
        """The virtual time, in seconds since the broker was made."""
        return self.vhost.clock

    # Publishing

    def publish(self, message: Message, **options: Any) -> str:
        """Publish as :meth:`leveret.Publisher.publish` does; returns the message id.

        Takes the same options (``exchange``, ``routing_key``, ``message_id``,
        ``correlation_id``, ``headers``, ``delay``, ``at``).

        Raises:
            Unroutable: no queue is bound for the exchange and routing key.
            TopologyMissing: the exchange (or, with a delay, the delay level) does not exist.
            MessageTooLarge: the body is over ``max_size``.
            ConfigurationError: no exchange or routing key; a bad delay.
        """
        env = self.core.envelope(message, **options)
        self._send(env, "test")
        return env.message_id

    def publish_raw(
        self,
        body: bytes,
        *,
        exchange: str,
        routing_key: str,
        properties: Properties | None = None,
    ) -> None:
        """Publish any bytes with any properties, as a plain AMQP client may (bad input).

        Raises:
            Unroutable: no queue is bound for the exchange and routing key.
            TopologyMissing: the exchange does not exist.
        """
        props = properties or Properties()
        try:
            queues = self._route(exchange, routing_key, props, body)
        except KeyError as exc:
            raise TopologyMissing(
                f"exchange {exchange!r} does not exist; run `leveret topology apply`"
            ) from exc
        if not queues:
            raise Unroutable(
                f"message {props.message_id} is unroutable: no queue is bound to exchange "
                f"{exchange!r} with routing key {routing_key!r}"
            )

    def bind(self, queue: str, exchange: str, routing_key: str = "") -> None:
        """Declare a plain queue (if new) bound to an exchange: a place to catch messages.

        For example ``broker.bind("jobs", "leveret.status", "#")`` keeps every job
        status event, and lets ``ctx.batch`` open its batch.
        """
        self.vhost.bind(queue, exchange, routing_key)

    def _send(self, env: wire.Envelope, by: str) -> None:
        props = Properties.of(env, self.core.app_id)
        with tracing.sending(env.span):
            try:
                queues = self._route(env.exchange, env.routing_key, props, env.body, by=by)
            except KeyError as exc:
                raise TopologyMissing(missing_exchange(env)) from exc
            if not queues:
                raise Unroutable(unroutable(env))

    def _route(
        self,
        exchange: str,
        routing_key: str,
        props: Properties,
        body: bytes,
        *,
        by: str = "test",
    ) -> tuple[str, ...]:
        """Route a publish and record it.

        Raises:
            KeyError: the exchange does not exist.
        """
        queues = self.vhost.publish(exchange, routing_key, body, props)
        self._published.append(Published(exchange, routing_key, body, props, queues, by))
        return queues

    # Running

    def run_until_idle(
        self, *, advance: bool = False, max_deliveries: int = MAX_DELIVERIES
    ) -> list[Outcome]:
        """Deliver ready messages to their handlers until none is left; see :meth:`arun_until_idle`.

        Raises:
            ConfigurationError: called inside a running event loop.
        """
        return _sync(self.arun_until_idle(advance=advance, max_deliveries=max_deliveries))

    async def arun_until_idle(
        self, *, advance: bool = False, max_deliveries: int = MAX_DELIVERIES
    ) -> list[Outcome]:
        """Deliver ready messages to their handlers until none is left.

        Args:
            advance: also move the clock to each moment a waiting message (in a
                retry tier, a delay level) is due, until nothing waits.
            max_deliveries: stop with :class:`Runaway` after this many.

        Returns:
            The outcomes of this run, in order (also appended to :attr:`processed`).
        """
        async with self._running(max_deliveries) as run:
            await run.until_idle()
            while advance and (due := self.vhost.next_due()) is not None:
                self.vhost.clock = max(self.vhost.clock, due)
                await run.until_idle()
            return run.outcomes

    def advance(self, seconds: float | timedelta, *, run: bool = True) -> list[Outcome]:
        """Move the virtual clock forward; see :meth:`aadvance`."""
        return _sync(self.aadvance(seconds, run=run))

    async def aadvance(self, seconds: float | timedelta, *, run: bool = True) -> list[Outcome]:
        """Move the virtual clock forward, through every moment something falls due.

        Messages whose TTL runs out on the way leave their tier or delay level
        (dead-lettered where the queue says) at their own moment, in order.

        Args:
            seconds: how far.
            run: run the handlers at each of those moments (and before and
                after), as a worker would; with False, only time passes.

        Returns:
            The outcomes of the deliveries made.
        """
        step = seconds.total_seconds() if isinstance(seconds, timedelta) else float(seconds)
        if step < 0:
            raise ConfigurationError(f"time only moves forward, got {step}")
        target = self.clock + step
        async with self._running(MAX_DELIVERIES) as runner:
            if run:
                await runner.until_idle()
            while (due := self.vhost.next_due()) is not None and due <= target:
                self.vhost.clock = max(self.vhost.clock, due)
                self.vhost.expire()
                if run:
                    await runner.until_idle()
            self.vhost.clock = target
            self.vhost.expire()
            if run:
                await runner.until_idle()
            return runner.outcomes

    def _running(self, limit: int) -> _Run:
        return _Run(self, limit)

    def _next_ready(self) -> tuple[str, Held] | None:
        self.vhost.expire()
        heads = [(self.vhost.held[q][0].seq, q) for q in self.consumed if self.vhost.held[q]]
        if not heads:
            return None
        _seq, queue = min(heads)
        return queue, self.vhost.held[queue].popleft()

    async def _deliver(self, queue: str, held: Held, run: _Run) -> Outcome:
        delivery = held.delivery()
        start = time.perf_counter()
        policy = self.app.topology.queue(queue).retry
        self._by = queue
        try:
            done = await attempt(
                self.app,
                queue,
                delivery,
                publisher=self._publisher,
                executor=run.executor,
                consumer=f"{queue}@{self.identity}",
                max_size=self.max_size,
                can_report=self._can_report,
                now=lambda: self.now,
            )
            outcome = self._settle(queue, held, done.decision)
            await settled(done, outcome, policy, now=self.now)
            record = report(queue, delivery, done.decision, outcome, time.perf_counter() - start)
        finally:
            self._by = "test"
        self.processed.append(record)
        return record

    def _settle(self, queue: str, held: Held, decision: leveret_retry.Decision) -> str:
        """Ack, or route the copy; as the worker's ``_settle``, with every copy confirmed."""
        if isinstance(decision, leveret_retry.Ack):
            return decision.outcome
        p = held.properties
        copy = replace(
            p,
            headers=decision.headers,
            delivery_mode=2,
            expiration=None,
            user_id=None,
            timestamp=p.timestamp or int(self.now.timestamp()),
        )
        if self.vhost.publish(decision.exchange, decision.routing_key, held.body, copy):
            return decision.outcome
        # A copy the broker returned is never acked for: the reject sends the
        # message down the queue's own dead-letter exchange instead.
        self.vhost.dead_letter(queue, held, "rejected")
        return "dead_lettered"

    # Inspecting

    def published(
        self,
        type: str | None = None,
        *,
        exchange: str | None = None,
        routing_key: str | None = None,
        by: str | None = None,
    ) -> list[Published]:
        """What tests and handlers published, in order, optionally filtered.

        Retry and dead-letter copies are not publishes: see :meth:`messages`
        and :meth:`dead_letters`.
        """
        return [
            p
            for p in self._published
            if (type is None or p.type == type)
            and (exchange is None or p.exchange == exchange)
            and (routing_key is None or p.routing_key == routing_key)
            and (by is None or p.by == by)
        ]

    def messages(self, queue: str) -> list[Held]:
        """The messages in a queue (work queue, tier, DLQ, delay level), oldest first."""
        return list(self.vhost.held[queue])

    def depth(self, queue: str) -> int:
        """How many messages wait in a queue."""
        return len(self.vhost.held[queue])

    def dead_letters(self, queue: str) -> list[dlq.DeadLetter]:
        """The dead-letter queue of a work queue, read as ``leveret dlq list`` reads it.

        Args:
            queue: the work queue (its DLQ is ``<queue>.dlq``).
        """
        return [dlq.describe(_pika(h.properties), h.body) for h in self.vhost.held[_dlq(queue)]]

    def replay(self, queue: str, *, ids: Sequence[str] = (), limit: int | None = None) -> list[str]:
        """Move dead letters back to their work queue, as ``leveret dlq replay`` does.

        Returns:
            The ids replayed.
        """
        return self.vhost.replay(queue, _dlq(queue), ids=ids, limit=limit)


class _Run:
    """One run of the handlers: the sync handlers' thread, the outcomes, the limit."""

    def __init__(self, broker: Broker, limit: int) -> None:
        self.broker = broker
        self.limit = limit
        self.outcomes: list[Outcome] = []
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="leveret-memory")

    async def __aenter__(self) -> _Run:
        # Sync handlers publish from their thread onto this loop, as in the worker.
        self.broker._publisher.bind(asyncio.get_running_loop())
        return self

    async def __aexit__(self, *_: object) -> None:
        # A sync handler past its timeout may still run: do not wait for it.
        self.executor.shutdown(wait=False)

    async def until_idle(self) -> None:
        while (ready := self.broker._next_ready()) is not None:
            if len(self.outcomes) >= self.limit:
                self.broker.vhost.held[ready[0]].appendleft(ready[1])
                raise Runaway(f"more than {self.limit} deliveries in one run: a publishing loop?")
            # In a task of its own, as in the worker: what the attempt sets in
            # its context (the trace, the log bindings) ends with the delivery.
            delivered = asyncio.create_task(self.broker._deliver(*ready, self))
            self.outcomes.append(await delivered)


def _dlq(queue: str) -> str:
    return queue if queue.endswith(".dlq") else dead_letter_queue(queue)


def _pika(p: Properties) -> Any:
    return pika.BasicProperties(
        content_type=p.content_type,
        headers=p.headers,
        message_id=p.message_id,
        type=p.type,
        timestamp=p.timestamp,
        correlation_id=p.correlation_id,
        app_id=p.app_id,
    )


def _sync(work: Coroutine[Any, Any, T]) -> T:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(work)
    work.close()
    raise ConfigurationError(
        "inside an event loop (an async test), use `await broker.arun_until_idle()` "
        "or `await broker.aadvance(...)`"
    )
