"""The ``leveret`` command line.

The only place that reads the environment (``LEVERET_URL``, ``LEVERET_APP``)
and configures logging. Every error is one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from leveret import admin, connection, dlq, logs
from leveret.consumers import App, Worker
from leveret.errors import ConfigurationError, LeveretError
from leveret.topology import Topology

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_APP = "leveret.demo:app"


def load_app(target: str) -> App:
    """Import ``module:attribute`` and return the :class:`App` it names.

    Raises:
        ConfigurationError: it cannot be imported or is not an App.
    """
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"cannot import {module_name!r}: {exc}") from exc
    found = getattr(module, attr or "app", None)
    if not isinstance(found, App):
        raise ConfigurationError(f"{target!r} is not a leveret App")
    return found


def _url_from_file(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """Take the URL from ``LEVERET_URL_FILE`` (a container secret) unless one was given."""
    path = os.environ.get("LEVERET_URL_FILE")
    if path and ctx.get_parameter_source(param.name or "url") == click.core.ParameterSource.DEFAULT:
        try:
            return Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise click.BadParameter(
                f"cannot read LEVERET_URL_FILE {path}: {exc.strerror}"
            ) from exc
    return value


def url_option(func: F) -> F:
    """Add ``--url`` (or ``LEVERET_URL``, or the file named by ``LEVERET_URL_FILE``)."""
    return click.option(
        "--url",
        envvar="LEVERET_URL",
        default=connection.DEFAULT_URL,
        show_default="amqp://guest:***@localhost:5672/",
        callback=_url_from_file,
        help="Broker URL, or several separated by commas (a cluster's nodes); "
        "LEVERET_URL_FILE names a file that holds it.",
    )(func)


def app_option(func: F) -> F:
    """Add ``--app`` (or ``LEVERET_APP``) to a command."""
    return click.option(
        "--app",
        "app_target",
        envvar="LEVERET_APP",
        default=DEFAULT_APP,
        show_default=True,
        help="The app, as module:attribute.",
    )(func)


def one_line_errors(func: F) -> F:
    """Turn leveret errors into one redacted line on stderr and exit status 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except LeveretError as exc:
            click.echo(f"leveret: {connection.redact(str(exc))}", err=True)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


@click.group()
@click.option("--log-level", default="INFO", show_default=True, help="Lowest level logged.")
@click.option(
    "--json-logs/--console-logs",
    default=None,
    help="Log format (default: JSON unless on a terminal).",
)
def main(log_level: str, json_logs: bool | None) -> None:
    """leveret: task pipelines on RabbitMQ that workers in any language can join."""
    logs.configure(json=json_logs, level=log_level)


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
        _table(
            ["message id", "type", "expected", "ended"],
            [[r["id"], r["type"], r["expected"], r["ended"]] for r in rows],
        )
    )
    click.echo(
        f"\nThe topology and the dead-lettered message are still there:\n"
        f"  leveret queues\n  leveret dlq list {demo_module.QUEUE}"
    )


# --- topology -----------------------------------------------------------------


@main.group()
def topology() -> None:
    """Declare or show the topology of an app."""


@topology.command("apply")
@url_option
@app_option
@one_line_errors
def topology_apply(url: str, app_target: str) -> None:
    """Declare every exchange, queue, retry tier and dead-letter queue (idempotent)."""
    app = load_app(app_target)
    count = admin.apply(url, app.topology)
    click.echo(f"topology applied: {len(app.topology.queues)} queue(s), {count} operations")


@topology.command("show")
@app_option
@one_line_errors
def topology_show(app_target: str) -> None:
    """Print what ``apply`` declares, without touching the broker."""
    click.echo(render_topology(load_app(app_target).topology))


@topology.command("users")
@click.option("--vhost", default="/", show_default=True, help="The vhost of the topology.")
@click.option("--prefix", default="leveret-", show_default=True, help="Prefix of the user names.")
@click.option("--apply", "apply_", is_flag=True, help="Set the permissions with rabbitmqctl.")
@app_option
@one_line_errors
def topology_users(vhost: str, prefix: str, apply_: bool, app_target: str) -> None:
    """Print (or set) a least-privilege RabbitMQ user per role: publisher, worker, admin.

    Users are created by the operator (`rabbitmqctl add_user NAME` asks for the
    password, which never passes through leveret); --apply sets the permissions.
    """
    import shlex
    import subprocess

    from leveret import permissions

    roles = permissions.roles(load_app(app_target).topology, prefix=prefix)
    commands = permissions.rabbitmqctl_commands(roles, vhost)
    for role, command in zip(roles, commands, strict=True):
        click.echo(f"# {role.user}: {role.purpose}")
        click.echo(f"#   rabbitmqctl add_user {role.user}   (asks for the password)")
        click.echo(shlex.join(command))
        if apply_:
            result = subprocess.run(command, capture_output=True, text=True, timeout=60)
            if result.returncode != 0:
                reason = (result.stderr or result.stdout).strip().splitlines()[-1:]
                raise ConfigurationError(f"rabbitmqctl failed for {role.user}: {' '.join(reason)}")


def render_topology(top: Topology) -> str:
    """A readable listing of a topology's declarations."""
    from leveret.topology import Bind, DeclareExchange, DeclareQueue

    lines = []
    for op in top.declarations():
        if isinstance(op, DeclareExchange):
            lines.append(f"exchange {op.name} ({op.type}){_args(op.arguments)}")
        elif isinstance(op, DeclareQueue):
            lines.append(f"queue    {op.name}{_args(op.arguments)}")
        elif isinstance(op, Bind):
            key = f" key={op.routing_key!r}" if op.routing_key else ""
            lines.append(f"bind     {op.exchange} -> {op.queue}{key}{_args(op.arguments or {})}")
    return "\n".join(lines)


def _args(arguments: dict[str, Any]) -> str:
    return "  " + json.dumps(arguments, sort_keys=True) if arguments else ""


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
@click.option("--health-file", type=click.Path(dir_okay=False), help="File touched while healthy.")
@url_option
@one_line_errors
def worker(
    app_target: str,
    queues: tuple[str, ...],
    concurrency: int,
    prefetch: int | None,
    grace: float,
    health_file: str | None,
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
    )
    asyncio.run(w.run(install_signal_handlers=True))
    # A sync handler stuck past its timeout keeps a thread busy; it must not
    # hold the process after a clean shutdown.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


@main.command()
@click.option("--file", "path", required=True, type=click.Path(dir_okay=False))
@click.option("--max-age", default=30.0, show_default=True, help="Seconds since the last touch.")
def health(path: str, max_age: float) -> None:
    """Exit 0 if a worker's health file is fresh (for container health checks)."""
    try:
        age = time.time() - Path(path).stat().st_mtime
    except FileNotFoundError:
        click.echo(f"unhealthy: {path} does not exist", err=True)
        sys.exit(1)
    if age > max_age:
        click.echo(f"unhealthy: {path} is {age:.0f}s old (max {max_age:.0f}s)", err=True)
        sys.exit(1)
    click.echo("healthy")


# --- schemas ------------------------------------------------------------------


@main.group("schemas")
def schemas_group() -> None:
    """Export the JSON Schema files and check versions for compatibility."""


@schemas_group.command("export")
@click.option(
    "--dir", "directory", default="schemas", show_default=True, type=click.Path(file_okay=False)
)
@click.option("--check", is_flag=True, help="Write nothing; fail if a file differs from its model.")
@app_option
@one_line_errors
def schemas_export(directory: str, check: bool, app_target: str) -> None:
    """Write one draft-07 JSON Schema file per message type and version."""
    from leveret import schemas

    models = load_app(app_target).models()
    if check:
        drift = schemas.drift(models, Path(directory))
        if drift:
            click.echo(
                "schema files out of date: " + ", ".join(drift) + "; run `leveret schemas export`",
                err=True,
            )
            sys.exit(1)
        click.echo(f"{len(models)} schema file(s) up to date")
        return
    for path in schemas.export(models, Path(directory)):
        click.echo(f"wrote {path}")


@schemas_group.command("check")
@click.option(
    "--dir", "directory", default="schemas", show_default=True, type=click.Path(file_okay=False)
)
@one_line_errors
def schemas_check(directory: str) -> None:
    """Tell whether each version of a type is backward compatible with the previous one."""
    from leveret import compatibility

    findings = compatibility.check(Path(directory))
    breaking = False
    for f in findings:
        if f.problems:
            breaking = True
            click.echo(f"{f.type} v{f.old_version} -> v{f.new_version}: BREAKING")
            for problem in f.problems:
                click.echo(f"  - {problem}")
        else:
            click.echo(f"{f.type} v{f.old_version} -> v{f.new_version}: compatible")
    if not findings:
        click.echo("no type has more than one version")
    sys.exit(1 if breaking else 0)


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
        _table(
            ["check", "result", "detail"],
            [[c.name, "pass" if c.passed else "FAIL", c.detail] for c in checks],
        )
    )
    sys.exit(0 if all(c.passed for c in checks) else 1)


# --- queues and dead letters ------------------------------------------------------


@main.command()
@url_option
@app_option
@one_line_errors
def queues(url: str, app_target: str) -> None:
    """Depth and consumers of every work, retry and dead-letter queue."""
    rows = admin.stats(url, load_app(app_target).topology)
    click.echo(
        _table(
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
        _table(
            ["message id", "type", "attempts", "reason", "last error", "when"],
            [
                [
                    str(d.message_id),
                    f"{d.type} v{d.version}",
                    str(d.attempts),
                    d.reason,
                    _short(d.error),
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


def _short(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(line.rstrip() for line in lines)


if __name__ == "__main__":
    main()
