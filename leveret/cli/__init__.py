"""The ``leveret`` command line; each group of commands lives in its own module."""

from leveret.cli import dashboard, dlq, outbox, run, schemas, topology
from leveret.cli.base import load_app, main

__all__ = ["dashboard", "dlq", "load_app", "main", "outbox", "run", "schemas", "topology"]
