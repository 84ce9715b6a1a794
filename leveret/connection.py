"""Broker addresses: parsing, redaction, and connecting with pika.

A broker is given as one AMQP URL or several (a cluster's nodes), tried in
turn. Passwords never leave this module in clear: every URL that reaches a log
line or an error message goes through :func:`redact` first.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Sequence
from urllib.parse import urlsplit, urlunsplit

import pika
import pika.exceptions

from leveret.errors import BrokerUnavailable, ConfigurationError

DEFAULT_URL = "amqp://guest:guest@localhost:5672/"
HEARTBEAT = 30
"""Seconds between heartbeats; handlers never run on the I/O thread, so they cannot starve it."""

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
    params = []
    for url in split_urls(urls):
        p = pika.URLParameters(with_query(url, heartbeat=HEARTBEAT, connection_attempts=attempts))
        p.client_properties = {"connection_name": name}
        params.append(p)
    try:
        return pika.BlockingConnection(params)
    except pika.exceptions.ProbableAuthenticationError as exc:
        raise BrokerUnavailable(f"broker at {describe(urls)} refused the credentials") from exc
    except pika.exceptions.ProbableAccessDeniedError as exc:
        raise BrokerUnavailable(f"broker at {describe(urls)} denied access to the vhost") from exc
    except (pika.exceptions.AMQPError, OSError, socket.gaierror) as exc:
        raise BrokerUnavailable(unreachable(urls)) from exc


def unreachable(urls: str | Sequence[str]) -> str:
    """The one-line message for a broker that cannot be reached."""
    return f"no RabbitMQ broker reachable at {describe(urls)}; {START_HINT}"
