"""The export task: its message, its topology, and the worker's tracked handler.

The handler streams rows to a temporary file, a chunk at a time, reporting its
progress after each chunk; memory stays flat whatever the row count. The file
is renamed into place when complete, so a download never sees half a file. A
redelivered message writes the file again (same name, same content) but sends
its email once: the email is guarded by :class:`leveret.idempotency.Once`.
"""

from __future__ import annotations

import csv
import os
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
from pydantic import Field

from examples.webapp.settings import Settings
from leveret import App, Binding, Context, Exchange, Message, Queue, RetryPolicy, Topology
from leveret.idempotency import Once, SQLStore
from leveret.status import JobStatus, timestamp

EXPORT_TYPE = "reports.export"
COLUMNS = ("id", "customer", "amount", "created_at")


class ExportRequested(
    Message, type=EXPORT_TYPE, version=1, exchange="reports", routing_key="export"
):
    """Someone asked for an export of the report."""

    rows: int = Field(ge=1, le=5_000_000)
    format: Literal["csv"] = "csv"
    email: str = Field(default="you@example.com", max_length=254)
    fail: bool = Field(default=False, description="fail every attempt (to show a failure)")


def topology(settings: Settings) -> Topology:
    """The tasks' exchange and the export queue, with short retry tiers."""
    return Topology(
        exchanges=(Exchange(settings.exchange),),
        queues=(
            Queue(
                settings.queue,
                bindings=(Binding(settings.exchange, "export"),),
                retry=RetryPolicy(delays=settings.retry_delays, max_attempts=settings.max_attempts),
            ),
        ),
    )


def queued(job_id: str, at: str | None = None) -> JobStatus:
    """The ``queued`` event a web app publishes when it enqueues an export."""
    return JobStatus(
        job_id=job_id, state="queued", at=at or timestamp(), type=EXPORT_TYPE, message="queued"
    )


def build_app(settings: Settings) -> App:
    """The export worker's app."""
    settings.make_dirs()
    # JobStatus is listed so that `leveret schemas export` writes its schema
    # too: a web app in another language publishes the "queued" event.
    app = App(topology(settings), messages=[JobStatus])
    once = Once(
        SQLStore(sa.create_engine(settings.database_url)),
        ttl=timedelta(days=7),
        lease=timedelta(minutes=1),
    )

    @app.handler(ExportRequested, queue=settings.queue, track=True)
    def export(message: ExportRequested, ctx: Context) -> str:
        name = f"{ctx.message_id}.csv"

        def wrote(done: int) -> None:
            percent = round(100 * done / message.rows, 1)
            ctx.progress(percent, f"wrote {done:,} of {message.rows:,} rows")
            if message.fail:
                raise RuntimeError("the reports database went away (fail=true)")
            if done < message.rows:
                time.sleep(settings.chunk_pause)

        write_csv(settings.exports_dir / name, message.rows, settings.chunk_rows, wrote)
        url = f"/files/{name}"
        link = f"http://{settings.host}:{settings.port}{url}"
        once.run(ctx, "send-email", lambda: send_email(settings.mailbox_dir, message.email, link))
        ctx.progress(None, f"emailed the link to {message.email}")
        return url

    return app


def write_csv(path: Path, rows: int, chunk: int, wrote: Callable[[int], None]) -> None:
    """Write ``rows`` rows to ``path``, calling ``wrote(count)`` after each chunk.

    The rows go to a hidden temporary file beside ``path``, renamed over it
    once all are written; a failure (``wrote`` may raise) removes it. One chunk
    of rows is in memory at a time.
    """
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        with partial.open("w", newline="", encoding="utf-8") as out:
            writer = csv.writer(out)
            writer.writerow(COLUMNS)
            for start in range(0, rows, chunk):
                writer.writerows(report_rows(start, min(start + chunk, rows)))
                wrote(min(start + chunk, rows))
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def report_rows(start: int, stop: int) -> Iterator[tuple[int, str, str, str]]:
    """Rows ``start`` to ``stop`` of the report; a real app reads them from its database."""
    epoch = datetime(2025, 1, 1, tzinfo=UTC)
    for i in range(start, stop):
        created = epoch + timedelta(minutes=7 * i)
        yield (
            i + 1,
            f"customer-{i % 997:03d}",
            f"{(i * 7919) % 100_000 / 100:.2f}",
            created.isoformat(),
        )


def send_email(mailbox: Path, to: str, link: str) -> str:
    """ "Send" the export's email: write it to the mailbox folder. Returns its file name."""
    mail = EmailMessage()
    mail["From"] = "reports@example.com"
    mail["To"] = to
    mail["Subject"] = "Your export is ready"
    mail.set_content(f"Download it here: {link}\n", cte="8bit")  # readable as a file
    name = f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}.eml"
    partial = mailbox / f".{name}.part"
    partial.write_bytes(mail.as_bytes())
    os.replace(partial, mailbox / name)
    return name


def __getattr__(name: str) -> Any:
    # `leveret worker examples.webapp.tasks:app` (and `leveret schemas export`)
    # find the app here, built on first use from the environment's settings.
    if name == "app":
        return build_app(Settings.from_env())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
