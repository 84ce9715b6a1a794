"""The relay: publish the outbox's unsent rows with confirms, then mark them sent."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from datetime import timedelta
from types import TracebackType
from typing import Any

import sqlalchemy as sa
import structlog

from leveret import connection
from leveret.errors import BrokerUnavailable, ConfigurationError, Unroutable
from leveret.outbox.table import DEFAULT_TABLE, MAX_ERROR_LENGTH, _now, _table, envelope_of
from leveret.publisher.aio import AsyncPublisher
from leveret.publisher.core import RECONNECT_TIMEOUT

log = structlog.get_logger(__name__)


class Relay:
    """Publish the outbox's committed rows, in id order, and mark them sent.

    Each pass takes up to ``batch`` unsent rows that are due, publishes them
    with their confirms pipelined, then marks the confirmed ones sent and
    records the error of the others, which are retried after
    ``backoff * 2 ** (attempts - 1)`` seconds (at most ``max_backoff``).

    Args:
        engine: the application's database, an engine or a URL.
        urls: the broker URL, or several (a cluster's nodes).
        table: the outbox table, or its name.
        batch: most rows per pass.
        poll_interval: seconds between passes while the outbox is empty.
        backoff: seconds before a failed row's first retry.
        max_backoff: the longest wait between a failing row's attempts.
        app_id: the ``app_id`` property of every message.
        reconnect_timeout: seconds a pass keeps trying to reach the broker.
    """

    def __init__(
        self,
        engine: sa.Engine | str,
        urls: str | Sequence[str],
        *,
        table: sa.Table | str = DEFAULT_TABLE,
        batch: int = 100,
        poll_interval: float = 0.5,
        backoff: float = 1.0,
        max_backoff: float = 300.0,
        app_id: str | None = None,
        reconnect_timeout: float = RECONNECT_TIMEOUT,
    ) -> None:
        if batch < 1:
            raise ConfigurationError(f"batch must be at least 1, got {batch}")
        self._owns_engine = isinstance(engine, str)
        self.engine = sa.create_engine(engine) if isinstance(engine, str) else engine
        self.table = _table(table)
        self.batch = batch
        self.poll_interval = poll_interval
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._publisher = AsyncPublisher(urls, app_id=app_id, reconnect_timeout=reconnect_timeout)
        # SQLite has no row locks: one relay per file, and no transaction held
        # open while publishing (it would block the application's writes).
        self._locks_rows = self.engine.dialect.name != "sqlite"
        self._loop = asyncio.new_event_loop()
        self._stopping = False
        self._wake: asyncio.Event | None = None

    def __enter__(self) -> Relay:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def where(self) -> str:
        """The database and table, password hidden, for messages."""
        url = self.engine.url.render_as_string(hide_password=True)
        return f"{self.table.fullname} at {connection.redact(url)}"

    def run_once(self) -> int:
        """Make one pass: publish the due unsent rows (up to ``batch``) and mark them.

        Returns:
            The number of rows published and marked sent.

        Raises:
            BrokerUnavailable: the broker stayed unreachable; the rows it held
                back are left as they were, those confirmed before are marked.
        """
        return self._loop.run_until_complete(self._pass())[1]

    def run(self) -> None:
        """Relay until :meth:`stop`: a pass, then another at once while the backlog
        fills whole batches, else after ``poll_interval``.

        A broker or database that cannot be reached is logged and tried again
        with a growing wait; other errors end the run.

        Raises:
            ConfigurationError: the outbox table does not exist.
        """
        if not sa.inspect(self.engine).has_table(self.table.name, schema=self.table.schema):
            raise ConfigurationError(
                f"no outbox table {self.where}; create it with leveret.outbox.create_table "
                "or your migrations"
            )
        log.info("outbox.relay_started", table=self.where, broker=self._publisher.where)
        self._loop.run_until_complete(self._forever())
        log.info("outbox.relay_stopped", table=self.where)

    def stop(self) -> None:
        """Stop :meth:`run` after the current pass (safe from a signal handler or a thread)."""
        self._stopping = True
        wake = self._wake
        if wake is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(wake.set)

    def close(self) -> None:
        """Close the broker connection (and the engine, if the relay made it)."""
        if self._loop.is_closed():
            return
        self._loop.run_until_complete(self._publisher.close())
        self._loop.close()
        if self._owns_engine:
            self.engine.dispose()

    async def _forever(self) -> None:
        self._wake = asyncio.Event()
        failures = 0
        while not self._stopping:
            try:
                taken, _sent = await self._pass()
                failures = 0
                pause = 0.0 if taken == self.batch else self.poll_interval
            except (BrokerUnavailable, sa.exc.OperationalError) as exc:
                failures += 1
                pause = min(self.poll_interval * 2**failures, 30.0)
                log.warning(
                    "outbox.unavailable", error=_describe(exc).splitlines()[0], retry_in=pause
                )
            if pause and not self._stopping:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), pause)

    async def _pass(self) -> tuple[int, int]:
        """One pass; returns the number of rows taken and the number sent."""
        t = self.table
        now = _now()
        due = (
            sa.select(t)
            .where(t.c.sent_at.is_(None))
            .where(sa.or_(t.c.next_attempt_at.is_(None), t.c.next_attempt_at <= now))
            .order_by(t.c.id)
            .limit(self.batch)
        )
        with self.engine.connect() as conn:
            if self._locks_rows:
                # The row locks last until the batch is marked, so another relay
                # skips these rows instead of publishing them too.
                with conn.begin():
                    rows = conn.execute(due.with_for_update(skip_locked=True)).all()
                    results = await self._publish(rows)
                    self._record(conn, rows, results)
            else:
                rows = conn.execute(due).all()
                conn.rollback()
                results = await self._publish(rows)
                with conn.begin():
                    self._record(conn, rows, results)
        # Logged once the marks are committed: "sent" means it will not go again.
        return len(rows), self._log(rows, results)

    async def _publish(self, rows: Sequence[Any]) -> list[BaseException | None]:
        async def one(row: Any) -> None:
            await self._publisher.send(envelope_of(row))

        # Sent in id order on one channel, their confirms awaited together.
        results = await asyncio.gather(*(one(row) for row in rows), return_exceptions=True)
        # A missing exchange, a refused write or a nack closes the channel, and
        # every message in flight on it fails with the same error, naming its own
        # exchange. Publish those again one at a time, so that each row gets its
        # own outcome and only the culprit is held back.
        suspects = [
            i
            for i, error in enumerate(results)
            if error is not None and not isinstance(error, Unroutable | BrokerUnavailable)
        ]
        if len(suspects) > 1:
            for i in suspects:
                try:
                    await one(rows[i])
                    results[i] = None
                except Exception as exc:
                    results[i] = exc
        return results

    def _record(
        self, conn: sa.Connection, rows: Sequence[Any], results: Sequence[BaseException | None]
    ) -> None:
        t = self.table
        now = _now()
        sent = [row.id for row, error in zip(rows, results, strict=True) if error is None]
        if sent:
            conn.execute(
                sa.update(t)
                .where(t.c.id.in_(sent))
                .values(sent_at=now, attempts=t.c.attempts + 1, next_attempt_at=None)
            )
        failed = [
            {
                "b_id": row.id,
                "b_attempts": row.attempts + 1,
                "b_error": _describe(error)[:MAX_ERROR_LENGTH],
                "b_next": now + timedelta(seconds=self._wait(row.attempts + 1)),
            }
            for row, error in zip(rows, results, strict=True)
            # The broker was unreachable: not this row's fault, so not an attempt.
            if error is not None and not isinstance(error, BrokerUnavailable)
        ]
        if failed:
            conn.execute(
                sa.update(t)
                .where(t.c.id == sa.bindparam("b_id"))
                .values(
                    attempts=sa.bindparam("b_attempts"),
                    last_error=sa.bindparam("b_error"),
                    next_attempt_at=sa.bindparam("b_next"),
                ),
                failed,
            )

    def _log(self, rows: Sequence[Any], results: Sequence[BaseException | None]) -> int:
        """Log each row's outcome; return the number sent, or raise BrokerUnavailable."""
        sent = 0
        unavailable: BrokerUnavailable | None = None
        for row, error in zip(rows, results, strict=True):
            where = {
                "row": row.id,
                "message_id": row.message_id,
                "type": row.type,
                "exchange": row.exchange,
                "routing_key": row.routing_key,
            }
            if error is None:
                sent += 1
                log.info("outbox.sent", **where)
            elif isinstance(error, BrokerUnavailable):
                unavailable = error
            else:
                log.warning(
                    "outbox.publish_failed",
                    **where,
                    attempts=row.attempts + 1,
                    error=_describe(error),
                    retry_in=self._wait(row.attempts + 1),
                )
        if unavailable is not None:
            raise unavailable
        return sent

    def _wait(self, attempts: int) -> float:
        return float(min(self.backoff * 2 ** (attempts - 1), self.max_backoff))


def _describe(error: BaseException) -> str:
    return connection.redact(f"{type(error).__name__}: {error}")
