"""Running things: ``demo``, ``publish``, ``worker``, ``conformance``."""

from __future__ import annotations

import asyncio
import os
import sys

import click

from leveret import connection
from leveret.cli.base import (
    DEFAULT_APP,
    app_option,
    load_app,
    main,
    one_line_errors,
    table,
    url_option,
)
from leveret.consumers import Worker
from leveret.consumers.worker import freeze_heap
from leveret.health import STALL_AFTER

# --- demo ---------------------------------------------------------------------


@main.command()
@url_option
@one_line_errors
def demo(url: str) -> None:
    """Run the demo pipeline: topology, worker, a batch of tasks, and where each ended."""
    from leveret import demo as demo_module

    click.echo(f"Running the demo pipeline against {connection.describe(url)} ...", err=True)
    rows = asyncio.run(demo_module.run(url))
    click.echo(
        table(
            ["message id", "type", "expected", "ended"],
            [[r["id"], r["type"], r["expected"], r["ended"]] for r in rows],
        )
    )
    click.echo(
        f"\nThe topology and the dead-lettered message are still there:\n"
        f"  leveret queues\n  leveret dlq list {demo_module.QUEUE}"
    )


# --- publish and worker ---------------------------------------------------------


@main.command()
@click.argument("message_type")
@click.option("--version", "version", type=int, required=True, help="Schema version.")
@click.option("--json", "payload", help="The payload as JSON (default: read from stdin).")
@click.option("--exchange", help="Exchange (default: the message type's).")
@click.option("--routing-key", help="Routing key (default: the message type's).")
@click.option("--correlation-id", help="Correlation id to set.")
@url_option
@app_option
@one_line_errors
def publish(
    message_type: str,
    version: int,
    payload: str | None,
    exchange: str | None,
    routing_key: str | None,
    correlation_id: str | None,
    url: str,
    app_target: str,
) -> None:
    """Validate a payload and publish it with confirms; prints the message id."""
    from leveret.publisher import Publisher

    model = load_app(app_target).model(message_type, version)
    raw = payload if payload is not None else sys.stdin.read()
    # The same one-pass parse and validation as a consumer's, with the same errors.
    message = model.from_json(raw.encode())
    with Publisher(url) as publisher:
        message_id = publisher.publish(
            message, exchange=exchange, routing_key=routing_key, correlation_id=correlation_id
        )
    click.echo(message_id)


@main.command()
@click.argument("app_target", metavar="MODULE:APP", envvar="LEVERET_APP", default=DEFAULT_APP)
@click.option("--queue", "queues", multiple=True, help="Consume only this queue (repeatable).")
@click.option("--concurrency", default=8, show_default=True, help="Handlers running at once.")
@click.option("--prefetch", type=int, help="Unacked messages in flight (default: concurrency).")
@click.option(
    "--grace", default=30.0, show_default=True, help="Seconds to finish in-flight work on SIGTERM."
)
@click.option("--health-file", type=click.Path(dir_okay=False), help="File touched while live.")
@click.option(
    "--http-port",
    type=click.IntRange(0, 65535),
    envvar="LEVERET_HTTP_PORT",
    help="Serve /livez, /readyz and /metrics on this port.",
)
@click.option(
    "--http-host",
    default="127.0.0.1",
    show_default=True,
    envvar="LEVERET_HTTP_HOST",
    help="Address for --http-port (0.0.0.0 in a container).",
)
@click.option(
    "--stall-after",
    default=STALL_AFTER,
    show_default=True,
    help="Seconds with messages waiting and none settled before the probes fail.",
)
@url_option
@one_line_errors
def worker(
    app_target: str,
    queues: tuple[str, ...],
    concurrency: int,
    prefetch: int | None,
    grace: float,
    health_file: str | None,
    http_port: int | None,
    http_host: str,
    stall_after: float,
    url: str,
) -> None:
    """Run the handlers of MODULE:APP until SIGTERM or SIGINT."""
    sys.path.insert(0, os.getcwd())
    app = load_app(app_target)
    w = Worker(
        app,
        url,
        queues=queues or None,
        concurrency=concurrency,
        prefetch=prefetch,
        grace=grace,
        health_file=health_file,
        http_port=http_port,
        http_host=http_host,
        stall_after=stall_after,
    )
    freeze_heap()
    asyncio.run(w.run(install_signal_handlers=True))
    # A sync handler stuck past its timeout keeps a thread busy; it must not
    # hold the process after a clean shutdown.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


# --- conformance ----------------------------------------------------------------


@main.command(context_settings={"ignore_unknown_options": True})
@click.option(
    "--queue", required=True, help="A queue name for the battery (declared, then deleted)."
)
@click.option("--timeout", default=30.0, show_default=True, help="Seconds each check may wait.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@url_option
@one_line_errors
def conformance(queue: str, timeout: float, command: tuple[str, ...], url: str) -> None:
    """Hold a consumer to the contract: leveret conformance --queue Q -- COMMAND...

    COMMAND is started with LEVERET_URL and LEVERET_QUEUE set, driven through
    success, retries, dead letters, bad input, SIGKILL and SIGTERM, and judged
    by message id. Exits 1 if any check fails.
    """
    from leveret.conformance import battery

    checks = battery.run(url, queue, command, timeout)
    click.echo(
        table(
            ["check", "result", "detail"],
            [[c.name, "pass" if c.passed else "FAIL", c.detail] for c in checks],
        )
    )
    sys.exit(0 if all(c.passed for c in checks) else 1)
