"""What every page and action of the dashboard shares: settings, who is asking, rendering.

:class:`Base` holds the dashboard's state (settings, the guard, the management
API client, the job store, the templates) and the helpers its handlers call;
:class:`~.pages.Pages` and :class:`~.actions.Actions` add the handlers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse
from starlette.responses import Response as HTTPResponse

from leveret import connection
from leveret.dashboard import queues
from leveret.dashboard.security import COOKIE, Guard, Identity
from leveret.dashboard.web import finalize, here, wants_json
from leveret.errors import (
    BrokerUnavailable,
    ConfigurationError,
    LeveretError,
    NotConfirmed,
    TopologyMissing,
)
from leveret.topology import Topology


@dataclass(frozen=True)
class Settings:
    """What the dashboard serves and how.

    Args:
        url: the broker URL(s); shown redacted only.
        topology: the queues to show.
        token: the secret for actions (and for reading beyond loopback).
        loopback: whether the server listens on loopback only.
        management_url: RabbitMQ's management API, for in-flight counts and rates.
        status_db: the job status store's database URL, for job lookups.
        reach: how many messages from a dead-letter queue's head pages and
            selections go (see ``docs/dashboard.md``).
        page_size: dead letters per page.
    """

    url: str
    topology: Topology
    token: str
    loopback: bool = True
    management_url: str | None = None
    status_db: str | None = None
    reach: int = 5000
    page_size: int = 50


class Base:
    """The dashboard's state and the helpers its pages and actions share."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.guard = Guard(settings.token, loopback=settings.loopback)
        self.broker = connection.describe(settings.url)
        self.management = (
            queues.Management(settings.management_url, connection.split_urls(settings.url)[0])
            if settings.management_url
            else None
        )
        self.store: Any = None
        if settings.status_db:
            from leveret.status.store import JobStore  # needs the sql extra

            self.store = JobStore(settings.status_db, create=False)
        self.templates = jinja2.Environment(
            loader=jinja2.PackageLoader("leveret.dashboard", "templates"),
            autoescape=True,
            finalize=finalize,
            undefined=jinja2.StrictUndefined,
        )

    def _who(self, request: Request) -> Identity:
        return self.guard.identify(
            request.headers.get("authorization", ""), request.cookies.get(COOKIE, "")
        )

    def _read(
        self, handler: Callable[[Request, Identity], Awaitable[HTTPResponse]]
    ) -> Callable[[Request], Awaitable[HTTPResponse]]:
        """Wrap a page: reading allowed, broker errors shown as one redacted line."""

        async def endpoint(request: Request) -> HTTPResponse:
            who = self._who(request)
            if not self.guard.may_read(who):
                if wants_json(request):
                    return JSONResponse({"error": "authentication required"}, 401)
                return RedirectResponse("/login?" + urlencode({"next": here(request)}), 303)
            try:
                return await handler(request, who)
            except LeveretError as exc:
                return self._error(request, who, exc)

        return endpoint

    def _error(self, request: Request, who: Identity, exc: LeveretError) -> HTTPResponse:
        status = 502
        if isinstance(exc, TopologyMissing | ConfigurationError):
            status = 404
        elif isinstance(exc, NotConfirmed):
            status = 409
        elif not isinstance(exc, BrokerUnavailable):
            status = 500
        text = connection.redact(str(exc))
        if wants_json(request):
            return JSONResponse({"error": text}, status)
        return self._page(request, who, "error.html", status=status, message=text)

    def _page(
        self, request: Request, who: Identity, template: str, *, status: int = 200, **values: Any
    ) -> HTMLResponse:
        html = self.templates.get_template(template).render(
            broker=self.broker,
            who=who,
            csrf=self.guard.csrf(who.session),
            jobs=self.store is not None,
            here=here(request),
            **values,
        )
        return HTMLResponse(html, status)

    def _queue(self, request: Request) -> str:
        name = str(request.path_params["queue"])
        self.settings.topology.queue(name)  # ConfigurationError for another queue
        return name
