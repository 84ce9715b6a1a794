"""A click group whose commands are imported on first use.

Each command module registers its commands on the group when imported (``@main.command()``);
the group only knows which module holds which command name. ``leveret worker`` so imports the
worker's module and not the dashboard's, the outbox's or the admin commands' (with pika, which
a worker never uses), and a worker process stays smaller. ``leveret --help`` still lists every
command with its help line: listing them imports every module.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

import click


class LazyGroup(click.Group):
    """A :class:`click.Group` that imports a command's module when the command is looked up.

    Args:
        lazy_commands: command name -> the module that defines it on this group.
        **kwargs: what :class:`click.Group` takes.
    """

    def __init__(self, *args: Any, lazy_commands: Mapping[str, str] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.lazy_commands: dict[str, str] = dict(lazy_commands or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy_commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = self.lazy_commands.get(cmd_name)
        if module is not None and cmd_name not in self.commands:
            importlib.import_module(module)
            if cmd_name not in self.commands:
                # A wrong line in the table, not a user's typo: say so rather than
                # answer "No such command".
                raise RuntimeError(f"{module} does not define the command {cmd_name!r}")
        return super().get_command(ctx, cmd_name)
