"""``leveret health``: whether a worker is healthy, for container health checks.

A module of its own so that a check run every few seconds imports only the
standard library and click, not the worker.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import click

from leveret.cli.base import main


@main.command()
@click.option("--file", "path", type=click.Path(dir_okay=False), help="A worker's --health-file.")
@click.option("--max-age", default=30.0, show_default=True, help="Seconds since the last touch.")
@click.option("--url", "probe", help="A worker's probe, e.g. http://127.0.0.1:9100/livez.")
def health(path: str | None, max_age: float, probe: str | None) -> None:
    """Exit 0 if a worker is healthy: its probe answers 200, or its health file is fresh.

    For container health checks; the reason goes to stderr when it is not.
    """
    if (path is None) == (probe is None):
        raise click.UsageError("give one of --file or --url")
    if probe is not None:
        ok, detail = ask_probe(probe)
        click.echo(detail, err=not ok)
        sys.exit(0 if ok else 1)
    assert path is not None
    try:
        age = time.time() - Path(path).stat().st_mtime
    except FileNotFoundError:
        click.echo(f"unhealthy: {path} does not exist", err=True)
        sys.exit(1)
    if age > max_age:
        click.echo(f"unhealthy: {path} is {age:.0f}s old (max {max_age:.0f}s)", err=True)
        sys.exit(1)
    click.echo("healthy")


def ask_probe(url: str, timeout: float = 5.0) -> tuple[bool, str]:
    """GET a worker's probe: whether it answered 200, and a one-line detail."""
    if not url.startswith(("http://", "https://")):
        return False, f"unhealthy: {url} is not an http URL"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return True, f"healthy: {url} answered {resp.status}"
    except urllib.error.HTTPError as exc:
        body = exc.read()
        try:
            reason = json.loads(body).get("reason") or body.decode(errors="replace").strip()
        except ValueError:
            reason = body.decode(errors="replace").strip()
        return False, f"unhealthy: {url} answered {exc.code}: {reason}"
    except (urllib.error.URLError, OSError) as exc:
        return False, f"unhealthy: {url} did not answer: {getattr(exc, 'reason', exc)}"
