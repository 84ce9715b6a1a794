"""The topology: exchanges, queues, retry tiers and dead-letter queues.

One description, declared by one owner (``leveret topology apply``). Workers and
publishers only check, passively, that what they need exists.

For every work queue ``Q`` the description expands to::

    Q                 quorum (or classic) work queue, dead-letters to Q.dead
    Q.retry           headers exchange; routes on leveret-retry-count to a tier,
                      alternate exchange Q.dead for counts with no tier
    Q.retry.<n>       one queue per tier (1, 2, ...), queue-level x-message-ttl,
                      dead-letters back to Q through the default exchange (so
                      only Q sees it)
    Q.dead            fanout exchange
    Q.dlq             the dead-letter queue

With ``delayed=True`` it adds the delay levels that ``publish(delay=...)`` uses,
shared by every topology on the vhost (see :mod:`leveret.delay`).

A message that failed ``k`` times carries ``leveret-retry-count = k``; counts
``1 .. max_attempts-1`` are bound to the tiers (the last tier repeats), so
count ``max_attempts`` has no binding and lands in ``Q.dlq``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from leveret import delay, wire
from leveret.errors import ConfigurationError

QueueType = Literal["quorum", "classic"]

MAX_ATTEMPTS_LIMIT = 25
"""Upper bound on ``max_attempts``: ``apply`` unbinds stale counts up to it."""


def retry_exchange(queue: str) -> str:
    """Name of the headers exchange that takes a queue's failed messages."""
    return f"{queue}.retry"


def dead_exchange(queue: str) -> str:
    """Name of the fanout exchange in front of a queue's dead-letter queue."""
    return f"{queue}.dead"


def dead_letter_queue(queue: str) -> str:
    """Name of a queue's dead-letter queue."""
    return f"{queue}.dlq"


def tier_queue(queue: str, index: int) -> str:
    """Name of a queue's ``index``-th retry tier (from 1).

    Numbered rather than named after the delay: a changed delay is then a
    changed ``x-message-ttl`` that ``apply`` reports, not a second queue bound
    to the same retry count.
    """
    return f"{retry_exchange(queue)}.{index}"


def delay_label(seconds: float) -> str:
    """Render a delay compactly for a queue name: ``500ms``, ``10s``, ``5m``, ``2h``."""
    ms = round(seconds * 1000)
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms >= size and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


@dataclass(frozen=True)
class RetryPolicy:
    """How a queue retries: ordered delay tiers and a maximum number of attempts.

    Args:
        delays: seconds to wait after the 1st, 2nd, ... failure; the last one
            repeats for later failures.
        max_attempts: attempts in all, the first included; after the last one
            the message goes to the dead-letter queue. 1 disables retries.
    """

    delays: tuple[float, ...] = (1.0, 10.0, 60.0, 600.0)
    max_attempts: int = 5

    def __post_init__(self) -> None:
        if not 1 <= self.max_attempts <= MAX_ATTEMPTS_LIMIT:
            raise ConfigurationError(
                f"max_attempts must be between 1 and {MAX_ATTEMPTS_LIMIT}, got {self.max_attempts}"
            )
        if self.max_attempts > 1 and not self.delays:
            raise ConfigurationError("a retry policy with retries needs at least one delay")
        if any(not math.isfinite(d) or d <= 0 for d in self.delays):
            raise ConfigurationError(f"delays must be positive seconds, got {self.delays}")
        if len(self.delays) >= MAX_ATTEMPTS_LIMIT:
            raise ConfigurationError(
                f"at most {MAX_ATTEMPTS_LIMIT - 1} delays, got {len(self.delays)}"
            )

    def delay_for(self, retry_count: int) -> float:
        """Seconds a message waits after its ``retry_count``-th failure."""
        return self.delays[min(retry_count, len(self.delays)) - 1]


@dataclass(frozen=True)
class Exchange:
    """A durable exchange that publishers send to."""

    name: str
    type: Literal["direct", "topic", "fanout", "headers"] = "direct"


@dataclass(frozen=True)
class Binding:
    """Bind a queue to an exchange with a routing key."""

    exchange: str
    routing_key: str


@dataclass(frozen=True)
class Queue:
    """A durable work queue with its retry policy.

    Args:
        name: the queue's name.
        bindings: where it takes messages from.
        retry: its retry policy.
        queue_type: ``quorum`` (default: the same code runs on a cluster) or ``classic``.
        delivery_limit: for quorum queues, deliveries after which the broker
            dead-letters a message that keeps killing its consumer; None for none.
    """

    name: str
    bindings: tuple[Binding, ...] = ()
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    queue_type: QueueType = "quorum"
    delivery_limit: int | None = 20

    def tier_queues(self) -> list[tuple[str, float]]:
        """The retry tier queues, as ``(name, delay seconds)``, in order."""
        if self.retry.max_attempts == 1:
            return []
        used = self.retry.delays[: self.retry.max_attempts - 1]
        return [(tier_queue(self.name, i), d) for i, d in enumerate(used, start=1)]

    def stale_tier_names(self) -> list[str]:
        """Names of tier queues an earlier, longer policy may have left behind."""
        return [
            tier_queue(self.name, i) for i in range(len(self.tier_queues()) + 1, MAX_ATTEMPTS_LIMIT)
        ]


@dataclass(frozen=True)
class DeclareExchange:
    name: str
    type: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class DeclareQueue:
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class Bind:
    queue: str
    exchange: str
    routing_key: str = ""
    arguments: dict[str, Any] | None = None


@dataclass(frozen=True)
class BindExchange:
    """Bind exchange ``destination`` to exchange ``source``."""

    destination: str
    source: str
    routing_key: str = ""
    arguments: dict[str, Any] | None = None


@dataclass(frozen=True)
class Unbind:
    queue: str
    exchange: str
    routing_key: str = ""
    arguments: dict[str, Any] | None = None


Declaration = DeclareExchange | DeclareQueue | Bind | BindExchange | Unbind


@dataclass(frozen=True)
class Topology:
    """Everything a pipeline needs on the broker, described once.

    Args:
        exchanges: the exchanges publishers send to.
        queues: the work queues, each with its bindings and retry policy.
        delayed: declare the delay levels, so that messages to these exchanges
            can be published with ``delay=`` or ``at=``.
    """

    exchanges: tuple[Exchange, ...] = ()
    queues: tuple[Queue, ...] = ()
    delayed: bool = False

    def __post_init__(self) -> None:
        known = {e.name for e in self.exchanges}
        names = [q.name for q in self.queues]
        if len(set(names)) != len(names):
            raise ConfigurationError(f"queue names must be unique, got {names}")
        for q in self.queues:
            for b in q.bindings:
                if b.exchange not in known:
                    raise ConfigurationError(
                        f"queue {q.name!r} binds to exchange {b.exchange!r}, "
                        "which the topology does not describe"
                    )

    def queue(self, name: str) -> Queue:
        """Return the described queue called ``name``.

        Raises:
            ConfigurationError: no such queue is described.
        """
        for q in self.queues:
            if q.name == name:
                return q
        raise ConfigurationError(
            f"queue {name!r} is not in the topology (known: {', '.join(self.queue_names())})"
        )

    def queue_names(self) -> list[str]:
        """Names of the work queues."""
        return [q.name for q in self.queues]

    def declarations(self) -> list[Declaration]:
        """Expand the description into the broker operations, in a safe order."""
        ops: list[Declaration] = [DeclareExchange(e.name, e.type, {}) for e in self.exchanges]
        for q in self.queues:
            ops.extend(queue_declarations(q))
        if self.delayed:
            ops.extend(delay_declarations([e.name for e in self.exchanges]))
        return ops


def worker_needs(topology: Topology, queues: Sequence[str] | None = None) -> list[tuple[str, str]]:
    """What a worker of ``queues`` needs to exist, as ``(kind, name)`` pairs.

    Raises:
        ConfigurationError: a queue is not described.
    """
    names = topology.queue_names() if queues is None else list(queues)
    needs: list[tuple[str, str]] = []
    for name in names:
        topology.queue(name)
        needs += [
            ("queue", name),
            ("exchange", retry_exchange(name)),
            ("exchange", dead_exchange(name)),
            ("queue", dead_letter_queue(name)),
        ]
    return needs


def queue_declarations(q: Queue) -> list[Declaration]:
    """The operations for one work queue, its retry tiers and its dead-letter queue."""
    dead, retry, dlq = dead_exchange(q.name), retry_exchange(q.name), dead_letter_queue(q.name)
    ops: list[Declaration] = [
        DeclareExchange(dead, "fanout", {}),
        DeclareQueue(dlq, _queue_arguments(q.queue_type)),
        Bind(dlq, dead),
        DeclareExchange(retry, "headers", {"alternate-exchange": dead}),
    ]
    work_args = _queue_arguments(q.queue_type, dead_letter_exchange=dead)
    if q.queue_type == "quorum" and q.delivery_limit is not None:
        work_args["x-delivery-limit"] = q.delivery_limit
    ops.append(DeclareQueue(q.name, work_args))
    ops.extend(Bind(q.name, b.exchange, b.routing_key) for b in q.bindings)
    tiers = q.tier_queues()
    for name, seconds in tiers:
        args = _queue_arguments(q.queue_type, dead_letter_exchange="", dead_letter_key=q.name)
        args["x-message-ttl"] = round(seconds * 1000)
        ops.append(DeclareQueue(name, args))
    # Counts 1..max_attempts-1 go to a tier; every other count must not be bound
    # anywhere, so that it falls through to the alternate exchange. Unbinding is
    # idempotent, and it clears bindings left by an earlier, longer policy.
    for index, (name, _delay) in enumerate(tiers, start=1):
        for count in range(1, MAX_ATTEMPTS_LIMIT + 1):
            wanted = count < q.retry.max_attempts and min(count, len(tiers)) == index
            op = Bind if wanted else Unbind
            ops.append(op(name, retry, "", retry_binding(count)))
    return ops


def delay_declarations(exchanges: list[str]) -> list[Declaration]:
    """The delay levels, and a route from ``leveret.delay.deliver`` to each exchange."""
    ops: list[Declaration] = [
        DeclareExchange(delay.UNROUTABLE, "fanout", {}),
        DeclareQueue(delay.UNROUTABLE, _queue_arguments("quorum")),
        Bind(delay.UNROUTABLE, delay.UNROUTABLE),
        DeclareExchange(delay.DELIVER, "headers", {"alternate-exchange": delay.UNROUTABLE}),
    ]
    below = delay.DELIVER
    for level in range(delay.LEVELS):
        name = delay.level_name(level)
        ops.append(DeclareExchange(name, "headers", {"alternate-exchange": below}))
        args = _queue_arguments("quorum", dead_letter_exchange=below)
        args["x-message-ttl"] = 2**level * 1000
        ops.append(DeclareQueue(name, args))
        ops.append(Bind(name, name, "", delay.level_binding(level)))
        below = name
    ops.extend(BindExchange(e, delay.DELIVER, "", delay.deliver_binding(e)) for e in exchanges)
    return ops


def retry_binding(count: int) -> dict[str, Any]:
    """Headers-exchange binding arguments that match one retry count."""
    return {"x-match": "all", wire.RETRY_COUNT: count}


def _queue_arguments(
    queue_type: QueueType,
    *,
    dead_letter_exchange: str | None = None,
    dead_letter_key: str | None = None,
) -> dict[str, Any]:
    args: dict[str, Any] = {"x-queue-type": queue_type}
    if dead_letter_exchange is not None:
        args["x-dead-letter-exchange"] = dead_letter_exchange
        if dead_letter_key is not None:
            args["x-dead-letter-routing-key"] = dead_letter_key
        if queue_type == "quorum":
            # Quorum queues dead-letter at most once unless told otherwise; the
            # at-least-once strategy needs reject-publish overflow.
            args["x-dead-letter-strategy"] = "at-least-once"
            args["x-overflow"] = "reject-publish"
    return args
