"""``leveret queues``, ``check`` and ``dlq``: look at queues, act on dead letters."""

from __future__ import annotations

import sys

import click

from leveret import admin, checks, dlq
from leveret.cli.base import app_option, load_app, main, one_line_errors, short, table, url_option

# --- queues and dead letters ------------------------------------------------------


@main.command()
@click.option(
    "--prometheus",
    is_flag=True,
    help="Print Prometheus text exposition (for node_exporter's textfile collector).",
)
@url_option
@app_option
@one_line_errors
def queues(prometheus: bool, url: str, app_target: str) -> None:
    """Depth and consumers of every work, retry and dead-letter queue."""
    rows = admin.stats(url, load_app(app_target).topology)
    if prometheus:
        from leveret.metrics import render_queues

        click.echo(render_queues(rows).decode(), nl=False)
        return
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


@main.command()
@click.option(
    "--max-depth",
    default=1000,
    show_default=True,
    help="Alert when a work queue holds more messages than this.",
)
@click.option("--allow-dead-letters", is_flag=True, help="A non-empty DLQ is not a problem.")
@click.option(
    "--allow-no-consumer", is_flag=True, help="A queue without consumer is not a problem."
)
@click.option("--queue", "queues", multiple=True, help="Check only this queue (repeatable).")
@url_option
@app_option
@one_line_errors
def check(
    max_depth: int,
    allow_dead_letters: bool,
    allow_no_consumer: bool,
    queues: tuple[str, ...],
    url: str,
    app_target: str,
) -> None:
    """Exit 1 with a one-line reason when a queue needs a person (for cron or CI).

    A problem is a work queue deeper than --max-depth or without a consumer, a
    dead-letter queue that is not empty, or a queue that does not exist.
    """
    topology = load_app(app_target).topology
    for name in queues:
        topology.queue(name)  # an unknown queue is a configuration error
    limits = checks.Limits(max_depth, not allow_dead_letters, not allow_no_consumer)
    found = checks.problems(admin.stats(url, topology), limits, queues)
    if found:
        noun = "problem" if len(found) == 1 else "problems"
        click.echo(f"leveret check: {len(found)} {noun}: " + "; ".join(found), err=True)
        sys.exit(1)
    checked = len(queues) or len(topology.queues)
    click.echo(f"ok: {checked} queue(s) checked")


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
