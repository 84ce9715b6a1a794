"""What the queue page shows: every queue of the topology, grouped by work queue.

Depth and consumers come from passive declares (:func:`leveret.admin.stats`),
which need nothing but AMQP. RabbitMQ's management API, when it answers, adds
what AMQP cannot tell: messages in flight (delivered, not yet acked) and the
publish and deliver rates. A management API that fails is asked again only
after :data:`RETRY_AFTER` seconds, so a page never waits on it twice.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from leveret import admin, connection
from leveret.topology import Topology, dead_letter_queue

TIMEOUT = 2.0
RETRY_AFTER = 30.0


@dataclass(frozen=True)
class QueueRow:
    """One queue: AMQP figures always, management figures when available (else None)."""

    name: str
    role: str
    exists: bool
    messages: int
    consumers: int
    in_flight: int | None = None
    publish_rate: float | None = None
    deliver_rate: float | None = None


@dataclass(frozen=True)
class QueueGroup:
    """A work queue with its retry tiers and its dead-letter queue."""

    work: QueueRow
    tiers: list[QueueRow]
    dead: QueueRow


@dataclass(frozen=True)
class Overview:
    """The whole page: groups, other queues (delay levels), and where figures came from."""

    groups: list[QueueGroup]
    others: list[QueueRow]
    source: str
    note: str = ""
    errors: list[str] = field(default_factory=list)


class Management:
    """A small client of the management API's queue listing (stdlib only).

    Args:
        url: the API's base URL (``http://127.0.0.1:15672``), with or without
            credentials; without, the broker URL's are used.
        broker_url: the AMQP URL, for the vhost and the default credentials.
    """

    def __init__(self, url: str, broker_url: str) -> None:
        parts = urlsplit(url)
        amqp = urlsplit(broker_url)
        self.user = unquote(parts.username or amqp.username or "guest")
        self.password = unquote(parts.password or amqp.password or "guest")
        host = parts.hostname or "127.0.0.1"
        netloc = f"{host}:{parts.port}" if parts.port else host
        self.base = urlunsplit((parts.scheme or "http", netloc, parts.path.rstrip("/"), "", ""))
        self.vhost = unquote(amqp.path[1:]) if len(amqp.path) > 1 else "/"
        self._failed_at = 0.0
        self._lock = threading.Lock()
        self.last_error = ""

    def __repr__(self) -> str:
        return f"Management({self.base!r})"

    def queues(self) -> dict[str, dict[str, Any]] | None:
        """Every queue of the vhost by name, or None when the API does not answer."""
        with self._lock:
            if time.monotonic() - self._failed_at < RETRY_AFTER:
                return None
        columns = "name,messages_unacknowledged,message_stats"
        url = f"{self.base}/api/queues/{quote(self.vhost, safe='')}?columns={columns}"
        request = urllib.request.Request(url)
        token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
                rows = json.load(response)
        except (OSError, ValueError) as exc:
            with self._lock:
                self._failed_at = time.monotonic()
            # HTTPError's text holds no URL; URLError's reason is the socket error.
            self.last_error = connection.redact(str(getattr(exc, "reason", exc)))
            return None
        return {row["name"]: row for row in rows if isinstance(row, dict) and "name" in row}


def _rate(row: dict[str, Any], key: str) -> float | None:
    stats = row.get("message_stats") or {}
    details = stats.get(f"{key}_details") or {}
    rate = details.get("rate")
    return float(rate) if isinstance(rate, int | float) else 0.0


def overview(
    urls: str | Sequence[str], topology: Topology, management: Management | None = None
) -> Overview:
    """Read every queue of ``topology``: the same rows as ``leveret queues``, grouped."""
    rows = admin.stats(urls, topology)
    extra = management.queues() if management is not None else None
    if extra is not None:
        rows_out = [_with_management(r, extra.get(r.name)) for r in rows]
        source, note = "management", ""
    else:
        rows_out = [QueueRow(r.name, r.role, r.exists, r.messages, r.consumers) for r in rows]
        source = "amqp"
        if management is None:
            note = "in flight and rates need the management API (--management-url)"
        else:
            reason = f" ({management.last_error})" if management.last_error else ""
            note = f"management API at {management.base} not available{reason}; "
            note += "showing AMQP figures only"
    by_name = {r.name: r for r in rows_out}
    groups = []
    grouped: set[str] = set()
    for q in topology.queues:
        tiers = [by_name[name] for name, _ in q.tier_queues() if name in by_name]
        dead = by_name[dead_letter_queue(q.name)]
        groups.append(QueueGroup(by_name[q.name], tiers, dead))
        grouped |= {q.name, dead.name, *(t.name for t in tiers)}
    others = [r for r in rows_out if r.name not in grouped]
    return Overview(groups, others, source, note)


def _with_management(row: admin.QueueStats, extra: dict[str, Any] | None) -> QueueRow:
    if extra is None or not row.exists:
        return QueueRow(row.name, row.role, row.exists, row.messages, row.consumers)
    unacked = extra.get("messages_unacknowledged")
    return QueueRow(
        row.name,
        row.role,
        row.exists,
        row.messages,
        row.consumers,
        in_flight=int(unacked) if isinstance(unacked, int) else None,
        publish_rate=_rate(extra, "publish"),
        deliver_rate=_rate(extra, "deliver_get"),
    )
