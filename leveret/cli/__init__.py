"""The ``leveret`` command line; each group of commands lives in its own module."""

from leveret.cli import dlq, outbox, run, schemas, topology
from leveret.cli.base import load_app, main

__all__ = ["dlq", "load_app", "main", "outbox", "run", "schemas", "topology"]
