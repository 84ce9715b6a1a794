"""Once: the sync and async faces that run a side effect under a store's lease."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar, cast

import orjson
import structlog

from leveret.errors import ConfigurationError, Retry
from leveret.idempotency.store import MAX_KEY_LENGTH, Claim, Store

if TYPE_CHECKING:
    from leveret.consumers.context import Context

log = structlog.get_logger(__name__)
T = TypeVar("T")

DEFAULT_TTL = timedelta(days=7)
"""How long a done record is kept: duplicates within it are skipped."""

DEFAULT_LEASE = timedelta(minutes=5)
"""How long a caller holds a key while it runs the side effect."""

MAX_RESULT_SIZE = 64 * 1024
"""Bytes of a result's JSON kept for later callers."""


class InProgress(Retry):
    """Another worker holds the key's lease: retry the message later.

    Attributes:
        key: the idempotency key.
        until: when the other worker's lease expires, if the store knows.
    """

    def __init__(self, key: str, until: datetime | None) -> None:
        when = f" until {until.isoformat(timespec='seconds')}" if until else ""
        super().__init__(f"idempotency key {key!r} is held by another worker{when}")
        self.key = key
        self.until = until


class Once:
    """Runs a function once per key; sync (:meth:`run`) and async (:meth:`arun`) faces.

    Args:
        store: a :class:`SQLStore`, a :class:`RedisStore`, or another :class:`Store`.
        ttl: how long a done key is remembered.
        lease: how long a caller holds a key while it runs the function.

    Raises:
        ConfigurationError: a ttl or lease that is not positive.
    """

    def __init__(
        self, store: Store, *, ttl: timedelta = DEFAULT_TTL, lease: timedelta = DEFAULT_LEASE
    ) -> None:
        if ttl <= timedelta(0) or lease <= timedelta(0):
            raise ConfigurationError(f"ttl and lease must be positive, got {ttl} and {lease}")
        self.store = store
        self.ttl = ttl
        self.lease = lease

    def run(self, ctx: Context | str, step: str | None, func: Callable[[], T]) -> T:
        """Call ``func()`` unless this key already ran; from a sync handler.

        Args:
            ctx: the handler's context (its ``message_id`` is the key), or a key.
            step: names the side effect within the handler (``"send-email"``),
                or None when the handler has one.
            func: the side effect; its return value must be JSON (or None).

        Returns:
            What ``func`` returned, or, for a key already done, the stored
            result as JSON decodes it (a tuple comes back as a list).

        Raises:
            InProgress: another caller holds the key; the message is retried.
            ConfigurationError: called from an async handler; a key over 255
                characters; a result that is not JSON or over 64 KiB (the
                key is marked done all the same: the side effect happened).
        """
        _not_in_event_loop()
        key, owner = _key(ctx, step), _owner()
        claim = self.store.acquire(key, owner, self.lease, self.ttl)
        if claim.state != "taken":
            return cast(T, _seen(key, claim))
        try:
            result = func()
        except BaseException:  # KeyboardInterrupt and SystemExit, too
            self._release(key, owner)
            raise
        stored, problem = _encode(result)
        self._done(key, self.store.finish(key, owner, stored, self.ttl), problem)
        return result

    async def arun(
        self, ctx: Context | str, step: str | None, func: Callable[[], Awaitable[T]]
    ) -> T:
        """The same, from an async handler: ``await once.arun(ctx, "send", lambda: send())``.

        The store's calls run in a thread, off the event loop.
        """
        key, owner = _key(ctx, step), _owner()
        claim = await asyncio.to_thread(self.store.acquire, key, owner, self.lease, self.ttl)
        if claim.state != "taken":
            return cast(T, _seen(key, claim))
        try:
            result = await func()
        except BaseException:  # cancelled by the handler's timeout, too
            await asyncio.to_thread(self._release, key, owner)
            raise
        stored, problem = _encode(result)
        finished = await asyncio.to_thread(self.store.finish, key, owner, stored, self.ttl)
        self._done(key, finished, problem)
        return result

    def purge(self) -> int:
        """Delete the records that expired (done ``ttl`` ago; abandoned leases).

        Run it now and then (a cron job, a periodic task); Redis expires keys
        by itself and purges nothing here.

        Returns:
            The number of records deleted.
        """
        return self.store.purge()

    def _release(self, key: str, owner: str) -> None:
        # The function's own error is the one that matters: a release that
        # fails is logged, and the lease expires on its own.
        try:
            self.store.release(key, owner)
        except Exception as exc:
            log.warning("idempotency.release_failed", key=key, error=str(exc))
        else:
            log.info("idempotency.released", key=key)

    @staticmethod
    def _done(key: str, finished: bool, problem: str | None) -> None:
        if finished:
            log.info("idempotency.done", key=key)
        else:
            # Our lease ran out and another caller took the key (or a purge
            # dropped it): the side effect may have run twice. The lease is
            # too short for this function.
            log.warning("idempotency.lease_lost", key=key)
        if problem:
            raise ConfigurationError(f"idempotency key {key!r}: {problem}")


def _key(ctx: Context | str, step: str | None) -> str:
    message_id = ctx if isinstance(ctx, str) else ctx.message_id
    key = f"{message_id}:{step}" if step else message_id
    if not message_id or len(key) > MAX_KEY_LENGTH:
        raise ConfigurationError(f"an idempotency key is 1 to {MAX_KEY_LENGTH} characters: {key!r}")
    return key


def _owner() -> str:
    # Names the holder in the store, for whoever looks at a stuck lease.
    return f"{socket.gethostname()[:200]}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


def _seen(key: str, claim: Claim) -> Any:
    if claim.state == "busy":
        log.info("idempotency.busy", key=key, until=claim.until)
        raise InProgress(key, claim.until)
    log.info("idempotency.skipped", key=key)
    return orjson.loads(claim.result or "null")


def _encode(result: object) -> tuple[str, str | None]:
    """The result's JSON text to store, and what is wrong with it, if anything."""
    try:
        text = orjson.dumps(result)
    except TypeError as exc:
        return "null", f"the result is not JSON ({exc})"
    if len(text) > MAX_RESULT_SIZE:
        return "null", f"the result is {len(text)} bytes of JSON, over {MAX_RESULT_SIZE}"
    return text.decode(), None


def _not_in_event_loop() -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise ConfigurationError("in an async handler, use `await once.arun(...)`")
