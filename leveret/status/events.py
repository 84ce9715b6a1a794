"""Job status events: what a consumer in any language reports about a task.

A *job* is one task, known by its message id. While it runs, its consumer
publishes ``leveret.job.status`` messages to the topic exchange
``leveret.status`` with the job id as routing key: ``started``, ``progress``
(a percent and a line of text), then ``succeeded`` (with a reference to the
result) or ``retrying`` (with the next attempt's time) or ``failed`` (with the
reason). A web app may publish ``queued`` when it enqueues the task. A status
store (:mod:`leveret.status.store`) records them; anyone else may bind a queue
for one job id to follow it live.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import Field

from leveret.messages import Message

EXCHANGE = "leveret.status"
"""The topic exchange of status events; the routing key is the job id."""

Timestamp = Annotated[
    str,
    Field(
        pattern=r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$",
        json_schema_extra={"format": "date-time"},
    ),
]
"""ISO 8601 with a time zone, e.g. ``2026-01-02T03:04:05.123+00:00`` (the contract's format)."""

State = Literal["queued", "started", "progress", "succeeded", "failed", "retrying"]
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed"})


class JobStatus(Message, type="leveret.job.status", version=1, exchange=EXCHANGE):
    """One step of a job: its state at ``at``, with what goes with that state."""

    job_id: str = Field(min_length=1, max_length=255)
    state: State
    at: Timestamp
    type: str | None = Field(default=None, max_length=255)
    attempt: int | None = Field(default=None, ge=1)
    percent: float | None = Field(default=None, ge=0, le=100)
    message: str | None = Field(default=None, max_length=1024)
    result: str | None = Field(default=None, max_length=2048)
    reason: str | None = Field(default=None, max_length=64)
    error: str | None = Field(default=None, max_length=1024)
    next_attempt_at: Timestamp | None = None


def timestamp(moment: datetime | None = None) -> str:
    """A time as the contract writes it: ISO 8601, UTC, milliseconds (default: now)."""
    return (moment or datetime.now(UTC)).astimezone(UTC).isoformat(timespec="milliseconds")


def parse(stamp: str) -> datetime:
    """Read a :data:`Timestamp` back (``Z`` or an offset), as an aware datetime."""
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))
