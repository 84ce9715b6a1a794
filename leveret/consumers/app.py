"""An app: the topology plus the handlers that consume its queues.

    app = App(TOPOLOGY)

    @app.handler(ExportRequested, ExportRequestedV2, queue="reports.export")
    async def export(message, ctx):
        ...

``leveret worker module:app`` runs it. Everything here is pure: resolving a
delivery to a handler and a validated model needs no broker.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from leveret import wire
from leveret.consumers.context import Context
from leveret.errors import (
    ConfigurationError,
    InvalidContentType,
    MessageTooLarge,
    UnknownMessageType,
    UnknownVersion,
)
from leveret.messages import Message
from leveret.status import events as status
from leveret.topology import Exchange, Topology

DEFAULT_TIMEOUT = 25 * 60.0
"""Per-handler timeout: below RabbitMQ's default consumer_timeout of 30 minutes,
after which the broker would close the channel of a consumer that has not acked."""


HandlerFunc = Callable[[Any, Context], Awaitable[str | None] | str | None]
"""A handler takes the message and its context; a tracked one may return a
reference to its result (a URL, a path), recorded in the job's status."""


@dataclass(frozen=True)
class Handler:
    """A function registered for some versions of one message type on one queue."""

    func: HandlerFunc
    queue: str
    models: Mapping[int, type[Message]]
    timeout: float
    is_async: bool
    track: bool = False

    @property
    def name(self) -> str:
        """The handler's qualified name, for logs."""
        return f"{self.func.__module__}.{self.func.__qualname__}"


@dataclass
class App:
    """The topology and the handlers of a pipeline.

    Args:
        topology: the topology its queues belong to.
        messages: extra message models to export as schemas (ones that are
            published but handled elsewhere, by a worker in another language).
    """

    topology: Topology
    messages: list[type[Message]] = field(default_factory=list)
    handlers: dict[str, dict[str, Handler]] = field(default_factory=dict, init=False)

    def handler(
        self,
        *models: type[Message],
        queue: str,
        timeout: float = DEFAULT_TIMEOUT,
        track: bool = False,
    ) -> Callable[[HandlerFunc], HandlerFunc]:
        """Register a handler for the given versions of one message type on a queue.

        Args:
            models: the accepted versions, as model classes of one type.
            queue: the queue whose messages it handles (described in the topology).
            timeout: seconds before an attempt counts as failed.
            track: publish the job's status (started, succeeded with the
                handler's return value as the result, retrying, failed) to
                ``leveret.status``, keyed by message id (:mod:`leveret.status`).

        Raises:
            ConfigurationError: mixed types, an unknown queue, or a type already
                handled on that queue.
        """
        if not models:
            raise ConfigurationError("handler() needs at least one message model")
        types = {m.message_type for m in models}
        if len(types) != 1:
            raise ConfigurationError(f"one handler takes versions of one type, got {sorted(types)}")
        (type_name,) = types
        self.topology.queue(queue)
        if timeout <= 0:
            raise ConfigurationError(f"timeout must be positive, got {timeout}")
        by_version = {m.message_version: m for m in models}

        if track and status.EXCHANGE not in {e.name for e in self.topology.exchanges}:
            # A tracking app's topology carries the status exchange, so that
            # `leveret topology apply` declares it.
            status_exchange = Exchange(status.EXCHANGE, "topic")
            self.topology = replace(
                self.topology, exchanges=(*self.topology.exchanges, status_exchange)
            )

        def register(func: HandlerFunc) -> HandlerFunc:
            per_queue = self.handlers.setdefault(queue, {})
            if type_name in per_queue:
                raise ConfigurationError(f"{type_name} already has a handler on queue {queue!r}")
            per_queue[type_name] = Handler(
                func, queue, by_version, timeout, inspect.iscoroutinefunction(func), track
            )
            return func

        return register

    def tracks(self, queues: list[str] | None = None) -> bool:
        """Whether any handler (on ``queues``) publishes job status."""
        wanted = self.handlers if queues is None else {q: self.handlers[q] for q in queues}
        return any(h.track for per_queue in wanted.values() for h in per_queue.values())

    def queues(self) -> list[str]:
        """The queues that have handlers, in topology order."""
        return [q for q in self.topology.queue_names() if q in self.handlers]

    def models(self) -> list[type[Message]]:
        """Every message model the app knows, sorted by type and version."""
        found = {m.key(): m for m in self.messages}
        for per_queue in self.handlers.values():
            for h in per_queue.values():
                found.update({m.key(): m for m in h.models.values()})
        return [found[k] for k in sorted(found)]

    def model(self, type_name: str, version: int) -> type[Message]:
        """The model of one type and version.

        Raises:
            UnknownMessageType: the app knows no such type.
            UnknownVersion: the type is known but not that version.
        """
        versions = {m.message_version: m for m in self.models() if m.message_type == type_name}
        if not versions:
            raise UnknownMessageType(f"unknown message type {type_name!r}")
        if version not in versions:
            raise UnknownVersion(
                f"{type_name} has no version {version} (known: {sorted(versions)})"
            )
        return versions[version]

    def resolve(
        self, queue: str, delivery: wire.Delivery, *, max_size: int | None = None
    ) -> tuple[Handler, Message]:
        """Find the handler for a delivery and validate its body.

        Args:
            queue: the queue it came from.
            delivery: the delivery.
            max_size: the largest body accepted, in bytes.

        Raises:
            MessageTooLarge: the body is over ``max_size``.
            InvalidContentType: the content type is missing or not JSON.
            DecodeError: a body that is not UTF-8 JSON.
            UnknownMessageType: no handler on this queue for the type.
            UnknownVersion: the handler does not take this version (or none is given).
            SchemaViolation: the body does not match the schema.
        """
        if max_size is not None and len(delivery.body) > max_size:
            raise MessageTooLarge(
                f"body is {len(delivery.body)} bytes, over the limit of {max_size}"
            )
        media_type = (delivery.content_type or "").split(";", 1)[0].strip().lower()
        if media_type != wire.CONTENT_TYPE:
            raise InvalidContentType(
                f"content type {delivery.content_type!r} is not {wire.CONTENT_TYPE!r}"
            )
        if not delivery.type:
            raise UnknownMessageType("message has no type property")
        handler = self.handlers.get(queue, {}).get(delivery.type)
        if handler is None:
            raise UnknownMessageType(
                f"no handler for message type {delivery.type!r} on queue {queue!r}"
            )
        version = delivery.version
        if version is None:
            raise UnknownVersion(f"{delivery.type}: missing or non-integer {wire.VERSION} header")
        model = handler.models.get(version)
        if model is None:
            raise UnknownVersion(
                f"{delivery.type} v{version} is not handled on {queue!r} "
                f"(accepted: {sorted(handler.models)})"
            )
        return handler, model.from_json(delivery.body)
