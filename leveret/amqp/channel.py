"""One AMQP channel: synchronous methods, consumers, settling, and publishing with confirms.

Synchronous methods (declares, ``basic.qos``, ``basic.consume`` ...) go one
at a time, as the protocol requires. Deliveries are assembled from their
frames and handed to the consumer's callback as they complete; the callback
decides whether to start a task. In confirm mode, every publish gets a future
that the broker's ``basic.ack`` or ``basic.nack`` settles, one or many at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog
from pamqp import commands as spec
from pamqp.base import Frame as PamqpFrame

from leveret.amqp import codec
from leveret.amqp.errors import (
    AMQPError,
    ChannelClosed,
    ConnectionLost,
    Nacked,
    Returned,
    tell,
)

if TYPE_CHECKING:
    from leveret.amqp.connection import Connection

log = structlog.get_logger(__name__)

Consumer = Callable[[codec.Deliver], None]
_CLOSE = spec.Channel.Close(200, "Normal shutdown", 0, 0)


class _Pending:
    """A publish waiting for its confirm."""

    __slots__ = ("future", "message_id", "returned")

    def __init__(self, future: asyncio.Future[None], message_id: str | None) -> None:
        self.future = future
        self.message_id = message_id
        self.returned: Returned | None = None


class Channel:
    """A channel of a :class:`~leveret.amqp.connection.Connection` (``conn.channel()``).

    ``close_callbacks`` are called with the error that ended the channel: a
    :class:`ChannelClosed` from the broker, or the connection's
    :class:`ConnectionLost`.
    """

    def __init__(self, conn: Connection, number: int) -> None:
        self.conn = conn
        self.number = number
        self.consumers: dict[str, Consumer] = {}
        self.close_callbacks: list[Callable[[AMQPError], None]] = []
        self.error: AMQPError | None = None
        self._rpc = asyncio.Lock()
        self._waiter: tuple[tuple[type[PamqpFrame], ...], asyncio.Future[Any]] | None = None
        self._content: codec.Deliver | None = None
        self._returning: spec.Basic.Return | None = None
        self._size = 0
        self._parts: list[bytes] = []
        self._confirming = False
        self._next_tag = 1
        self._next_consumer = 1
        self._unconfirmed: dict[int, _Pending] = {}

    @property
    def is_closed(self) -> bool:
        """Whether the channel is gone (closed by either side, or its connection lost)."""
        return self.error is not None

    # ------------------------------------------------------------ synchronous methods

    async def _call(self, method: PamqpFrame, *replies: type[PamqpFrame]) -> Any:
        async with self._rpc:
            self._check()
            future: asyncio.Future[Any] = self.conn.loop.create_future()
            self._waiter = (replies, future)
            try:
                self.conn.write(codec.rare_frame(method, self.number))
                return await future
            finally:
                self._waiter = None

    async def open(self) -> None:
        await self._call(spec.Channel.Open(), spec.Channel.OpenOk)

    async def confirm_select(self) -> None:
        """Put the channel in confirm mode: every publish is acked or nacked by the broker."""
        await self._call(spec.Confirm.Select(), spec.Confirm.SelectOk)
        self._confirming = True

    async def basic_qos(self, prefetch_count: int) -> None:
        """Let the broker send at most this many unacked deliveries ahead."""
        await self._call(spec.Basic.Qos(prefetch_count=prefetch_count), spec.Basic.QosOk)

    async def basic_consume(self, queue: str, callback: Consumer) -> str:
        """Start consuming ``queue`` (acks required); return the consumer tag."""
        # The tag is ours, registered before asking: deliveries may follow
        # consume-ok in the same read, before the caller resumes.
        tag = f"leveret.{self.number}.{self._next_consumer}"
        self._next_consumer += 1
        self.consumers[tag] = callback
        try:
            await self._call(
                spec.Basic.Consume(queue=queue, consumer_tag=tag), spec.Basic.ConsumeOk
            )
        except BaseException:
            self.consumers.pop(tag, None)
            raise
        return tag

    async def basic_cancel(self, consumer_tag: str) -> None:
        """Stop a consumer; deliveries already sent still arrive and must be settled."""
        await self._call(spec.Basic.Cancel(consumer_tag=consumer_tag), spec.Basic.CancelOk)

    async def queue_declare(self, queue: str, *, passive: bool = True) -> tuple[int, int]:
        """Check that a queue exists; return its ready messages and consumers."""
        ok = await self._call(
            spec.Queue.Declare(queue=queue, passive=passive), spec.Queue.DeclareOk
        )
        return int(ok.message_count or 0), int(ok.consumer_count or 0)

    async def exchange_declare(self, exchange: str, *, passive: bool = True) -> None:
        """Check that an exchange exists."""
        await self._call(
            spec.Exchange.Declare(exchange=exchange, passive=passive), spec.Exchange.DeclareOk
        )

    async def close_when_confirmed(self) -> None:
        """Close the channel once the publishes written so far are confirmed (or nacked)."""
        waiting = [pending.future for pending in self._unconfirmed.values()]
        if waiting:
            await asyncio.wait(waiting)
        await self.close()

    async def close(self) -> None:
        """Close the channel (``channel.close``); in-flight publishes fail."""
        if self.error is not None:
            return
        with contextlib.suppress(AMQPError):
            await self._call(_CLOSE, spec.Channel.CloseOk)
        self.gone(ChannelClosed(200, "closed by the client"))

    # ------------------------------------------------------------ settling

    def basic_ack(self, delivery_tag: int, *, multiple: bool = False) -> None:
        """Ack a delivery (and, with ``multiple``, every unsettled one below it)."""
        self._check()
        self.conn.write(codec.settle_frame(self.number, codec.ACK, delivery_tag, multiple))

    def basic_reject(self, delivery_tag: int, *, requeue: bool) -> None:
        """Reject a delivery: back to the queue, or to its dead-letter exchange."""
        self._check()
        self.conn.write(codec.settle_frame(self.number, codec.REJECT, delivery_tag, requeue))

    # ------------------------------------------------------------ publishing

    async def basic_publish(
        self,
        body: bytes,
        *,
        exchange: str,
        routing_key: str,
        properties: codec.Properties,
        mandatory: bool = True,
    ) -> None:
        """Publish; in confirm mode, wait for the broker's confirm.

        Raises:
            Returned: mandatory, and no queue took it.
            Nacked: the broker nacked it.
            ChannelClosed: the broker closed the channel over it (a missing
                exchange, say).
            ConnectionLost: the connection went before the confirm came.
        """
        await self.conn.drain()
        confirmed = self.publish_nowait(
            body,
            exchange=exchange,
            routing_key=routing_key,
            properties=properties,
            mandatory=mandatory,
        )
        if confirmed is not None:
            await confirmed

    def publish_nowait(
        self,
        body: bytes,
        *,
        exchange: str,
        routing_key: str,
        properties: codec.Properties,
        mandatory: bool = True,
    ) -> asyncio.Future[None] | None:
        """Write a publish now; return the future of its confirm (None outside confirm mode)."""
        self._check()
        self.conn.write(
            codec.publish_frames(
                self.number,
                exchange,
                routing_key,
                body,
                properties,
                mandatory=mandatory,
                frame_max=self.conn.frame_max,
            )
        )
        if not self._confirming:
            return None
        future: asyncio.Future[None] = self.conn.loop.create_future()
        self._unconfirmed[self._next_tag] = _Pending(future, properties.message_id)
        self._next_tag += 1
        return future

    # ------------------------------------------------------------ reading

    def on_frame(self, kind: int, payload: memoryview) -> None:
        """Handle one frame for this channel (called by the connection)."""
        if kind == codec.METHOD:
            cls, method = codec.method_id(payload)
            if cls == codec.BASIC:
                if method == codec.DELIVER:
                    self._content = codec.deliver(payload)
                    return
                if method in (codec.ACK, codec.NACK):
                    self._on_confirm(codec.confirm(payload, method == codec.ACK))
                    return
            self._on_method(codec.rare_method(kind, self.number, payload))
        elif kind == codec.HEADER:
            self._size, properties = codec.content_header(payload)
            if self._content is not None:
                self._content.properties = properties
            if self._size == 0:
                self._complete(b"")
        elif kind == codec.BODY:
            self._parts.append(bytes(payload))
            self._size -= len(payload)
            if self._size <= 0:
                parts, self._parts = self._parts, []
                self._complete(parts[0] if len(parts) == 1 else b"".join(parts))

    def _complete(self, body: bytes) -> None:
        content, self._content = self._content, None
        returning, self._returning = self._returning, None
        if content is None:
            return
        content.body = body
        if returning is not None:
            self._on_return(returning, content)
            return
        consumer = self.consumers.get(content.consumer_tag)
        if consumer is None:
            log.warning("amqp.delivery_without_consumer", consumer_tag=content.consumer_tag)
            return
        consumer(content)

    def _on_method(self, method: PamqpFrame) -> None:
        if isinstance(method, spec.Basic.Return):
            # Its content follows, like a delivery's.
            self._returning = method
            self._content = codec.Deliver(
                "", 0, False, method.exchange or "", method.routing_key or ""
            )
            return
        if isinstance(method, spec.Channel.Close):
            with contextlib.suppress(ConnectionLost):
                self.conn.write(codec.rare_frame(spec.Channel.CloseOk(), self.number))
            self.gone(ChannelClosed.of(method.reply_code or 0, method.reply_text or ""))
            return
        if isinstance(method, spec.Basic.Cancel):
            # The queue was deleted, or the node holding it went away: the consumer
            # is gone for good on this channel, so the channel is too.
            self.consumers.pop(method.consumer_tag or "", None)
            self.gone(ChannelClosed(320, f"consumer {method.consumer_tag} cancelled by the broker"))
            with contextlib.suppress(ConnectionLost):
                self.conn.write(codec.rare_frame(_CLOSE, self.number))
            return
        if isinstance(method, spec.Basic.CancelOk):
            self.consumers.pop(method.consumer_tag or "", None)
        waiter = self._waiter
        if waiter is not None and isinstance(method, waiter[0]) and not waiter[1].done():
            waiter[1].set_result(method)
        elif not isinstance(method, spec.Channel.CloseOk | spec.Basic.CancelOk):
            log.warning("amqp.unexpected_method", method=method.name, channel=self.number)

    def _on_return(self, method: spec.Basic.Return, content: codec.Deliver) -> None:
        # The broker sends basic.return before the confirm of the same publish:
        # mark the oldest unconfirmed publish of that message id as returned.
        message_id = content.properties.message_id
        for pending in self._unconfirmed.values():
            if pending.message_id == message_id and pending.returned is None:
                pending.returned = Returned(method.reply_code or 0, method.reply_text or "")
                return
        log.warning("amqp.returned_unmatched", message_id=message_id, exchange=method.exchange)

    def _on_confirm(self, confirm: codec.Confirm) -> None:
        unconfirmed = self._unconfirmed
        if confirm.multiple:
            tags = []
            for tag in unconfirmed:  # in publish order: stop at the first one above
                if tag > confirm.delivery_tag:
                    break
                tags.append(tag)
        else:
            tags = [confirm.delivery_tag] if confirm.delivery_tag in unconfirmed else []
        for tag in tags:
            pending = unconfirmed.pop(tag)
            if pending.future.done():  # its publisher stopped waiting
                continue
            if pending.returned is not None:
                pending.future.set_exception(pending.returned)
            elif confirm.ack:
                pending.future.set_result(None)
            else:
                pending.future.set_exception(Nacked(f"broker nacked publish {tag}"))

    # ------------------------------------------------------------ ending

    def _check(self) -> None:
        if self.error is not None:
            # The same error each time, its traceback reset so that raising it
            # again and again does not grow one.
            raise self.error.with_traceback(None)

    def gone(self, error: AMQPError) -> None:
        """The channel ended: fail everything waiting on it and tell the callbacks."""
        if self.error is not None:
            return
        self.error = error
        self.conn.channels.pop(self.number, None)
        if self._waiter is not None and not self._waiter[1].done():
            self._waiter[1].set_exception(error)
        for pending in self._unconfirmed.values():
            if not pending.future.done():
                pending.future.set_exception(error)
        self._unconfirmed.clear()
        tell(self.close_callbacks, error)
