"""The example web app (examples/webapp), end to end against the real broker.

Each test runs the whole stack (export worker, status store, FastAPI under
uvicorn) in a thread on unique queue names, and talks to it over HTTP; the
browser test drives Debian's Chromium through Playwright.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest
from werkzeug.serving import make_server

from examples.webapp import tasks, web
from examples.webapp.flask_app import create_app as create_flask_app
from examples.webapp.settings import Settings
from examples.webapp.stack import serve
from leveret import Publisher, Topology, admin, schemas
from leveret.status import JobStatus
from leveret.status import app as status_app
from leveret.topology import dead_exchange, dead_letter_queue, retry_exchange

ROOT = Path(__file__).resolve().parents[1]
SCHEMAS = ROOT / "examples" / "webapp" / "schemas"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def delete_queues(url: str, topology: Topology) -> None:
    """Delete a topology's queues with their tiers, not its exchanges.

    For the status store's topology, whose exchange ``leveret.status`` is shared
    and never deleted (``admin.delete`` would delete it).
    """
    with admin.channel(url) as ch:
        for q in topology.queues:
            for name in (q.name, dead_letter_queue(q.name), *(t for t, _ in q.tier_queues())):
                ch.queue_delete(name)
            for name in (retry_exchange(q.name), dead_exchange(q.name)):
                ch.exchange_delete(name)


@dataclass
class Stack:
    """The example running in a thread of the test process."""

    settings: Settings
    http: httpx.Client = field(init=False)
    _stop: asyncio.Event | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _error: BaseException | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.settings.host}:{self.settings.port}"

    def start(self) -> None:
        listening = threading.Event()

        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            await serve(self.settings, self._stop, started=listening.set)

        def run() -> None:
            try:
                asyncio.run(main())
            except BaseException as exc:
                self._error = exc
                listening.set()

        self._thread = threading.Thread(target=run, name="webapp-stack", daemon=True)
        self._thread.start()
        assert listening.wait(30), "the stack did not start within 30 s"
        if self._error is not None:
            raise self._error
        self.http = httpx.Client(base_url=self.base_url, timeout=10)

    def stop(self) -> None:
        self.http.close()
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        assert self._thread is not None
        self._thread.join(30)
        assert not self._thread.is_alive(), "the stack did not stop within 30 s"
        if self._error is not None:
            raise self._error

    def export(self, client: httpx.Client | None = None, **body: Any) -> str:
        """POST /exports; the job id."""
        answer = (client or self.http).post("/exports", json=body)
        assert answer.status_code == 202, answer.text
        return str(answer.json()["job_id"])

    def wait(
        self, job_id: str, client: httpx.Client | None = None, timeout: float = 20.0
    ) -> dict[str, Any]:
        """Poll GET /jobs/{id} until the job ended; its record."""
        deadline = time.monotonic() + timeout
        record: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            answer = (client or self.http).get(f"/jobs/{job_id}")
            if answer.status_code == 200:
                record = answer.json()
                if record["state"] in ("succeeded", "failed"):
                    return record
            time.sleep(0.1)
        raise AssertionError(f"job {job_id} did not end in {timeout} s: {record}")


@pytest.fixture
def settings(broker_url: str, names: Callable[[str], str], tmp_path: Path) -> Iterator[Settings]:
    """Unique names, short retries, no pause; the topologies are deleted afterwards."""
    made = Settings(
        broker_url=broker_url,
        data_dir=tmp_path / "data",
        exchange=names("reports"),
        queue=names("export"),
        status_queue=names("status"),
        retry_delays=(0.2, 0.2),
        max_attempts=3,
        chunk_pause=0.0,
        port=free_port(),
    )
    yield made
    admin.delete(broker_url, tasks.topology(made))
    delete_queues(broker_url, status_app.topology(made.status_queue))


@pytest.fixture
def start(settings: Settings) -> Iterator[Callable[..., Stack]]:
    """Start the stack, with settings changed as asked; it is stopped at the end."""
    stacks: list[Stack] = []

    def start_stack(**changes: Any) -> Stack:
        stack = Stack(replace(settings, **changes))
        stack.start()
        stacks.append(stack)
        return stack

    yield start_stack
    for stack in stacks:
        stack.stop()


def csv_rows(text: str) -> int:
    """Data rows of an export (the header is not one)."""
    lines = text.splitlines()
    assert lines[0] == ",".join(tasks.COLUMNS)
    return len(lines) - 1


def test_export_reports_progress_in_order_and_downloads(start: Callable[..., Stack]) -> None:
    stack = start()
    answer = stack.http.post("/exports", json={"rows": 5_000})
    assert answer.status_code == 202
    job_id = answer.json()["job_id"]
    assert answer.json() == web.links(job_id)
    assert answer.headers["location"] == f"/jobs/{job_id}"

    job = stack.wait(job_id)

    assert job["state"] == "succeeded", job
    assert job["percent"] == 100.0
    assert job["result"] == f"/files/{job_id}.csv"
    steps = job["steps"]
    assert [s["state"] for s in steps] == [
        "queued",
        "started",
        *["progress"] * 6,
        "succeeded",
    ]
    assert [s["percent"] for s in steps[2:7]] == [20.0, 40.0, 60.0, 80.0, 100.0]
    assert [s["message"] for s in steps[2:8]] == [
        *(f"wrote {n:,} of 5,000 rows" for n in range(1000, 5001, 1000)),
        "emailed the link to you@example.com",
    ]
    download = stack.http.get(job["result"])
    assert download.status_code == 200
    assert download.headers["content-type"].startswith("text/csv")
    assert csv_rows(download.text) == 5_000
    mailbox = list(stack.settings.mailbox_dir.glob("*.eml"))
    assert len(mailbox) == 1
    mail = email.message_from_bytes(mailbox[0].read_bytes(), policy=email.policy.default)
    assert isinstance(mail, EmailMessage)
    assert mail["To"] == "you@example.com"
    assert mail.get_content().endswith(f":{stack.settings.port}{job['result']}\n")
    assert not list(stack.settings.exports_dir.glob(".*")), "a partial file was left behind"


def test_failing_export_ends_failed_after_its_retries(start: Callable[..., Stack]) -> None:
    stack = start()
    job_id = stack.export(rows=3_000, fail=True)

    job = stack.wait(job_id)

    assert job["state"] == "failed", job
    assert job["reason"] == "handler-error"
    assert "the reports database went away" in job["error"]
    assert job["attempt"] == 3
    states = [(s["state"], s.get("attempt")) for s in job["steps"]]
    assert ("retrying", 1) in states
    assert ("retrying", 2) in states
    assert states[-1] == ("failed", 3)
    assert not (stack.settings.exports_dir / f"{job_id}.csv").exists()
    assert not list(stack.settings.exports_dir.glob(".*")), "a partial file was left behind"
    assert not list(stack.settings.mailbox_dir.glob("*.eml"))


def test_unknown_job_bad_request_and_path_traversal(start: Callable[..., Stack]) -> None:
    stack = start()
    (stack.settings.data_dir / "secret.csv").write_text("id\n1\n")
    (stack.settings.exports_dir / ".partial.csv").write_text("id\n1\n")

    assert stack.http.get("/jobs/no-such-job").status_code == 404
    assert stack.http.post("/exports", json={"rows": 0}).status_code == 422
    assert stack.http.post("/exports", json={"rows": "many"}).status_code == 422
    for path in (
        "/files/..%2Fsecret.csv",
        "/files/%2E%2E%2Fsecret.csv",
        "/files/..%5Csecret.csv",
        "/files/%2Fetc%2Fpasswd",
        "/files/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
        "/files/.partial.csv",
        "/files/no-such-export.csv",
    ):
        answer = stack.http.get(path)
        assert answer.status_code == 404, (path, answer.status_code, answer.text)
        assert "1" not in answer.text.splitlines()


@pytest.mark.parametrize(
    "name", ["../secret.csv", "..", "/etc/passwd", ".partial.csv", "a/b.csv", "x.txt", "é.csv", ""]
)
def test_export_file_takes_plain_names_only(tmp_path: Path, name: str) -> None:
    exports = tmp_path / "exports"
    exports.mkdir()
    (tmp_path / "secret.csv").write_text("no")
    (exports / ".partial.csv").write_text("no")
    assert web.export_file(exports, name) is None


def test_schema_files_match_the_messages() -> None:
    # What a web app in another language validates against (docs/webapp.md).
    assert schemas.drift([tasks.ExportRequested, JobStatus], SCHEMAS) == []


def test_redelivered_export_sends_its_email_once(start: Callable[..., Stack]) -> None:
    stack = start()
    settings = stack.settings
    with Publisher(settings.broker_url) as publisher:
        job_id = publisher.publish(tasks.ExportRequested(rows=2_000), exchange=settings.exchange)
        stack.wait(job_id)
        # The same message again, as the broker redelivers one whose ack was lost.
        publisher.publish(
            tasks.ExportRequested(rows=2_000), exchange=settings.exchange, message_id=job_id
        )

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        job = stack.http.get(f"/jobs/{job_id}").json()
        if [s["state"] for s in job["steps"]].count("succeeded") == 2:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"the second delivery did not finish: {job}")
    assert len(list(settings.mailbox_dir.glob("*.eml"))) == 1
    assert csv_rows((settings.exports_dir / f"{job_id}.csv").read_text()) == 2_000


def test_flask_app_publishes_from_20_threads_at_once(start: Callable[..., Stack]) -> None:
    stack = start()
    flask_app = create_flask_app(stack.settings)
    server = make_server("127.0.0.1", 0, flask_app, threaded=True)
    serving = threading.Thread(target=server.serve_forever, name="flask", daemon=True)
    serving.start()
    base_url = f"http://127.0.0.1:{server.server_port}"
    together = threading.Barrier(20)

    def request_export(rows: int) -> str:
        with httpx.Client(base_url=base_url, timeout=10) as client:
            together.wait(10)
            answer = client.post("/exports", json={"rows": rows})
            assert answer.status_code == 202, answer.text
            return str(answer.json()["job_id"])

    try:
        with ThreadPoolExecutor(20) as pool:
            rows = [1_000 + 100 * i for i in range(20)]
            job_ids = list(pool.map(request_export, rows))
        assert len(set(job_ids)) == 20
        with httpx.Client(base_url=base_url, timeout=10) as client:
            for job_id, count in zip(job_ids, rows, strict=True):
                job = stack.wait(job_id, client)
                assert job["state"] == "succeeded", job
                assert csv_rows(client.get(job["result"]).text) == count
            assert client.get("/jobs/no-such-job").status_code == 404
            assert client.get("/files/..%2Fleveret.db").status_code == 404
    finally:
        server.shutdown()
        serving.join(10)
        flask_app.extensions["leveret"].close()


MEMORY_PROBE = """
import asyncio, json, resource, sys
from pathlib import Path

from examples.webapp import tasks
from examples.webapp.settings import Settings
from leveret import AsyncPublisher, Worker

args = json.loads(sys.argv[1])
settings = Settings(broker_url=args["url"], data_dir=Path(args["dir"]), exchange=args["exchange"],
                    queue=args["queue"], chunk_pause=0.0)

def peak_kib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

async def main():
    processed = set()
    worker = Worker(tasks.build_app(settings), settings.broker_url, concurrency=1,
                    on_outcome=lambda o: processed.add(o.message_id))
    running = asyncio.create_task(worker.run())
    async with AsyncPublisher(settings.broker_url) as publisher:
        async def export(rows):
            job_id = await publisher.publish(tasks.ExportRequested(rows=rows),
                                             exchange=settings.exchange)
            for _ in range(1200):
                if job_id in processed:
                    return job_id
                await asyncio.sleep(0.05)
            raise SystemExit(f"export of {rows} rows did not finish")
        await export(args["warmup"])
        before = peak_kib()
        job_id = await export(args["rows"])
        after = peak_kib()
    worker.stop()
    await running
    print(json.dumps({"job_id": job_id, "before_kib": before, "after_kib": after}))

asyncio.run(main())
"""


def test_worker_memory_stays_flat_for_a_large_export(settings: Settings) -> None:
    admin.apply(settings.broker_url, tasks.topology(settings))
    rows = 200_000
    args = {
        "url": settings.broker_url,
        "dir": str(settings.data_dir),
        "exchange": settings.exchange,
        "queue": settings.queue,
        "warmup": 20_000,
        "rows": rows,
    }
    done = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, json.dumps(args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    probe = json.loads(done.stdout.strip().splitlines()[-1])
    path = settings.exports_dir / f"{probe['job_id']}.csv"
    size = path.stat().st_size
    with path.open() as f:
        assert sum(1 for _ in f) == rows + 1
    growth = (probe["after_kib"] - probe["before_kib"]) * 1024
    # Rows held in memory would take several times the file's size; one chunk at
    # a time takes a few hundred kilobytes, whatever the row count.
    assert size > 8_000_000
    print(f"peak RSS grew {growth:,} bytes writing a {size:,}-byte file")
    assert growth < size / 8, f"peak RSS grew {growth:,} bytes for a {size:,}-byte file"


def test_browser_requests_an_export_watches_it_and_downloads(
    start: Callable[..., Stack],
    tmp_path: Path,
    chromium: str,
    screenshot: Callable[[Any, str], Path],
) -> None:
    from playwright.sync_api import sync_playwright

    stack = start(chunk_pause=0.4)
    rows = 10_000
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True)
        try:
            page = browser.new_page(viewport={"width": 900, "height": 760}, accept_downloads=True)
            page.goto(f"{stack.base_url}/")
            page.fill("#rows", str(rows))
            page.fill("#email", "ada@example.com")
            page.click("#submit")
            page.wait_for_url("**/jobs/*/page", timeout=10_000)

            seen: list[float] = []
            deadline = time.monotonic() + 30
            while not page.is_visible("#download"):
                assert time.monotonic() < deadline, f"no download link; bar values {seen}"
                value = float(page.eval_on_selector("#bar", "bar => bar.value"))
                if not seen or value != seen[-1]:
                    seen.append(value)
                time.sleep(0.1)
            assert seen == sorted(seen), f"the bar went back: {seen}"
            moving = [v for v in seen if 0 < v < 100]
            assert len(moving) >= 2, f"the bar did not visibly move: {seen}"
            assert page.eval_on_selector("#bar", "bar => bar.value") == 100
            assert "succeeded" in page.inner_text("#state")
            log = page.inner_text("#steps")
            assert f"wrote {rows:,} of {rows:,} rows" in log
            assert "emailed the link to ada@example.com" in log

            screenshot(page, "webapp-progress.png")

            with page.expect_download() as downloading:
                page.click("#download")
            download = downloading.value
            assert download.suggested_filename.endswith(".csv")
            saved = tmp_path / download.suggested_filename
            download.save_as(saved)
            assert csv_rows(saved.read_text()) == rows

            # A failing export: its retries in the log, then the error.
            page.goto(f"{stack.base_url}/")
            page.fill("#rows", "2000")
            page.check("#fail")
            page.click("#submit")
            page.wait_for_selector("#error", state="visible", timeout=20_000)
            assert "failed for good" in page.inner_text("#error")
            assert "the reports database went away" in page.inner_text("#error")
            assert page.inner_text("#steps").count("retrying") == 2
            assert not page.is_visible("#download")
        finally:
            browser.close()
