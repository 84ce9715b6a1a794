"""The Node, Ruby and Go workers and publishers against the Python side, both ways.

Each worker in ``consumers/`` is held to the conformance battery, processes
``demo.export`` tasks that the Python publisher sends, and continues the W3C
trace of a task in the message its handler publishes, and serves the same
probes and Prometheus metrics as the Python worker; tasks published by the
Ruby ``TaskPublisher`` and the Node ``Publisher`` are processed by the Python
worker. A language whose toolchain is missing here is skipped with the reason,
unless ``LEVERET_POLYGLOT=required`` (as in CI), where that is a failure.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pika
import pytest
from prometheus_client.parser import text_string_to_metric_families

from leveret import (
    App,
    Binding,
    Context,
    Exchange,
    Outcome,
    Publisher,
    Queue,
    RetryPolicy,
    Topology,
    Worker,
    admin,
    conformance,
    dlq,
    wire,
)
from leveret.conformance import Conformance, Receipt, battery
from leveret.demo import ExportRequested, ExportRequestedV2
from tests import test_metrics
from tests.conftest import rabbitmqctl
from tests.test_compose import POLYGLOT, dockerfile_healthcheck

ROOT = Path(__file__).resolve().parent.parent
CONSUMERS = ROOT / "consumers"
REQUIRED = os.environ.get("LEVERET_POLYGLOT") == "required"


def unavailable(reason: str) -> None:
    """Skip, or fail where every language must run."""
    if REQUIRED:
        pytest.fail(f"{reason} (LEVERET_POLYGLOT=required)", pytrace=False)
    pytest.skip(reason)


def node() -> list[str]:
    if not shutil.which("node"):
        unavailable("node is not installed")
    if not (CONSUMERS / "node/node_modules/amqplib").is_dir():
        unavailable("consumers/node has no node_modules: run `npm ci --prefix consumers/node`")
    return ["node", str(CONSUMERS / "node/src/main.js")]


def ruby() -> list[str]:
    if not shutil.which("ruby"):
        unavailable("ruby is not installed: apt-get install $(cat consumers/ruby/apt-packages.txt)")
    probe = subprocess.run(
        ["ruby", "-e", "require 'bunny'; require 'json_schemer'"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if probe.returncode != 0:
        unavailable(f"ruby cannot load bunny and json_schemer: {probe.stderr.strip()}")
    return ["ruby", str(CONSUMERS / "ruby/worker.rb")]


def go() -> list[str]:
    if not shutil.which("go"):
        unavailable("go is not installed: apt-get install $(cat consumers/go/apt-packages.txt)")
    # Cheap when bin/leveret-worker is up to date; builds offline otherwise.
    build = subprocess.run(
        ["make", "-C", str(CONSUMERS / "go"), "build"], capture_output=True, text=True, timeout=300
    )
    if build.returncode != 0:
        pytest.fail(f"the Go worker does not build:\n{build.stdout}{build.stderr}", pytrace=False)
    return [str(CONSUMERS / "go/bin/leveret-worker")]


WORKERS: dict[str, Callable[[], list[str]]] = {"node": node, "ruby": ruby, "go": go}


@pytest.fixture(params=sorted(WORKERS))
def worker_command(request: pytest.FixtureRequest) -> list[str]:
    return WORKERS[request.param]()


# --- the battery ----------------------------------------------------------------


@pytest.mark.timeout(180)
def test_the_worker_passes_the_conformance_battery(
    broker_url: str, names: Callable[[str], str], worker_command: list[str]
) -> None:
    checks = battery.run(broker_url, names("conformance"), worker_command, timeout=30)
    failed = [(c.name, c.detail) for c in checks if not c.passed]
    assert not failed
    assert len(checks) == 12


# --- Python publishes, another language processes --------------------------------


@dataclass
class Demo:
    """A unique copy of the demo topology: one exchange, one queue for ``export``."""

    url: str
    exchange: str
    queue: str
    topology: Topology


@pytest.fixture
def demo(broker_url: str, names: Callable[[str], str]) -> Iterator[Demo]:
    exchange, queue = names("demo"), names("demo.tasks")
    topology = Topology(
        exchanges=(Exchange(exchange),),
        queues=(
            Queue(
                queue,
                bindings=(Binding(exchange, "export"),),
                retry=RetryPolicy(delays=(0.2, 0.4), max_attempts=3),
            ),
        ),
    )
    admin.apply(broker_url, topology)
    yield Demo(broker_url, exchange, queue, topology)
    admin.delete(broker_url, topology)


def log_lines(path: Path) -> list[dict[str, object]]:
    """The JSON lines a worker wrote so far (anything else is skipped)."""
    lines = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            lines.append(entry)
    return lines


def depth(url: str, queue: str) -> int:
    with admin.channel(url) as ch:
        return int(ch.queue_declare(queue, passive=True).method.message_count)


def consumers(url: str, queue: str) -> int:
    with admin.channel(url) as ch:
        return int(ch.queue_declare(queue, passive=True).method.consumer_count)


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.mark.timeout(90)
def test_the_worker_processes_exports_published_from_python(
    demo: Demo, worker_command: list[str], tmp_path: Path
) -> None:
    log = tmp_path / "worker.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            worker_command,
            env=dict(os.environ, LEVERET_URL=demo.url, LEVERET_QUEUE=demo.queue),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: consumers(demo.url, demo.queue) > 0, "the worker to consume")
        with Publisher(demo.url) as publisher:
            v1 = publisher.publish(
                ExportRequested(user_id=3, format="xlsx"), exchange=demo.exchange
            )
            v2 = publisher.publish(
                ExportRequestedV2(user_id=4, columns=["id", "total"]), exchange=demo.exchange
            )

        def processed() -> dict[object, dict[str, object]]:
            return {
                entry.get("message_id"): entry
                for entry in log_lines(log)
                if entry.get("event") == "message.processed"
            }

        wait_for(lambda: {v1, v2} <= processed().keys(), f"{v1} and {v2} to be processed")
        done = processed()
        assert (done[v1]["type"], done[v1]["version"], done[v1]["attempt"]) == ("demo.export", 1, 1)
        assert (done[v2]["type"], done[v2]["version"], done[v2]["attempt"]) == ("demo.export", 2, 1)
        # The handler saw the payload as sent (each language logs it on its own line).
        seen = [e for e in log_lines(log) if e.get("message_id") == v2 and "columns" in e]
        assert seen
        assert seen[0]["user_id"] == 4
        assert seen[0]["columns"] == ["id", "total"]
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(40)
    assert code == 0, log.read_text()
    assert depth(demo.url, demo.queue) == 0
    assert dlq.browse(demo.url, demo.queue) == []
    assert "guest:guest" not in log.read_text()


def broker_connections_of(pid: int) -> list[str]:
    """The broker's names (Erlang pids) for the AMQP connections of process ``pid``."""
    sockets = subprocess.run(
        ["ss", "-Htnp", "state", "established", "( dport = :5672 )"],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    ).stdout
    ports = {
        int(line.split()[2].rsplit(":", 1)[1])
        for line in sockets.splitlines()
        if f"pid={pid}," in line
    }
    # Tab-separated rows: the pid as close_connection takes it, then the port.
    listed = rabbitmqctl("-q", "list_connections", "--no-table-headers", "pid", "peer_port")
    rows = [line.split("\t") for line in listed.splitlines() if "\t" in line]
    return [name for name, port in rows if int(port) in ports]


@pytest.mark.timeout(90)
def test_the_worker_consumes_again_after_the_broker_drops_it(
    demo: Demo, worker_command: list[str], tmp_path: Path
) -> None:
    if not shutil.which("ss"):
        unavailable("ss (iproute2) is needed to find the worker's connections")
    log = tmp_path / "worker.log"
    port = free_port()
    with log.open("w") as out:
        process = subprocess.Popen(
            worker_command,
            env=dict(
                os.environ,
                LEVERET_URL=demo.url,
                LEVERET_QUEUE=demo.queue,
                LEVERET_HTTP_PORT=str(port),
                LEVERET_CHECK_INTERVAL="0.2",
            ),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    worker = Probed(process, port, log)
    try:
        wait_for(lambda: consumers(demo.url, demo.queue) > 0, "the worker to consume")
        dropped = broker_connections_of(process.pid)
        assert dropped, "found no connection of the worker"
        for name in dropped:
            rabbitmqctl("close_connection", name, "test: the broker drops the worker")
        wait_for(lambda: bool(broker_connections_of(process.pid)), "the worker to reconnect")
        assert not set(dropped) & set(broker_connections_of(process.pid))
        wait_for(lambda: consumers(demo.url, demo.queue) == 1, "one consumer again")
        with Publisher(demo.url) as publisher:
            sent = publisher.publish(ExportRequested(user_id=5), exchange=demo.exchange)
        wait_for(
            lambda: any(
                e.get("event") == "message.processed" and e.get("message_id") == sent
                for e in log_lines(log)
            ),
            f"{sent} to be processed after the reconnect",
        )
        assert process.poll() is None, log.read_text()
        wait_for(lambda: worker.readiness()[0] == 200, "/readyz after the reconnect")
        reconnects = worker.samples()["leveret_reconnects_total", frozenset()]
        assert reconnects == 1.0, log.read_text()
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(40)
    assert code == 0, log.read_text()


# --- one trace across languages -------------------------------------------------

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


def trace_context(headers: dict[str, Any]) -> tuple[str, str, str]:
    """The trace-id, parent-id and flags of a message's traceparent, which must be valid."""
    value = headers.get("traceparent")
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    match = TRACEPARENT.fullmatch(value) if isinstance(value, str) else None
    assert match, f"no valid traceparent: {value!r}"
    trace_id, parent_id, flags = match.groups()
    assert trace_id.strip("0") and parent_id.strip("0"), f"an all-zero id in {value}"
    return trace_id, parent_id, flags


@dataclass
class Receipts:
    """The conformance topology around a queue, and the receipts its handler publishes."""

    url: str
    queue: str
    got: dict[str, dict[str, Any]] = field(default_factory=dict)  # task id: receipt headers

    @property
    def exchange(self) -> str:
        return f"{self.queue}.receipts"

    def publish(self, headers: dict[str, Any]) -> str:
        """Send a task asking for a receipt, with these headers besides its version."""
        task = Conformance(note="traced", receipt_exchange=self.exchange, receipt_routing_key="")
        message_id = wire.new_message_id()
        properties = pika.BasicProperties(
            content_type=wire.CONTENT_TYPE,
            delivery_mode=2,
            message_id=message_id,
            type=Conformance.message_type,
            headers={wire.VERSION: 1, **headers},
        )
        with admin.channel(self.url) as ch:
            ch.confirm_delivery()
            ch.basic_publish(
                f"{self.queue}.ex", conformance.ROUTING_KEY, task.to_json(), properties, True
            )
        return message_id

    def take(self) -> dict[str, dict[str, Any]]:
        """Every receipt so far: the headers of each, by the id of its task."""
        with admin.channel(self.url) as ch:
            while True:
                method, props, body = ch.basic_get(self.exchange, auto_ack=True)
                if method is None:
                    return self.got
                receipt = Receipt.from_json(body)
                assert isinstance(receipt, Receipt)
                self.got[receipt.message_id] = dict(props.headers or {})


@pytest.fixture
def receipts(broker_url: str, names: Callable[[str], str]) -> Iterator[Receipts]:
    queue = names("trace")
    topology = conformance.topology(queue)
    admin.apply(broker_url, topology)
    found = Receipts(broker_url, queue)
    with admin.channel(broker_url) as ch:
        ch.exchange_declare(found.exchange, "fanout", durable=True)
        ch.queue_declare(found.exchange, durable=True)
        ch.queue_bind(found.exchange, found.exchange)
    yield found
    admin.delete(broker_url, topology)
    with admin.channel(broker_url) as ch:
        ch.queue_delete(found.exchange)
        ch.exchange_delete(found.exchange)


@pytest.mark.timeout(90)
def test_a_follow_up_continues_the_trace_of_its_task(
    receipts: Receipts, worker_command: list[str], tmp_path: Path
) -> None:
    log = tmp_path / "worker.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            worker_command,
            env=dict(os.environ, LEVERET_URL=receipts.url, LEVERET_QUEUE=receipts.queue),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: consumers(receipts.url, receipts.queue) > 0, "the worker to consume")
        # Flags 00, not the 01 of a new trace: the follow-up must carry them over.
        given = f"00-{TRACE_ID}-{PARENT_ID}-00"
        traced = receipts.publish({"traceparent": given, "tracestate": "congo=t61rcWkgMzE"})
        untraced = receipts.publish({})
        wait_for(lambda: {traced, untraced} <= receipts.take().keys(), "both receipts")

        def trace_of_line(task: str) -> object:
            lines = [e for e in log_lines(log) if e.get("event") == "message.processed"]
            return next((e.get("trace_id") for e in lines if e.get("message_id") == task), None)

        wait_for(lambda: None not in (trace_of_line(traced), trace_of_line(untraced)), "logs")
        headers = receipts.got[traced]
        trace_id, parent_id, flags = trace_context(headers)
        assert (trace_id, flags) == (TRACE_ID, "00")
        assert parent_id != PARENT_ID
        assert headers.get("tracestate") in ("congo=t61rcWkgMzE", b"congo=t61rcWkgMzE")
        assert trace_of_line(traced) == TRACE_ID
        # Without a traceparent the task started a new trace; its receipt continues it.
        new_trace, _, new_flags = trace_context(receipts.got[untraced])
        assert (new_flags, "tracestate" in receipts.got[untraced]) == ("01", False)
        assert new_trace != TRACE_ID
        assert trace_of_line(untraced) == new_trace
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(40)
    assert code == 0, log.read_text()


# --- another language publishes, Python processes --------------------------------


async def python_worker_receives(
    demo: Demo, publish: Callable[[], list[str]]
) -> dict[str, dict[str, Any]]:
    """Run ``publish`` (which returns message ids) while a Python worker consumes."""
    received: dict[str, dict[str, Any]] = {}
    outcomes: list[Outcome] = []
    app = App(demo.topology)

    @app.handler(ExportRequested, ExportRequestedV2, queue=demo.queue)
    async def export(message: ExportRequested | ExportRequestedV2, ctx: Context) -> None:
        received[ctx.message_id] = {
            "version": ctx.version,
            "correlation_id": ctx.correlation_id,
            **message.model_dump(),
        }

    worker = Worker(app, demo.url, on_outcome=outcomes.append)
    running = asyncio.create_task(worker.run())
    try:
        ids = await asyncio.to_thread(publish)
        deadline = time.monotonic() + 20
        while not set(ids) <= {o.message_id for o in outcomes if o.outcome == "processed"}:
            assert time.monotonic() < deadline, f"not processed: {ids}; outcomes {outcomes}"
            await asyncio.sleep(0.05)
    finally:
        worker.stop()
        await asyncio.wait_for(running, 40)
    assert all(o.outcome == "processed" for o in outcomes), outcomes
    return {i: received[i] for i in ids}


def run_publisher(command: list[str], env: dict[str, str]) -> str:
    """Run a publisher command that prints the message id; return it."""
    done = subprocess.run(
        command, env=dict(os.environ, **env), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.strip().splitlines()[-1]


RUBY_PUBLISH = """
require "task_publisher"
puts TaskPublisher.publish_export_task(Integer(ARGV[0]), ARGV[1], correlation_id: ARGV[2])
TaskPublisher.shutdown
"""


async def test_a_task_from_the_ruby_task_publisher_is_processed_by_python(demo: Demo) -> None:
    ruby()
    command = ["ruby", "-I", str(CONSUMERS / "ruby/lib"), "-e", RUBY_PUBLISH, "7", "xlsx", "req-7"]
    env = {"LEVERET_URL": demo.url, "LEVERET_EXCHANGE": demo.exchange}

    got = await python_worker_receives(demo, lambda: [run_publisher(command, env)])

    [(_, task)] = got.items()
    assert task == {
        "version": 1,
        "correlation_id": "req-7",
        "user_id": 7,
        "format": "xlsx",
    }


async def test_a_task_from_the_node_publisher_is_processed_by_python(demo: Demo) -> None:
    node()
    command = [
        "node",
        str(CONSUMERS / "node/src/publish.js"),
        "--exchange",
        demo.exchange,
        "--routing-key",
        "export",
        "--type",
        "demo.export",
        "--version",
        "2",
        json.dumps({"user_id": 8, "format": "csv", "columns": ["id"]}),
    ]

    got = await python_worker_receives(
        demo, lambda: [run_publisher(command, {"LEVERET_URL": demo.url})]
    )

    [(_, task)] = got.items()
    assert task == {
        "version": 2,
        "correlation_id": None,
        "user_id": 8,
        "format": "csv",
        "columns": ["id"],
    }


# --- probes and metrics -------------------------------------------------------------

promtool = test_metrics.promtool  # the fixture: skips unless promtool is installed


@pytest.fixture(params=sorted(WORKERS))
def language(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def work_queue(broker_url: str, names: Callable[[str], str]) -> Iterator[str]:
    """A conformance queue of its own: tasks go to ``<queue>.ex``."""
    queue = names("probes")
    topology = conformance.topology(queue)
    admin.apply(broker_url, topology)
    yield queue
    admin.delete(broker_url, topology)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(port: int, path: str) -> tuple[int, bytes]:
    """Status and body of GET ``path``; status 0 when nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


@dataclass
class Probed:
    """A worker started with its probes on ``port``."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path

    def readiness(self) -> tuple[int, dict[str, str]]:
        status, body = get(self.port, "/readyz")
        return status, (json.loads(body) if status else {})

    def samples(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        status, body = get(self.port, "/metrics")
        assert status == 200, body
        return {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(body.decode())
            for sample in family.samples
        }


@contextmanager
def probed_worker(
    command: list[str], url: str, queue: str, tmp_path: Path, **env: str
) -> Iterator[Probed]:
    """Run a worker of ``queue`` with its probes on a free loopback port; SIGTERM at the end."""
    port = free_port()
    log = tmp_path / "worker.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            command,
            env=dict(
                os.environ,
                LEVERET_URL=url,
                LEVERET_QUEUE=queue,
                LEVERET_HTTP_HOST="127.0.0.1",
                LEVERET_HTTP_PORT=str(port),
                LEVERET_CHECK_INTERVAL="0.2",
                **env,
            ),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield Probed(process, port, log)
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(40)
    assert code == 0, log.read_text()


def publish_raw(url: str, queue: str, body: bytes) -> None:
    """A message with no type and a body that is not JSON: bad input."""
    with admin.channel(url) as ch:
        ch.confirm_delivery()
        ch.basic_publish(
            f"{queue}.ex", conformance.ROUTING_KEY, body, pika.BasicProperties(delivery_mode=2)
        )


def labels(**pairs: str) -> frozenset[tuple[str, str]]:
    return frozenset(pairs.items())


@pytest.mark.timeout(120)
def test_the_worker_serves_probes_and_counts_outcomes(
    language: str, work_queue: str, broker_url: str, tmp_path: Path, promtool: Path
) -> None:
    command = WORKERS[language]()
    live_file = tmp_path / "live"
    with probed_worker(
        command, broker_url, work_queue, tmp_path, LEVERET_HEALTH_FILE=str(live_file)
    ) as worker:
        wait_for(lambda: worker.readiness()[0] == 200, "/readyz to answer 200")
        assert worker.readiness() == (200, {"status": "ok", "reason": ""})
        assert get(worker.port, "/livez") == (200, b'{"status":"ok","reason":""}\n')
        assert get(worker.port, "/nowhere")[0] == 404
        wait_for(live_file.exists, "the health file")

        with Publisher(broker_url) as publisher:
            publisher.publish(Conformance(note="succeeds"), exchange=f"{work_queue}.ex")
            publisher.publish(Conformance(fail_times=1), exchange=f"{work_queue}.ex")
        publish_raw(broker_url, work_queue, b"not json")

        kind = Conformance.message_type
        counted = {
            ("processed", kind): 2.0,
            ("retry_scheduled", kind): 1.0,
            ("dead_lettered", "unknown"): 1.0,
        }

        def outcomes() -> dict[tuple[str, str], float]:
            found = {}
            for (name, pairs), value in worker.samples().items():
                if name == "leveret_messages_total" and dict(pairs)["queue"] == work_queue:
                    found[dict(pairs)["outcome"], dict(pairs)["type"]] = value
            return found

        wait_for(lambda: outcomes() == counted, f"the outcomes {counted}")
        samples = worker.samples()
        work = labels(queue=work_queue, role="work")
        assert samples["leveret_queue_consumers", work] == 1.0
        assert samples["leveret_queue_messages", work] == 0.0
        assert samples["leveret_messages_in_flight", labels(queue=work_queue)] == 0.0
        timed = labels(queue=work_queue, type=kind)
        assert samples["leveret_handler_duration_seconds_count", timed] == 3.0
        assert samples["leveret_handler_duration_seconds_bucket", timed | {("le", "+Inf")}] == 3.0
        assert samples["leveret_worker_connected", frozenset()] == 1.0
        assert samples["leveret_worker_ready", frozenset()] == 1.0
        assert samples["leveret_reconnects_total", frozenset()] == 0.0

        status, text = get(worker.port, "/metrics")
        assert status == 200
        test_metrics.check(promtool, "check", "metrics", stdin=text)

        # The image's HEALTHCHECK, run here against this worker's port.
        healthcheck = image_healthcheck(language, command, worker.port)
        assert subprocess.run(healthcheck, capture_output=True, timeout=30).returncode == 0
    # Nothing listens any more: the same check fails.
    assert subprocess.run(healthcheck, capture_output=True, timeout=30).returncode == 1


def image_healthcheck(language: str, command: list[str], port: int) -> list[str]:
    """The HEALTHCHECK of the language's Dockerfile, asking ``port`` on this machine."""
    argv = dockerfile_healthcheck(POLYGLOT[f"{language}-worker"])
    if language == "go":
        argv = [command[0], *argv[1:]]  # the binary built here, not the image's path
    return [arg.replace("127.0.0.1:9100", f"127.0.0.1:{port}") for arg in argv]


@pytest.mark.timeout(120)
def test_a_stalled_worker_is_unready_but_live(
    language: str, work_queue: str, broker_url: str, tmp_path: Path
) -> None:
    command = WORKERS[language]()
    settings = {"LEVERET_STALL_AFTER": "1", "LEVERET_PREFETCH": "1"}
    with probed_worker(command, broker_url, work_queue, tmp_path, **settings) as worker:
        wait_for(lambda: worker.readiness()[0] == 200, "/readyz to answer 200")
        with Publisher(broker_url) as publisher:
            # One handler at a time: the second task waits while the first sleeps.
            publisher.publish(Conformance(sleep_ms=4000), exchange=f"{work_queue}.ex")
            publisher.publish(Conformance(note="waits"), exchange=f"{work_queue}.ex")
        wait_for(lambda: worker.readiness()[0] == 503, "/readyz to fail", timeout=15)
        status, verdict = worker.readiness()
        assert status == 503 and verdict["status"] == "failing"
        assert verdict["reason"].startswith("stalled: 1 message(s) waiting and none settled")
        assert get(worker.port, "/livez")[0] == 200  # within the grace: not restarted
        assert worker.samples()["leveret_worker_ready", frozenset()] == 0.0
        # The first task settles, the second runs: ready again.
        wait_for(lambda: worker.readiness()[0] == 200, "/readyz to recover", timeout=30)
        wait_for(lambda: depth(broker_url, work_queue) == 0, "the queue to empty")
