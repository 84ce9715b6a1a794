"""``leveret outbox``: run the relay, and look at what the outbox holds.

SQLAlchemy is an optional extra (``leveret[sql]``): it is imported when one
of these commands runs, not when the CLI starts. The database URL may hold a
password, so it never reaches the output as given: every line names it through
:func:`_where`.
"""

from __future__ import annotations

import contextlib
import functools
import signal
import sys
from collections.abc import Iterator
from datetime import timedelta
from types import FrameType, ModuleType
from typing import TYPE_CHECKING, Any

import click

from leveret import connection
from leveret.cli.base import F, main, one_line_errors, url_option
from leveret.errors import ConfigurationError

if TYPE_CHECKING:
    import sqlalchemy as sa


def _sqlalchemy() -> ModuleType:
    try:
        import sqlalchemy
    except ImportError as exc:
        raise ConfigurationError(
            f"the outbox needs SQLAlchemy: pip install 'leveret[sql]' ({exc})"
        ) from exc
    return sqlalchemy


def _outbox() -> ModuleType:
    _sqlalchemy()
    from leveret import outbox

    return outbox


@contextlib.contextmanager
def _engine(db: str) -> Iterator[sa.Engine]:
    """An engine on ``db``, disposed of (its pooled connections closed) afterwards."""
    sqlalchemy = _sqlalchemy()
    try:
        engine: sa.Engine = sqlalchemy.create_engine(db)
    except (sqlalchemy.exc.ArgumentError, ImportError) as exc:
        raise ConfigurationError(f"cannot use database URL {_where(db)}: {exc}") from exc
    try:
        yield engine
    finally:
        engine.dispose()


def _where(db: str) -> str:
    """The database URL with its password hidden, whatever its form."""
    sqlalchemy = _sqlalchemy()
    try:
        shown = sqlalchemy.engine.make_url(db).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        shown = db
    return connection.redact(shown)


def database_errors(func: F) -> F:
    """Turn database errors into one line on stderr (password hidden) and exit status 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        sqlalchemy = _sqlalchemy()
        try:
            return func(*args, **kwargs)
        except sqlalchemy.exc.SQLAlchemyError as exc:
            cause = exc.orig if isinstance(exc, sqlalchemy.exc.DBAPIError) else exc
            first = str(cause).strip().splitlines()[0] if str(cause).strip() else repr(cause)
            db = kwargs.get("db", "")
            click.echo(
                f"leveret: database error at {_where(db)}: {connection.redact(first)}", err=True
            )
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


def db_option(func: F) -> F:
    """Add ``--db`` (or ``LEVERET_OUTBOX_DB``) and ``--table``."""
    func = click.option(
        "--table",
        default="leveret_outbox",
        show_default=True,
        help="The outbox table's name.",
    )(func)
    return click.option(
        "--db",
        envvar="LEVERET_OUTBOX_DB",
        required=True,
        help="The application's database, as a SQLAlchemy URL (or LEVERET_OUTBOX_DB).",
    )(func)


@main.group("outbox")
def outbox_group() -> None:
    """Relay the transactional outbox to the broker, or show what it holds."""


@outbox_group.command("relay")
@db_option
@click.option("--batch", default=100, show_default=True, help="Most rows per pass.")
@click.option(
    "--poll-interval",
    default=0.5,
    show_default=True,
    help="Seconds between passes while the outbox is empty.",
)
@url_option
@one_line_errors
@database_errors
def relay(db: str, table: str, batch: int, poll_interval: float, url: str) -> None:
    """Publish the outbox's committed rows, in order, until SIGTERM or SIGINT.

    On PostgreSQL several relays may run at once; on SQLite, run one.
    """
    module = _outbox()
    with (
        _engine(db) as engine,
        module.Relay(engine, url, table=table, batch=batch, poll_interval=poll_interval) as r,
    ):

        def stop(_signum: int, _frame: FrameType | None) -> None:
            r.stop()  # the current pass finishes: its confirmed rows are marked

        before = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            r.run()
        finally:
            for sig, handler in before.items():
                signal.signal(sig, handler)


@outbox_group.command("status")
@db_option
@one_line_errors
@database_errors
def status(db: str, table: str) -> None:
    """Count unsent, sent and failing rows, and give the oldest unsent row's age."""
    with _engine(db) as engine:
        found = _outbox().status(engine, table=table)
    oldest = "-" if found.oldest_unsent is None else _age(found.oldest_unsent)
    click.echo(f"outbox {table} at {_where(db)}")
    click.echo(f"unsent         {found.unsent}")
    click.echo(f"sent           {found.sent}")
    click.echo(f"with errors    {found.with_errors}")
    click.echo(f"oldest unsent  {oldest}")


@outbox_group.command("purge")
@db_option
@click.option(
    "--older-than",
    "days",
    type=float,
    default=7.0,
    show_default=True,
    help="Delete rows sent more than this many days ago.",
)
@one_line_errors
@database_errors
def purge(db: str, table: str, days: float) -> None:
    """Delete old sent rows; unsent rows are never deleted."""
    with _engine(db) as engine:
        count = _outbox().purge(engine, timedelta(days=days), table=table)
    click.echo(f"purged {count} sent row(s) from {table}")


def _age(age: timedelta) -> str:
    seconds = age.total_seconds()
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"
