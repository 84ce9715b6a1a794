"""The dashboard's web application (Starlette), its pages and its JSON twins.

Every handler is short: it checks who may do what (:mod:`.security`), reads
through :mod:`.queues` or :mod:`.letters` in a worker thread (pika is
blocking), and renders a template shipped in this package. Nothing is loaded
from elsewhere: no CDN, no web font, no script but our own.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode

import jinja2
import markupsafe
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse
from starlette.responses import Response as HTTPResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from leveret import connection, dlq
from leveret.dashboard import letters, queues
from leveret.dashboard.security import ANONYMOUS, COOKIE, SESSION_SECONDS, Guard, Identity
from leveret.errors import (
    BrokerUnavailable,
    ConfigurationError,
    LeveretError,
    NotConfirmed,
    TopologyMissing,
)
from leveret.metrics import CONTENT_TYPE as METRICS_TYPE
from leveret.metrics import render_queues
from leveret.topology import Topology, dead_letter_queue

MAX_FORM = 64 * 1024

HEADERS = [
    (b"content-security-policy", b"default-src 'self'; frame-ancestors 'none'; form-action 'self'"),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
]


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


def _finalize(value: Any) -> Any:
    # Every string a template prints goes through redact: no URL password can
    # reach a page, whichever header or error message carried it.
    if isinstance(value, markupsafe.Markup):
        return markupsafe.Markup(connection.redact(str(value)))
    return connection.redact(value) if isinstance(value, str) else value


def _clean(value: Any) -> Any:
    """JSON-ready data with every string redacted."""
    value = letters.plain(value)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return connection.redact(value) if isinstance(value, str) else value


def letter_summary(d: dlq.DeadLetter) -> dict[str, Any]:
    return {
        "id": d.message_id,
        "type": d.type,
        "version": d.version,
        "attempts": d.attempts,
        "reason": d.reason,
        "error": d.error,
        "failed_at": d.failed_at,
    }


class _SecurityHeaders:
    """Refuse a foreign Host on loopback, and add the security headers to every response."""

    def __init__(self, app: ASGIApp, guard: Guard) -> None:
        self.app = app
        self.guard = guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
        if not self.guard.host_ok(host):
            await PlainTextResponse("unknown host", 421)(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + HEADERS
            await send(message)

        await self.app(scope, receive, with_headers)


class Dashboard:
    """The pages and their handlers; :meth:`app` is the ASGI application."""

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
            finalize=_finalize,
            undefined=jinja2.StrictUndefined,
        )

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
        return _SecurityHeaders(Starlette(routes=routes), self.guard)

    # --- helpers ----------------------------------------------------------------

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
                if _wants_json(request):
                    return JSONResponse({"error": "authentication required"}, 401)
                return RedirectResponse("/login?" + urlencode({"next": _here(request)}), 303)
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
        if _wants_json(request):
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
            here=_here(request),
            **values,
        )
        return HTMLResponse(html, status)

    def _queue(self, request: Request) -> str:
        name = str(request.path_params["queue"])
        self.settings.topology.queue(name)  # ConfigurationError for another queue
        return name

    # --- pages ------------------------------------------------------------------

    async def overview(self, request: Request, who: Identity) -> HTTPResponse:
        view = await run_in_threadpool(
            queues.overview, self.settings.url, self.settings.topology, self.management
        )
        if _wants_json(request):
            return JSONResponse(
                _clean(
                    {
                        "broker": self.broker,
                        "source": view.source,
                        "note": view.note,
                        "groups": [
                            {
                                "work": asdict(g.work),
                                "tiers": [asdict(t) for t in g.tiers],
                                "dead": asdict(g.dead),
                            }
                            for g in view.groups
                        ],
                        "others": [asdict(r) for r in view.others],
                    }
                )
            )
        return self._page(request, who, "queues.html", view=view)

    async def metrics(self, request: Request) -> HTTPResponse:
        """Every queue's figures in Prometheus text (a scraper sends the token as a bearer)."""
        if not self.guard.may_read(self._who(request)):
            return PlainTextResponse("authentication required\n", 401)
        try:
            view = await run_in_threadpool(
                queues.overview, self.settings.url, self.settings.topology, self.management
            )
        except LeveretError as exc:
            return PlainTextResponse(connection.redact(str(exc)) + "\n", 502)
        rows = [row for g in view.groups for row in (g.work, *g.tiers, g.dead)] + view.others
        return HTTPResponse(render_queues(rows), media_type=METRICS_TYPE)

    async def healthz(self, request: Request) -> HTTPResponse:
        """The process answers (for a container's health check; no broker call)."""
        return PlainTextResponse("ok\n")

    async def dead_letters(self, request: Request, who: Identity) -> HTTPResponse:
        queue = self._queue(request)
        size = self.settings.page_size
        number = max(1, _int(request.query_params.get("page"), 1))
        page = await run_in_threadpool(
            lambda: letters.browse(
                self.settings.url,
                queue,
                offset=(number - 1) * size,
                limit=size,
                reach=self.settings.reach,
            )
        )
        if _wants_json(request):
            return JSONResponse(
                _clean(
                    {
                        "queue": dead_letter_queue(queue),
                        "depth": page.depth,
                        "offset": page.offset,
                        "touched": page.touched,
                        "reach": page.reach,
                        "has_next": page.has_next,
                        "letters": [letter_summary(d) for d in page.letters],
                    }
                )
            )
        done = request.query_params.get("done", "")
        count = _int(request.query_params.get("count"), 0)
        return self._page(
            request,
            who,
            "dlq.html",
            queue=queue,
            page=page,
            number=number,
            done=done if done in ("replay", "purge") else "",
            count=count,
        )

    async def message(self, request: Request, who: Identity) -> HTTPResponse:
        queue = self._queue(request)
        wanted = request.query_params.get("id", "")
        letter, touched = await run_in_threadpool(
            lambda: letters.find(self.settings.url, queue, wanted, reach=self.settings.reach)
        )
        if letter is None:
            text = f"no message {wanted!r} among the first {touched} of {queue}.dlq"
            if _wants_json(request):
                return JSONResponse({"error": text}, 404)
            return self._page(request, who, "error.html", status=404, message=text)
        detail = {
            **letter_summary(letter),
            "headers": letters.plain(letter.headers),
            "traceback": letters.traceback_of(letter),
            "body": letters.pretty_body(letter.body),
        }
        if _wants_json(request):
            return JSONResponse(_clean(detail))
        headers_text = json.dumps(
            letters.plain(letter.headers), indent=2, ensure_ascii=False, sort_keys=True
        )
        return self._page(
            request, who, "message.html", queue=queue, letter=detail, headers_text=headers_text
        )

    async def confirm(self, request: Request, who: Identity) -> HTTPResponse:
        queue = self._queue(request)
        action = request.query_params.get("action", "replay")
        if action not in ("replay", "purge"):
            action = "replay"
        selector = letters.Selector.parse(
            request.query_params.get("ids", ""),
            request.query_params.get("type", ""),
            request.query_params.get("reason", ""),
        )
        tally = await run_in_threadpool(
            lambda: letters.tally(self.settings.url, queue, selector, reach=self.settings.reach)
        )
        return self._page(
            request,
            who,
            "confirm.html",
            queue=queue,
            action=action,
            selector=selector,
            tally=tally,
        )

    async def act(self, request: Request) -> HTTPResponse:
        who = self._who(request)
        form = await _form(request)
        refusal = self.guard.may_act(
            who,
            csrf=form.get("csrf", ""),
            origin=request.headers.get("origin", ""),
            referer=request.headers.get("referer", ""),
            scheme=request.url.scheme,
            host_header=request.headers.get("host", ""),
        )
        if refusal:
            if _wants_json(request):
                return JSONResponse({"error": refusal}, 403)
            return self._page(request, who, "error.html", status=403, message=refusal)
        action = str(request.path_params["action"])
        if action not in ("replay", "purge"):
            return PlainTextResponse("not found", 404)
        try:
            queue = self._queue(request)
            selector = letters.Selector.parse(
                form.get("ids", ""), form.get("type", ""), form.get("reason", "")
            )
            run = letters.replay if action == "replay" else letters.purge
            done = await run_in_threadpool(
                lambda: run(self.settings.url, queue, selector, reach=self.settings.reach)
            )
        except LeveretError as exc:
            return self._error(request, who, exc)
        if _wants_json(request):
            ids = [] if done.ids[:1] == ["*"] else done.ids
            return JSONResponse(
                _clean(
                    {"action": action, "count": len(done.ids), "scanned": done.scanned, "ids": ids}
                )
            )
        query = urlencode({"done": action, "count": len(done.ids)})
        return RedirectResponse(f"/queues/{queue}/dlq?{query}", 303)

    async def job(self, request: Request, who: Identity) -> HTTPResponse:
        job_id = str(request.path_params.get("job_id") or request.query_params.get("id", ""))
        if self.store is None:
            text = "job lookup needs the status store: start with --status-db URL"
            if _wants_json(request):
                return JSONResponse({"error": text}, 404)
            return self._page(request, who, "error.html", status=404, message=text)
        record = await run_in_threadpool(self.store.get, job_id) if job_id else None
        if _wants_json(request):
            if record is None:
                return JSONResponse({"error": f"no job {job_id!r}"}, 404)
            return JSONResponse(_clean(record))
        text = json.dumps(record, indent=2, ensure_ascii=False) if record else ""
        return self._page(
            request,
            who,
            "job.html",
            job_id=job_id,
            record=record,
            record_text=text,
            status=404 if job_id and record is None else 200,
        )

    async def login(self, request: Request) -> HTTPResponse:
        who = self._who(request)
        target = _safe_next(request.query_params.get("next", "/"))
        if request.method == "GET":
            return self._page(request, who, "login.html", next=target, failed=False)
        form = await _form(request)
        target = _safe_next(form.get("next", "/"))
        if not self.guard.same_origin(
            request.headers.get("origin", ""),
            request.headers.get("referer", ""),
            request.url.scheme,
            request.headers.get("host", ""),
        ):
            return self._page(
                request, who, "error.html", status=403, message="cross-site request refused"
            )
        if not self.guard.token_ok(form.get("token", "")):
            return self._page(
                request, ANONYMOUS, "login.html", status=401, next=target, failed=True
            )
        if who.session:
            self.guard.close_session(who.session)
        response = RedirectResponse(target, 303)
        response.set_cookie(
            COOKIE,
            self.guard.open_session(),
            max_age=SESSION_SECONDS,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/",
        )
        return response

    async def logout(self, request: Request) -> HTTPResponse:
        who = self._who(request)
        form = await _form(request)
        refusal = self.guard.may_act(
            who,
            csrf=form.get("csrf", ""),
            origin=request.headers.get("origin", ""),
            referer=request.headers.get("referer", ""),
            scheme=request.url.scheme,
            host_header=request.headers.get("host", ""),
        )
        if refusal:
            return self._page(request, who, "error.html", status=403, message=refusal)
        self.guard.close_session(who.session)
        response = RedirectResponse("/", 303)
        response.delete_cookie(COOKIE, path="/")
        return response


def create_app(settings: Settings) -> ASGIApp:
    """The dashboard as an ASGI application (serve it with uvicorn)."""
    return Dashboard(settings).app()


def _wants_json(request: Request) -> bool:
    return request.url.path.startswith("/api/") or "application/json" in request.headers.get(
        "accept", ""
    )


def _here(request: Request) -> str:
    query = request.url.query
    return request.url.path + (f"?{query}" if query else "")


def _safe_next(target: str) -> str:
    """Only a path on this site may follow a login (no open redirect)."""
    if target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/"


def _int(value: str | None, default: int) -> int:
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default


async def _form(request: Request) -> MutableMapping[str, str]:
    """The urlencoded form of a POST (no multipart: the pages send none)."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM:
            return {}
    return dict(parse_qsl(body.decode("utf-8", "replace")))
