"""Dead-letter queues: list, replay and purge what landed in ``<queue>.dlq``.

A dead-lettered message keeps its body, message id and properties; its
headers say why it is there (see ``docs/contract.md``). Messages rejected by a
plain AMQP client carry only RabbitMQ's ``x-death`` header, which is read too.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pika
import pika.exceptions
import structlog
from pika.adapters.blocking_connection import BlockingChannel

from leveret import admin, wire
from leveret.errors import NotConfirmed
from leveret.topology import dead_letter_queue

log = structlog.get_logger(__name__)

_RESET = (
    wire.RETRY_COUNT,
    wire.REASON,
    wire.ERROR_TYPE,
    wire.ERROR_MESSAGE,
    wire.ERROR_TRACEBACK,
    wire.FIRST_FAILED_AT,
    wire.LAST_FAILED_AT,
    wire.FAILED_BY,
    wire.FAILED_QUEUE,
)


def pika_properties(env: wire.Envelope, app_id: str | None = None) -> pika.BasicProperties:
    """The pika properties of an envelope (what a requeue publishes)."""
    return pika.BasicProperties(
        content_type=env.content_type,
        delivery_mode=pika.DeliveryMode.Persistent,
        message_id=env.message_id,
        type=env.type,
        timestamp=env.timestamp,
        correlation_id=env.correlation_id,
        headers=env.headers,
        app_id=app_id,
    )


def replay_copy(queue: str, props: pika.BasicProperties, body: bytes) -> wire.Envelope:
    """The copy of a dead letter that ``replay`` sends back to ``queue``."""
    return wire.Envelope(
        exchange="",
        routing_key=queue,
        body=body,
        message_id=props.message_id,
        type=props.type,
        headers=replay_headers(props.headers or {}),
        timestamp=props.timestamp or wire.now_seconds(),
        correlation_id=props.correlation_id,
        # Kept as it was: a replay must not make an invalid message valid.
        content_type=props.content_type or "",
    )


def replay_headers(headers: Mapping[str, Any]) -> dict[str, Any]:
    """A dead letter's headers for its replay: no failure record, no broker headers.

    The retry count starts again from zero, so the replay gets every attempt.
    """
    return {k: v for k, v in headers.items() if k not in _RESET and not k.startswith("x-")}


@dataclass(frozen=True)
class DeadLetter:
    """One message in a dead-letter queue, as a person wants to read it."""

    message_id: str | None
    type: str | None
    version: int | None
    attempts: int
    reason: str
    error: str
    failed_at: str
    headers: Mapping[str, Any]
    body: bytes


def describe(props: pika.BasicProperties, body: bytes) -> DeadLetter:
    """Read a dead-lettered message's properties into a :class:`DeadLetter`."""
    headers = dict(props.headers or {})
    deaths = headers.get("x-death") or []
    death = deaths[0] if deaths and isinstance(deaths[0], dict) else {}
    count = headers.get(wire.RETRY_COUNT)
    attempts = count if isinstance(count, int) else 0
    reason = headers.get(wire.REASON)
    # Copies made by a consumer carry no x-death (x- headers are not copied); an
    # x-death here means the broker dead-lettered the delivery itself: a plain
    # reject, an unconfirmed copy, or the quorum queue's delivery limit. The
    # attempt that died counts too, and any earlier reason is history.
    if death or reason is None:
        reason = str(death.get("reason", "unknown"))
        attempts += 1
    elif reason == wire.HANDLER_ERROR:
        reason = "attempts-exhausted"
    failed_at = headers.get(wire.LAST_FAILED_AT) or death.get("time") or ""
    if isinstance(failed_at, datetime):
        failed_at = failed_at.isoformat()
    version = headers.get(wire.VERSION)
    return DeadLetter(
        message_id=props.message_id,
        type=props.type,
        version=version if isinstance(version, int) else None,
        attempts=attempts,
        reason=reason,
        error=str(headers.get(wire.ERROR_MESSAGE, "")),
        failed_at=str(failed_at),
        headers=headers,
        body=body,
    )


def _messages(
    ch: BlockingChannel, queue: str
) -> Iterator[tuple[pika.spec.Basic.GetOk, pika.BasicProperties, bytes]]:
    """Get every message present now, unacked: the caller acks what it removes.

    Whatever is not acked goes back to the queue when the channel closes.
    """
    depth = ch.queue_declare(queue, passive=True).method.message_count
    for _ in range(depth):
        method, props, body = ch.basic_get(queue, auto_ack=False)
        if method is None:
            return
        yield method, props, body


def browse(urls: str | Sequence[str], queue: str, *, limit: int = 50) -> list[DeadLetter]:
    """List up to ``limit`` messages of a queue's dead-letter queue, leaving them in place.

    Args:
        urls: the broker.
        queue: the work queue (its dead-letter queue is ``<queue>.dlq``).
        limit: the most messages to return, oldest first.
    """
    found: list[DeadLetter] = []
    with admin.channel(urls, name="leveret-dlq") as ch:
        for _method, props, body in _messages(ch, dead_letter_queue(queue)):
            found.append(describe(props, body))
            if len(found) >= limit:
                break
    return found


def replay(
    urls: str | Sequence[str],
    queue: str,
    *,
    limit: int | None = None,
    ids: Sequence[str] = (),
) -> list[str]:
    """Move dead-lettered messages back to their work queue, retry count reset.

    Each copy goes through the default exchange straight to ``queue`` (no other
    queue bound to the original routing key sees it again), keeps its message
    id, and is confirmed before the dead-lettered original is acked.

    Args:
        urls: the broker.
        queue: the work queue.
        limit: replay at most this many.
        ids: replay only these message ids (all by default).

    Returns:
        The ids replayed.

    Raises:
        NotConfirmed: the broker did not confirm a copy (that original stays in the DLQ).
    """
    wanted = set(ids)
    replayed: list[str] = []
    with admin.channel(urls, name="leveret-dlq") as ch:
        pub = ch.connection.channel()
        pub.confirm_delivery()
        for method, props, body in _messages(ch, dead_letter_queue(queue)):
            if limit is not None and len(replayed) >= limit:
                break
            if wanted and props.message_id not in wanted:
                continue
            copy = replay_copy(queue, props, body)
            try:
                pub.basic_publish(
                    "", queue, body, pika_properties(copy, props.app_id), mandatory=True
                )
            except (pika.exceptions.UnroutableError, pika.exceptions.NackError) as exc:
                raise NotConfirmed(
                    f"replay of {props.message_id} to {queue!r} was not confirmed"
                ) from exc
            ch.basic_ack(method.delivery_tag)
            replayed.append(str(props.message_id))
            log.info("message.replayed", message_id=props.message_id, queue=queue)
    return replayed


def purge(urls: str | Sequence[str], queue: str) -> int:
    """Delete every message in a queue's dead-letter queue. Returns how many."""
    with admin.channel(urls, name="leveret-dlq") as ch:
        ok = ch.queue_purge(dead_letter_queue(queue))
    count = int(ok.method.message_count)
    log.info("dlq.purged", queue=queue, messages=count)
    return count
