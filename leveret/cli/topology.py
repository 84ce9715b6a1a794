"""``leveret topology``: declare, show, and the least-privilege users."""

from __future__ import annotations

import json
import shlex
import subprocess
from typing import Any

import click

from leveret import admin, permissions
from leveret.cli.base import app_option, load_app, main, one_line_errors, url_option
from leveret.errors import ConfigurationError
from leveret.topology import Bind, DeclareExchange, DeclareQueue, Topology

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
