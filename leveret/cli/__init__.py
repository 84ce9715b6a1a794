"""The ``leveret`` command line; each group of commands lives in its own module.

A command's module is imported when the command runs (``leveret --help`` imports them
all to list them), so ``leveret worker`` loads neither the dashboard nor pika.
"""

from leveret.cli.base import load_app, main

# Which module defines each command: a new command is one line here.
main.lazy_commands.update(
    {
        "asyncapi": "leveret.cli.schemas",
        "check": "leveret.cli.dlq",
        "conformance": "leveret.cli.run",
        "dashboard": "leveret.cli.dashboard",
        "demo": "leveret.cli.run",
        "dlq": "leveret.cli.dlq",
        "health": "leveret.cli.health",
        "outbox": "leveret.cli.outbox",
        "publish": "leveret.cli.run",
        "queues": "leveret.cli.dlq",
        "schemas": "leveret.cli.schemas",
        "topology": "leveret.cli.topology",
        "worker": "leveret.cli.run",
    }
)

__all__ = ["load_app", "main"]
