"""The dashboard's actions: replay and purge behind a confirmation, login and logout.

Each POST needs an identity, a CSRF token (for a session) and a same-origin
request (:meth:`~.security.Guard.may_act`); see ``docs/dashboard.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlencode

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse
from starlette.responses import Response as HTTPResponse

from leveret.dashboard import letters
from leveret.dashboard.base import Base
from leveret.dashboard.security import ANONYMOUS, COOKIE, SESSION_SECONDS, Identity
from leveret.dashboard.web import clean, read_form, safe_next, wants_json
from leveret.errors import LeveretError


class Actions(Base):
    """The handlers that change something: on the broker, or the session."""

    def _refusal(self, request: Request, who: Identity, form: Mapping[str, str]) -> str:
        """Why this POST may not act (no identity, CSRF, origin), or "" when it may."""
        return self.guard.may_act(
            who,
            csrf=form.get("csrf", ""),
            origin=request.headers.get("origin", ""),
            referer=request.headers.get("referer", ""),
            scheme=request.url.scheme,
            host_header=request.headers.get("host", ""),
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
        form = await read_form(request)
        refusal = self._refusal(request, who, form)
        if refusal:
            if wants_json(request):
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
        if wants_json(request):
            ids = [] if done.ids[:1] == ["*"] else done.ids
            return JSONResponse(
                clean(
                    {"action": action, "count": len(done.ids), "scanned": done.scanned, "ids": ids}
                )
            )
        query = urlencode({"done": action, "count": len(done.ids)})
        return RedirectResponse(f"/queues/{queue}/dlq?{query}", 303)

    async def login(self, request: Request) -> HTTPResponse:
        who = self._who(request)
        target = safe_next(request.query_params.get("next", "/"))
        if request.method == "GET":
            return self._page(request, who, "login.html", next=target, failed=False)
        form = await read_form(request)
        target = safe_next(form.get("next", "/"))
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
        form = await read_form(request)
        refusal = self._refusal(request, who, form)
        if refusal:
            return self._page(request, who, "error.html", status=403, message=refusal)
        self.guard.close_session(who.session)
        response = RedirectResponse("/", 303)
        response.delete_cookie(COOKIE, path="/")
        return response
