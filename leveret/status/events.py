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

from leveret.messages import Message, Model

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

BATCH_TYPE = "leveret.batch"
"""The ``type`` of a batch's own job record."""


class Then(Model):
    """A message to publish once every member of a batch finished, as it goes on the wire."""

    exchange: str = Field(max_length=255)
    routing_key: str = Field(max_length=255)
    type: str = Field(min_length=1, max_length=255)
    version: int = Field(ge=1)
    message_id: str = Field(min_length=1, max_length=255)
    body: str = Field(max_length=65536, description="the message's JSON body, as text")


class JobStatus(Message, type="leveret.job.status", version=1, exchange=EXCHANGE):
    """One step of a job: its state at ``at``, with what goes with that state.

    A batch is a job too: its first event carries ``batch_size`` (and ``then``,
    the message to publish when every member finished); each member's events
    carry ``batch_id``, the batch's job id.
    """

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
    batch_id: str | None = Field(default=None, max_length=255)
    batch_size: int | None = Field(default=None, ge=0)
    then: Then | None = None


def timestamp(moment: datetime | None = None) -> str:
    """A time as ISO 8601, UTC, to the microsecond (default: now).

    Microseconds, not the failure headers' milliseconds: the store orders a
    job's events by time, and one worker's events follow each other within a
    millisecond.
    """
    return (moment or datetime.now(UTC)).astimezone(UTC).isoformat(timespec="microseconds")


def parse(stamp: str) -> datetime:
    """Read a :data:`Timestamp` back (``Z`` or an offset), as an aware datetime."""
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))
