"""The worker as a process: `leveret worker`, signals and exit codes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from leveret.topology import dead_letter_queue
from tests.apps import Task
from tests.conftest import Pipeline


def events(log: str) -> set[str]:
    """The event names of a JSON log: every line must be a JSON object."""
    return {json.loads(line)["event"] for line in log.splitlines() if line.strip()}


ROOT = Path(__file__).resolve().parent.parent


def start_worker(p: Pipeline, markers: Path, *args: str) -> subprocess.Popen[str]:
    env = dict(
        os.environ,
        LEVERET_URL=p.url,
        LEVERET_TEST_QUEUE=p.queue,
        LEVERET_TEST_EXCHANGE=p.exchange,
        LEVERET_TEST_MARKERS=str(markers),
    )
    return subprocess.Popen(
        [sys.executable, "-m", "leveret.cli", "--json-logs", "worker", "tests.apps:app", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(path: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.05)


def test_sigterm_mid_handler_finishes_acks_and_exits_zero(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    proc = start_worker(pipeline, tmp_path, "--concurrency", "1", "--grace", "20")
    try:
        message_id = pipeline.publish(Task(n=1, sleep_ms=1500))
        pipeline.publish(Task(n=2))  # waits behind: must stay in the queue
        wait_for(tmp_path / "1.started")
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert (tmp_path / "1.done").read_text() == message_id
    assert not (tmp_path / "2.started").exists()
    assert pipeline.depth(pipeline.queue) == 1  # task 2 went back, unacked
    assert pipeline.depth(dead_letter_queue(pipeline.queue)) == 0
    assert {"message.processed", "worker.draining"} <= events(err)


def test_unfinished_work_goes_back_when_the_grace_period_ends(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    proc = start_worker(pipeline, tmp_path, "--concurrency", "1", "--grace", "0.3")
    try:
        pipeline.publish(Task(n=1, sleep_ms=5000))
        wait_for(tmp_path / "1.started")
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "worker.grace_expired" in events(err)
    assert pipeline.depth(pipeline.queue) == 1


def test_unreachable_broker_exits_non_zero_with_one_line(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    env = dict(
        os.environ, LEVERET_TEST_QUEUE=pipeline.queue, LEVERET_TEST_EXCHANGE=pipeline.exchange
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "leveret.cli",
            "worker",
            "tests.apps:app",
            "--url",
            "amqp://guest:hunter2@127.0.0.1:1/",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines == [
        "leveret: no RabbitMQ broker reachable at amqp://guest:***@127.0.0.1:1/; "
        "start one with `rabbitmq-server -detached` or `docker compose up -d rabbitmq`"
    ]
