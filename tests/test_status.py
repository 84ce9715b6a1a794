"""Job status: the store on SQLite and PostgreSQL, and tracked handlers on the broker."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pika
import pytest
import sqlalchemy as sa

from leveret import (
    App,
    Binding,
    Context,
    Exchange,
    Publisher,
    Queue,
    RetryPolicy,
    Topology,
    Worker,
    admin,
)
from leveret.status import app as status_app
from leveret.status.events import EXCHANGE, JobStatus, Then, timestamp
from leveret.status.store import Closed, JobStore
from tests import apps

PG_URL = os.environ.get("LEVERET_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def event(job: str, state: str, at: datetime, **fields: object) -> JobStatus:
    return JobStatus(job_id=job, state=state, at=timestamp(at), type="t.job", **fields)  # type: ignore[arg-type]


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[JobStore]:
    table = f"jobs_{uuid.uuid4().hex[:10]}"
    if request.param == "sqlite":
        jobs = JobStore(f"sqlite:///{tmp_path / 'jobs.db'}", table=table)
    else:
        engine = sa.create_engine(PG_URL)
        try:
            engine.connect().close()
        except sa.exc.OperationalError as exc:
            pytest.skip(f"no PostgreSQL at {PG_URL}: {exc.orig}")
        jobs = JobStore(engine, table=table)
    yield jobs
    jobs.table.drop(jobs.engine, checkfirst=True)
    jobs.close()


T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_a_job_follows_its_events(store: JobStore) -> None:
    store.apply(event("j1", "queued", T0), "e1")
    store.apply(event("j1", "started", T0 + timedelta(seconds=1), attempt=1), "e2")
    store.apply(
        event("j1", "progress", T0 + timedelta(seconds=2), percent=37, message="37 of 100"), "e3"
    )

    job = store.get("j1")

    assert job is not None
    assert (job["state"], job["percent"], job["message"]) == ("progress", 37.0, "37 of 100")
    assert [s["state"] for s in job["steps"]] == ["queued", "started", "progress"]
    assert job["created_at"] == timestamp(T0)
    assert job["updated_at"] == timestamp(T0 + timedelta(seconds=2))

    store.apply(event("j1", "succeeded", T0 + timedelta(seconds=3), result="/files/j1.csv"), "e4")
    job = store.get("j1")
    assert job is not None
    assert (job["state"], job["percent"], job["result"]) == ("succeeded", 100.0, "/files/j1.csv")


def test_events_out_of_order_and_twice(store: JobStore) -> None:
    done = event("j2", "succeeded", T0 + timedelta(seconds=5), result="r")
    assert store.apply(done, "e-done")
    # A late progress line and a duplicate do not undo the final state.
    assert store.apply(event("j2", "progress", T0 + timedelta(seconds=4), percent=90), "e-p")
    assert not store.apply(done, "e-done")
    job = store.get("j2")
    assert job is not None
    assert job["state"] == "succeeded"
    assert [s["id"] for s in job["steps"]] == ["e-p", "e-done"]


def test_a_final_state_wins_a_tie(store: JobStore) -> None:
    store.apply(event("j3", "failed", T0, reason="handler-error", error="boom"), "a")
    store.apply(event("j3", "progress", T0, percent=50), "b")
    job = store.get("j3")
    assert job is not None
    assert (job["state"], job["reason"], job["error"]) == ("failed", "handler-error", "boom")


def test_a_replayed_job_can_run_again(store: JobStore) -> None:
    store.apply(event("j4", "failed", T0, reason="handler-error"), "a")
    store.apply(event("j4", "started", T0 + timedelta(minutes=5), attempt=1), "b")
    job = store.get("j4")
    assert job is not None
    assert job["state"] == "started"


def test_unknown_jobs_and_expiry(store: JobStore) -> None:
    assert store.get("nope") is None
    store.apply(event("old", "succeeded", datetime.now(UTC) - timedelta(days=8)), "x")
    store.apply(event("new", "succeeded", datetime.now(UTC)), "y")
    assert store.expire(timedelta(days=7)) == 1
    assert store.get("old") is None
    assert store.get("new") is not None


def test_two_writers_lose_no_step(store: JobStore) -> None:
    events = [event("j5", "progress", T0 + timedelta(seconds=i), percent=i) for i in range(40)]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda i: store.apply(events[i], f"e{i}"), range(40)))
    job = store.get("j5")
    assert job is not None
    assert len(job["steps"]) == 40
    assert job["percent"] == 39.0


def test_the_store_never_shows_its_password(tmp_path: Path) -> None:
    engine = sa.create_engine("postgresql+psycopg://app:s3cret@127.0.0.1:1/db")
    jobs = JobStore(engine, create=False)
    assert "s3cret" not in repr(jobs)


# --- tracked handlers on the broker ---------------------------------------------


class Export(apps.Task, type="test.status.export", version=1, routing_key="export"):
    """A task that reports its progress."""


def delete_queues(url: str, topology: Topology) -> None:
    """Delete a test's queues and its own exchanges; leveret.status is shared and stays."""
    with admin.channel(url) as ch:
        for q in topology.queues:
            for name in [q.name, f"{q.name}.dlq", *(t for t, _ in q.tier_queues())]:
                ch.queue_delete(name)
            for name in [f"{q.name}.retry", f"{q.name}.dead"]:
                ch.exchange_delete(name)
        for e in topology.exchanges:
            if e.name != EXCHANGE:
                ch.exchange_delete(e.name)


@pytest.mark.timeout(60)
async def test_a_tracked_job_reports_every_step(
    broker_url: str, names: Callable[[str], str], tmp_path: Path
) -> None:
    queue, exchange = names("exports"), names("ex")
    app = App(
        Topology(
            exchanges=(Exchange(exchange),),
            queues=(
                Queue(queue, bindings=(Binding(exchange, "export"),), retry=RetryPolicy((0.2,), 3)),
            ),
        )
    )

    @app.handler(Export, queue=queue, track=True)
    async def export(message: Export, ctx: Context) -> str | None:
        for part in range(1, 5):
            await ctx.aprogress(part * 25, f"part {part} of 4")
        if ctx.attempt <= message.fail_times:
            raise RuntimeError(f"attempt {ctx.attempt} fails")
        return f"/exports/{ctx.message_id}.csv"

    assert EXCHANGE in {e.name for e in app.topology.exchanges}, "tracking adds the exchange"
    jobs = JobStore(f"sqlite:///{tmp_path / 'jobs.db'}")
    store_queue = names("status")
    recorder = status_app.build_app(jobs, queue=store_queue)
    admin.apply(broker_url, app.topology)
    admin.apply(broker_url, recorder.topology)
    workers = [Worker(app, broker_url), Worker(recorder, broker_url)]
    running = [asyncio.create_task(w.run()) for w in workers]
    try:
        with Publisher(broker_url) as publisher:
            once = publisher.publish(Export(n=1, fail_times=1), exchange=exchange)
            never = publisher.publish(Export(n=2, fail_times=9), exchange=exchange)

        def final(job_id: str) -> dict[str, object] | None:
            job = jobs.get(job_id)
            return job if job and job["state"] in ("succeeded", "failed") else None

        deadline = asyncio.get_running_loop().time() + 30
        while not (final(once) and final(never)):
            assert asyncio.get_running_loop().time() < deadline, (jobs.get(once), jobs.get(never))
            await asyncio.sleep(0.1)
    finally:
        for w in workers:
            w.stop()
        await asyncio.gather(*running)
        delete_queues(broker_url, app.topology)
        delete_queues(broker_url, recorder.topology)

    job = jobs.get(once)
    assert job is not None
    states = [s["state"] for s in job["steps"]]
    assert states == [
        *["started", "progress", "progress", "progress", "progress", "retrying"],
        *["started", "progress", "progress", "progress", "progress", "succeeded"],
    ]
    assert (job["result"], job["percent"], job["attempt"], job["type"]) == (
        f"/exports/{once}.csv",
        100.0,
        2,
        "test.status.export",
    )
    retrying = job["steps"][5]
    assert "attempt 1 fails" in retrying["error"]
    assert retrying["next_attempt_at"] > retrying["at"]

    job = jobs.get(never)
    assert job is not None
    assert (job["state"], job["reason"], job["attempt"]) == ("failed", "handler-error", 3)
    assert "attempt 3 fails" in str(job["error"])
    assert [s["state"] for s in job["steps"]].count("started") == 3


# --- batches ------------------------------------------------------------------------


def then_spec() -> Then:
    return Then(
        exchange="x", routing_key="done", type="t.done", version=1, message_id="m1", body="{}"
    )


def test_a_batch_counts_each_member_once_and_closes_once(store: JobStore) -> None:
    closed: list[Closed] = []
    # A member may end before the store learns the batch's size.
    store.apply(event("m1", "succeeded", T0, batch_id="b1"), "e1", closed.append)
    store.apply(event("b1", "started", T0, batch_size=3, then=then_spec()), "e0", closed.append)
    job = store.get("b1")
    assert job is not None
    assert (job["state"], job["message"], job["percent"]) == ("started", "1 of 3 done", 33.3)
    store.apply(event("m1", "succeeded", T0, batch_id="b1"), "e1-again", closed.append)
    store.apply(event("m2", "retrying", T0, batch_id="b1"), "e2", closed.append)
    store.apply(
        event("m2", "failed", T0, batch_id="b1", reason="handler-error"), "e3", closed.append
    )
    assert not closed
    store.apply(event("m3", "succeeded", T0, batch_id="b1"), "e4", closed.append)
    store.apply(event("m3", "succeeded", T0, batch_id="b1"), "e4-again", closed.append)

    assert closed == [Closed("b1", then_spec(), 2, ["m2"])]
    job = store.get("b1")
    assert job is not None
    assert (job["state"], job["reason"], job["message"]) == (
        "failed",
        "batch-members-failed",
        "3 of 3 done, 1 failed",
    )
    assert "m2" in job["error"]
    assert job["batch"] == {"size": 3, "succeeded": 2, "failed": 1, "closed": True}


def test_an_empty_batch_closes_at_once(store: JobStore) -> None:
    closed: list[Closed] = []
    store.apply(event("b2", "started", T0, batch_size=0), "e0", closed.append)
    assert closed == [Closed("b2", None, 0, [])]
    job = store.get("b2")
    assert job is not None
    assert job["state"] == "succeeded"


def test_a_failing_close_records_nothing_and_closes_on_redelivery(store: JobStore) -> None:
    store.apply(event("b3", "started", T0, batch_size=1), "e0")

    def broken(batch: Closed) -> None:
        raise ConnectionError("broker gone")

    with pytest.raises(ConnectionError):
        store.apply(event("m", "succeeded", T0, batch_id="b3"), "e1", broken)
    closed: list[Closed] = []
    store.apply(event("m", "succeeded", T0, batch_id="b3"), "e1", closed.append)
    assert [c.batch_id for c in closed] == ["b3"]


class Chunk(apps.Task, type="test.status.chunk", version=1, routing_key="chunk"):
    """One chunk of a split export."""


class Assembled(apps.Task, type="test.status.assembled", version=1, routing_key="assembled"):
    """Published once every chunk ended."""


@pytest.mark.timeout(60)
async def test_a_task_splits_itself_and_the_batch_publishes_its_completion(
    broker_url: str, names: Callable[[str], str], tmp_path: Path
) -> None:
    exchange = names("ex")
    exports, chunks, assembled = names("exports"), names("chunks"), names("assembled")
    app = App(
        Topology(
            exchanges=(Exchange(exchange),),
            queues=(
                Queue(exports, bindings=(Binding(exchange, "export"),)),
                Queue(chunks, bindings=(Binding(exchange, "chunk"),), retry=RetryPolicy((0.1,), 2)),
                Queue(assembled, bindings=(Binding(exchange, "assembled"),)),
            ),
        )
    )
    done: list[tuple[str, str | None, int]] = []

    @app.handler(Export, queue=exports, track=True)
    async def split(message: Export, ctx: Context) -> str:
        members = [Chunk(n=i, fail_times=9 if i == 7 else 0) for i in range(20)]
        batch = await ctx.abatch(members, then=Assembled(n=message.n), exchange=exchange)
        return f"batch:{batch}"

    @app.handler(Chunk, queue=chunks)  # not tracked: members report anyway
    def chunk(message: Chunk, ctx: Context) -> None:
        if ctx.attempt <= message.fail_times:
            raise RuntimeError(f"chunk {message.n} fails")

    @app.handler(Assembled, queue=assembled)
    async def assemble(message: Assembled, ctx: Context) -> None:
        done.append((ctx.message_id, ctx.correlation_id, message.n))

    jobs = JobStore(f"sqlite:///{tmp_path / 'jobs.db'}")
    recorder = status_app.build_app(jobs, queue=names("status"))
    admin.apply(broker_url, app.topology)
    admin.apply(broker_url, recorder.topology)
    workers = [Worker(app, broker_url), Worker(recorder, broker_url)]
    running = [asyncio.create_task(w.run()) for w in workers]
    try:
        with Publisher(broker_url) as publisher:
            job_id = publisher.publish(Export(n=42), exchange=exchange)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while not done:
            assert loop.time() < deadline, jobs.get(job_id)
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.3)  # a second completion would show up here
    finally:
        for w in workers:
            w.stop()
        await asyncio.gather(*running)
        delete_queues(broker_url, app.topology)
        delete_queues(broker_url, recorder.topology)

    parent = jobs.get(job_id)
    assert parent is not None
    assert parent["state"] == "succeeded"
    batch_id = str(parent["result"]).removeprefix("batch:")
    batch = jobs.get(batch_id)
    assert batch is not None
    assert batch["batch"] == {"size": 20, "succeeded": 19, "failed": 1, "closed": True}
    assert (batch["state"], batch["message"]) == ("failed", "20 of 20 done, 1 failed")
    assert len(done) == 1
    assert done[0][1:] == (batch_id, 42)


@pytest.mark.timeout(30)
async def test_an_invalid_batch_member_still_reports_its_end(
    broker_url: str, names: Callable[[str], str]
) -> None:
    queue, exchange, events = names("chunks"), names("ex"), names("events")
    app = App(
        Topology(
            exchanges=(Exchange(exchange),),
            queues=(Queue(queue, bindings=(Binding(exchange, "chunk"),)),),
        )
    )

    @app.handler(Chunk, queue=queue)
    def chunk(message: Chunk, ctx: Context) -> None:
        raise AssertionError("an invalid message never reaches its handler")

    admin.apply(broker_url, app.topology)
    member = str(uuid.uuid4())
    with admin.channel(broker_url) as ch:
        ch.exchange_declare(EXCHANGE, "topic", durable=True)
        ch.queue_declare(events, exclusive=False, auto_delete=False)
        ch.queue_bind(events, EXCHANGE, routing_key=member)
    worker = Worker(app, broker_url)
    running = asyncio.create_task(worker.run())
    try:
        with admin.channel(broker_url) as ch:
            ch.confirm_delivery()
            ch.basic_publish(
                exchange,
                "chunk",
                b"{not json",
                pika.BasicProperties(
                    content_type="application/json",
                    message_id=member,
                    type=Chunk.message_type,
                    headers={"leveret-version": 1, "leveret-batch-id": "b-invalid"},
                ),
            )
        ended: list[JobStatus] = []
        deadline = asyncio.get_running_loop().time() + 15
        while not ended:
            assert asyncio.get_running_loop().time() < deadline, "no final status event"
            with admin.channel(broker_url) as ch:
                method, _props, body = ch.basic_get(events, auto_ack=True)
            if method is not None:
                event = JobStatus.from_json(body)
                assert isinstance(event, JobStatus)
                if event.state in ("succeeded", "failed"):
                    ended.append(event)
            else:
                await asyncio.sleep(0.1)
    finally:
        worker.stop()
        await running
        delete_queues(broker_url, app.topology)
        with admin.channel(broker_url) as ch:
            ch.queue_delete(events)

    assert (ended[0].state, ended[0].reason, ended[0].batch_id) == (
        "failed",
        "invalid-json",
        "b-invalid",
    )
