"""``leveret dashboard``: serve the web dashboard (needs ``leveret[dashboard]``)."""

from __future__ import annotations

import secrets

import click

from leveret.cli.base import app_option, load_app, main, one_line_errors, url_option
from leveret.errors import ConfigurationError


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, help="Port to listen on.")
@click.option(
    "--token",
    envvar="LEVERET_DASHBOARD_TOKEN",
    default="",
    show_default=False,
    help="Secret for actions, required beyond loopback (or LEVERET_DASHBOARD_TOKEN).",
)
@click.option(
    "--management-url",
    default=None,
    help="RabbitMQ's management API (e.g. http://127.0.0.1:15672) for in-flight counts "
    "and rates; AMQP figures only without it.",
)
@click.option("--status-db", default=None, help="The job status store's database URL.")
@click.option(
    "--reach",
    default=5000,
    show_default=True,
    type=click.IntRange(50, 65535),
    help="How many messages from a dead-letter queue's head pages and selections reach.",
)
@url_option
@app_option
@one_line_errors
def dashboard(
    host: str,
    port: int,
    token: str,
    management_url: str | None,
    status_db: str | None,
    reach: int,
    url: str,
    app_target: str,
) -> None:
    """Serve a web page over the queues, the dead letters and the jobs."""
    try:
        import uvicorn

        from leveret.dashboard import Settings, create_app
        from leveret.dashboard.security import is_loopback
    except ImportError as exc:
        raise ConfigurationError(
            f'the dashboard needs its extra: pip install "leveret[dashboard]" ({exc})'
        ) from exc
    loopback = is_loopback(host)
    if not loopback and not token:
        raise ConfigurationError(
            f"refusing to listen on {host} without a token: pass --token or set "
            "LEVERET_DASHBOARD_TOKEN"
        )
    if not token:
        token = secrets.token_urlsafe(24)
        click.echo(
            f"leveret dashboard: actions need this token (log in with it): {token}", err=True
        )
    topology = load_app(app_target).topology
    settings = Settings(
        url=url,
        topology=topology,
        token=token,
        loopback=loopback,
        management_url=management_url,
        status_db=status_db,
        reach=reach,
    )
    app = create_app(settings)
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"leveret dashboard on http://{shown}:{port}/", err=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", server_header=False)
