"""Declaring and inspecting the topology on the broker (blocking, with pika).

This is the one owner of the topology: ``leveret topology apply`` calls
:func:`apply`. Everything else only checks, passively, with :func:`verify`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import pika
import pika.exceptions
import structlog
from pika.adapters.blocking_connection import BlockingChannel

from leveret import connection, delay
from leveret.errors import (
    AccessRefused,
    BrokerUnavailable,
    TopologyError,
    TopologyMismatch,
    TopologyMissing,
)
from leveret.topology import (
    MAX_ATTEMPTS_LIMIT,
    Bind,
    BindExchange,
    Declaration,
    DeclareExchange,
    DeclareQueue,
    Topology,
    Unbind,
    dead_exchange,
    dead_letter_queue,
    delay_label,
    retry_binding,
    retry_exchange,
    worker_needs,
)

log = structlog.get_logger(__name__)

PRECONDITION_FAILED = 406
NOT_FOUND = 404
ACCESS_REFUSED = 403


@contextmanager
def channel(urls: str | Sequence[str], *, name: str = "leveret-admin") -> Iterator[BlockingChannel]:
    """Open a connection and a channel for administrative work, closed afterwards.

    Raises:
        BrokerUnavailable: the broker cannot be reached.
    """
    conn = connection.connect(urls, name=name)
    try:
        yield conn.channel()
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == ACCESS_REFUSED:
            raise AccessRefused.from_reply(exc.reply_text) from exc
        if exc.reply_code == NOT_FOUND:
            text = str(exc.reply_text).removeprefix("NOT_FOUND - ")
            raise TopologyMissing(f"{text}; run `leveret topology apply`") from exc
        raise
    except pika.exceptions.AMQPConnectionError as exc:
        raise BrokerUnavailable(f"lost the connection to {connection.describe(urls)}") from exc
    finally:
        if conn.is_open:
            conn.close()


def apply(urls: str | Sequence[str], topology: Topology) -> int:
    """Declare the whole topology, idempotently. Returns the number of operations.

    Raises:
        TopologyMismatch: something exists with other arguments (the message
            says what differs).
        TopologyError: the user may not configure what is described.
    """
    ops = topology.declarations()
    with channel(urls) as ch:
        for op in ops:
            _run(ch, op)
        stale = _unbind_stale_tiers(ch, topology)
    log.info(
        "topology.applied", operations=len(ops), queues=topology.queue_names(), stale_tiers=stale
    )
    return len(ops)


def _unbind_stale_tiers(ch: BlockingChannel, topology: Topology) -> list[str]:
    """Unbind tier queues left by an earlier policy with more tiers.

    Their messages still return to the work queue when their TTL ends; they
    only must not take new retries. The queues stay for an operator to delete.
    """
    found = []
    for q in topology.queues:
        for name in q.stale_tier_names():
            try:
                ch.queue_declare(name, passive=True)
            except pika.exceptions.ChannelClosedByBroker:
                ch = ch.connection.channel()
                break  # tiers are numbered from 1: the first gap ends the search
            found.append(name)
            for count in range(1, MAX_ATTEMPTS_LIMIT + 1):
                ch.queue_unbind(name, retry_exchange(q.name), "", arguments=retry_binding(count))
    if found:
        log.warning("topology.stale_tiers_unbound", queues=found)
    return found


def _run(ch: BlockingChannel, op: Declaration) -> None:
    try:
        if isinstance(op, DeclareExchange):
            ch.exchange_declare(
                op.name, exchange_type=op.type, durable=True, arguments=op.arguments or None
            )
        elif isinstance(op, DeclareQueue):
            ch.queue_declare(op.name, durable=True, arguments=op.arguments)
        elif isinstance(op, Bind):
            ch.queue_bind(op.queue, op.exchange, op.routing_key, arguments=op.arguments)
        elif isinstance(op, BindExchange):
            ch.exchange_bind(op.destination, op.source, op.routing_key, arguments=op.arguments)
        elif isinstance(op, Unbind):
            ch.queue_unbind(op.queue, op.exchange, op.routing_key, arguments=op.arguments)
    except pika.exceptions.ChannelClosedByBroker as exc:
        raise translate(exc, op) from exc


def translate(
    exc: pika.exceptions.ChannelClosedByBroker, op: Declaration
) -> TopologyError | AccessRefused:
    """Turn a channel error from a declaration into one clear line."""
    text = re.sub(r"^[A-Z_]+ - ", "", str(exc.reply_text))
    if isinstance(op, DeclareQueue | DeclareExchange):
        kind = "queue" if isinstance(op, DeclareQueue) else "exchange"
        what = f"{kind} {op.name!r}"
    elif isinstance(op, BindExchange):
        what = f"binding of exchange {op.destination!r} to {op.source!r}"
    else:
        what = f"binding of {op.queue!r} to {op.exchange!r}"
    if exc.reply_code == PRECONDITION_FAILED:
        return TopologyMismatch(
            f"{what} exists with other arguments ({text}); delete it or change the "
            "description to match"
        )
    if exc.reply_code == ACCESS_REFUSED:
        return AccessRefused(f"not allowed to declare {what}: {text}")
    if exc.reply_code == NOT_FOUND:
        return TopologyMissing(f"{what}: {text}; run `leveret topology apply`")
    return TopologyError(f"{what}: {text}")


def required(topology: Topology, queues: Sequence[str] | None = None) -> list[tuple[str, str]]:
    """What a worker of ``queues`` needs to exist, as ``(kind, name)`` pairs."""
    return worker_needs(topology, queues)


def verify(
    urls: str | Sequence[str], topology: Topology, queues: Sequence[str] | None = None
) -> None:
    """Check with passive declares that the described queues and exchanges exist.

    Raises:
        TopologyMissing: something is missing; the message names all of it.
    """
    missing = []
    conn = connection.connect(urls, name="leveret-verify")
    try:
        ch = conn.channel()
        for kind, name in required(topology, queues):
            try:
                if kind == "queue":
                    ch.queue_declare(name, passive=True)
                else:
                    ch.exchange_declare(name, passive=True)
            except pika.exceptions.ChannelClosedByBroker:
                missing.append(f"{kind} {name!r}")
                ch = conn.channel()
    finally:
        if conn.is_open:
            conn.close()
    if missing:
        raise TopologyMissing(
            "missing on the broker: " + ", ".join(missing) + "; run `leveret topology apply`"
        )


@dataclass(frozen=True)
class QueueStats:
    """Depth and consumers of one queue, or ``exists=False``."""

    name: str
    role: str
    exists: bool
    messages: int = 0
    consumers: int = 0


def stats(urls: str | Sequence[str], topology: Topology) -> list[QueueStats]:
    """Depth and consumer count of every work, retry-tier and dead-letter queue.

    A delayed topology adds ``leveret.delay.unroutable`` and the delay levels
    that hold messages (the others are left out: there are 22 of them).
    """
    rows: list[QueueStats] = []
    names: list[tuple[str, str]] = []
    for q in topology.queues:
        names.append((q.name, "work"))
        names += [(tier, f"retry {delay_label(s)}") for tier, s in q.tier_queues()]
        names.append((dead_letter_queue(q.name), "dead-letter"))
    levels = [(delay.level_name(k), f"delay {delay_label(2**k)}") for k in range(delay.LEVELS)]
    if topology.delayed:
        names += [(delay.UNROUTABLE, "delay unroutable"), *levels]
    conn = connection.connect(urls, name="leveret-queues")
    try:
        ch = conn.channel()
        for name, role in names:
            try:
                ok = ch.queue_declare(name, passive=True)
                rows.append(
                    QueueStats(name, role, True, ok.method.message_count, ok.method.consumer_count)
                )
            except pika.exceptions.ChannelClosedByBroker:
                rows.append(QueueStats(name, role, False))
                ch = conn.channel()
    finally:
        if conn.is_open:
            conn.close()
    level_names = {name for name, _ in levels}
    return [r for r in rows if r.name not in level_names or r.messages or not r.exists]


def delete(urls: str | Sequence[str], topology: Topology) -> None:
    """Delete every queue and exchange of the topology (tests and teardown)."""
    with channel(urls) as ch:
        for q in topology.queues:
            for name in [q.name, dead_letter_queue(q.name), *(t for t, _ in q.tier_queues())]:
                ch.queue_delete(name)
            for name in [retry_exchange(q.name), dead_exchange(q.name)]:
                ch.exchange_delete(name)
        for e in topology.exchanges:
            ch.exchange_delete(e.name)
