"""The blocking publisher, for threaded web apps (Flask, Django).

One connection per :class:`Publisher`, a :class:`leveret.amqp.blocking.ConfirmLink`
driven by the threads that publish: many threads publishing at once, or one
thread calling :meth:`Publisher.publish_many`, have their confirms pipelined on
one channel instead of waiting for each other's round trips. A daemon thread
sends the heartbeats of an idle connection.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any

import structlog

from leveret import amqp, connection, tracing, wire
from leveret.amqp.blocking import ConfirmLink
from leveret.errors import (
    AccessRefused,
    LeveretError,
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

OPEN_TIMEOUT = 15.0
"""Seconds to open a connection and its confirm channel before trying another node."""
_CLOSE_TIMEOUT = 5.0
_KEEPALIVE = connection.HEARTBEAT / 3
_REPUBLISH_LIMIT = 3
"""Times a message is republished after a channel closed over another message's error."""
_FLUSH_EVERY = 64
"""Publishes of a batch encoded between writes: the broker starts on the first while the
rest are encoded."""


class _Lost(Exception):
    """The connection went away before the confirm: publish again, with the same id."""


class _Pending:
    """One message on its way: what to send, and its confirm once it came."""

    __slots__ = ("baton", "done", "env", "error", "event", "properties", "republished", "returned")

    def __init__(self, env: wire.Envelope, properties: amqp.Properties) -> None:
        self.env = env
        self.properties = properties
        self.done = False
        self.error: BaseException | None = None
        # Made when a thread first sleeps on it: set when done, or when handed the pump.
        self.event: threading.Event | None = None
        self.baton = False
        self.returned = False
        self.republished = 0

    def again(self) -> _Pending:
        return _Pending(self.env, self.properties)


class _Link:
    """One connection and its confirm channel, driven by the threads that wait on it.

    A :class:`ConfirmLink` is not thread-safe, so one thread at a time "pumps"
    it (holds ``_pump`` and does its I/O) until its own messages are confirmed,
    settling everyone else's confirms on the way; then it hands the pump to a
    waiting thread. A lone caller thus does its own I/O, with no thread
    between it and the socket, while concurrent callers share one channel
    with their confirms pipelined. A daemon thread pumps now and then while
    nobody publishes, for the heartbeats.

    Every ``_on_*`` and ``_io_*`` method runs on the pumping thread.
    """

    def __init__(self, urls: Sequence[str]) -> None:
        self.urls = urls
        self.closed = False
        self._state = threading.Lock()
        self._pump = threading.Lock()
        self._sleepers: collections.deque[_Pending] = collections.deque()
        self._inbox: collections.deque[_Pending] = collections.deque()
        self._unconfirmed: dict[int, _Pending] = {}
        self._seq = 0
        self._nacked = False  # since the channel opened: renew it once nothing is unconfirmed
        self._conn: ConfirmLink | None = None

    # --- the callers' side ---------------------------------------------------------------

    def open(self) -> None:
        """Connect to the first node that answers and open the confirm channel.

        Raises:
            _Lost: no node answered, or each refused the credentials or the vhost
                (the broker's refusal is its cause).
        """
        error: BaseException | None = None
        for url in self.urls:
            try:
                self._conn = ConfirmLink.open(
                    url,
                    name="leveret-publisher",
                    heartbeat=heartbeat(url),
                    tls=connection.tls_context(url),
                    timeout=OPEN_TIMEOUT,
                    on_confirm=self._on_confirm,
                    on_return=self._on_return,
                    on_channel_closed=self._on_channel_closed,
                    on_ready=self._io_drain,
                )
            except amqp.ConnectionLost as exc:
                # A refusal is retried too (the user may not exist yet), and named
                # if the publish gives up (gave_up).
                error = refusal(url, exc) or exc
                if error is not exc:
                    error.__cause__ = exc
            except (amqp.AMQPError, OSError, TimeoutError) as exc:
                error = exc
            else:
                threading.Thread(
                    target=self._keep_alive, name="leveret-publisher-heartbeat", daemon=True
                ).start()
                return
        self.closed = True
        raise _Lost(str(error) or type(error).__name__) from error

    def submit(self, items: Sequence[_Pending]) -> None:
        """Queue messages for the channel; :meth:`wait` sees them confirmed."""
        with self._state:
            if self.closed:
                raise _Lost("connection closed")
            self._inbox.extend(items)
            assert self._conn is not None
            if self._pump.locked():
                # Wake the thread in the I/O loop to publish them. Otherwise the
                # caller publishes them itself when it takes the pump in wait().
                self._conn.wake()

    def wait(self, item: _Pending) -> None:
        """Return once ``item`` is confirmed or failed, pumping the connection when free."""
        while not item.done:
            if self._pump.acquire(blocking=False):
                try:
                    self._pump_until(item)
                finally:
                    self._pump.release()
                    self._hand_over()
                continue
            with self._state:
                if item.done:
                    break
                if item.event is None:
                    item.event = threading.Event()
                event = item.event
                event.clear()
                item.baton = False
                self._sleepers.append(item)
            if self._pump.locked() and not item.done:
                # The pumping thread settles this item or hands the pump over.
                event.wait(_KEEPALIVE)
            with self._state, contextlib.suppress(ValueError):
                self._sleepers.remove(item)
            if item.done and item.baton:
                self._hand_over()  # given the pump, but no longer needs it

    def close(self) -> None:
        """Close the connection, waiting (briefly) for a thread still pumping it."""
        if not self._pump.acquire(timeout=_CLOSE_TIMEOUT):
            return
        try:
            if self._conn is not None and not self.closed:
                self._conn.close(_CLOSE_TIMEOUT)
                self._fail_all(_Lost("connection closed"))
        finally:
            self._pump.release()
            self._hand_over()

    def _pump_until(self, item: _Pending) -> None:
        conn = self._conn
        assert conn is not None
        self._io_drain()
        try:
            while not item.done and not self.closed:
                conn.pump(_KEEPALIVE)
                if self._inbox:
                    self._io_drain()
        except amqp.ConnectionLost as exc:
            self._fail_all(_Lost(str(exc)))

    def _hand_over(self) -> None:
        """Wake one thread whose message is still on its way, to pump in its turn."""
        with self._state:
            while self._sleepers:
                sleeper = self._sleepers.popleft()
                if not sleeper.done and sleeper.event is not None:
                    sleeper.baton = True
                    sleeper.event.set()
                    return

    def _keep_alive(self) -> None:
        # Nobody pumps an idle connection: without this, no heartbeats are sent
        # and a broker that went away goes unnoticed until the next publish.
        while not self.closed:
            time.sleep(_KEEPALIVE)
            if self.closed or not self._pump.acquire(blocking=False):
                continue
            try:
                assert self._conn is not None
                self._conn.pump(0)
            except amqp.ConnectionLost as exc:  # the next publish reconnects
                log.debug("publisher.keepalive_failed", error=str(exc))
                self._fail_all(_Lost(str(exc)))
            finally:
                self._pump.release()
                self._hand_over()

    # --- the pumping thread --------------------------------------------------------------

    def _io_drain(self) -> None:
        conn = self._conn
        if conn is None or not conn.ready:
            return  # the channel reopening: on_ready drains
        inbox, unconfirmed = self._inbox, self._unconfirmed
        while inbox:
            item = inbox.popleft()
            env = item.env
            try:
                conn.publish(
                    env.exchange, env.routing_key, env.body, item.properties, mandatory=True
                )
            except amqp.ConnectionLost:
                inbox.appendleft(item)
                return  # the pump raises it next and fails what is left
            except (ValueError, TypeError) as exc:  # a name over 255 bytes, a header value
                # no field table holds: this message only
                _settle(item, NotConfirmed(f"cannot publish message {env.message_id}: {exc}"))
                continue
            self._seq += 1
            unconfirmed[self._seq] = item
            if not self._seq % _FLUSH_EVERY:
                try:
                    conn.flush()
                except amqp.ConnectionLost:
                    return  # the pump raises it next and fails what is left

    def _on_confirm(self, tag: int, multiple: bool, ack: bool) -> None:
        unconfirmed = self._unconfirmed
        if multiple:
            done = [t for t in unconfirmed if t <= tag]
        else:
            done = [tag] if tag in unconfirmed else []
        for t in done:
            item = unconfirmed.pop(t)
            if not ack:
                self._nacked = True
                _settle(item, NotConfirmed(f"broker nacked message {item.env.message_id}"))
            elif item.returned:
                _settle(item, Unroutable(unroutable(item.env)))
            else:
                _settle(item, None)
        if self._nacked and not unconfirmed and self._conn is not None:
            # The next publishes go through a new channel: RabbitMQ before 3.12.5
            # keeps nacking on a channel that first published to a quorum queue
            # while its record named a stopped node as leader (docs/cluster.md).
            self._nacked = False
            self._seq = 0
            self._conn.renew()
            log.debug("publisher.channel_renewed")

    def _on_return(self, message_id: str | None) -> None:
        # The broker sends basic.return before the basic.ack of the same message.
        for item in self._unconfirmed.values():
            if item.env.message_id == message_id and not item.returned:
                item.returned = True
                return

    def _on_channel_closed(self, reason: amqp.ChannelClosed) -> None:
        self._seq = 0
        self._nacked = False
        items = list(self._unconfirmed.values())
        self._unconfirmed.clear()
        again: list[_Pending] = []
        for item in items:
            error = _channel_error(item, reason)
            if error is None and item.republished < _REPUBLISH_LIMIT:
                # Another message's error closed the channel: this one was
                # dropped with it, so it goes out again on the next channel.
                item.republished += 1
                again.append(item)
            else:
                _settle(item, error or _closed_error(item, reason))
        self._inbox.extendleft(reversed(again))

    def _fail_all(self, error: BaseException) -> None:
        with self._state:
            self.closed = True
            left = [*self._unconfirmed.values(), *self._inbox]
            self._unconfirmed.clear()
            self._inbox.clear()
        for item in left:
            _settle(item, error)


def _channel_error(item: _Pending, reason: amqp.ChannelClosed) -> LeveretError | None:
    """The error a closed channel means for a message, or None: it was not the cause."""
    names_it = f"'{item.env.exchange}'" in reason.text
    if reason.code == 404:
        return TopologyMissing(missing_exchange(item.env)) if names_it else None
    if reason.code == 403:
        return AccessRefused.from_reply(reason.text) if names_it else None
    return NotConfirmed(f"channel closed by broker: {reason.text}")


def _closed_error(item: _Pending, reason: amqp.ChannelClosed) -> LeveretError:
    if reason.code == 404:
        return TopologyMissing(missing_exchange(item.env))
    if reason.code == 403:
        return AccessRefused.from_reply(reason.text)
    return NotConfirmed(f"channel closed: {reason}")


def _ended(envs: Sequence[wire.Envelope], errors: Mapping[str, BaseException]) -> None:
    """End the producer spans of sent envelopes, with the error each one met."""
    for env in envs:
        tracing.sent(env.span, errors.get(env.message_id))


def _settle(item: _Pending, error: BaseException | None) -> None:
    if item.done:
        return
    item.error = error
    item.done = True
    event = item.event  # read after done: a thread that made it after sees done
    if event is not None:
        event.set()


class Publisher(PublisherCore):
    """Publish messages with confirms; safe to share between threads.

    An I/O thread owns the connection; threads that publish at once have their
    confirms pipelined on its channel, and :meth:`publish_many` sends a whole
    batch before it waits for the confirms.

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
        self._link: _Link | None = None

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

    def publish_many(
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

        Every message is checked (envelope, size) before any is sent. Takes the
        arguments of :meth:`publish` but ``message_id`` (each message gets its own).

        Returns:
            The message ids, in the order of ``messages``.

        Raises:
            The first error of :meth:`publish` that any message met; the other
            messages were still sent and confirmed.
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
        self.send_many(envs)
        return [env.message_id for env in envs]

    def send(self, env: wire.Envelope) -> None:
        """Publish a ready envelope with confirms, reconnecting as needed."""
        self.send_many([env])

    def send_many(self, envs: Sequence[wire.Envelope]) -> None:
        """Publish ready envelopes, then wait for every confirm, reconnecting as needed.

        A message whose connection was lost before its confirm is published
        again with the same id: a duplicate is possible, a loss is not.
        """
        items = [_Pending(env, amqp_properties(env, self.app_id)) for env in envs]
        deadline = time.monotonic() + self.reconnect_timeout
        delay = 0.1
        first_error: LeveretError | None = None
        errors: dict[str, LeveretError] = {}  # by message id, to end each producer span
        while items:
            link: _Link | None = None
            lost: list[_Pending] = items
            cause: BaseException | None = None
            try:
                link = self._connected()
                link.submit(items)
                lost = []
                for item in items:
                    link.wait(item)
                    if isinstance(item.error, _Lost):
                        lost.append(item)
                        cause = item.error
                    elif isinstance(item.error, LeveretError):
                        first_error = first_error or item.error
                        errors[item.env.message_id] = item.error
            except _Lost as exc:
                cause = exc
            if not lost:
                break
            self._drop(link)
            if time.monotonic() + delay > deadline:
                unavailable = gave_up(self.urls, cause)
                for item in lost:
                    errors[item.env.message_id] = unavailable
                _ended(envs, errors)
                raise unavailable from cause
            log.warning(
                "publisher.reconnecting",
                error=type(cause).__name__ if cause else "_Lost",
                retry_in=round(delay, 2),
            )
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
            items = [item.again() for item in lost]
        _ended(envs, errors)
        if first_error is not None:
            raise first_error
        for env in envs:
            log.debug(
                "message.published",
                message_id=env.message_id,
                type=env.type,
                exchange=env.exchange,
                routing_key=env.routing_key,
            )

    def close(self) -> None:
        """Close the connection; the publisher reconnects if used again."""
        with self._lock:
            link, self._link = self._link, None
        if link is not None:
            link.close()

    def _connected(self) -> _Link:
        link = self._link
        if link is not None and not link.closed:
            return link
        with self._lock:  # one thread connects; the others wait for its link
            if self._link is None or self._link.closed:
                fresh = _Link(self.urls)
                fresh.open()
                self._link = fresh
            return self._link

    def _drop(self, link: _Link | None) -> None:
        # Only the link that failed is dropped; another thread may have made a
        # new one meanwhile.
        with self._lock:
            if link is None or link is not self._link:
                return
            self._link = None
        link.close()
