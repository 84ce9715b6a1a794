"""The messages the in-memory broker holds, queue by queue, and the clock that expires them.

A queue's ``x-message-ttl`` (or a message's ``expiration``) makes a message
due at a virtual time; when the clock passes it, the message leaves the head of
its queue through the queue's dead-letter exchange with an ``x-death`` header,
as RabbitMQ does. That is all a retry tier or a delay level is.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from leveret import dlq, wire
from leveret.testing.records import Held, Properties
from leveret.testing.routing import QueueSpec, Routes
from leveret.topology import Bind, Declaration, DeclareQueue

log = structlog.get_logger(__name__)


class Vhost:
    """Routes, the messages in each queue, and a virtual clock.

    Args:
        declarations: the topology's declarations.
    """

    def __init__(self, declarations: list[Declaration]) -> None:
        self.routes = Routes(declarations)
        self.epoch = datetime.now(UTC)
        self.clock = 0.0
        """Virtual seconds since the vhost was made."""
        self.held: dict[str, deque[Held]] = {name: deque() for name in self.routes.queues}
        self._seq = itertools.count()

    @property
    def now(self) -> datetime:
        """The virtual time."""
        return self.epoch + timedelta(seconds=self.clock)

    def bind(self, queue: str, exchange: str, routing_key: str) -> None:
        """Declare a plain queue (if new) and bind it."""
        self.routes.declare(DeclareQueue(queue, {}))
        self.routes.declare(Bind(queue, exchange, routing_key))
        self.held.setdefault(queue, deque())

    def publish(
        self, exchange: str, routing_key: str, body: bytes, props: Properties
    ) -> tuple[str, ...]:
        """Route a message and put it in every queue it reaches; returns those queues.

        Raises:
            KeyError: the exchange does not exist.
        """
        queues = tuple(self.routes.route(exchange, routing_key, props.headers))
        for q in queues:
            self.enqueue(q, body, props, exchange, routing_key)
        return queues

    def enqueue(
        self, queue: str, body: bytes, props: Properties, exchange: str, routing_key: str
    ) -> None:
        """Append a message to a queue, due when the queue's (or its own) TTL says."""
        spec = self.routes.queues[queue]
        ttls = [spec.ttl] if spec.ttl is not None else []
        if props.expiration is not None:
            ttls.append(int(props.expiration) / 1000)
        due = self.clock + min(ttls) if ttls else None
        self.held[queue].append(Held(body, props, exchange, routing_key, next(self._seq), due))

    def next_due(self) -> float | None:
        """When the next message at the head of a queue falls due, or None."""
        dues = [h[0].due for h in self.held.values() if h and h[0].due is not None]
        return min(dues, default=None)

    def expire(self) -> None:
        """Dead-letter every message whose TTL ran out, at the head of its queue, in order."""
        while True:
            heads = [
                (q[0].due, q[0].seq, name)
                for name, q in self.held.items()
                if q and q[0].due is not None and q[0].due <= self.clock
            ]
            if not heads:
                return
            _due, _seq, name = min(heads)
            self.dead_letter(name, self.held[name].popleft(), "expired")

    def dead_letter(self, queue: str, held: Held, reason: str) -> None:
        """Send a message down its queue's dead-letter exchange (or drop it, without one)."""
        spec = self.routes.queues[queue]
        if spec.dead_letter_exchange is None:
            log.debug("memory.dropped", queue=queue, reason=reason)
            return
        key = spec.dead_letter_routing_key or held.routing_key
        headers = _died(held, spec, reason, self.now)
        props = replace(held.properties, headers=headers, expiration=None)
        try:
            targets = self.routes.route(spec.dead_letter_exchange, key, props.headers)
        except KeyError:
            targets = []
        for target in targets:
            self.enqueue(target, held.body, props, spec.dead_letter_exchange, key)

    def replay(
        self, queue: str, letters: str, *, ids: Sequence[str] = (), limit: int | None = None
    ) -> list[str]:
        """Move messages from ``letters`` back to ``queue`` as ``leveret dlq replay`` does.

        Each goes through the default exchange, keeps its id and loses its
        failure headers (the count starts again); the others stay, in order.
        """
        wanted, replayed = set(ids), list[str]()
        kept: deque[Held] = deque()
        held_letters = self.held[letters]
        while held_letters:
            held = held_letters.popleft()
            if (limit is not None and len(replayed) >= limit) or (
                wanted and held.properties.message_id not in wanted
            ):
                kept.append(held)
                continue
            p = held.properties
            headers = dlq.replay_headers(p.headers)
            copy = Properties(
                content_type=p.content_type or "",
                headers=headers,
                message_id=p.message_id,
                type=p.type,
                timestamp=p.timestamp or wire.now_seconds(),
                correlation_id=p.correlation_id,
                app_id=p.app_id,
            )
            self.enqueue(queue, held.body, copy, "", queue)
            replayed.append(str(p.message_id))
        held_letters.extend(kept)
        return replayed


def _died(held: Held, spec: QueueSpec, reason: str, now: datetime) -> dict[str, Any]:
    """The headers after RabbitMQ dead-lettered a message: ``x-death`` and ``x-first-death-*``."""
    headers = dict(held.headers)
    deaths = [d for d in headers.get("x-death") or [] if isinstance(d, dict)]
    same = next(
        (d for d in deaths if d.get("queue") == spec.name and d.get("reason") == reason), None
    )
    count = int(same.get("count", 0)) + 1 if same else 1
    entry = {
        "count": count,
        "reason": reason,
        "queue": spec.name,
        "time": now.replace(microsecond=0),
        "exchange": held.exchange,
        "routing-keys": [held.routing_key],
    }
    headers["x-death"] = [entry, *(d for d in deaths if d is not same)]
    headers.setdefault("x-first-death-reason", reason)
    headers.setdefault("x-first-death-queue", spec.name)
    headers.setdefault("x-first-death-exchange", held.exchange)
    return headers
