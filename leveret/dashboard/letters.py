"""Reading and acting on a dead-letter queue a bounded piece at a time.

A queue cannot be read at an offset. :func:`scan` reads from the head without
acking: a consumer per round of ``batch`` messages (pipelined, so a round costs
one round trip, not one per message), whose messages stay unacked on the
channel until the scan ends; closing the channel puts them back in place. A
page at ``offset`` therefore touches ``offset + limit`` messages, never the
whole queue, and the dashboard caps how far a page or a selection reaches
(``docs/dashboard.md`` has the measurements and the limits).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pika
import pika.exceptions
import structlog
from pika.adapters.blocking_connection import BlockingChannel

from leveret import admin, dlq, wire
from leveret.errors import NotConfirmed
from leveret.topology import dead_letter_queue

log = structlog.get_logger(__name__)

IDLE = 1.0
"""Seconds a scan waits for a message it expects (another reader may hold it) before it stops."""

MAX_PREFETCH = 65535
"""The largest prefetch AMQP 0-9-1 can express: the most messages one scan reads."""


@dataclass(frozen=True)
class Selector:
    """Which dead letters an action takes: all, or those matching every given field.

    Args:
        ids: message ids (any of them).
        type: the message type.
        reason: the reason as shown (``attempts-exhausted``, ``schema-violation``, ...).
    """

    ids: frozenset[str] = frozenset()
    type: str = ""
    reason: str = ""

    @classmethod
    def parse(cls, ids: str = "", type: str = "", reason: str = "") -> Selector:
        """Build a selector from form fields; ``ids`` separated by commas, spaces or lines."""
        found = frozenset(i for i in ids.replace(",", " ").split() if i)
        return cls(found, type.strip(), reason.strip())

    @property
    def everything(self) -> bool:
        return not (self.ids or self.type or self.reason)

    def matches(self, letter: dlq.DeadLetter) -> bool:
        return (
            (not self.ids or (letter.message_id or "") in self.ids)
            and (not self.type or letter.type == self.type)
            and (not self.reason or letter.reason == self.reason)
        )

    def query(self) -> dict[str, str]:
        """The selector as query parameters (empty fields left out)."""
        fields = {"ids": " ".join(sorted(self.ids)), "type": self.type, "reason": self.reason}
        return {k: v for k, v in fields.items() if v}


@dataclass(frozen=True)
class Page:
    """A page of a dead-letter queue and what reading it cost.

    Attributes:
        depth: ready messages in the queue when the page was read.
        touched: messages read from the broker (and put back) to build it.
        reach: how far from the head pages may go.
    """

    letters: list[dlq.DeadLetter]
    offset: int
    limit: int
    depth: int
    touched: int
    reach: int

    @property
    def has_next(self) -> bool:
        return self.offset + self.limit < min(self.depth, self.reach)


@dataclass(frozen=True)
class Tally:
    """How many of the scanned messages a selector matches, before acting."""

    matched: int
    scanned: int
    depth: int
    sample: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Whether the scan saw the whole queue."""
        return self.scanned >= self.depth


@dataclass(frozen=True)
class Done:
    """What an action did: the message ids it replayed or removed, and how many it read."""

    ids: list[str]
    scanned: int


def depth(ch: BlockingChannel, queue: str) -> int:
    """Ready messages in ``queue`` (a passive declare)."""
    return int(ch.queue_declare(queue, passive=True).method.message_count)


def scan(
    ch: BlockingChannel, queue: str, total: int
) -> Iterator[tuple[int, pika.BasicProperties, bytes]]:
    """Yield up to ``total`` messages from the head as ``(delivery tag, properties, body)``.

    Nothing is acked: the caller acks what it removes, and whatever is left goes
    back when the channel closes. One consumer with a prefetch of ``total``
    takes them, pipelined; it is never cancelled, because a quorum queue (3.10)
    puts a cancelled consumer's messages back behind the others it returned.
    """
    if total <= 0:
        return
    total = min(total, MAX_PREFETCH)
    ch.basic_qos(prefetch_count=total)
    for got, (method, props, body) in enumerate(
        ch.consume(queue, inactivity_timeout=IDLE), start=1
    ):
        if method is None:
            break
        yield method.delivery_tag, props, body
        if got >= total:
            break
    # With nothing buffered beyond ``total``, cancelling keeps every message read
    # unacked and in order; acks after this bring no further deliveries.
    ch.cancel()


def drain(
    ch: BlockingChannel, queue: str, total: int, *, batch: int
) -> Iterator[tuple[int, pika.BasicProperties, bytes]]:
    """Yield up to ``total`` messages in rounds of ``batch``; the caller acks every one.

    For actions on a whole queue, however deep: each round is a consumer with a
    prefetch of ``batch``, so neither side holds more than that.
    """
    seen = 0
    while seen < total:
        want = min(batch, total - seen)
        ch.basic_qos(prefetch_count=want)
        got = 0
        for method, props, body in ch.consume(queue, inactivity_timeout=IDLE):
            if method is None:
                break
            yield method.delivery_tag, props, body
            got += 1
            if got >= want:
                break
        ch.cancel()
        seen += got
        if got < want:
            return


def describe(props: pika.BasicProperties, body: bytes) -> dlq.DeadLetter:
    """Read a dead letter (see :func:`leveret.dlq.describe`)."""
    return dlq.describe(props, body)


def browse(
    urls: str | Sequence[str], queue: str, *, offset: int = 0, limit: int = 50, reach: int = 1000
) -> Page:
    """Read one page of ``queue``'s dead-letter queue, leaving every message in place.

    Every call reads the same window, the first ``reach`` messages, whatever
    the page: a quorum queue returns what was read behind what it returned
    before, so only reads of one length keep the order from page to page.

    Args:
        urls: the broker.
        queue: the work queue.
        offset: messages to skip from the head; at most ``reach - limit``.
        limit: messages on the page.
        reach: how far from the head pages go.
    """
    offset = max(0, min(offset, max(reach - limit, 0)))
    letters: list[dlq.DeadLetter] = []
    touched = 0
    with admin.channel(urls, name="leveret-dashboard") as ch:
        name = dead_letter_queue(queue)
        ready = depth(ch, name)
        for _tag, props, body in scan(ch, name, min(ready, reach)):
            if offset <= touched < offset + limit:
                letters.append(describe(props, body))
            touched += 1
    return Page(letters, offset, limit, ready, touched, reach)


def find(
    urls: str | Sequence[str], queue: str, message_id: str, *, reach: int = 1000
) -> tuple[dlq.DeadLetter | None, int]:
    """Find a dead letter by message id in the window; also how many messages were read."""
    found = None
    touched = 0
    with admin.channel(urls, name="leveret-dashboard") as ch:
        name = dead_letter_queue(queue)
        for _tag, props, body in scan(ch, name, min(depth(ch, name), reach)):
            touched += 1
            if found is None and props.message_id == message_id:
                found = describe(props, body)
    return found, touched


def tally(
    urls: str | Sequence[str], queue: str, selector: Selector, *, reach: int, sample: int = 20
) -> Tally:
    """Count what ``selector`` matches in the window (nothing changes).

    Every message matches an empty selector: the queue's depth is the count, and
    nothing is read.
    """
    with admin.channel(urls, name="leveret-dashboard") as ch:
        name = dead_letter_queue(queue)
        ready = depth(ch, name)
        if selector.everything:
            return Tally(ready, ready, ready)
        matched, scanned = 0, 0
        ids: list[str] = []
        for _tag, props, body in scan(ch, name, min(ready, reach)):
            scanned += 1
            if selector.matches(describe(props, body)):
                matched += 1
                if len(ids) < sample:
                    ids.append(str(props.message_id))
    return Tally(matched, scanned, ready, ids)


def replay(
    urls: str | Sequence[str], queue: str, selector: Selector, *, reach: int, batch: int = 500
) -> Done:
    """Replay the dead letters ``selector`` matches in the window (the first ``reach``).

    An empty selector replays the whole queue, ``batch`` at a time, however deep
    it is. Each copy is the one ``leveret dlq replay`` makes (``docs/contract.md``
    §6) and is confirmed before its original is acked.

    Raises:
        NotConfirmed: the broker did not confirm a copy; that original and those
            after it stay in the dead-letter queue.
    """
    return _act(urls, queue, selector, reach=reach, batch=batch, replaying=True)


def purge(
    urls: str | Sequence[str], queue: str, selector: Selector, *, reach: int, batch: int = 500
) -> Done:
    """Delete the dead letters ``selector`` matches in the window (the first ``reach``).

    An empty selector purges the whole queue in one operation.
    """
    if selector.everything:
        count = dlq.purge(urls, queue)
        return Done(["*"] * count, 0)
    return _act(urls, queue, selector, reach=reach, batch=batch, replaying=False)


def _act(
    urls: str | Sequence[str],
    queue: str,
    selector: Selector,
    *,
    reach: int,
    batch: int,
    replaying: bool,
) -> Done:
    done: list[str] = []
    scanned = 0
    with admin.channel(urls, name="leveret-dashboard") as ch:
        name = dead_letter_queue(queue)
        ready = depth(ch, name)
        pub = ch.connection.channel()
        pub.confirm_delivery()
        if selector.everything:
            # Acked messages leave the head: the whole queue streams through in
            # rounds of ``batch``, and neither side holds more than one round.
            for tag, props, body in drain(ch, name, ready, batch=batch):
                scanned += 1
                if replaying:
                    _publish_copy(pub, queue, props, body)
                ch.basic_ack(tag)
                done.append(str(props.message_id))
        else:
            # The window is read whole before anything is acked, so what stays
            # goes back in its order (see :func:`browse`).
            chosen = []
            for tag, props, body in scan(ch, name, min(ready, reach)):
                scanned += 1
                if selector.matches(describe(props, body)):
                    chosen.append((tag, props, body))
            for tag, props, body in chosen:
                if replaying:
                    _publish_copy(pub, queue, props, body)
                ch.basic_ack(tag)
                done.append(str(props.message_id))
    event = "dlq.replayed" if replaying else "dlq.purged_selection"
    log.info(event, queue=queue, messages=len(done), scanned=scanned, **selector.query())
    return Done(done, scanned)


def _publish_copy(
    pub: BlockingChannel, queue: str, props: pika.BasicProperties, body: bytes
) -> None:
    """Publish the replay copy of a dead letter to ``queue`` and wait for its confirm."""
    copy = dlq.replay_copy(queue, props, body)
    try:
        pub.basic_publish("", queue, body, dlq.pika_properties(copy, props.app_id), mandatory=True)
    except (pika.exceptions.UnroutableError, pika.exceptions.NackError) as exc:
        raise NotConfirmed(f"replay of {props.message_id} to {queue!r} was not confirmed") from exc


def plain(value: Any) -> Any:
    """A header value as JSON-ready data (AMQP tables hold bytes, times and decimals)."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, datetime):
        return value.isoformat()
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def pretty_body(body: bytes, limit: int = 256 * 1024) -> str:
    """The payload as indented JSON when it is JSON, else as text; cut at ``limit`` bytes."""
    cut = body[:limit]
    try:
        text = json.dumps(json.loads(cut), indent=2, ensure_ascii=False, sort_keys=True)
    except ValueError:
        text = cut.decode("utf-8", "replace")
    return text if len(body) <= limit else text + f"\n… ({len(body) - limit} more bytes)"


def traceback_of(letter: dlq.DeadLetter) -> str:
    """The last attempt's traceback, if the consumer recorded one."""
    value = plain(letter.headers.get(wire.ERROR_TRACEBACK, ""))
    return value if isinstance(value, str) else json.dumps(value)
