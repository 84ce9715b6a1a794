"""The asyncio publisher, for FastAPI and other asyncio apps, on :mod:`leveret.amqp`."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Protocol

import structlog

from leveret import amqp, connection, tracing, wire
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
    amqp_properties,
    envelopes,
    gave_up,
    heartbeat,
    missing_exchange,
    refusal,
    unroutable,
)

log = structlog.get_logger(__name__)

CONNECTION_ERRORS = (amqp.ConnectionLost, OSError, TimeoutError)
"""What a lost or unreachable broker raises: reconnect, or give up."""


class Publishes(Protocol):
    """Where :func:`publish_on` publishes: an :class:`amqp.Channel`, or the worker's
    :class:`~leveret.consumers.confirms.Confirms`."""

    async def basic_publish(
        self,
        body: bytes,
        *,
        exchange: str,
        routing_key: str,
        properties: amqp.Properties,
        mandatory: bool = True,
    ) -> None: ...


async def publish_on(channel: Publishes, env: wire.Envelope, properties: amqp.Properties) -> None:
    """Publish on a confirm channel and wait for the confirm; translate what can go wrong.

    Connection errors pass through, for the caller to reconnect or give up.

    Raises:
        Unroutable: the broker returned the message.
        NotConfirmed: the broker nacked it, or closed the channel.
        TopologyMissing: the exchange does not exist.
        AccessRefused: the user may not publish to the exchange.
    """
    try:
        await channel.basic_publish(
            env.body,
            exchange=env.exchange,
            routing_key=env.routing_key,
            properties=properties,
            mandatory=True,
        )
    except amqp.Returned as exc:
        raise Unroutable(unroutable(env)) from exc
    except amqp.Nacked as exc:
        raise NotConfirmed(f"broker nacked message {env.message_id}") from exc
    except amqp.ChannelNotFound as exc:
        raise TopologyMissing(missing_exchange(env)) from exc
    except amqp.ChannelAccessRefused as exc:
        raise AccessRefused.from_reply(exc.text) from exc
    except amqp.ChannelClosed as exc:
        raise NotConfirmed(f"channel closed by broker: {exc}") from exc


async def connect(urls: Sequence[str], *, name: str, attempts: int = 1) -> amqp.Connection:
    """Connect to the first node that answers, trying each URL in turn.

    Raises:
        BrokerUnavailable: no node answered, or the credentials or the vhost were refused.
    """
    last: BaseException | None = None
    for _ in range(attempts):
        for url in urls:
            try:
                return await amqp.connect(
                    url,
                    name=name,
                    heartbeat=heartbeat(url),
                    ssl=connection.tls_context(url),
                )
            except amqp.ConnectionLost as exc:
                refused = refusal(url, exc)
                if refused is not None:
                    raise refused from exc
                last = exc
            except (OSError, TimeoutError) as exc:
                last = exc
    raise BrokerUnavailable(
        connection.failure(urls, last) if last else connection.unreachable(urls)
    ) from last


class AsyncPublisher(PublisherCore):
    """Publish messages with confirms from asyncio code.

    Many tasks may publish at once: their confirms are pipelined on one channel.

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
        self._conn: amqp.Connection | None = None
        self._channel: amqp.Channel | None = None
        self._retiring: set[asyncio.Task[None]] = set()  # channels closing after a nack
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> AsyncPublisher:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def publish(
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

        Takes the same arguments, returns and raises the same as
        :meth:`leveret.publisher.Publisher.publish`.
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
        await self.send(env)
        return env.message_id

    async def publish_many(
        self,
        messages: Iterable[Message],
        *,
        exchange: str | None = None,
        routing_key: str | None = None,
        correlation_id: str | None = None,
        headers: Mapping[str, Any] | None = None,
        delay: timedelta | None = None,
        at: datetime | None = None,
    ) -> list[str]:
        """Publish messages together: send them all, then wait for all their confirms.

        Takes the same arguments, returns and raises the same as
        :meth:`leveret.publisher.Publisher.publish_many`.
        """
        envs = envelopes(
            self,
            messages,
            exchange=exchange,
            routing_key=routing_key,
            correlation_id=correlation_id,
            headers=headers,
            delay=delay,
            at=at,
        )
        await self.send_many(envs)
        return [env.message_id for env in envs]

    async def send_many(self, envs: Sequence[wire.Envelope]) -> None:
        """Publish ready envelopes with their confirms pipelined; raise the first error."""
        results = await asyncio.gather(*(self.send(env) for env in envs), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def send(self, env: wire.Envelope) -> None:
        """Publish a ready envelope with confirms, reconnecting as needed."""
        with tracing.sending(env.span):
            await self._send(env)
        log.debug(
            "message.published",
            message_id=env.message_id,
            type=env.type,
            exchange=env.exchange,
            routing_key=env.routing_key,
        )

    async def _send(self, env: wire.Envelope) -> None:
        properties = amqp_properties(env, self.app_id)
        deadline = time.monotonic() + self.reconnect_timeout
        delay = 0.1
        while True:
            channel = None
            try:
                channel = await self._ensure_channel()
                await publish_on(channel, env, properties)
                break
            except (NotConfirmed, TopologyMissing, AccessRefused) as exc:
                if channel is not None and channel.is_closed:
                    self._channel = None
                elif (
                    channel is not None
                    and channel is self._channel
                    and isinstance(exc.__cause__, amqp.Nacked)
                ):
                    self._renew(channel)
                raise
            except CONNECTION_ERRORS as exc:
                await self._drop(channel)
                if time.monotonic() + delay > deadline:
                    raise gave_up(self.urls, exc) from exc
                log.warning(
                    "publisher.reconnecting", error=type(exc).__name__, retry_in=round(delay, 2)
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def close(self) -> None:
        """Close the connection; the publisher reconnects if used again."""
        await self._drop(self._channel)

    async def _ensure_channel(self) -> amqp.Channel:
        channel = self._channel
        if channel is not None and not channel.is_closed:
            return channel
        async with self._lock:
            if self._channel is not None and not self._channel.is_closed:
                return self._channel
            if self._conn is None or self._conn.is_closed:
                try:
                    conn = await connect(self.urls, name="leveret-publisher")
                except BrokerUnavailable as exc:
                    raise ConnectionError(str(exc)) from exc
                # Forget the connection as soon as it is gone, whoever closed it.
                conn.close_callbacks.append(lambda _: self._forget(conn))
                self._conn = conn
            channel = await self._conn.channel()
            await channel.confirm_select()
            self._channel = channel
            return channel

    def _renew(self, channel: amqp.Channel) -> None:
        """Publish on a new channel from now on; close this one once its confirms came.

        RabbitMQ before 3.12.5 keeps nacking on a channel that first published to
        a quorum queue while its record named a stopped node as leader (docs/cluster.md).
        """
        self._channel = None
        task = asyncio.get_running_loop().create_task(channel.close_when_confirmed())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)
        log.debug("publisher.channel_renewed")

    def _forget(self, conn: amqp.Connection) -> None:
        if conn is self._conn:
            self._conn, self._channel = None, None

    async def _drop(self, channel: amqp.Channel | None) -> None:
        # Only the task that saw the failure of the current channel resets it;
        # others that failed on the same channel find a fresh one already.
        if channel is not None and channel is not self._channel:
            return
        conn, self._conn, self._channel = self._conn, None, None
        if conn is not None and not conn.is_closed:
            with contextlib.suppress(*CONNECTION_ERRORS):
                await conn.close()
