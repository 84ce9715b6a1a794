"""Liveness and readiness: the rules (no broker, no clock), and a worker's probes on a real one."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from prometheus_client.parser import text_string_to_metric_families

from leveret import App, Context, Worker
from leveret.cli import main
from leveret.consumers import worker as worker_module
from leveret.consumers.probes import ProbeServer
from leveret.errors import ConfigurationError
from leveret.health import Health
from leveret.metrics import WorkerMetrics
from tests.apps import Task
from tests.conftest import Pipeline
from tests.proxy import Proxy

# --- the rules ----------------------------------------------------------------------


def connected(now: float = 0.0, stall_after: float = 300.0, grace: float = 60.0) -> Health:
    h = Health(("q",), stall_after=stall_after, grace=grace, now=now)
    h.connection_up(now)
    h.checked({"q": 1}, {"q": 0}, now)
    return h


def test_unready_until_connected_and_consuming() -> None:
    h = Health(("q", "r"), now=0.0)
    assert h.readiness(0.0).reason == "not connected to the broker"
    h.connection_up(1.0)
    assert "no consumer registered on q, r" in h.readiness(1.0).reason
    h.checked({"q": 1, "r": 0}, {"q": 0, "r": 0}, 1.0)
    assert h.readiness(1.0).reason == "no consumer registered on r"
    h.checked({"q": 1, "r": 2}, {"q": 0, "r": 0}, 2.0)
    assert h.readiness(2.0).ok


def test_idle_worker_on_an_empty_queue_never_stalls() -> None:
    h = connected(stall_after=10)
    for t in range(0, 1000, 5):
        h.checked({"q": 1}, {"q": 0}, float(t))
    assert h.readiness(1000.0).ok and h.liveness(1000.0).ok


def test_stalled_when_messages_wait_and_nothing_settles() -> None:
    h = connected(stall_after=10)
    # The progress clock starts when work appears, not at the last settle.
    h.checked({"q": 1}, {"q": 4}, 100.0)
    assert h.readiness(105.0).ok
    h.checked({"q": 1}, {"q": 4}, 111.0)
    verdict = h.readiness(111.0)
    assert not verdict.ok
    assert verdict.reason.startswith("stalled: 4 message(s) waiting and none settled for 11s")
    h.settled(112.0)
    assert h.readiness(112.0).ok


def test_steady_progress_with_a_backlog_is_healthy() -> None:
    h = connected(stall_after=10)
    for t in range(100, 200):
        h.checked({"q": 1}, {"q": 500}, float(t))
        h.settled(float(t))
    assert h.readiness(200.0).ok


def test_liveness_fails_only_after_the_grace() -> None:
    h = connected(now=0.0, grace=30)
    h.connection_down(50.0)
    assert not h.readiness(50.0).ok
    assert h.liveness(79.0).ok
    verdict = h.liveness(81.0)
    assert not verdict.ok
    assert verdict.reason == "not connected to the broker for 31s (grace 30s)"
    h.connection_up(82.0)
    h.checked({"q": 1}, {"q": 0}, 82.0)
    assert h.liveness(82.0).ok


def test_a_stall_turns_into_a_liveness_failure() -> None:
    h = connected(stall_after=10, grace=5)
    h.checked({"q": 1}, {"q": 1}, 0.0)
    assert not h.readiness(11.0).ok
    assert h.liveness(11.0).ok  # unready since 11 s: within the grace
    assert not h.liveness(17.0).ok


def test_draining_worker_is_unready_but_live() -> None:
    h = connected(grace=1)
    h.draining(5.0)
    assert h.readiness(100.0).reason == "the worker is shutting down"
    assert h.liveness(100.0).ok


def test_probe_routes() -> None:
    h = connected()
    server = ProbeServer(h, WorkerMetrics(), clock=lambda: 0.0)
    assert server.answer("GET", "/livez")[0] == 200
    status, body, kind = server.answer("GET", "/readyz")
    assert (status, json.loads(body), kind) == (
        200,
        {"status": "ok", "reason": ""},
        "application/json",
    )
    h.connection_down(0.0)
    status, body, _ = server.answer("GET", "/readyz")
    assert status == 503 and json.loads(body)["reason"] == "not connected to the broker"
    assert server.answer("POST", "/readyz")[0] == 405
    assert server.answer("GET", "/nope")[0] == 404
    status, body, kind = server.answer("GET", "/metrics")
    assert status == 200 and kind.startswith("text/plain")
    assert b"leveret_worker_ready 0.0" in body


# --- a worker's probes on the broker ------------------------------------------------


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


async def probe(worker: Worker, path: str) -> tuple[int, bytes]:
    assert worker.probes is not None
    return await asyncio.to_thread(get, f"http://127.0.0.1:{worker.probes.port}{path}")


async def until(worker: Worker, path: str, status: int, timeout: float = 15.0) -> bytes:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        if worker.probes is not None and worker.probes.port:
            got, body = await probe(worker, path)
            if got == status:
                return body
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{path} never answered {status}")
        await asyncio.sleep(0.1)


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


async def health_command(worker: Worker) -> Result:
    """``leveret health --url`` on the worker's liveness probe (off the worker's loop)."""
    assert worker.probes is not None
    url = f"http://127.0.0.1:{worker.probes.port}/livez"
    return await asyncio.to_thread(CliRunner().invoke, main, ["health", "--url", url])


async def test_metrics_count_every_outcome(
    pipeline: Pipeline, running: Callable[..., Worker]
) -> None:
    worker = running(http_port=0)
    await until(worker, "/readyz", 200)
    pipeline.publish(Task(n=1))
    pipeline.publish(Task(n=2, fail_times=1))
    pipeline.publish(Task(n=3, fail_times=99))
    await pipeline.wait(lambda: len(pipeline.outcomes) == 6)  # 1 + 2 + 3 attempts
    _, text = await probe(worker, "/metrics")
    got = samples(text)
    q = pipeline.queue

    def count(outcome: str) -> float:
        key = (("outcome", outcome), ("queue", q), ("type", "test.task"))
        return got[("leveret_messages_total", key)]

    assert count("processed") == 2
    assert count("retry_scheduled") == 3
    assert count("dead_lettered") == 1
    labels = (("queue", q), ("type", "test.task"))
    assert got[("leveret_handler_duration_seconds_count", labels)] == 6
    assert got[("leveret_messages_in_flight", (("queue", q),))] == 0
    assert got[("leveret_queue_consumers", (("queue", q), ("role", "work")))] == 1
    assert got[("leveret_worker_connected", ())] == 1
    assert got[("leveret_reconnects_total", ())] == 0


async def test_a_stalled_worker_fails_its_probes_and_recovers(
    pipeline: Pipeline,
    running: Callable[..., Worker],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setattr(worker_module, "CHECK_INTERVAL", 0.2)
    release = asyncio.Event()
    app = App(pipeline.topology)

    @app.handler(Task, queue=pipeline.queue)
    async def stuck(message: Task, ctx: Context) -> None:
        await release.wait()

    health_file = tmp_path / "health"
    worker = running(
        app, http_port=0, concurrency=1, prefetch=1, stall_after=0.5, health_file=health_file
    )
    await until(worker, "/readyz", 200)
    pipeline.publish(Task(n=1))
    pipeline.publish(Task(n=2))  # waits in the queue behind the stuck one
    body = await until(worker, "/readyz", 503)
    assert json.loads(body)["reason"].startswith("stalled: 1 message(s) waiting")
    assert (await probe(worker, "/livez"))[0] == 200  # within the grace
    worker.health.grace = 0.3
    await until(worker, "/livez", 503)
    # The health file is no longer touched while the worker is not live.
    touched = health_file.stat().st_mtime
    await asyncio.sleep(0.6)
    assert health_file.stat().st_mtime == touched
    result = await health_command(worker)
    assert result.exit_code == 1 and "answered 503: stalled" in result.output
    release.set()
    await pipeline.wait(lambda: len(pipeline.finals("processed")) == 2)
    await until(worker, "/readyz", 200)
    await until(worker, "/livez", 200)
    result = await health_command(worker)
    assert result.exit_code == 0, result.output


async def test_probes_follow_the_connection(pipeline: Pipeline) -> None:
    app = pipeline.app
    with Proxy() as proxy:
        worker = Worker(app, proxy.url(heartbeat=1), http_port=0)
        task = asyncio.create_task(worker.run())
        try:
            await until(worker, "/readyz", 200)
            proxy.stall()  # the heartbeats stop: the client must notice on its own
            body = await until(worker, "/readyz", 503)
            assert json.loads(body)["reason"] in (
                "not connected to the broker",
                f"no consumer registered on {pipeline.queue}",
            )
            proxy.resume()
            await until(worker, "/readyz", 200, timeout=30)
            _, text = await probe(worker, "/metrics")
            assert samples(text)[("leveret_reconnects_total", ())] >= 1
        finally:
            worker.stop()
            await asyncio.wait_for(task, 40)


async def test_a_port_in_use_is_a_clear_error(pipeline: Pipeline) -> None:
    taken = ProbeServer(connected(), WorkerMetrics(), port=0)
    await taken.start()
    try:
        worker = Worker(pipeline.app, pipeline.url, http_port=taken.port)
        with pytest.raises(
            ConfigurationError, match=f"cannot serve probes on 127.0.0.1:{taken.port}"
        ):
            await worker.run()
    finally:
        await taken.close()


def test_health_command_reports_a_probe_nobody_answers() -> None:
    result = CliRunner().invoke(main, ["health", "--url", "http://127.0.0.1:9/livez"])
    assert result.exit_code == 1
    assert "did not answer" in result.output
    result = CliRunner().invoke(main, ["health"])
    assert result.exit_code == 2 and "one of --file or --url" in result.output
