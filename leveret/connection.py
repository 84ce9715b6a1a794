"""Broker addresses: parsing, redaction, TLS, and connecting with pika.

A broker is given as one AMQP URL or several (a cluster's nodes), tried in
turn. Passwords never leave this module in clear: every URL that reaches a log
line or an error message goes through :func:`redact` first.

TLS: an ``amqps://`` URL verifies the broker's certificate against the system's
CAs, or against ``?cafile=/path/ca.pem``; ``certfile`` and ``keyfile`` add a
client certificate. Both faces (pika, and :mod:`leveret.amqp` for asyncio)
take the same :class:`ssl.SSLContext` from :func:`tls_context`.
"""

from __future__ import annotations

import re
import socket
import ssl
from collections.abc import Sequence
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from leveret.errors import BrokerUnavailable, ConfigurationError

DEFAULT_URL = "amqp://localhost:5672/"
"""No credentials in it: a URL without them logs in as RabbitMQ's default user (``guest``)."""
HEARTBEAT = 30
"""Seconds between heartbeats; handlers never run on the I/O thread, so they cannot starve it."""

if TYPE_CHECKING:
    import pika

START_HINT = "start one with `rabbitmq-server -detached` or `docker compose up -d rabbitmq`"

_CREDENTIALS = re.compile(r"([a-z][a-z0-9+.-]*://[^:/@\s]*):[^@\s]*@", re.IGNORECASE)


def redact(text: str) -> str:
    """Replace the password of every URL in ``text`` (AMQP or any other) with ``***``."""
    return _CREDENTIALS.sub(r"\1:***@", text)


def split_urls(urls: str | Sequence[str]) -> list[str]:
    """Turn a URL, a comma-separated list of URLs or a sequence into a list.

    Raises:
        ConfigurationError: no URL, or one that is not ``amqp://`` or ``amqps://``.
    """
    items = urls.split(",") if isinstance(urls, str) else list(urls)
    result = [u.strip() for u in items if u.strip()]
    if not result:
        raise ConfigurationError("no broker URL given")
    for url in result:
        scheme = urlsplit(url).scheme
        if scheme not in ("amqp", "amqps"):
            raise ConfigurationError(f"not an AMQP URL: {redact(url)!r}")
    return result


def describe(urls: str | Sequence[str]) -> str:
    """A redacted, comma-separated rendering of the broker addresses."""
    return ", ".join(redact(u) for u in split_urls(urls))


def host_of(url: str) -> str:
    """The ``host:port`` part of a URL, without credentials."""
    parts = urlsplit(url)
    return f"{parts.hostname or 'localhost'}:{parts.port or 5672}"


def with_query(url: str, **params: str | int) -> str:
    """Add query parameters to a URL unless it already sets them."""
    parts = urlsplit(url)
    existing = {p.split("=", 1)[0] for p in parts.query.split("&") if p}
    extra = [f"{k}={v}" for k, v in params.items() if k not in existing]
    query = "&".join([q for q in [parts.query] if q] + extra)
    return urlunsplit(parts._replace(query=query))


TLS_PARAMS = ("cafile", "certfile", "keyfile")


def tls_context(url: str) -> ssl.SSLContext | None:
    """The TLS context of an ``amqps://`` URL (None for ``amqp://``).

    Raises:
        ConfigurationError: a CA or certificate file cannot be read.
    """
    parts = urlsplit(url)
    if parts.scheme != "amqps":
        return None
    params = dict(parse_qsl(parts.query))
    try:
        context = ssl.create_default_context(cafile=params.get("cafile"))
        if params.get("certfile"):
            context.load_cert_chain(params["certfile"], params.get("keyfile"))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(f"cannot load the TLS files of {redact(url)}: {exc}") from exc
    return context


def without_tls_params(url: str) -> str:
    """The URL without leveret's TLS query parameters (the clients do not know them)."""
    parts = urlsplit(url)
    kept = [(k, v) for k, v in parse_qsl(parts.query) if k not in TLS_PARAMS]
    return urlunsplit(parts._replace(query=urlencode(kept)))


def failure(urls: str | Sequence[str], exc: BaseException) -> str:
    """The one-line message for a connection that failed with ``exc``."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return (
                f"TLS certificate of the broker at {describe(urls)} could not be verified "
                f"({cause.verify_message}); check cafile"
            )
        if isinstance(cause, ssl.SSLError):
            return f"TLS handshake with the broker at {describe(urls)} failed: {cause.reason}"
        cause = cause.__cause__ or cause.__context__ or _first_arg_exception(cause)
    return unreachable(urls)


def _first_arg_exception(exc: BaseException) -> BaseException | None:
    # pika wraps socket errors in the args of its own exceptions, not as a cause.
    for arg in exc.args:
        if isinstance(arg, BaseException):
            return arg
    return None


def parameters(
    urls: str | Sequence[str], *, name: str = "leveret", attempts: int = 1
) -> list[pika.URLParameters]:
    """pika's connection parameters of each URL: heartbeat, name and TLS set."""
    import pika

    params = []
    for url in split_urls(urls):
        clean = without_tls_params(
            with_query(url, heartbeat=HEARTBEAT, connection_attempts=attempts)
        )
        p = pika.URLParameters(clean)
        p.client_properties = {"connection_name": name}
        context = tls_context(url)
        if context is not None:
            p.ssl_options = pika.SSLOptions(context, server_hostname=urlsplit(url).hostname)
        params.append(p)
    return params


def connect(
    urls: str | Sequence[str], *, name: str = "leveret", attempts: int = 1
) -> pika.BlockingConnection:
    """Open a blocking pika connection to the first node that answers.

    Args:
        urls: one URL, a comma-separated list, or a sequence of URLs.
        name: the connection name shown in the management UI.
        attempts: rounds over all the URLs before giving up.

    Raises:
        BrokerUnavailable: no node could be reached or the credentials were refused.
    """
    # Imported here: a worker talks through leveret.amqp only and need not load pika.
    import pika
    import pika.exceptions

    params = parameters(urls, name=name, attempts=attempts)
    try:
        return pika.BlockingConnection(params)
    except pika.exceptions.ProbableAuthenticationError as exc:
        raise BrokerUnavailable(f"broker at {describe(urls)} refused the credentials") from exc
    except pika.exceptions.ProbableAccessDeniedError as exc:
        raise BrokerUnavailable(f"broker at {describe(urls)} denied access to the vhost") from exc
    except (pika.exceptions.AMQPError, OSError, socket.gaierror) as exc:
        raise BrokerUnavailable(failure(urls, exc)) from exc


def unreachable(urls: str | Sequence[str]) -> str:
    """The one-line message for a broker that cannot be reached."""
    return f"no RabbitMQ broker reachable at {describe(urls)}; {START_HINT}"
