"""``leveret queues`` and ``leveret dlq``: look at queues, act on dead letters."""

from __future__ import annotations

import click

from leveret import admin, dlq
from leveret.cli.base import app_option, load_app, main, one_line_errors, short, table, url_option

# --- queues and dead letters ------------------------------------------------------


@main.command()
@url_option
@app_option
@one_line_errors
def queues(url: str, app_target: str) -> None:
    """Depth and consumers of every work, retry and dead-letter queue."""
    rows = admin.stats(url, load_app(app_target).topology)
    click.echo(
        table(
            ["queue", "role", "messages", "consumers"],
            [
                [
                    r.name,
                    r.role,
                    str(r.messages) if r.exists else "missing",
                    str(r.consumers) if r.exists else "-",
                ]
                for r in rows
            ],
        )
    )


@main.group("dlq")
def dlq_group() -> None:
    """List, replay or purge a queue's dead-letter queue."""


@dlq_group.command("list")
@click.argument("queue")
@click.option("--limit", default=50, show_default=True, help="Most messages to show.")
@url_option
@one_line_errors
def dlq_list(queue: str, limit: int, url: str) -> None:
    """Show the messages in QUEUE's dead-letter queue (they stay there)."""
    letters = dlq.browse(url, queue, limit=limit)
    if not letters:
        click.echo(f"{queue}.dlq is empty")
        return
    click.echo(
        table(
            ["message id", "type", "attempts", "reason", "last error", "when"],
            [
                [
                    str(d.message_id),
                    f"{d.type} v{d.version}",
                    str(d.attempts),
                    d.reason,
                    short(d.error),
                    d.failed_at,
                ]
                for d in letters
            ],
        )
    )


@dlq_group.command("replay")
@click.argument("queue")
@click.option("--limit", type=int, help="Replay at most this many.")
@click.option("--id", "ids", multiple=True, help="Replay only this message id (repeatable).")
@url_option
@one_line_errors
def dlq_replay(queue: str, limit: int | None, ids: tuple[str, ...], url: str) -> None:
    """Send dead-lettered messages back to QUEUE with their retry count reset."""
    replayed = dlq.replay(url, queue, limit=limit, ids=ids)
    click.echo(f"replayed {len(replayed)} message(s) to {queue}")


@dlq_group.command("purge")
@click.argument("queue")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@url_option
@one_line_errors
def dlq_purge(queue: str, yes: bool, url: str) -> None:
    """Delete every message in QUEUE's dead-letter queue."""
    if not yes:
        click.confirm(f"Delete every message in {queue}.dlq?", abort=True)
    count = dlq.purge(url, queue)
    click.echo(f"purged {count} message(s) from {queue}.dlq")
