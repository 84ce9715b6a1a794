"""AMQP routing in memory: exchanges, queues and bindings as RabbitMQ would hold them.

Built from :meth:`leveret.topology.Topology.declarations`, the very list of
operations ``leveret topology apply`` sends to the broker, so the retry tiers,
dead-letter queues and delay levels exist here exactly as declared there: the
tiers are headers bindings on ``leveret-retry-count``, a count with no tier
falls through ``Q.retry``'s alternate exchange to ``Q.dead``, and a tier's
``x-message-ttl`` and ``x-dead-letter-*`` arguments bring a message back.
Nothing in this module knows about retries; it only routes the way RabbitMQ
does (direct, topic, fanout and headers exchanges, exchange-to-exchange
bindings, alternate exchanges, the default exchange).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from leveret.topology import (
    Bind,
    BindExchange,
    Declaration,
    DeclareExchange,
    DeclareQueue,
    Unbind,
)

DEFAULT_EXCHANGE = ""
"""The default exchange: routes to the queue named by the routing key."""


@dataclass(frozen=True)
class Binding:
    """A binding from an exchange to a queue, or to another exchange."""

    destination: str
    routing_key: str = ""
    arguments: tuple[tuple[str, Any], ...] = ()
    to_exchange: bool = False


@dataclass
class ExchangeSpec:
    """An exchange: its kind, its alternate exchange and its bindings."""

    name: str
    type: str
    alternate: str | None = None
    bindings: list[Binding] = field(default_factory=list)


@dataclass(frozen=True)
class QueueSpec:
    """The arguments of a queue that change what happens to its messages."""

    name: str
    ttl: float | None = None
    """Seconds a message may wait (``x-message-ttl``), or None."""
    dead_letter_exchange: str | None = None
    dead_letter_routing_key: str | None = None


class Routes:
    """The exchanges and queues of a vhost, and how a publish is routed among them."""

    def __init__(self, declarations: Iterable[Declaration] = ()) -> None:
        self.exchanges: dict[str, ExchangeSpec] = {}
        self.queues: dict[str, QueueSpec] = {}
        for op in declarations:
            self.declare(op)

    def declare(self, op: Declaration) -> None:
        """Apply one declaration, as the broker would (idempotently)."""
        if isinstance(op, DeclareExchange):
            if op.name not in self.exchanges:
                alternate = op.arguments.get("alternate-exchange")
                self.exchanges[op.name] = ExchangeSpec(
                    op.name, op.type, str(alternate) if alternate is not None else None
                )
        elif isinstance(op, DeclareQueue):
            ttl = op.arguments.get("x-message-ttl")
            dlx = op.arguments.get("x-dead-letter-exchange")
            dlrk = op.arguments.get("x-dead-letter-routing-key")
            self.queues.setdefault(
                op.name,
                QueueSpec(
                    op.name,
                    ttl=ttl / 1000 if isinstance(ttl, int) else None,
                    dead_letter_exchange=str(dlx) if dlx is not None else None,
                    dead_letter_routing_key=str(dlrk) if dlrk is not None else None,
                ),
            )
        elif isinstance(op, Bind | BindExchange | Unbind):
            self._bind(op)

    def _bind(self, op: Bind | BindExchange | Unbind) -> None:
        if isinstance(op, BindExchange):
            source, binding = (
                op.source,
                Binding(op.destination, op.routing_key, _frozen(op.arguments), to_exchange=True),
            )
        else:
            source, binding = op.exchange, Binding(op.queue, op.routing_key, _frozen(op.arguments))
        bindings = self.exchanges[source].bindings
        if isinstance(op, Unbind):
            if binding in bindings:  # unbinding what is not bound is a no-op
                bindings.remove(binding)
        elif binding not in bindings:
            bindings.append(binding)

    def route(self, exchange: str, routing_key: str, headers: Mapping[str, Any]) -> list[str]:
        """The queues a message published to ``exchange`` lands in, each once, in order.

        Raises:
            KeyError: the exchange does not exist (the broker closes the channel
                with ``404 NOT_FOUND``).
        """
        if exchange == DEFAULT_EXCHANGE:
            return [routing_key] if routing_key in self.queues else []
        if exchange not in self.exchanges:
            raise KeyError(exchange)
        found: list[str] = []
        self._route(exchange, routing_key, headers, found, set())
        return found

    def _route(
        self,
        name: str,
        routing_key: str,
        headers: Mapping[str, Any],
        found: list[str],
        seen: set[str],
    ) -> None:
        if name in seen or name not in self.exchanges:
            return
        seen.add(name)
        spec = self.exchanges[name]
        matched = [b for b in spec.bindings if _matches(spec.type, b, routing_key, headers)]
        # The alternate exchange takes what this exchange itself could not route.
        if not matched and spec.alternate is not None:
            self._route(spec.alternate, routing_key, headers, found, seen)
        for b in matched:
            if b.to_exchange:
                self._route(b.destination, routing_key, headers, found, seen)
            elif b.destination not in found:
                found.append(b.destination)


def _frozen(arguments: Mapping[str, Any] | None) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted((arguments or {}).items()))


def _matches(kind: str, b: Binding, routing_key: str, headers: Mapping[str, Any]) -> bool:
    if kind == "fanout":
        return True
    if kind == "direct":
        return b.routing_key == routing_key
    if kind == "topic":
        return topic_matches(b.routing_key.split("."), routing_key.split("."))
    if kind == "headers":
        return headers_match(dict(b.arguments), headers)
    return False


def topic_matches(pattern: list[str], words: list[str]) -> bool:
    """Whether a topic binding key (``*`` one word, ``#`` zero or more) matches a key."""
    if not pattern:
        return not words
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return any(topic_matches(rest, words[i:]) for i in range(len(words) + 1))
    if not words:
        return False
    return (head in ("*", words[0])) and topic_matches(rest, words[1:])


def headers_match(arguments: Mapping[str, Any], headers: Mapping[str, Any]) -> bool:
    """Whether a headers-exchange binding matches a message's headers.

    As RabbitMQ: binding arguments named ``x-...`` are not compared (unless
    ``x-match`` ends in ``-with-x``), values compare with their AMQP types (the
    string ``"1"`` is not the integer ``1``, and a boolean is not an integer),
    ``all`` with nothing to compare matches, ``any`` does not.
    """
    mode = str(arguments.get("x-match", "all"))
    with_x = mode.endswith("-with-x")
    wanted = {
        k: v for k, v in arguments.items() if k != "x-match" and (with_x or not k.startswith("x-"))
    }
    hits = [k in headers and _same(headers[k], v) for k, v in wanted.items()]
    if mode.startswith("any"):
        return any(hits)
    return all(hits)


def _same(value: Any, bound: Any) -> bool:
    if isinstance(value, bool) != isinstance(bound, bool):
        return False
    if isinstance(bound, int) and not isinstance(bound, bool):
        return isinstance(value, int) and value == bound
    return type(value) is type(bound) and bool(value == bound)
