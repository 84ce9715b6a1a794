"""SQLStore: idempotency keys as rows of a table, on SQLite or PostgreSQL."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from leveret.errors import ConfigurationError
from leveret.idempotency.store import MAX_KEY_LENGTH, Claim, aware, now

DEFAULT_TABLE = "leveret_idempotency"


def idempotency_table(
    metadata: sa.MetaData, name: str = DEFAULT_TABLE, *, schema: str | None = None
) -> sa.Table:
    """The idempotency table on ``metadata``: pass your own to include it in Alembic.

    ``expires_at`` is when a row may be deleted: ``ttl`` after it was done, or
    ``ttl`` after the lease of a caller that never finished.
    """
    return sa.Table(
        name,
        metadata,
        sa.Column("key", sa.String(MAX_KEY_LENGTH), primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),  # running, done
        sa.Column("owner", sa.String(255), nullable=False),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=False),
        sa.Column("result", sa.Text),  # JSON text
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False, index=True),
        schema=schema,
    )


class SQLStore:
    """Keys as rows of a table, on SQLite or PostgreSQL.

    Each operation is one short transaction: an insert that does nothing on a
    conflict, or an update conditioned on the row's state, owner and lease, so
    two callers racing on one key cannot both take it. Lease times come from
    the workers' clocks: keep them in sync (NTP) and the lease well above any skew.

    Args:
        engine: a SQLAlchemy engine (``sqlite:///app.db``,
            ``postgresql+psycopg://user@host/db``).
        table: the table's name, or a table from :func:`idempotency_table`.
        create: create the table if it does not exist.

    Raises:
        ConfigurationError: a database other than SQLite or PostgreSQL.
    """

    def __init__(
        self, engine: sa.Engine, *, table: str | sa.Table = DEFAULT_TABLE, create: bool = True
    ) -> None:
        if engine.dialect.name not in ("sqlite", "postgresql"):
            raise ConfigurationError(
                f"SQLStore supports SQLite and PostgreSQL, not {engine.dialect.name}"
            )
        self.engine = engine
        self.table = idempotency_table(sa.MetaData(), table) if isinstance(table, str) else table
        if create:
            self.table.create(engine, checkfirst=True)

    def acquire(self, key: str, owner: str, lease: timedelta, ttl: timedelta) -> Claim:
        """Insert the key as running, or take over an expired one; else report it."""
        t, at = self.table, now()
        running = {
            "state": "running",
            "owner": owner,
            "lease_until": at + lease,
            "result": None,
            "finished_at": None,
            "expires_at": at + lease + ttl,
        }
        for _ in range(3):
            with self.engine.begin() as conn:
                # RETURNING, not rowcount: psycopg reports -1 for ON CONFLICT DO NOTHING.
                if conn.execute(self._insert_if_absent(key, running)).first() is not None:
                    return Claim("taken")
            # The WHERE is checked again after any lock wait: of two callers
            # taking over the same expired key, the second updates nothing.
            expired = ((t.c.state == "running") & (t.c.lease_until < at)) | (
                (t.c.state == "done") & (t.c.expires_at < at)
            )
            with self.engine.begin() as conn:
                takeover = t.update().where((t.c.key == key) & expired).values(**running)
                if conn.execute(takeover).rowcount == 1:
                    return Claim("taken")
                row = conn.execute(
                    sa.select(t.c.state, t.c.result, t.c.lease_until).where(t.c.key == key)
                ).first()
            if row is None:
                continue  # purged in between: insert again
            if row.state == "done":
                return Claim("done", result=row.result)
            return Claim("busy", until=aware(row.lease_until))
        return Claim("busy")

    def _insert_if_absent(self, key: str, values: dict[str, Any]) -> sa.Insert:
        if self.engine.dialect.name == "postgresql":
            pg = postgresql.insert(self.table).values(key=key, **values)
            return pg.on_conflict_do_nothing().returning(self.table.c.key)
        lite = sqlite.insert(self.table).values(key=key, **values)
        return lite.on_conflict_do_nothing().returning(self.table.c.key)

    def finish(self, key: str, owner: str, result: str, ttl: timedelta) -> bool:
        """Mark the key done, if ``owner`` still holds it (its lease may have run out)."""
        t, at = self.table, now()
        mine = (t.c.key == key) & (t.c.owner == owner) & (t.c.state == "running")
        done = {"state": "done", "result": result, "finished_at": at, "expires_at": at + ttl}
        with self.engine.begin() as conn:
            return bool(conn.execute(t.update().where(mine).values(**done)).rowcount == 1)

    def release(self, key: str, owner: str) -> bool:
        """Delete the running row if ``owner`` holds it."""
        t = self.table
        mine = (t.c.key == key) & (t.c.owner == owner) & (t.c.state == "running")
        with self.engine.begin() as conn:
            return bool(conn.execute(t.delete().where(mine)).rowcount == 1)

    def purge(self) -> int:
        """Delete the rows past ``expires_at``."""
        t = self.table
        with self.engine.begin() as conn:
            return int(conn.execute(t.delete().where(t.c.expires_at < now())).rowcount)
