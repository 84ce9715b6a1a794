"""The outbox table, and writing to it in the caller's transaction: add, purge, status."""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy import orm

from leveret import connection, tracing, wire
from leveret.errors import ConfigurationError
from leveret.messages import Message
from leveret.publisher.core import DEFAULT_MAX_SIZE, PublisherCore

log = structlog.get_logger(__name__)

DEFAULT_TABLE = "leveret_outbox"

MAX_ERROR_LENGTH = 2000
"""Characters of a publish error kept in ``last_error``."""


@functools.cache
def _envelopes(max_size: int) -> PublisherCore:
    # add() builds envelopes with the publishers' own rules; the URL is never used.
    return PublisherCore(connection.DEFAULT_URL, max_size=max_size)


def outbox_table(
    metadata: sa.MetaData, name: str = DEFAULT_TABLE, *, schema: str | None = None
) -> sa.Table:
    """The outbox table on ``metadata``: pass your own to include it in Alembic.

    Args:
        metadata: the ``MetaData`` the table is defined on (your models' one, for
            ``alembic revision --autogenerate``).
        name: the table's name.
        schema: the schema it lives in (PostgreSQL), or None for the default.

    Returns:
        The table; give it (or its name) to :func:`add` and :class:`Relay`.
    """
    table = sa.Table(
        name,
        metadata,
        # BIGINT on PostgreSQL; SQLite only autoincrements an INTEGER primary key.
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
        sa.Column("message_id", sa.String(255), nullable=False, unique=True),
        sa.Column("type", sa.String(255), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("exchange", sa.String(255), nullable=False),
        sa.Column("routing_key", sa.String(255), nullable=False),
        sa.Column("body", sa.Text, nullable=False),  # the UTF-8 JSON text, as sent
        sa.Column("headers", sa.JSON, nullable=False),
        sa.Column("correlation_id", sa.String(255)),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column("sent_at", sa.DateTime(timezone=True)),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_error", sa.Text),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True)),
        schema=schema,
    )
    # The relay's query: unsent rows in id order. Partial, so it stays as small
    # as the backlog however many sent rows are kept.
    unsent = table.c.sent_at.is_(None)
    sa.Index(f"ix_{name}_unsent", table.c.id, postgresql_where=unsent, sqlite_where=unsent)
    return table


@functools.cache
def _named(name: str) -> sa.Table:
    return outbox_table(sa.MetaData(), name)


def _table(table: sa.Table | str) -> sa.Table:
    return _named(table) if isinstance(table, str) else table


def create_table(engine: sa.Engine, table: sa.Table | str = DEFAULT_TABLE) -> sa.Table:
    """Create the outbox table (and its index) if it does not exist.

    For applications without migrations; with Alembic, define it on your
    metadata with :func:`outbox_table` instead.
    """
    found = _table(table)
    found.create(engine, checkfirst=True)
    return found


def add(
    conn: sa.Connection | orm.Session,
    message: Message,
    *,
    exchange: str | None = None,
    routing_key: str | None = None,
    correlation_id: str | None = None,
    headers: Mapping[str, Any] | None = None,
    message_id: str | None = None,
    table: sa.Table | str = DEFAULT_TABLE,
    max_size: int = DEFAULT_MAX_SIZE,
) -> str:
    """Add a message to the outbox, in the caller's transaction.

    The row is published by a :class:`Relay` once the transaction commits, and
    never if it rolls back. Nothing here touches the broker.

    Args:
        conn: a SQLAlchemy ``Connection`` or ORM ``Session`` inside the
            transaction that writes the application's own rows.
        message: the message, a validated model instance.
        exchange: overrides the message class's exchange.
        routing_key: overrides the message class's routing key.
        correlation_id: ties the message to a request or a job.
        headers: extra application headers; their values must be JSON values.
        message_id: the id to use (a new UUID by default).
        table: the outbox table, or its name.
        max_size: largest body in bytes, as the publisher's.

    Returns:
        The message id, which the relay publishes it under.

    Raises:
        ConfigurationError: no exchange or routing key; headers that are not JSON.
        MessageTooLarge: the body exceeds ``max_size``.
    """
    env = _envelopes(max_size).envelope(
        message,
        exchange=exchange,
        routing_key=routing_key,
        message_id=message_id,
        correlation_id=correlation_id,
        headers=headers,
    )
    # The producer span is this write: the row keeps the traceparent the
    # relay sends, whenever that is.
    with tracing.sending(env.span):
        try:
            json.dumps(env.headers)
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"outbox headers must be JSON values: {exc}") from exc
        conn.execute(
            sa.insert(_table(table)).values(
                message_id=env.message_id,
                type=env.type,
                version=message.message_version,
                exchange=env.exchange,
                routing_key=env.routing_key,
                body=env.body.decode(),
                headers=env.headers,
                correlation_id=env.correlation_id,
                # The AMQP timestamp is taken from it (whole seconds), as the
                # publisher takes it from the clock when publish() is called.
                created_at=_now(),
                attempts=0,
            )
        )
    return env.message_id


def envelope_of(row: Any) -> wire.Envelope:
    """The envelope of an outbox row: what the publisher would have sent at ``add`` time."""
    return wire.Envelope(
        exchange=row.exchange,
        routing_key=row.routing_key,
        body=row.body.encode(),
        message_id=row.message_id,
        type=row.type,
        headers=dict(row.headers),
        timestamp=int(_aware(row.created_at).timestamp()),
        correlation_id=row.correlation_id,
    )


def purge(
    engine: sa.Engine, older_than: timedelta, *, table: sa.Table | str = DEFAULT_TABLE
) -> int:
    """Delete the rows sent more than ``older_than`` ago; unsent rows are never deleted.

    Returns:
        The number of rows deleted.
    """
    found = _table(table)
    cutoff = _now() - older_than
    with engine.begin() as conn:
        result = conn.execute(sa.delete(found).where(found.c.sent_at < cutoff))
    return int(result.rowcount)


@dataclass(frozen=True)
class Status:
    """What an outbox holds (``leveret outbox status``)."""

    unsent: int
    sent: int
    with_errors: int
    """Unsent rows whose last publish failed."""
    oldest_unsent: timedelta | None
    """The age of the oldest unsent row, or None when every row was sent."""


def status(engine: sa.Engine, *, table: sa.Table | str = DEFAULT_TABLE) -> Status:
    """Count the outbox's rows: unsent, sent, failing, and the oldest unsent one's age."""
    t = _table(table)
    unsent = t.c.sent_at.is_(None)
    query = sa.select(
        sa.func.count().filter(unsent),
        sa.func.count().filter(t.c.sent_at.is_not(None)),
        sa.func.count().filter(unsent & t.c.last_error.is_not(None)),
        sa.func.min(t.c.created_at).filter(unsent),
    )
    with engine.connect() as conn:
        row = conn.execute(query).one()
    oldest = None if row[3] is None else max(_now() - _aware(row[3]), timedelta(0))
    return Status(unsent=row[0], sent=row[1], with_errors=row[2], oldest_unsent=oldest)


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes; every time written here is UTC.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
