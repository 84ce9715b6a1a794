"""The dashboard's web application (Starlette): its routes over the pages and actions.

Every handler is short: it checks who may do what (:mod:`.security`), reads
through :mod:`.queues` or :mod:`.letters` in a worker thread (pika is
blocking), and renders a template shipped in this package. Nothing is loaded
from elsewhere: no CDN, no web font, no script but our own. The read pages are
in :mod:`.pages`, the actions in :mod:`.actions`, what they share in :mod:`.base`.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp

from leveret.dashboard.actions import Actions
from leveret.dashboard.base import Settings
from leveret.dashboard.pages import Pages
from leveret.dashboard.web import SecurityHeaders

__all__ = ["Dashboard", "Settings", "create_app"]


class Dashboard(Pages, Actions):
    """The pages and their handlers; :meth:`app` is the ASGI application."""

    def app(self) -> ASGIApp:
        r = self._read
        routes = [
            Route("/", r(self.overview)),
            Route("/api/queues", r(self.overview)),
            Route("/queues/{queue}/dlq", r(self.dead_letters)),
            Route("/api/queues/{queue}/dlq", r(self.dead_letters)),
            Route("/queues/{queue}/dlq/message", r(self.message)),
            Route("/api/queues/{queue}/dlq/message", r(self.message)),
            Route("/queues/{queue}/dlq/confirm", r(self.confirm)),
            Route("/queues/{queue}/dlq/{action:str}", self.act, methods=["POST"]),
            Route("/jobs", r(self.job)),
            Route("/api/jobs/{job_id}", r(self.job)),
            Route("/metrics", self.metrics),
            Route("/healthz", self.healthz),
            Route("/login", self.login, methods=["GET", "POST"]),
            Route("/logout", self.logout, methods=["POST"]),
            Mount("/static", StaticFiles(packages=[("leveret.dashboard", "static")])),
        ]
        return SecurityHeaders(Starlette(routes=routes), self.guard)


def create_app(settings: Settings) -> ASGIApp:
    """The dashboard as an ASGI application (serve it with uvicorn)."""
    return Dashboard(settings).app()
