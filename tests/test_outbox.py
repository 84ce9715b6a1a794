"""The transactional outbox: rows added in a transaction, published by the relay.

Every test runs on SQLite (a temporary file) and on the local PostgreSQL
(``LEVERET_TEST_PG_URL``), each on a table of its own, dropped afterwards.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pika
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from sqlalchemy import orm
from structlog.testing import capture_logs

from leveret import Publisher, connection, outbox, tracing
from leveret.cli import main
from leveret.errors import ConfigurationError
from leveret.publisher.core import PublisherCore
from tests import apps

PG_URL = os.environ.get("LEVERET_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@dataclass
class Db:
    """One test's database and outbox table."""

    url: str
    engine: sa.Engine
    table: sa.Table

    @property
    def name(self) -> str:
        return self.table.name

    def rows(self) -> list[sa.Row[tuple[object, ...]]]:
        with self.engine.connect() as conn:
            return list(conn.execute(sa.select(self.table).order_by(self.table.c.id)).all())

    def unsent(self) -> int:
        return outbox.status(self.engine, table=self.table).unsent

    def add_many(self, count: int, exchange: str, **kwargs: object) -> list[str]:
        with self.engine.begin() as conn:
            return [
                outbox.add(conn, apps.Task(n=i), exchange=exchange, table=self.table, **kwargs)  # type: ignore[arg-type]
                for i in range(count)
            ]


def _pg_url_with_password() -> str:
    # Trust authentication ignores a password: one is added so that the tests
    # can check it never shows.
    url = sa.engine.make_url(PG_URL)
    if url.password is None:
        url = url.set(password="s3cret-pg")
    return url.render_as_string(hide_password=False)


@contextlib.contextmanager
def database(kind: str, tmp_path: Path) -> Iterator[Db]:
    """A database of ``kind`` with an outbox table of the test's own, dropped after."""
    name = f"outbox_{uuid.uuid4().hex[:10]}"
    url = f"sqlite:///{tmp_path / 'app.db'}" if kind == "sqlite" else _pg_url_with_password()
    engine = sa.create_engine(url)
    if kind == "postgresql":
        try:
            engine.connect().close()
        except sa.exc.OperationalError as exc:
            pytest.skip(f"no PostgreSQL at {connection.redact(PG_URL)}: {exc.orig}")
    table = outbox.outbox_table(sa.MetaData(), name)
    outbox.create_table(engine, table)
    try:
        yield Db(url, engine, table)
    finally:
        table.drop(engine, checkfirst=True)
        engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Db]:
    with database(request.param, tmp_path) as found:
        yield found


@pytest.fixture
def pg(tmp_path: Path) -> Iterator[Db]:
    """PostgreSQL only: several relays at once, schemas."""
    with database("postgresql", tmp_path) as found:
        yield found


@dataclass
class Route:
    """A direct exchange and a durable queue bound to it with ``task``."""

    url: str
    exchange: str
    queue: str

    def channel(self) -> tuple[pika.BlockingConnection, object]:
        conn = connection.connect(self.url)
        return conn, conn.channel()

    def depth(self) -> int:
        conn = connection.connect(self.url)
        try:
            ok = conn.channel().queue_declare(self.queue, passive=True)
            return int(ok.method.message_count)
        finally:
            conn.close()

    def bind(self, routing_key: str) -> None:
        conn = connection.connect(self.url)
        try:
            conn.channel().queue_bind(self.queue, self.exchange, routing_key)
        finally:
            conn.close()

    def drain(self, idle: float = 1.0) -> list[tuple[pika.BasicProperties, bytes]]:
        """Every message in the queue (acked), until none came for ``idle`` seconds."""
        conn = connection.connect(self.url)
        got: list[tuple[pika.BasicProperties, bytes]] = []
        try:
            ch = conn.channel()
            ch.basic_qos(prefetch_count=500)
            for method, props, body in ch.consume(
                self.queue, auto_ack=True, inactivity_timeout=idle
            ):
                if method is None:
                    break
                got.append((props, body))
            ch.cancel()
        finally:
            conn.close()
        return got


@pytest.fixture
def route(broker_url: str, names: Callable[[str], str]) -> Iterator[Route]:
    exchange, queue = names("ex"), names("q")
    conn = connection.connect(broker_url)
    ch = conn.channel()
    ch.exchange_declare(exchange, "direct", durable=True)
    ch.queue_declare(queue, durable=True)
    ch.queue_bind(queue, exchange, "task")
    conn.close()
    yield Route(broker_url, exchange, queue)
    conn = connection.connect(broker_url)
    ch = conn.channel()
    ch.queue_delete(queue)
    ch.exchange_delete(exchange)
    conn.close()


def relay_until_empty(relay: outbox.Relay, db: Db, timeout: float = 60.0) -> int:
    sent = 0
    deadline = time.monotonic() + timeout
    while db.unsent():
        assert time.monotonic() < deadline, f"{db.unsent()} rows still unsent"
        sent += relay.run_once()
    return sent


def ns(messages: list[tuple[pika.BasicProperties, bytes]]) -> list[int]:
    return [apps.Task.from_json(body).n for _props, body in messages]  # type: ignore[attr-defined]


# --- adding, without a broker ---------------------------------------------------------


def test_add_stores_the_envelope_the_publisher_builds(db: Db) -> None:
    message = apps.Task(n=7)
    with orm.Session(db.engine) as session, session.begin():
        message_id = outbox.add(
            session,
            message,
            exchange="ex",
            correlation_id="req-1",
            headers={"tenant": "acme", "leveret-retry-count": 9},
            table=db.table,
        )

    expected = PublisherCore(connection.DEFAULT_URL).envelope(
        message,
        exchange="ex",
        message_id=message_id,
        correlation_id="req-1",
        headers={"tenant": "acme", "leveret-retry-count": 9},
    )
    (row,) = db.rows()
    env = outbox.envelope_of(row)
    assert env.body == expected.body == message.to_json()
    assert row.body == message.to_json().decode()
    assert (env.exchange, env.routing_key, env.type) == ("ex", "task", "test.task")
    # The row keeps its own traceparent, the one the relay sends.
    assert tracing.of(env.headers) is not None
    without_trace = {k: v for k, v in env.headers.items() if k != tracing.TRACEPARENT}
    assert without_trace == {"tenant": "acme", "leveret-version": 1}
    assert expected.headers.keys() == env.headers.keys()
    assert (env.message_id, env.correlation_id, row.version) == (message_id, "req-1", 1)
    assert abs(env.timestamp - expected.timestamp) <= 1
    assert (row.sent_at, row.attempts, row.last_error) == (None, 0, None)


def test_a_rolled_back_transaction_leaves_no_row(db: Db) -> None:
    with db.engine.connect() as conn:
        outbox.add(conn, apps.Task(n=1), exchange="ex", table=db.table)
        conn.rollback()
    with orm.Session(db.engine) as session:
        outbox.add(session, apps.Task(n=2), exchange="ex", table=db.table)
        session.rollback()

    assert db.rows() == []


def test_add_refuses_what_cannot_be_published(db: Db) -> None:
    with db.engine.begin() as conn:
        with pytest.raises(ConfigurationError, match="exchange"):
            outbox.add(conn, apps.Task(n=1), table=db.table)  # Task has no default exchange
        with pytest.raises(ConfigurationError, match="JSON"):
            outbox.add(conn, apps.Task(n=1), exchange="ex", headers={"x": object()}, table=db.table)

    assert db.rows() == []


def test_purge_deletes_only_old_sent_rows(db: Db) -> None:
    db.add_many(3, "ex")
    ids = [row.id for row in db.rows()]
    now = datetime.now(UTC)
    with db.engine.begin() as conn:
        for row_id, sent_at in zip(ids, [now - timedelta(days=10), now], strict=False):
            conn.execute(sa.update(db.table).where(db.table.c.id == row_id).values(sent_at=sent_at))

    assert outbox.purge(db.engine, timedelta(days=7), table=db.table) == 1
    assert [row.id for row in db.rows()] == ids[1:]


def test_status_counts_and_hides_the_database_password(db: Db) -> None:
    db.add_many(3, "ex")
    first, second, _third = (row.id for row in db.rows())
    with db.engine.begin() as conn:
        t = db.table
        conn.execute(sa.update(t).where(t.c.id == first).values(sent_at=datetime.now(UTC)))
        conn.execute(sa.update(t).where(t.c.id == second).values(last_error="Unroutable: x"))

    found = outbox.status(db.engine, table=db.table)
    result = CliRunner().invoke(main, ["outbox", "status", "--db", db.url, "--table", db.name])

    assert (found.unsent, found.sent, found.with_errors) == (2, 1, 1)
    assert found.oldest_unsent is not None and found.oldest_unsent < timedelta(minutes=1)
    assert result.exit_code == 0, result.output
    lines = dict(line.split(None, 1) for line in result.output.splitlines()[1:])
    assert lines["unsent"].strip() == "2" and lines["sent"].strip() == "1"
    assert "with errors    1" in result.output
    password = sa.engine.make_url(db.url).password
    assert password is None or password not in result.output
    if password:
        assert ":***@" in result.output


def test_a_missing_table_is_a_one_line_error(db: Db) -> None:
    result = CliRunner().invoke(
        main, ["outbox", "relay", "--db", db.url, "--table", "no_such_outbox"]
    )

    assert result.exit_code == 1
    assert "no outbox table no_such_outbox" in result.output
    password = sa.engine.make_url(db.url).password
    assert password is None or password not in result.output


# --- relaying ---------------------------------------------------------------------


def test_a_rolled_back_transaction_publishes_nothing(db: Db, route: Route) -> None:
    with orm.Session(db.engine) as session:
        outbox.add(session, apps.Task(n=1), exchange=route.exchange, table=db.table)
        session.rollback()

    with outbox.Relay(db.engine, route.url, table=db.table) as relay:
        assert relay.run_once() == 0

    assert route.depth() == 0


def test_a_committed_row_is_published_as_the_publisher_would(db: Db, route: Route) -> None:
    message = apps.Task(n=42)
    extra = {"tenant": "acme", "count": 3, "leveret-retry-count": 5}
    with orm.Session(db.engine) as session, session.begin():
        message_id = outbox.add(
            session,
            message,
            exchange=route.exchange,
            correlation_id="req-9",
            headers=extra,
            table=db.table,
        )

    with outbox.Relay(db.engine, route.url, table=db.table, app_id="web") as relay:
        assert relay.run_once() == 1
    ((relayed, relayed_body),) = route.drain(idle=0.3)
    with Publisher(route.url, app_id="web") as publisher:
        publisher.publish(
            message,
            exchange=route.exchange,
            message_id=message_id,
            correlation_id="req-9",
            headers=extra,
        )
    ((direct, direct_body),) = route.drain(idle=0.3)

    assert relayed_body == direct_body == message.to_json()
    for name in ("content_type", "delivery_mode", "message_id", "type", "correlation_id", "app_id"):
        assert getattr(relayed, name) == getattr(direct, name), name
    (row,) = db.rows()
    # Each publish has a traceparent of its own; the relay sends the row's.
    assert relayed.headers.pop(tracing.TRACEPARENT) == row.headers[tracing.TRACEPARENT]
    assert tracing.parse(direct.headers.pop(tracing.TRACEPARENT)) is not None
    assert relayed.headers == direct.headers == {"tenant": "acme", "count": 3, "leveret-version": 1}
    assert abs(relayed.timestamp - direct.timestamp) <= 2
    assert row.sent_at is not None and row.attempts == 1


def test_rows_are_published_in_id_order(db: Db, route: Route) -> None:
    db.add_many(250, route.exchange)

    with outbox.Relay(db.engine, route.url, table=db.table, batch=40) as relay:
        assert relay_until_empty(relay, db) == 250

    assert ns(route.drain()) == list(range(250))


def test_an_unroutable_row_is_recorded_and_does_not_block_the_others(db: Db, route: Route) -> None:
    with db.engine.begin() as conn:
        for i in range(10):
            key = "nowhere" if i == 4 else None
            outbox.add(
                conn, apps.Task(n=i), exchange=route.exchange, routing_key=key, table=db.table
            )
    bad = db.rows()[4]

    with (
        outbox.Relay(db.engine, route.url, table=db.table, backoff=0.5) as relay,
        capture_logs() as logs,
    ):
        assert relay.run_once() == 9
        assert relay.run_once() == 0  # the failed row waits for its backoff
        after = {row.id: row for row in db.rows()}[bad.id]
        found = outbox.status(db.engine, table=db.table)
        assert ns(route.drain(idle=0.3)) == [0, 1, 2, 3, 5, 6, 7, 8, 9]

        # Once a queue is bound for it, the row goes out on a later pass.
        route.bind("nowhere")
        time.sleep(0.6)
        assert relay.run_once() == 1

    assert after.sent_at is None and after.attempts == 1
    assert after.last_error.startswith("Unroutable: ")
    assert "'nowhere'" in after.last_error
    assert (found.unsent, found.with_errors) == (1, 1)
    failed = [e for e in logs if e["event"] == "outbox.publish_failed"]
    assert [(e["message_id"], e["attempts"], e["retry_in"]) for e in failed] == [
        (bad.message_id, 1, 0.5)
    ]
    assert len([e for e in logs if e["event"] == "outbox.sent"]) == 10
    assert ns(route.drain(idle=0.3)) == [4]
    final = {row.id: row for row in db.rows()}[bad.id]
    assert final.sent_at is not None and final.attempts == 2
    assert final.last_error == after.last_error  # kept, for the record


def test_a_missing_exchange_fails_only_its_own_row(db: Db, route: Route) -> None:
    missing = f"{route.exchange}.missing"
    with db.engine.begin() as conn:
        for i in range(6):
            exchange = missing if i == 2 else route.exchange
            outbox.add(conn, apps.Task(n=i), exchange=exchange, table=db.table)

    with outbox.Relay(db.engine, route.url, table=db.table) as relay:
        assert relay.run_once() == 5

    rows = db.rows()
    assert [row.sent_at is None for row in rows] == [False, False, True, False, False, False]
    assert rows[2].last_error.startswith(f"TopologyMissing: exchange '{missing}' does not exist")
    assert [row.last_error for i, row in enumerate(rows) if i != 2] == [None] * 5
    # The others were in flight on the channel the error closed: they went out
    # again, one at a time, and some may have arrived twice.
    assert set(ns(route.drain(idle=0.3))) == {0, 1, 3, 4, 5}


def test_two_relays_on_postgresql_do_not_publish_a_row_twice(pg: Db, route: Route) -> None:
    ids = pg.add_many(1000, route.exchange)
    start = threading.Barrier(2)
    counts: list[int] = []
    errors: list[BaseException] = []

    def relay() -> None:
        try:
            with outbox.Relay(pg.engine, route.url, table=pg.table, batch=20) as r:
                start.wait()
                sent = 0
                while pg.unsent():
                    sent += r.run_once()
                counts.append(sent)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=relay) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)

    assert not errors
    got = [props.message_id for props, _body in route.drain()]
    assert sorted(got) == sorted(ids)  # every row once, none twice
    assert sum(counts) == 1000 and min(counts) > 0, counts


def test_a_relay_killed_mid_way_loses_nothing(db: Db, route: Route) -> None:
    total, batch = 3000, 100
    ids = db.add_many(total, route.exchange)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [
        sys.executable,
        "-m",
        "leveret.cli",
        "--json-logs",
        "--log-level",
        "WARNING",
        "outbox",
        "relay",
        "--db",
        db.url,
        "--table",
        db.name,
        "--url",
        route.url,
        "--batch",
        str(batch),
    ]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while (sent := total - db.unsent()) < 300:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the relay marked nothing in 60 s"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        out, err = proc.communicate(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    unmarked = {row.message_id for row in db.rows() if row.sent_at is None}
    assert sent >= 300 and unmarked, "the relay was not killed mid-way"

    started = time.monotonic()
    with outbox.Relay(db.engine, route.url, table=db.table, batch=batch) as relay:
        relay_until_empty(relay, db, timeout=60)
    took = time.monotonic() - started

    published = collections.Counter(props.message_id for props, _body in route.drain())
    duplicates = {mid: n for mid, n in published.items() if n > 1}
    assert set(published) == set(ids)  # every row at least once
    assert all(row.sent_at is not None for row in db.rows())
    # Only rows published by the killed relay but not yet marked go out twice:
    # at most its batch in flight, and only rows it had not marked.
    assert sum(published.values()) - total == sum(n - 1 for n in duplicates.values())
    assert len(duplicates) <= batch and all(n == 2 for n in duplicates.values())
    assert set(duplicates) <= unmarked
    print(f"killed after {total - len(unmarked)} rows marked; {len(duplicates)} duplicates")
    assert took < 60
    password = sa.engine.make_url(db.url).password
    assert password is None or password.encode() not in out + err


def test_the_relay_stops_on_sigterm_and_hides_the_password(db: Db, route: Route) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "leveret.cli",
            "--json-logs",
            "outbox",
            "relay",
            "--db",
            db.url,
            "--table",
            db.name,
            "--url",
            route.url,
            "--poll-interval",
            "0.1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        db.add_many(3, route.exchange)
        deadline = time.monotonic() + 30
        while db.unsent():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the relay sent nothing in 30 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
    finally:
        proc.kill()

    assert proc.returncode == 0, err.decode()
    lines = err.decode()
    assert '"event":"outbox.relay_started"' in lines
    assert '"event":"outbox.relay_stopped"' in lines
    assert lines.count('"event":"outbox.sent"') == 3
    assert "guest:guest" not in lines  # the broker's password
    password = sa.engine.make_url(db.url).password
    assert password is None or password.encode() not in out + err
    assert len(route.drain(idle=0.3)) == 3


def test_a_table_in_its_own_schema_as_alembic_would_define_it(pg: Db, route: Route) -> None:
    schema = f"s_{uuid.uuid4().hex[:10]}"
    with pg.engine.begin() as conn:
        conn.execute(sa.schema.CreateSchema(schema))
    try:
        metadata = sa.MetaData(schema=schema)  # the application's own, in real life
        table = outbox.outbox_table(metadata, "outbox", schema=schema)
        metadata.create_all(pg.engine)
        with pg.engine.begin() as conn:
            outbox.add(conn, apps.Task(n=5), exchange=route.exchange, table=table)
        with outbox.Relay(pg.engine, route.url, table=table) as relay:
            assert relay.run_once() == 1
        assert outbox.status(pg.engine, table=table).sent == 1
    finally:
        with pg.engine.begin() as conn:
            conn.execute(sa.schema.DropSchema(schema, cascade=True))
    assert ns(route.drain(idle=0.3)) == [5]
