"""Logging setup for the CLI: structlog, readable on a terminal, JSON otherwise.

The library only calls ``structlog.get_logger``; configuring is the edge's job
(the CLI here, or the application that embeds leveret).

A worker writes one line per message, so the JSON path is built for cost: the
event dict is rendered to bytes by orjson and written with one ``os.write``
(no text layer, no flush call), the timestamp reuses its formatted second, and
redaction looks only at string values that contain ``://``.
"""

from __future__ import annotations

import json as stdlib_json
import logging
import os
import sys
import time
from collections.abc import MutableMapping
from typing import IO, Any

import orjson
import structlog

from leveret.connection import redact


def redact_urls(
    _logger: Any, _name: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """A structlog processor that removes passwords from any URL in a string value.

    Only a string can hold a URL, and only one with ``://`` in it; every other
    value is passed over with a type check.
    """
    for key, value in event.items():
        if isinstance(value, str) and "://" in value:
            event[key] = redact(value)
    return event


class UtcStamper:
    """A structlog processor adding ``timestamp``: ISO 8601 UTC with microseconds and ``Z``.

    The same text as ``TimeStamper(fmt="iso", utc=True)``; the date and time up
    to the second are formatted once per second, not once per line.
    """

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(
        self, _logger: Any, _name: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        event["timestamp"] = f"{self._prefix}.{int((now - second) * 1e6):06d}Z"
        return event


def _fallback(value: Any) -> Any:
    return repr(value)


def render_json(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> bytes:
    """Render an event dict as one JSON line (bytes, newline included)."""
    try:
        return orjson.dumps(
            event,
            default=_fallback,
            option=orjson.OPT_NON_STR_KEYS | orjson.OPT_APPEND_NEWLINE,
        )
    except TypeError:  # an integer beyond 64 bits, say: orjson refuses, json does not
        return (stdlib_json.dumps(event, default=_fallback) + "\n").encode()


def _render_text(logger: Any, name: str, event: MutableMapping[str, Any]) -> str:
    # The stdlib handler adds its own newline and wants text.
    return render_json(logger, name, event)[:-1].decode()


class LineWriter:
    """A structlog logger that writes each rendered line with one ``os.write`` to a file.

    Every level method is the same method: the level is in the line already.
    """

    def __init__(self, file: IO[Any]) -> None:
        self._file = file
        try:
            self._fd: int | None = file.fileno()
        except (AttributeError, OSError, ValueError):  # pytest's capture, a StringIO
            self._fd = None

    def msg(self, message: bytes) -> None:
        """Write one line."""
        if self._fd is None:
            self._file.write(message.decode())
            self._file.flush()
            return
        view = memoryview(message)
        while view:
            view = view[os.write(self._fd, view) :]

    log = debug = info = warn = warning = msg
    err = error = critical = exception = fatal = failure = msg


def configure(*, json: bool | None = None, level: str = "INFO") -> None:
    """Configure structlog once, for the process, and route stdlib logging through it.

    Args:
        json: render JSON lines; by default, JSON unless stderr is a terminal.
        level: the lowest level logged.
    """
    if json is None:
        json = not sys.stderr.isatty()
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        UtcStamper(),
        redact_urls,
    ]
    if json:
        # Before a buffered text stream is bypassed, let it write what it holds.
        sys.stderr.flush()
        renderer: Any = render_json
        factory: Any = lambda *_: LineWriter(sys.stderr)  # noqa: E731
        text_renderer: Any = _render_text
    else:
        renderer = text_renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        factory = structlog.PrintLoggerFactory(sys.stderr)
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=factory,
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
                text_renderer,
            ],
            foreign_pre_chain=shared,
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # pika's connection and channel errors reach us as exceptions, which we
    # translate and log once with context; its own lines would say it twice.
    for noisy in ("pika",):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
