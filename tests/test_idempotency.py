"""Once: a side effect runs once per key, on every store, and once per message id in a worker.

Every store test runs on SQLite (a temporary file), the local PostgreSQL
(``LEVERET_TEST_PG_URL``, a table of the test's own, dropped after) and the
local Redis (``LEVERET_TEST_REDIS_URL``, keys under a prefix of the test's own,
deleted after). A service that cannot be reached skips its tests, saying so.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa
from structlog.testing import capture_logs

from leveret import App, Context, Retry, Worker
from leveret.errors import ConfigurationError
from leveret.idempotency import Claim, InProgress, Once, RedisStore, SQLStore, Store
from tests import apps
from tests.conftest import Pipeline

PG_URL = os.environ.get("LEVERET_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("LEVERET_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

SHORT = timedelta(milliseconds=300)
"""A lease or ttl that a test waits out."""
WAIT_OUT = 0.6
"""Seconds that are surely past SHORT."""


@pytest.fixture(params=["sqlite", "postgresql", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A store on a table or key prefix of this test's own."""
    name = f"idem_{uuid.uuid4().hex[:10]}"
    if request.param == "redis":
        client = redis.Redis.from_url(REDIS_URL)
        try:
            client.ping()
        except redis.ConnectionError as exc:
            pytest.skip(f"no Redis at {REDIS_URL}: {exc}")
        prefix = f"{name}:"
        try:
            yield RedisStore(client, prefix=prefix)
        finally:
            for key in client.scan_iter(match=f"{prefix}*"):
                client.delete(key)
            client.close()
        return
    url = f"sqlite:///{tmp_path / 'app.db'}" if request.param == "sqlite" else PG_URL
    engine = sa.create_engine(url)
    try:
        engine.connect().close()
    except sa.exc.OperationalError as exc:
        pytest.skip(f"no PostgreSQL at {PG_URL}: {exc.orig}")
    found = SQLStore(engine, table=name)
    try:
        yield found
    finally:
        found.table.drop(engine, checkfirst=True)
        engine.dispose()


def new_id() -> str:
    return str(uuid.uuid4())


class Effect:
    """A side effect that counts its calls, thread-safely."""

    def __init__(self, result: object = None) -> None:
        self.calls = 0
        self.result = result
        self._lock = threading.Lock()

    def __call__(self) -> object:
        with self._lock:
            self.calls += 1
        return self.result


def test_runs_once_then_skips(store: Store) -> None:
    once, effect, key = Once(store), Effect(), new_id()
    once.run(key, "send-email", effect)
    once.run(key, "send-email", effect)
    assert effect.calls == 1


def test_the_duplicate_gets_the_first_result(store: Store) -> None:
    once, key = Once(store), new_id()
    first = once.run(key, "send-email", Effect({"sent_to": "a@example.com", "n": [1, 2]}))
    again = once.run(key, "send-email", Effect({"sent_to": "someone else"}))
    assert first == again == {"sent_to": "a@example.com", "n": [1, 2]}


def test_steps_of_one_message_are_separate(store: Store) -> None:
    once, effect, key = Once(store), Effect(), new_id()
    once.run(key, "charge", effect)
    once.run(key, "send-email", effect)
    once.run(key, None, effect)
    assert effect.calls == 3


def test_racing_callers_run_it_once(store: Store) -> None:
    """Four threads start together; the winner holds its lease until all three others lost."""
    once, key, racers = Once(store), new_id(), 4
    start, lost = threading.Barrier(racers), threading.Semaphore(0)
    effect = Effect("sent")
    outcomes: list[object] = []

    def side_effect() -> object:
        for _ in range(racers - 1):
            lost.acquire(timeout=10)  # a second winner would wait here, then show in calls
        return effect()

    def race() -> None:
        start.wait(timeout=10)
        try:
            outcomes.append(once.run(key, "send-email", side_effect))
        except InProgress as exc:
            outcomes.append(exc)
            lost.release()

    threads = [threading.Thread(target=race) for _ in range(racers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert effect.calls == 1
    assert outcomes.count("sent") == 1
    assert sum(isinstance(o, InProgress) for o in outcomes) == racers - 1
    assert once.run(key, "send-email", effect) == "sent"
    assert effect.calls == 1


def test_a_busy_key_raises_a_retry(store: Store) -> None:
    key = new_id()
    assert store.acquire(key, "other-worker", timedelta(minutes=1), timedelta(days=1)).state == (
        "taken"
    )
    with pytest.raises(Retry, match="held by another worker until") as raised:
        Once(store).run(key, None, Effect())
    assert isinstance(raised.value, InProgress)
    assert raised.value.key == key


def test_a_crashed_holder_s_lease_expires(store: Store) -> None:
    key, effect, ttl = new_id(), Effect("ran"), timedelta(days=1)
    # What a worker that died inside the side effect leaves: a lease, never released.
    assert store.acquire(key, "crashed-worker", SHORT, ttl) == Claim("taken")
    once = Once(store, ttl=ttl)
    with pytest.raises(InProgress):
        once.run(key, None, effect)
    time.sleep(WAIT_OUT)
    assert once.run(key, None, effect) == "ran"
    assert effect.calls == 1
    # Were the dead worker to come back, its finish is refused.
    assert not store.finish(key, "crashed-worker", '"late"', ttl)
    assert once.run(key, None, effect) == "ran"


def test_an_error_releases_the_key(store: Store) -> None:
    once, key, calls = Once(store), new_id(), []

    def flaky() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("smtp down")
        return "sent"

    with pytest.raises(RuntimeError, match="smtp down"):
        once.run(key, None, flaky)
    assert once.run(key, None, flaky) == "sent"
    assert once.run(key, None, flaky) == "sent"
    assert len(calls) == 2


def test_a_holder_that_outlives_its_lease_is_logged(store: Store) -> None:
    once, key = Once(store, lease=SHORT), new_id()

    def slow() -> str:
        time.sleep(WAIT_OUT)
        store.acquire(key, "next-worker", timedelta(minutes=1), timedelta(days=1))
        return "sent"

    with capture_logs() as logs:
        assert once.run(key, None, slow) == "sent"
    assert {"event": "idempotency.lease_lost", "key": key, "log_level": "warning"} in logs


def test_done_keys_are_forgotten_after_the_ttl(store: Store) -> None:
    once, effect, key = Once(store, ttl=SHORT), Effect(), new_id()
    once.run(key, None, effect)
    time.sleep(WAIT_OUT)
    once.purge()
    once.run(key, None, effect)
    assert effect.calls == 2


def test_purge_deletes_expired_records_only(store: Store) -> None:
    short, long = Once(store, ttl=SHORT), Once(store)
    short.run(new_id(), None, Effect())
    long.run(new_id(), None, Effect())
    time.sleep(WAIT_OUT)
    # Redis expired the short key by itself: purge() has nothing left to do there.
    assert short.purge() == (0 if isinstance(store, RedisStore) else 1)
    assert records(store) == 1


def records(store: Store) -> int:
    if isinstance(store, RedisStore):
        return len(list(store.client.scan_iter(match=f"{store.prefix}*")))
    assert isinstance(store, SQLStore)
    with store.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(store.table)).scalar_one())


def test_a_result_that_is_not_json_still_marks_done(store: Store) -> None:
    once, effect, key = Once(store), Effect(object()), new_id()
    with pytest.raises(ConfigurationError, match="not JSON"):
        once.run(key, None, effect)
    assert once.run(key, None, effect) is None
    assert effect.calls == 1


async def test_async_face(store: Store) -> None:
    once, key, calls = Once(store), new_id(), []

    async def send() -> dict[str, str]:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("smtp down")
        await asyncio.sleep(0)
        return {"status": "sent"}

    with pytest.raises(RuntimeError):
        await once.arun(key, "send-email", send)
    assert await once.arun(key, "send-email", send) == {"status": "sent"}
    assert await once.arun(key, "send-email", send) == {"status": "sent"}
    assert len(calls) == 2
    store.acquire(f"{key}:other", "other-worker", timedelta(minutes=1), timedelta(days=1))
    with pytest.raises(InProgress):
        await once.arun(key, "other", send)


async def test_the_sync_face_refuses_an_event_loop(store: Store) -> None:
    with pytest.raises(ConfigurationError, match=r"await once\.arun"):
        Once(store).run(new_id(), None, Effect())


def test_settings_are_checked(store: Store) -> None:
    with pytest.raises(ConfigurationError):
        Once(store, lease=timedelta(0))
    with pytest.raises(ConfigurationError, match="1 to 255"):
        Once(store).run("x" * 250, "send-email", Effect())


def test_sql_store_refuses_other_databases() -> None:
    engine = sa.create_mock_engine("mysql://", executor=lambda *_: None)
    with pytest.raises(ConfigurationError, match="SQLite and PostgreSQL"):
        SQLStore(engine, create=False)  # type: ignore[arg-type]


def pipeline_app(pipeline: Pipeline, handler: Callable[[apps.Task, Context], object]) -> App:
    app = App(pipeline.topology)
    app.handler(apps.Task, queue=pipeline.queue)(handler)  # type: ignore[arg-type]
    return app


async def test_a_message_delivered_twice_sends_once(
    store: Store, pipeline: Pipeline, running: Callable[..., Worker], tmp_path: Path
) -> None:
    sent = tmp_path / "sent.txt"
    once = Once(store)

    def export(message: apps.Task, ctx: Context) -> None:
        def send_email() -> None:
            with sent.open("a") as f:
                f.write(f"{ctx.message_id} {message.n}\n")

        once.run(ctx, "send-email", send_email)

    running(pipeline_app(pipeline, export))
    message_id = new_id()
    pipeline.publish(apps.Task(n=1), message_id=message_id)
    await pipeline.wait(lambda: len(pipeline.finals("processed")) == 1)
    pipeline.publish(apps.Task(n=1), message_id=message_id)
    await pipeline.wait(lambda: len(pipeline.finals("processed")) == 2)
    assert sent.read_text() == f"{message_id} 1\n"
    assert [o.message_id for o in pipeline.finals("processed")] == [message_id, message_id]


async def test_a_duplicate_in_flight_is_retried_then_skipped(
    store: Store, pipeline: Pipeline, running: Callable[..., Worker], tmp_path: Path
) -> None:
    """Both copies reach the two handler slots at once; the email waits until the
    second copy found the key busy, which then passes through a retry tier and skips."""
    sent = tmp_path / "sent.txt"
    once = Once(store)
    busy = asyncio.Event()

    async def export(message: apps.Task, ctx: Context) -> None:
        async def send_email() -> None:
            await asyncio.wait_for(busy.wait(), 10)
            with sent.open("a") as f:
                f.write(f"{ctx.message_id}\n")

        try:
            await once.arun(ctx, "send-email", send_email)
        except InProgress:
            busy.set()
            raise

    running(pipeline_app(pipeline, export), concurrency=2)
    message_id = new_id()
    with pipeline.publisher() as p:
        for _ in range(2):
            p.publish(apps.Task(n=1), exchange=pipeline.exchange, message_id=message_id)
    await pipeline.wait(lambda: len(pipeline.finals("processed")) == 2)
    assert sent.read_text() == f"{message_id}\n"
    retried = pipeline.finals("retry_scheduled")
    assert [(o.message_id, o.attempt) for o in retried] == [(message_id, 1)]
    assert not pipeline.finals("dead_lettered")
