"""Who may read and who may act: tokens, sessions, CSRF tokens, Origin and Host checks.

Pure logic, no I/O, so every rule is tested without a server:

- Reading is open on loopback only; beyond loopback every page needs the token.
- Every action is a POST and needs the token: in an ``Authorization`` header
  (``Bearer <token>``, or basic auth with the token as password) or through a
  session that the login form opens (an HttpOnly, SameSite=Strict cookie).
- A POST on a session also needs that session's CSRF token (an HMAC of the
  session id under a secret of this process) and an Origin, or Referer, of this
  very site. A header-authenticated POST needs neither: a browser never adds
  that header by itself, so a cross-site page cannot forge it.
- On loopback the Host header must name a loopback host, which defeats DNS
  rebinding (a page of evil.example resolving to 127.0.0.1).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from urllib.parse import urlsplit

COOKIE = "leveret_session"
SESSION_SECONDS = 12 * 3600
MAX_SESSIONS = 1000

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address, maybe in brackets) is a loopback one."""
    host = host.strip("[]").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_name(host_header: str) -> str:
    """The host part of a Host header (``[::1]:8080`` gives ``::1``)."""
    return urlsplit(f"//{host_header}").hostname or ""


@dataclass(frozen=True)
class Identity:
    """How a request proved itself: by ``header``, by ``session`` (with its id), or not."""

    via: str
    session: str = ""

    @property
    def authenticated(self) -> bool:
        return self.via != "anonymous"


ANONYMOUS = Identity("anonymous")


class Guard:
    """The dashboard's security rules.

    Args:
        token: the secret that allows actions (and, beyond loopback, reading).
        loopback: whether the server listens on loopback only.
    """

    def __init__(self, token: str, *, loopback: bool) -> None:
        if not token:
            raise ValueError("a token is required")
        self._token = token.encode()
        self.loopback = loopback
        self._secret = secrets.token_bytes(32)
        self._sessions: OrderedDict[str, float] = OrderedDict()

    def __repr__(self) -> str:
        return f"Guard(loopback={self.loopback})"

    def token_ok(self, candidate: str) -> bool:
        return hmac.compare_digest(candidate.encode(), self._token)

    def identify(self, authorization: str, cookie: str) -> Identity:
        """Who the request is, from its Authorization header and session cookie."""
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and self.token_ok(value.strip()):
            return Identity("header")
        if scheme.lower() == "basic":
            try:
                _user, _, password = base64.b64decode(value.strip()).decode().partition(":")
            except ValueError:
                password = ""
            if password and self.token_ok(password):
                return Identity("header")
        if cookie and self._session_alive(cookie):
            return Identity("session", cookie)
        return ANONYMOUS

    def may_read(self, who: Identity) -> bool:
        return self.loopback or who.authenticated

    def host_ok(self, host_header: str) -> bool:
        """On loopback, only a loopback Host is served (DNS rebinding)."""
        return not self.loopback or is_loopback(host_name(host_header))

    def same_origin(self, origin: str, referer: str, scheme: str, host_header: str) -> bool:
        """Whether a POST comes from this site: its Origin, or failing that its Referer."""
        source = origin or referer
        if not source or source == "null":
            return False
        parts = urlsplit(source)
        return f"{parts.scheme}://{parts.netloc}" == f"{scheme}://{host_header}"

    def open_session(self) -> str:
        """Start a session; returns its id (the cookie's value)."""
        now = time.monotonic()
        self._expire(now)
        sid = secrets.token_urlsafe(32)
        self._sessions[sid] = now + SESSION_SECONDS
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)
        return sid

    def close_session(self, sid: str) -> None:
        self._sessions.pop(sid, None)

    def csrf(self, sid: str) -> str:
        """The CSRF token of a session (empty without a session)."""
        if not sid:
            return ""
        return hmac.new(self._secret, sid.encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, sid: str, candidate: str) -> bool:
        return bool(sid and candidate) and hmac.compare_digest(self.csrf(sid), candidate)

    def may_act(
        self,
        who: Identity,
        *,
        csrf: str,
        origin: str,
        referer: str,
        scheme: str,
        host_header: str,
    ) -> str:
        """Why a POST is refused, or "" when it may go ahead."""
        if not who.authenticated:
            return "log in first: actions need the token"
        if who.via == "header":
            return ""
        if not self.same_origin(origin, referer, scheme, host_header):
            return "cross-site request refused"
        if not self.csrf_ok(who.session, csrf):
            return "missing or wrong CSRF token; reload the page and try again"
        return ""

    def _session_alive(self, sid: str) -> bool:
        expires = self._sessions.get(sid)
        return expires is not None and expires > time.monotonic()

    def _expire(self, now: float) -> None:
        for sid in [s for s, until in self._sessions.items() if until <= now]:
            del self._sessions[sid]
