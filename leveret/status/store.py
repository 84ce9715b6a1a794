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
"""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from leveret import connection
from leveret.status.events import TERMINAL, JobStatus, parse, timestamp

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
    )


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
        self.table = jobs_table(sa.MetaData(), table)
        # SQLite has no row locks: one writer at a time in this process.
        self._lock = threading.Lock() if self.engine.dialect.name == "sqlite" else None
        if create:
            self.table.create(self.engine, checkfirst=True)

    def __repr__(self) -> str:
        return f"JobStore({connection.redact(str(self.engine.url))!r})"

    def apply(self, event: JobStatus, event_id: str) -> bool:
        """Record one event; False if this event id was recorded already."""
        if self._lock is None:
            return self._apply(event, event_id)
        with self._lock:
            return self._apply(event, event_id)

    def _apply(self, event: JobStatus, event_id: str) -> bool:
        t = self.table
        at = parse(event.at)
        with self.engine.begin() as conn:
            row = conn.execute(
                sa.select(t).where(t.c.job_id == event.job_id).with_for_update()
            ).first()
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
        insert: Any
        if self.engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        elif self.engine.dialect.name == "sqlite":
            from sqlalchemy.dialects.sqlite import insert
        else:
            conn.execute(sa.insert(self.table).values(**values))
            return True
        done = conn.execute(insert(self.table).values(**values).on_conflict_do_nothing())
        return bool(done.rowcount)

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
        }

    def expire(self, older_than: timedelta = DEFAULT_TTL) -> int:
        """Delete the jobs whose last event is older than ``older_than``; how many."""
        cutoff = datetime.now(UTC) - older_than
        with self.engine.begin() as conn:
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
