"""Least privilege: each role may do what it needs and nothing else."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from leveret import Publisher, Worker, admin, connection, dlq, permissions
from leveret.errors import AccessRefused
from leveret.topology import dead_letter_queue
from tests.apps import Task
from tests.conftest import Pipeline, rabbitmqctl

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def users(pipeline: Pipeline, names: Callable[[str], str]) -> Iterator[dict[str, str]]:
    """The topology's roles as real users, with random passwords: role -> URL."""
    prefix = names("u") + "-"
    roles = permissions.roles(pipeline.topology, prefix=prefix)
    urls = {}
    try:
        for role, command in zip(roles, permissions.rabbitmqctl_commands(roles), strict=True):
            password = secrets.token_hex(8)
            rabbitmqctl("add_user", role.user, password)
            subprocess.run(command, check=True, capture_output=True, timeout=60)
            kind = role.user.removeprefix(prefix).split("-")[0]
            urls[kind] = f"amqp://{role.user}:{password}@127.0.0.1:5672/"
        yield urls
    finally:
        for role in roles:
            subprocess.run(
                ["rabbitmqctl", "delete_user", role.user], capture_output=True, timeout=60
            )


def test_the_publisher_publishes_but_cannot_consume_or_purge(
    pipeline: Pipeline, users: dict[str, str]
) -> None:
    with Publisher(users["publisher"]) as pub:
        pub.publish(Task(n=1), exchange=pipeline.exchange)
        pub.publish(Task(n=2), exchange=pipeline.exchange)
    assert pipeline.depth(pipeline.queue) == 2
    pipeline.reject_one()  # something in the dead-letter queue to read
    with pytest.raises(AccessRefused, match=r"access refused: access to queue '.*\.dlq'"):
        dlq.browse(users["publisher"], pipeline.queue)
    with pytest.raises(AccessRefused):
        dlq.purge(users["publisher"], pipeline.queue)
    conn = connection.connect(users["publisher"])
    try:
        import pika.exceptions

        with pytest.raises(pika.exceptions.ChannelClosedByBroker, match="ACCESS_REFUSED"):
            conn.channel().basic_get(pipeline.queue)
    finally:
        if conn.is_open:
            conn.close()


async def test_the_worker_consumes_and_retries_but_nothing_more(
    pipeline: Pipeline, users: dict[str, str], names: Callable[[str], str]
) -> None:
    worker = Worker(pipeline.app, users["worker"], on_outcome=pipeline.outcomes.append)
    task = asyncio.create_task(worker.run())
    pipeline.publish(Task(n=1, fail_times=1))  # the retry path needs write on Q.retry
    pipeline.publish(Task(n=2, fail_times=9))  # and the dead-letter path on Q.dead
    await pipeline.wait(
        lambda: (
            len(pipeline.finals("processed")) == 1
            and pipeline.depth(dead_letter_queue(pipeline.queue)) == 1
        )
    )
    worker.stop()
    await task
    other = names("other-ex")
    admin.apply(
        pipeline.url,
        admin_topology := __import__("tests.apps", fromlist=["topology"]).topology(
            names("q2"), other
        ),
    )
    try:
        with (
            Publisher(users["worker"]) as pub,
            pytest.raises(AccessRefused, match=f"access to exchange '{other}'"),
        ):
            pub.publish(Task(n=3), exchange=other)
    finally:
        admin.delete(pipeline.url, admin_topology)
    conn = connection.connect(users["worker"])
    try:
        import pika.exceptions

        with pytest.raises(pika.exceptions.ChannelClosedByBroker, match="ACCESS_REFUSED"):
            conn.channel().queue_delete(pipeline.queue)
    finally:
        if conn.is_open:
            conn.close()


def test_the_admin_applies_and_replays(pipeline: Pipeline, users: dict[str, str]) -> None:
    admin.apply(users["admin"], pipeline.topology)
    pipeline.publish(Task(n=1))
    pipeline.reject_one()
    assert len(dlq.replay(users["admin"], pipeline.queue)) == 1


def test_a_refused_worker_is_one_line(pipeline: Pipeline, users: dict[str, str]) -> None:
    env = dict(
        os.environ, LEVERET_TEST_QUEUE=pipeline.queue, LEVERET_TEST_EXCHANGE=pipeline.exchange
    )
    # The publisher's user may not consume.
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "leveret.cli",
            "worker",
            "tests.apps:app",
            "--url",
            users["publisher"],
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"leveret: access refused: access to queue '{pipeline.queue}'")
    assert line.endswith("see `leveret topology users` for the permissions a role needs")
    assert users["publisher"].split(":")[2].split("@")[0] not in line  # no password
