"""Fixtures: a real broker, unique names per test, a worker running in the test's loop.

The broker is ``LEVERET_TEST_URL`` (default: the local one) when reachable, else a
RabbitMQ container from testcontainers when a Docker engine exists; otherwise the
broker tests fail with a clear message. They never skip silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import pika
import pytest

from leveret import App, Outcome, Publisher, Topology, Worker, admin, connection
from leveret.amqp.handshake import Address
from leveret.errors import BrokerUnavailable
from tests import apps

LOCAL_URL = "amqp://127.0.0.1:5672/"
"""When LEVERET_TEST_URL is unset: the local broker, as RabbitMQ's default user (a URL
without credentials; :func:`login` says who that is)."""


def login(url: str) -> tuple[str, str]:
    """The user and password a client logs in with at ``url``, defaults applied."""
    address = Address.of(url, tls=url.startswith("amqps:"))
    return address.user, address.password


def with_login(url: str) -> str:
    """``url`` with the login it implies written in, so that a test can check that no
    output shows its password."""
    parts = urlsplit(url)
    if parts.username is not None:
        return url
    user, password = (quote(part, safe="") for part in login(url))
    return urlunsplit(parts._replace(netloc=f"{user}:{password}@{parts.netloc}"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Anything that takes the broker fixture is a broker test.
    for item in items:
        if "broker_url" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.broker)


@pytest.fixture(autouse=True)
def _keep_logging_unconfigured(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process CLI calls must not configure structlog for the rest of the session.

    ``configure`` caches loggers on first use, which would defeat
    ``capture_logs`` in later tests; subprocess tests still run it for real.
    """
    monkeypatch.setattr("leveret.logs.configure", lambda **_: None)


@pytest.fixture(scope="session")
def broker_url() -> Iterator[str]:
    """The URL of a running broker for the whole session."""
    url = with_login(os.environ.get("LEVERET_TEST_URL", LOCAL_URL))
    try:
        connection.connect(url).close()
        yield url
        return
    except BrokerUnavailable as exc:
        reason = str(exc)
    try:
        from testcontainers.rabbitmq import RabbitMqContainer
    except ImportError:
        pytest.fail(
            f"{reason}; set LEVERET_TEST_URL, or install leveret[containers] with a Docker engine",
            pytrace=False,
        )
    try:
        with RabbitMqContainer("rabbitmq:3.10") as container:
            params = container.get_connection_params()
            user, password = params.credentials.username, params.credentials.password
            yield f"amqp://{user}:{password}@{params.host}:{params.port}/"
    except Exception as exc:
        pytest.fail(
            f"{reason}; testcontainers could not start RabbitMQ either: {exc}", pytrace=False
        )


@pytest.fixture
def names() -> Callable[[str], str]:
    """Make names unique to this test: ``names("q")`` gives ``t.<id>.q``."""
    prefix = f"t.{uuid.uuid4().hex[:10]}"
    return lambda suffix: f"{prefix}.{suffix}"


@pytest.fixture
def quorum_queue(broker_url: str, names: Callable[[str], str]) -> Iterator[str]:
    """A durable quorum queue of this test's own, deleted after it."""
    name = names("q")
    with connection.connect(broker_url) as blocking:
        ch = blocking.channel()
        ch.queue_declare(name, durable=True, arguments={"x-queue-type": "quorum"})
        yield name
        ch.queue_delete(name)


@dataclass(frozen=True)
class RefusedURLs:
    """URLs of the test broker that a client must fail to open, each its own way."""

    wrong_password: str
    missing_vhost: str
    closed_port: str


@pytest.fixture
def refused(broker_url: str) -> Iterator[RefusedURLs]:
    """A wrong password, a vhost that does not exist, and a port nobody listens on."""
    parts = urlsplit(broker_url)
    host = f"{parts.hostname}:{parts.port or 5672}"
    user, password = login(broker_url)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))  # bound, not listening: refused while the test runs
        yield RefusedURLs(
            urlunsplit(parts._replace(netloc=f"{user}:not-{password}@{host}")),
            urlunsplit(parts._replace(path="/no-such-vhost-for-leveret")),
            urlunsplit(parts._replace(netloc=f"{user}:{password}@127.0.0.1:{s.getsockname()[1]}")),
        )


@dataclass
class Pipeline:
    """One test's topology on the broker, its app and what its workers reported."""

    url: str
    queue: str
    exchange: str
    topology: Topology
    app: App
    outcomes: list[Outcome] = field(default_factory=list)

    def publisher(self) -> Publisher:
        return Publisher(self.url)

    def publish(self, message: apps.Task | apps.TaskV2, **kwargs: object) -> str:
        with self.publisher() as p:
            return p.publish(message, exchange=self.exchange, **kwargs)  # type: ignore[arg-type]

    def get(self, queue: str) -> tuple[pika.BasicProperties, bytes] | None:
        """Take one message from a queue (acked), or None."""
        conn = connection.connect(self.url)
        try:
            ch = conn.channel()
            method, props, body = ch.basic_get(queue, auto_ack=True)
            return None if method is None else (props, body)
        finally:
            conn.close()

    def reject_one(self) -> None:
        """Take one message from the work queue and reject it, as a plain AMQP client would."""
        conn = connection.connect(self.url)
        try:
            ch = conn.channel()
            method, _props, _body = ch.basic_get(self.queue, auto_ack=False)
            assert method is not None, "the work queue is empty"
            ch.basic_reject(method.delivery_tag, requeue=False)
        finally:
            conn.close()

    def depth(self, queue: str) -> int:
        conn = connection.connect(self.url)
        try:
            return int(conn.channel().queue_declare(queue, passive=True).method.message_count)
        finally:
            conn.close()

    def finals(self, outcome: str) -> list[Outcome]:
        return [o for o in self.outcomes if o.outcome == outcome]

    async def wait(self, predicate: Callable[[], bool], timeout: float = 15.0) -> None:
        """Poll until ``predicate()`` holds, failing the test after ``timeout``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            if loop.time() > deadline:
                raise AssertionError(f"timed out; outcomes so far: {self.outcomes}")
            await asyncio.sleep(0.05)


@pytest.fixture
def pipeline(broker_url: str, names: Callable[[str], str]) -> Iterator[Pipeline]:
    """A unique one-queue topology (tiers 0.2 s, 0.4 s; 3 attempts), applied and removed after."""
    queue, exchange = names("work"), names("ex")
    app = apps.build_app(queue, exchange)
    admin.apply(broker_url, app.topology)
    yield Pipeline(broker_url, queue, exchange, app.topology, app)
    admin.delete(broker_url, app.topology)


@pytest.fixture
async def running(pipeline: Pipeline) -> AsyncIterator[Callable[..., Worker]]:
    """Start workers on the pipeline in the test's loop; all are stopped at the end."""
    tasks: list[tuple[Worker, asyncio.Task[None]]] = []

    def start(app: App | None = None, **kwargs: object) -> Worker:
        worker = Worker(
            app or pipeline.app,
            pipeline.url,
            on_outcome=pipeline.outcomes.append,
            **kwargs,  # type: ignore[arg-type]
        )
        tasks.append((worker, asyncio.create_task(worker.run())))
        return worker

    yield start
    for worker, _task in tasks:
        worker.stop()
    for _worker, task in tasks:
        await asyncio.wait_for(task, 40)


def rabbitmqctl(*args: str) -> str:
    """Run rabbitmqctl (tests that act on the broker itself)."""
    return subprocess.run(
        ["rabbitmqctl", *args], check=True, capture_output=True, text=True, timeout=60
    ).stdout


@pytest.fixture
def classic(broker_url: str, names: Callable[[str], str]) -> Iterator[Pipeline]:
    """The pipeline on classic queues, whose length limit and overflow a policy may set."""
    queue, exchange = names("work"), names("ex")
    app = apps.build_app(queue, exchange, queue_type="classic", delivery_limit=None)
    admin.apply(broker_url, app.topology)
    yield Pipeline(broker_url, queue, exchange, app.topology, app)
    admin.delete(broker_url, app.topology)


@contextlib.contextmanager
def refusing(queue: str) -> Iterator[Callable[[], None]]:
    """Make the broker nack every publish to ``queue``, as a quorum queue does for a
    while after its leader moves: a policy that fills it at zero messages, with
    ``reject-publish`` overflow. Yields what ends the refusal; it ends at exit too."""
    name = f"{queue}.refuse"
    definition = '{"max-length": 0, "overflow": "reject-publish"}'
    rabbitmqctl("set_policy", name, f"^{re.escape(queue)}$", definition, "--apply-to", "queues")

    def end() -> None:
        with contextlib.suppress(subprocess.CalledProcessError):  # already cleared
            rabbitmqctl("clear_policy", name)

    try:
        yield end
    finally:
        end()


# --- a real browser ----------------------------------------------------------------------

CHROMIUM = "/usr/bin/chromium"
DOCS = Path(__file__).resolve().parent.parent / "docs"


@pytest.fixture
def chromium() -> str:
    """Debian's Chromium, for Playwright's ``executable_path`` (no browser download).

    Missing, the test is skipped with the reason, or fails with LEVERET_BROWSER=required.
    """
    if not Path(CHROMIUM).exists():
        if os.environ.get("LEVERET_BROWSER") == "required":
            pytest.fail(f"LEVERET_BROWSER=required, but {CHROMIUM} is missing", pytrace=False)
        pytest.skip(f"{CHROMIUM} is missing: apt-get install chromium (Debian's package)")
    pytest.importorskip("playwright.sync_api")
    return CHROMIUM


@pytest.fixture
def screenshot(tmp_path: Path) -> Callable[[Any, str], Path]:
    """Save a full-page screenshot of a Playwright page to the test's folder.

    ``docs/<name>`` is written only when LEVERET_UPDATE_SCREENSHOT is set or it
    does not exist yet, so a test run leaves the documentation as it was.
    """

    def take(page: Any, name: str) -> Path:
        shot = tmp_path / name
        page.screenshot(path=str(shot), full_page=True)
        if os.environ.get("LEVERET_UPDATE_SCREENSHOT") or not (DOCS / name).exists():
            shutil.copyfile(shot, DOCS / name)
        return shot

    return take
