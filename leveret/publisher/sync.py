"""The blocking publisher, on pika, for threaded web apps (Flask, Django)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any

import pika
import pika.exceptions
import structlog
from pika.adapters.blocking_connection import BlockingChannel

from leveret import connection, wire
from leveret.errors import (
    AccessRefused,
    BrokerUnavailable,
    NotConfirmed,
    TopologyMissing,
    Unroutable,
)
from leveret.messages import Message
from leveret.publisher.core import (
    DEFAULT_MAX_SIZE,
    RECONNECT_TIMEOUT,
    PublisherCore,
    missing_exchange,
    unroutable,
)

log = structlog.get_logger(__name__)

_KEEPALIVE = connection.HEARTBEAT / 3
_CONNECTION_ERRORS = (
    pika.exceptions.AMQPConnectionError,
    pika.exceptions.ConnectionWrongStateError,
    pika.exceptions.ChannelWrongStateError,
    pika.exceptions.StreamLostError,
    OSError,
)


def pika_properties(env: wire.Envelope, app_id: str | None = None) -> pika.BasicProperties:
    """The pika properties of an envelope."""
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


class Publisher(PublisherCore):
    """Publish messages with confirms; safe to share between threads.

    pika connections are not thread-safe, so one lock guards the connection:
    each :meth:`publish` holds it until the broker confirmed. A daemon thread
    services heartbeats while the publisher is idle.

    Args:
        urls: the broker URL, or several (a cluster's nodes).
        max_size: largest body in bytes.
        reconnect_timeout: seconds to keep reconnecting before a publish fails.
        app_id: the ``app_id`` property of every message.
    """

    def __init__(
        self,
        urls: str | Sequence[str],
        *,
        max_size: int = DEFAULT_MAX_SIZE,
        reconnect_timeout: float = RECONNECT_TIMEOUT,
        app_id: str | None = None,
    ) -> None:
        super().__init__(
            urls, max_size=max_size, reconnect_timeout=reconnect_timeout, app_id=app_id
        )
        self._lock = threading.Lock()
        self._conn: pika.BlockingConnection | None = None
        self._channel: BlockingChannel | None = None
        self._closed = threading.Event()
        self._keeper: threading.Thread | None = None

    def __enter__(self) -> Publisher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def publish(
        self,
        message: Message,
        *,
        exchange: str | None = None,
        routing_key: str | None = None,
        message_id: str | None = None,
        correlation_id: str | None = None,
        headers: Mapping[str, Any] | None = None,
        delay: timedelta | None = None,
        at: datetime | None = None,
    ) -> str:
        """Publish one message and wait until the broker confirmed it.

        Args:
            message: the message, a validated model instance.
            exchange: overrides the message class's exchange.
            routing_key: overrides the message class's routing key.
            message_id: the id to use (a new UUID by default); kept through retries.
            correlation_id: ties the message to a request or a job.
            headers: extra application headers.
            delay: deliver the message this long from now (whole seconds, up to
                about 48 days; the topology needs ``delayed=True``).
            at: deliver the message at this time (timezone-aware), instead of ``delay``.

        Returns:
            The message id.

        Raises:
            MessageTooLarge: the body is over the limit; nothing was sent.
            Unroutable: no queue is bound for the exchange and routing key.
            NotConfirmed: the broker nacked the message.
            TopologyMissing: the exchange does not exist.
            BrokerUnavailable: the broker stayed unreachable for ``reconnect_timeout``.
        """
        env = self.envelope(
            message,
            exchange=exchange,
            routing_key=routing_key,
            message_id=message_id,
            correlation_id=correlation_id,
            headers=headers,
            delay=delay,
            at=at,
        )
        self.send(env)
        return env.message_id

    def send(self, env: wire.Envelope) -> None:
        """Publish a ready envelope with confirms, reconnecting as needed."""
        properties = pika_properties(env, self.app_id)
        deadline = time.monotonic() + self.reconnect_timeout
        delay = 0.1
        with self._lock:
            while True:
                try:
                    channel = self._ensure_channel()
                    channel.basic_publish(
                        env.exchange, env.routing_key, env.body, properties, mandatory=True
                    )
                    break
                except pika.exceptions.UnroutableError as exc:
                    raise Unroutable(unroutable(env)) from exc
                except pika.exceptions.NackError as exc:
                    raise NotConfirmed(f"broker nacked message {env.message_id}") from exc
                except pika.exceptions.ChannelClosedByBroker as exc:
                    self._channel = None
                    if exc.reply_code == 404:
                        raise TopologyMissing(missing_exchange(env)) from exc
                    if exc.reply_code == 403:
                        raise AccessRefused.from_reply(exc.reply_text) from exc
                    raise NotConfirmed(f"channel closed by broker: {exc.reply_text}") from exc
                except _CONNECTION_ERRORS as exc:
                    self._drop()
                    if time.monotonic() + delay > deadline:
                        raise BrokerUnavailable(connection.unreachable(self.urls)) from exc
                    log.warning(
                        "publisher.reconnecting", error=type(exc).__name__, retry_in=round(delay, 2)
                    )
                    time.sleep(delay)
                    delay = min(delay * 2, 2.0)
        log.debug(
            "message.published",
            message_id=env.message_id,
            type=env.type,
            exchange=env.exchange,
            routing_key=env.routing_key,
        )

    def close(self) -> None:
        """Close the connection; the publisher reconnects if used again."""
        self._closed.set()
        with self._lock:
            self._drop()

    def _ensure_channel(self) -> BlockingChannel:
        if self._channel is not None and self._channel.is_open:
            return self._channel
        if self._conn is None or not self._conn.is_open:
            try:
                self._conn = connection.connect(self.urls, name="leveret-publisher")
            except BrokerUnavailable as exc:
                # Retried by send() until the deadline, like a dropped connection.
                raise pika.exceptions.AMQPConnectionError(str(exc)) from exc
            self._start_keeper()
        self._channel = self._conn.channel()
        self._channel.confirm_delivery()
        return self._channel

    def _drop(self) -> None:
        conn, self._conn, self._channel = self._conn, None, None
        if conn is not None and conn.is_open:
            with contextlib.suppress(*_CONNECTION_ERRORS):
                conn.close()

    def _start_keeper(self) -> None:
        if self._keeper is None or not self._keeper.is_alive():
            self._closed.clear()
            self._keeper = threading.Thread(
                target=self._keep_alive, name="leveret-publisher-heartbeat", daemon=True
            )
            self._keeper.start()

    def _keep_alive(self) -> None:
        # An idle BlockingConnection sends no heartbeats unless someone calls into
        # it; without this the broker would drop a quiet web app's connection.
        while not self._closed.wait(_KEEPALIVE):
            with self._lock:
                if self._conn is None:
                    return
                try:
                    self._conn.process_data_events(0)
                except _CONNECTION_ERRORS:
                    self._drop()
                    return
