"""Small pieces of the dashboard's HTTP: request helpers, JSON cleaning, security headers.

No pages here: :mod:`.pages` reads, :mod:`.actions` acts, :mod:`.base` holds what
both share and :mod:`.server` puts them together.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any
from urllib.parse import parse_qsl

import markupsafe
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from leveret import connection, dlq
from leveret.dashboard import letters
from leveret.dashboard.security import Guard

MAX_FORM = 64 * 1024

HEADERS = [
    (b"content-security-policy", b"default-src 'self'; frame-ancestors 'none'; form-action 'self'"),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
]


def finalize(value: Any) -> Any:
    """What a template prints of ``value``: strings redacted."""
    # Every string a template prints goes through redact: no URL password can
    # reach a page, whichever header or error message carried it.
    if isinstance(value, markupsafe.Markup):
        return markupsafe.Markup(connection.redact(str(value)))
    return connection.redact(value) if isinstance(value, str) else value


def clean(value: Any) -> Any:
    """JSON-ready data with every string redacted."""
    value = letters.plain(value)
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clean(v) for v in value]
    return connection.redact(value) if isinstance(value, str) else value


def letter_summary(d: dlq.DeadLetter) -> dict[str, Any]:
    """A dead letter's row in a list: what a person scans for."""
    return {
        "id": d.message_id,
        "type": d.type,
        "version": d.version,
        "attempts": d.attempts,
        "reason": d.reason,
        "error": d.error,
        "failed_at": d.failed_at,
    }


class SecurityHeaders:
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


def wants_json(request: Request) -> bool:
    """Whether to answer JSON: an ``/api/`` path, or a client that asks for it."""
    return request.url.path.startswith("/api/") or "application/json" in request.headers.get(
        "accept", ""
    )


def here(request: Request) -> str:
    """The request's path and query, to come back to after a login."""
    query = request.url.query
    return request.url.path + (f"?{query}" if query else "")


def safe_next(target: str) -> str:
    """Only a path on this site may follow a login (no open redirect)."""
    if target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/"


def int_param(value: str | None, default: int) -> int:
    """A query parameter as an int, ``default`` when absent or not a number."""
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default


async def read_form(request: Request) -> MutableMapping[str, str]:
    """The urlencoded form of a POST (no multipart: the pages send none)."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM:
            return {}
    return dict(parse_qsl(body.decode("utf-8", "replace")))
