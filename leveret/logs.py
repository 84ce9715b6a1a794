"""Logging setup for the CLI: structlog, readable on a terminal, JSON otherwise.

The library only calls ``structlog.get_logger``; configuring is the edge's job
(the CLI here, or the application that embeds leveret).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from leveret.connection import redact


def redact_urls(
    _logger: Any, _name: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """A structlog processor that removes passwords from any URL in a string value."""
    for key, value in event.items():
        if isinstance(value, str) and "://" in value:
            event[key] = redact(value)
    return event


def configure(*, json: bool | None = None, level: str = "INFO") -> None:
    """Configure structlog once, for the process, and route stdlib logging through it.

    Args:
        json: render JSON lines; by default, JSON unless stderr is a terminal.
        level: the lowest level logged.
    """
    if json is None:
        json = not sys.stderr.isatty()
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_urls,
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    # The AMQP clients log through the standard library; render their lines the
    # same way, so a JSON log stays JSON.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
            foreign_pre_chain=shared,
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Their connection and channel errors reach us as exceptions, which we
    # translate and log once with context; their own lines would say it twice.
    for noisy in ("pika", "aiormq", "aio_pika"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
