"""Prometheus metrics: a worker's own figures, and the depths of a topology's queues.

A worker counts every settled delivery by queue, type and outcome
(``processed``, ``retry_scheduled``, ``dead_lettered``, ``redelivery_pending``),
times its handlers, and gauges what is in flight; its monitor adds the broker's
view of its queues (messages waiting, consumers). ``leveret queues --prometheus``
and the dashboard's ``/metrics`` expose every queue of a topology, retry tiers
and dead-letter queues included, for alerts such as those in
``docs/prometheus/alerts.yml``.

Each :class:`WorkerMetrics` has a registry of its own, so two workers in one
process (or one test run) never share a counter.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from leveret.consumers.delivery import Outcome

CONTENT_TYPE = CONTENT_TYPE_LATEST
"""The ``Content-Type`` of the text exposition format."""

DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
"""Handler durations in seconds: from a millisecond to the five-minute export."""

UNKNOWN = "unknown"
"""The ``type`` label of a message that had none (bad input)."""


class WorkerMetrics:
    """The figures of one worker, in a registry of their own.

    Args:
        registry: where the metrics live (default: a new one).
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.messages = Counter(
            "leveret_messages",
            "Deliveries settled, by queue, message type and outcome.",
            ["queue", "type", "outcome"],
            registry=r,
        )
        self.duration = Histogram(
            "leveret_handler_duration_seconds",
            "Time from delivery to settlement, handler included.",
            ["queue", "type"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self._settled: dict[tuple[str, str, str], tuple[Any, Any]] = {}
        self.in_flight = Gauge(
            "leveret_messages_in_flight",
            "Deliveries received and not yet settled.",
            ["queue"],
            registry=r,
        )
        self.reconnects = Counter(
            "leveret_reconnects",
            "Connections to the broker made again after one was lost.",
            registry=r,
        )
        self.connected = Gauge(
            "leveret_worker_connected", "1 while connected to the broker.", registry=r
        )
        self.ready = Gauge(
            "leveret_worker_ready",
            "1 while the worker's readiness probe passes.",
            registry=r,
        )
        self.waiting = Gauge(
            "leveret_queue_messages",
            "Messages ready in a queue, as the broker last reported them.",
            ["queue", "role"],
            registry=r,
        )
        self.consumers = Gauge(
            "leveret_queue_consumers",
            "Consumers of a queue, as the broker last reported them.",
            ["queue", "role"],
            registry=r,
        )

    def settled(self, outcome: Outcome) -> None:
        """Count one settled delivery and its duration."""
        key = (outcome.queue, outcome.type or UNKNOWN, outcome.outcome)
        children = self._settled.get(key)
        if children is None:  # labels() takes a lock and checks its arguments: once per key
            children = (self.messages.labels(*key), self.duration.labels(*key[:2]))
            self._settled[key] = children
        children[0].inc()
        children[1].observe(outcome.duration)

    def checked(self, consumers: Mapping[str, int], waiting: Mapping[str, int]) -> None:
        """The broker's figures for the worker's queues."""
        for queue, count in waiting.items():
            self.waiting.labels(queue, "work").set(count)
        for queue, count in consumers.items():
            self.consumers.labels(queue, "work").set(count)

    def render(self) -> bytes:
        """The text exposition of every metric."""
        return generate_latest(self.registry)


class QueueFigures(Protocol):
    """One queue's figures: :class:`leveret.admin.QueueStats`, or the dashboard's rows.

    ``in_flight`` (delivered, not acked) is known only from the management API;
    rows without it leave that gauge out.
    """

    @property
    def name(self) -> str: ...
    @property
    def role(self) -> str: ...
    @property
    def exists(self) -> bool: ...
    @property
    def messages(self) -> int: ...
    @property
    def consumers(self) -> int: ...


class _QueueCollector(Collector):
    """Gauges over rows read once: a collector, so nothing outlives the scrape."""

    def __init__(self, rows: Iterable[QueueFigures]) -> None:
        self.rows = list(rows)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        labels = ["queue", "role"]
        messages = GaugeMetricFamily(
            "leveret_queue_messages", "Messages ready in a queue.", labels=labels
        )
        consumers = GaugeMetricFamily(
            "leveret_queue_consumers", "Consumers of a queue.", labels=labels
        )
        exists = GaugeMetricFamily(
            "leveret_queue_exists", "1 if the queue exists on the broker.", labels=labels
        )
        unacked = GaugeMetricFamily(
            "leveret_queue_messages_unacknowledged",
            "Messages delivered to consumers and not yet acked (management API).",
            labels=labels,
        )
        for row in self.rows:
            role = role_label(row.role)
            exists.add_metric([row.name, role], 1 if row.exists else 0)
            if row.exists:
                messages.add_metric([row.name, role], row.messages)
                consumers.add_metric([row.name, role], row.consumers)
                in_flight = getattr(row, "in_flight", None)
                if in_flight is not None:
                    unacked.add_metric([row.name, role], in_flight)
        yield messages
        yield consumers
        yield exists
        if unacked.samples:
            yield unacked


def role_label(role: str) -> str:
    """A queue's role as a label value: ``work``, ``retry``, ``dead-letter`` or ``delay``.

    :func:`leveret.admin.stats` names tiers and levels with their delay
    (``retry 30s``); the delay is in the queue's name already, and one label
    value per kind is what an alert rule can match.
    """
    return role.split(" ", 1)[0]


def render_queues(rows: Iterable[QueueFigures]) -> bytes:
    """The text exposition of the queues' depths, consumers and existence."""
    registry = CollectorRegistry()
    registry.register(_QueueCollector(rows))
    return generate_latest(registry)
