"""The ``leveret`` command line: the group, and what every command shares.

The CLI is the only place that reads the environment (``LEVERET_URL``,
``LEVERET_URL_FILE``, ``LEVERET_APP``) and configures logging. Every error is one
line on stderr and a non-zero exit.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from leveret import connection, logs
from leveret.cli.lazy import LazyGroup
from leveret.consumers import App
from leveret.errors import ConfigurationError, LeveretError

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
        show_default=True,
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


@click.group(cls=LazyGroup)
@click.option("--log-level", default="INFO", show_default=True, help="Lowest level logged.")
@click.option(
    "--json-logs/--console-logs",
    default=None,
    help="Log format (default: JSON unless on a terminal).",
)
def main(log_level: str, json_logs: bool | None) -> None:
    """leveret: task pipelines on RabbitMQ that workers in any language can join."""
    logs.configure(json=json_logs, level=log_level)


def short(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(line.rstrip() for line in lines)
