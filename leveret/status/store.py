"""The job status store: one row per job, built from its status events.

SQLite by default (a file), PostgreSQL through a URL; anything SQLAlchemy 2
speaks should do. The store is what ``GET /jobs/{id}`` reads::

    store = JobStore("sqlite:///jobs.db")
    store.get(job_id)   # {"job_id": ..., "state": "progress", "percent": 37.0, "steps": [...]}

Events may arrive twice (at least once) and out of order (a retry's events
race the last progress line): each event is applied once, by its message id,
and the job's state is the state of its latest event by time, a final state
(succeeded, failed) winning a tie. Every event is kept in the job's ``steps``
(the newest ``MAX_STEPS``), in time order.

A batch is a job whose first event says how many members it has
(``batch_size``). Each member's final event (``succeeded`` or ``failed``, with
``batch_id``) is counted once per member, in a second table; the batch's job
shows "37 of 100 done". When every member has ended, the batch closes, exactly
once: succeeded, or failed with the ids of the members that failed, and the
caller's ``on_close`` gets the :class:`Closed` batch (the status app publishes
its ``then`` message) inside the same transaction.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from leveret import connection
from leveret.status.events import TERMINAL, JobStatus, Then, parse, timestamp

MAX_FAILED_SHOWN = 20
"""Failed member ids named in a closed batch's error."""

MAX_STEPS = 200
"""Steps kept per job; older ones are dropped first."""

DEFAULT_TTL = timedelta(days=7)
"""How long a job's record is kept after its last event."""

DEFAULT_URL = "sqlite:///leveret-jobs.db"


def jobs_table(metadata: sa.MetaData, name: str = "leveret_jobs") -> sa.Table:
    """The jobs table on ``metadata`` (pass your own to include it in Alembic)."""
    return sa.Table(
        name,
        metadata,
        sa.Column("job_id", sa.String(255), primary_key=True),
        sa.Column("type", sa.String(255)),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("percent", sa.Float),
        sa.Column("message", sa.Text),
        sa.Column("result", sa.Text),
        sa.Column("reason", sa.String(64)),
        sa.Column("error", sa.Text),
        sa.Column("attempt", sa.Integer),
        sa.Column("next_attempt_at", sa.String(40)),
        sa.Column("steps", sa.Text, nullable=False),  # JSON list, oldest first
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, index=True),
        sa.Column("batch_size", sa.Integer),
        sa.Column("batch_done", sa.Integer),
        sa.Column("batch_failed", sa.Integer),
        sa.Column("batch_then", sa.Text),  # the Then message as JSON
        sa.Column("batch_closed_at", sa.DateTime(timezone=True)),
    )


def members_table(metadata: sa.MetaData, name: str = "leveret_jobs_members") -> sa.Table:
    """Each batch member's final state, once per member."""
    return sa.Table(
        name,
        metadata,
        sa.Column("batch_id", sa.String(255), primary_key=True),
        sa.Column("job_id", sa.String(255), primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
    )


@dataclass(frozen=True)
class Closed:
    """A batch whose members have all ended."""

    batch_id: str
    then: Then | None
    succeeded: int
    failed: list[str]


class JobStore:
    """Record job status events and read jobs back.

    Args:
        url: a SQLAlchemy database URL (``sqlite:///jobs.db``,
            ``postgresql+psycopg://user@host/db``), or an engine.
        table: the table's name.
        create: create the table if it does not exist.
    """

    def __init__(
        self,
        url: str | sa.Engine = DEFAULT_URL,
        *,
        table: str = "leveret_jobs",
        create: bool = True,
    ) -> None:
        self.engine = sa.create_engine(url) if isinstance(url, str) else url
        metadata = sa.MetaData()
        self.table = jobs_table(metadata, table)
        self.members = members_table(metadata, f"{table}_members")
        # SQLite has no row locks: one writer at a time in this process.
        self._lock = threading.Lock() if self.engine.dialect.name == "sqlite" else None
        if create:
            metadata.create_all(self.engine, checkfirst=True)

    def __repr__(self) -> str:
        return f"JobStore({connection.redact(str(self.engine.url))!r})"

    def apply(
        self, event: JobStatus, event_id: str, on_close: Callable[[Closed], None] | None = None
    ) -> bool:
        """Record one event; False if this event id was recorded already.

        ``on_close`` is called, inside the transaction, when this event closes a
        batch: if it raises, nothing of the event is recorded, and the event's
        redelivery closes the batch again (at least once).
        """
        if self._lock is None:
            return self._apply(event, event_id, on_close)
        with self._lock:
            return self._apply(event, event_id, on_close)

    def _apply(
        self, event: JobStatus, event_id: str, on_close: Callable[[Closed], None] | None
    ) -> bool:
        with self.engine.begin() as conn:
            recorded = self._record(conn, event, event_id)
            batch = None
            if event.batch_size is not None:
                batch = event.job_id
                then = event.then.model_dump_json() if event.then else None
                conn.execute(
                    sa.update(self.table)
                    .where(self.table.c.job_id == batch, self.table.c.batch_size.is_(None))
                    .values(batch_size=event.batch_size, batch_then=then)
                )
            if event.batch_id is not None and event.state in TERMINAL:
                batch = event.batch_id
                self._member(conn, batch, event.job_id, event.state)
            if batch is not None:
                self._count(conn, batch, on_close)
        return recorded

    def _record(self, conn: sa.Connection, event: JobStatus, event_id: str) -> bool:
        """Add the event to its job's row; False if it was there already."""
        t = self.table
        at = parse(event.at)
        row = conn.execute(sa.select(t).where(t.c.job_id == event.job_id).with_for_update()).first()
        if row is None:
            inserted = self._insert(conn, event, event_id, at)
            if inserted:
                return True
            row = conn.execute(
                sa.select(t).where(t.c.job_id == event.job_id).with_for_update()
            ).one()
        steps: list[dict[str, Any]] = json.loads(row.steps)
        if any(step["id"] == event_id for step in steps):
            return False
        steps.append(_step(event, event_id))
        steps.sort(key=lambda step: (parse(step["at"]), step["state"] in TERMINAL))
        latest = steps[-1]["id"] == event_id
        values: dict[str, Any] = {
            "steps": json.dumps(steps[-MAX_STEPS:]),
            "updated_at": max(_aware(row.updated_at), at),
            "type": row.type or event.type,
        }
        if latest:
            values |= _fields(event, row.percent)
        conn.execute(sa.update(t).where(t.c.job_id == event.job_id).values(**values))
        return True

    def _member(self, conn: sa.Connection, batch: str, job: str, state: str) -> None:
        """Record a member's final state (a replayed member may end again, differently)."""
        m = self.members
        found = conn.execute(
            sa.select(m.c.state).where(m.c.batch_id == batch, m.c.job_id == job)
        ).first()
        if found is None:
            values = {"batch_id": batch, "job_id": job, "state": state}
            if self._upsert(conn, m, values):
                return
        conn.execute(
            sa.update(m).where(m.c.batch_id == batch, m.c.job_id == job).values(state=state)
        )

    def _count(
        self, conn: sa.Connection, batch: str, on_close: Callable[[Closed], None] | None
    ) -> None:
        """Update a batch's counts; close it when every member has ended."""
        t, m = self.table, self.members
        row = conn.execute(sa.select(t).where(t.c.job_id == batch).with_for_update()).first()
        if row is None or row.batch_size is None or row.batch_closed_at is not None:
            return
        states = conn.execute(
            sa.select(m.c.state, m.c.job_id).where(m.c.batch_id == batch).order_by(m.c.job_id)
        ).all()
        failed = [job for state, job in states if state == "failed"]
        ended, size = len(states), row.batch_size
        text = f"{ended} of {size} done" + (f", {len(failed)} failed" if failed else "")
        values: dict[str, Any] = {
            "batch_done": ended - len(failed),
            "batch_failed": len(failed),
            "percent": 100.0 if size == 0 else round(100.0 * ended / size, 1),
            "message": text,
            "updated_at": datetime.now(UTC),
        }
        if ended >= size:
            now = datetime.now(UTC)
            close: dict[str, Any] = {"id": f"{batch}:closed", "at": timestamp(now), "message": text}
            if failed:
                shown = ", ".join(failed[:MAX_FAILED_SHOWN])
                more = len(failed) - MAX_FAILED_SHOWN
                error = f"{len(failed)} of {size} members failed: {shown}"
                error += f" and {more} more" if more > 0 else ""
                values |= {"state": "failed", "reason": "batch-members-failed", "error": error}
                close |= {"state": "failed", "reason": "batch-members-failed", "error": error}
            else:
                values |= {"state": "succeeded", "reason": None, "error": None}
                close["state"] = "succeeded"
            steps = [*json.loads(row.steps), close][-MAX_STEPS:]
            values |= {"batch_closed_at": now, "steps": json.dumps(steps)}
        conn.execute(sa.update(t).where(t.c.job_id == batch).values(**values))
        if "batch_closed_at" in values and on_close is not None:
            then = Then.model_validate_json(row.batch_then) if row.batch_then else None
            on_close(Closed(batch, then, ended - len(failed), failed))

    def _upsert(self, conn: sa.Connection, table: sa.Table, values: dict[str, Any]) -> bool:
        """Insert a row unless its key exists; whether it was inserted."""
        insert: Any
        if self.engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        elif self.engine.dialect.name == "sqlite":
            from sqlalchemy.dialects.sqlite import insert
        else:
            try:
                with conn.begin_nested():
                    conn.execute(sa.insert(table).values(**values))
            except sa.exc.IntegrityError:
                return False
            return True
        # RETURNING, not rowcount: psycopg reports -1 for ON CONFLICT DO NOTHING.
        statement = insert(table).values(**values).on_conflict_do_nothing()
        done = conn.execute(statement.returning(*table.primary_key.columns))
        return done.first() is not None

    def _insert(self, conn: sa.Connection, event: JobStatus, event_id: str, at: datetime) -> bool:
        """Insert the job's first row; False if another writer inserted it first."""
        values = {
            "job_id": event.job_id,
            "type": event.type,
            "steps": json.dumps([_step(event, event_id)]),
            "created_at": at,
            "updated_at": at,
            **_fields(event, None),
        }
        return self._upsert(conn, self.table, values)

    def get(self, job_id: str) -> dict[str, Any] | None:
        """The job as JSON-ready data, or None if no event of it was recorded."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(self.table).where(self.table.c.job_id == job_id)).first()
        if row is None:
            return None
        return {
            "job_id": row.job_id,
            "type": row.type,
            "state": row.state,
            "percent": row.percent,
            "message": row.message,
            "result": row.result,
            "reason": row.reason,
            "error": row.error,
            "attempt": row.attempt,
            "next_attempt_at": row.next_attempt_at,
            "steps": json.loads(row.steps),
            "created_at": timestamp(_aware(row.created_at)),
            "updated_at": timestamp(_aware(row.updated_at)),
            "batch": None
            if row.batch_size is None
            else {
                "size": row.batch_size,
                "succeeded": row.batch_done or 0,
                "failed": row.batch_failed or 0,
                "closed": row.batch_closed_at is not None,
            },
        }

    def expire(self, older_than: timedelta = DEFAULT_TTL) -> int:
        """Delete the jobs whose last event is older than ``older_than``; how many."""
        cutoff = datetime.now(UTC) - older_than
        old = sa.select(self.table.c.job_id).where(self.table.c.updated_at < cutoff)
        with self.engine.begin() as conn:
            conn.execute(sa.delete(self.members).where(self.members.c.batch_id.in_(old)))
            done = conn.execute(sa.delete(self.table).where(self.table.c.updated_at < cutoff))
        return int(done.rowcount)

    def close(self) -> None:
        self.engine.dispose()


def _step(event: JobStatus, event_id: str) -> dict[str, Any]:
    step: dict[str, Any] = {"id": event_id, "at": event.at, "state": event.state}
    for name in ("attempt", "percent", "message", "result", "reason", "error", "next_attempt_at"):
        value = getattr(event, name)
        if value is not None:
            step[name] = value
    return step


def _fields(event: JobStatus, percent: float | None) -> dict[str, Any]:
    """The job's columns after ``event``, its latest."""
    if event.percent is not None:
        percent = event.percent
    elif event.state == "succeeded":
        percent = 100.0
    return {
        "state": event.state,
        "percent": percent,
        "message": event.message,
        "result": event.result,
        "reason": event.reason,
        "error": event.error,
        "attempt": event.attempt,
        "next_attempt_at": event.next_attempt_at,
    }


def _aware(moment: datetime) -> datetime:
    """SQLite gives back naive datetimes: they were written in UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
