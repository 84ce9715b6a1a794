"""The dashboard: its security rules alone, its pages against the real broker, and a real browser.

The server runs in a thread on a free loopback port; an httpx client (or
Debian's chromium through Playwright) talks to it over HTTP, as a person would.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pika
import pytest
import uvicorn
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from leveret import admin, connection, wire
from leveret.cli import main
from leveret.dashboard import Settings, create_app
from leveret.dashboard.letters import Selector
from leveret.dashboard.security import Guard, Identity, is_loopback
from tests import apps
from tests.conftest import Pipeline, login

TOKEN = "dash-token-9f1c"
SECRET_IN_ERROR = "postgresql://app:hunter2@db.internal/app"


# --- the rules, without a server ------------------------------------------------------


def test_loopback_hosts_are_recognised() -> None:
    assert all(is_loopback(h) for h in ("127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.5"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "10.0.0.2", "example.com", "::"))


def test_session_post_needs_csrf_and_same_origin() -> None:
    guard = Guard(TOKEN, loopback=True)
    sid = guard.open_session()
    who = guard.identify("", sid)
    site = {"scheme": "http", "host_header": "127.0.0.1:8080", "referer": ""}
    good = guard.csrf(sid)
    assert guard.may_act(who, csrf=good, origin="http://127.0.0.1:8080", **site) == ""
    assert "CSRF" in guard.may_act(who, csrf="", origin="http://127.0.0.1:8080", **site)
    assert "CSRF" in guard.may_act(who, csrf="0" * 64, origin="http://127.0.0.1:8080", **site)
    assert "cross-site" in guard.may_act(who, csrf=good, origin="http://evil.example", **site)
    assert "cross-site" in guard.may_act(who, csrf=good, origin="", **site)
    assert "log in" in guard.may_act(guard.identify("", "forged"), csrf=good, origin="", **site)


def test_header_token_needs_no_csrf_and_a_wrong_one_is_anonymous() -> None:
    guard = Guard(TOKEN, loopback=False)
    assert guard.identify(f"Bearer {TOKEN}", "") == Identity("header")
    assert not guard.identify("Bearer wrong", "").authenticated
    assert not guard.may_read(guard.identify("", ""))
    assert guard.may_act(Identity("header"), csrf="", origin="", referer="", scheme="http",
                         host_header="x") == ""  # fmt: skip


def test_host_check_applies_on_loopback_only() -> None:
    assert Guard(TOKEN, loopback=True).host_ok("localhost:8080")
    assert not Guard(TOKEN, loopback=True).host_ok("evil.example:8080")
    assert Guard(TOKEN, loopback=False).host_ok("dash.example.com")


def test_selector_matches_every_given_field() -> None:
    s = Selector.parse(ids="a, b\nc", type="test.task", reason="")
    assert s.ids == {"a", "b", "c"}
    assert not s.everything
    assert Selector.parse().everything


def test_listening_beyond_loopback_without_a_token_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("LEVERET_DASHBOARD_TOKEN", raising=False)
    result = CliRunner().invoke(main, ["dashboard", "--host", "0.0.0.0"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert "refusing to listen on 0.0.0.0 without a token" in lines[0]


# --- against the broker ----------------------------------------------------------------


class Served:
    """A running dashboard and a client for it."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.client = httpx.Client(base_url=base, follow_redirects=False, timeout=30)
        self.bodies: list[str] = []

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        response = self.client.get(path, **kwargs)
        self.bodies.append(response.text)
        return response

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        response = self.client.post(path, **kwargs)
        self.bodies.append(response.text)
        return response

    def login(self) -> str:
        """Log in through the form; returns the CSRF token of the session."""
        r = self.post("/login", data={"token": TOKEN, "next": "/"}, headers=self.origin)
        assert r.status_code == 303, r.text
        page = self.get("/")
        found = re.search(r'name="csrf" value="([0-9a-f]+)"', page.text)
        assert found, "no CSRF token on the page after logging in"
        return found.group(1)

    @property
    def origin(self) -> dict[str, str]:
        return {"Origin": self.base}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def serve(pipeline: Pipeline) -> Iterator[Callable[..., Served]]:
    """Start the dashboard over the pipeline's topology; stopped at the end."""
    servers: list[tuple[uvicorn.Server, threading.Thread]] = []
    clients: list[Served] = []

    def start(**overrides: Any) -> Served:
        settings = Settings(
            **{"url": pipeline.url, "topology": pipeline.topology, "token": TOKEN, **overrides}
        )
        port = _free_port()
        config = uvicorn.Config(
            create_app(settings),
            host="127.0.0.1",
            port=port,
            log_level="warning",
            lifespan="off",
            ws="none",
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline, "the dashboard did not start"
            time.sleep(0.02)
        servers.append((server, thread))
        clients.append(Served(f"http://127.0.0.1:{port}"))
        return clients[-1]

    yield start
    for served in clients:
        served.client.close()
    for server, thread in servers:
        server.should_exit = True
        thread.join(10)


def dead_letters(
    pipeline: Pipeline, count: int, *, start: int = 0, headers: dict[str, str] | None = None
) -> list[str]:
    """Put dead letters in the pipeline's DLQ as a consumer would (docs/contract.md §6)."""
    ids = [f"dl-{start + i}" for i in range(count)]
    conn = connection.connect(pipeline.url)
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        for i, message_id in enumerate(ids):
            ch.basic_publish(
                "",
                f"{pipeline.queue}.dlq",
                b'{"n": %d, "fail_times": 99}' % (start + i),
                pika.BasicProperties(
                    content_type="application/json",
                    delivery_mode=2,
                    message_id=message_id,
                    type="test.task" if (start + i) % 3 else "test.other",
                    headers={
                        wire.VERSION: 1,
                        wire.RETRY_COUNT: 3,
                        wire.REASON: wire.HANDLER_ERROR,
                        wire.ERROR_TYPE: "RuntimeError",
                        wire.ERROR_MESSAGE: f"failing on purpose: attempt 3 of {start + i}",
                        wire.ERROR_TRACEBACK: "Traceback (most recent call last):\n  ...\n"
                        "RuntimeError: failing on purpose",
                        wire.LAST_FAILED_AT: "2026-11-23T10:00:00.000Z",
                        **(headers or {}),
                    },
                ),
            )
    finally:
        conn.close()
    return ids


def test_queue_page_figures_match_admin_stats(
    pipeline: Pipeline, serve: Callable[..., Served]
) -> None:
    for n in range(3):
        pipeline.publish(apps.Task(n=n))
    dead_letters(pipeline, 2)
    served = serve()
    data = served.get("/api/queues").json()
    shown = {
        row["name"]: (row["messages"], row["consumers"])
        for g in data["groups"]
        for row in [g["work"], *g["tiers"], g["dead"]]
    }
    expected = {
        r.name: (r.messages, r.consumers) for r in admin.stats(pipeline.url, pipeline.topology)
    }
    assert shown == expected
    assert shown[pipeline.queue] == (3, 0)
    assert shown[f"{pipeline.queue}.dlq"] == (2, 0)
    assert [t["role"] for t in data["groups"][0]["tiers"]] == ["retry 200ms", "retry 400ms"]
    page = served.get("/")
    assert page.status_code == 200
    assert f'href="/queues/{pipeline.queue}/dlq"' in page.text
    assert "in flight and rates need the management API" in page.text


def test_management_api_that_does_not_answer_falls_back_to_amqp(
    pipeline: Pipeline, serve: Callable[..., Served]
) -> None:
    served = serve(management_url=f"http://127.0.0.1:{_free_port()}")
    data = served.get("/api/queues").json()
    assert data["source"] == "amqp"
    assert "not available" in data["note"]
    assert data["groups"][0]["work"]["in_flight"] is None


MANAGEMENT = "http://127.0.0.1:15672"


@pytest.fixture
def management(broker_url: str) -> str:
    """The management API on loopback; skipped without it, unless LEVERET_MANAGEMENT=required.

    It is asked with the test broker's credentials, as the dashboard asks it.
    """
    auth = login(broker_url)
    try:
        httpx.get(f"{MANAGEMENT}/api/overview", auth=auth, timeout=5).raise_for_status()
    except httpx.HTTPError as exc:
        if os.environ.get("LEVERET_MANAGEMENT") == "required":
            pytest.fail(
                f"LEVERET_MANAGEMENT=required, but {MANAGEMENT} fails: {exc}", pytrace=False
            )
        pytest.skip(
            f"no management API at {MANAGEMENT} (rabbitmq-plugins enable rabbitmq_management)"
        )
    return MANAGEMENT


def test_management_api_adds_in_flight_and_rates(
    pipeline: Pipeline, serve: Callable[..., Served], management: str
) -> None:
    for n in range(5):
        pipeline.publish(apps.Task(n=n))
    # A consumer that stays connected and holds its three deliveries unacked.
    conn = connection.connect(pipeline.url)
    try:
        ch = conn.channel()
        ch.basic_qos(prefetch_count=3)
        held: list[int] = []
        ch.basic_consume(
            pipeline.queue, lambda _ch, method, _props, _body: held.append(method.delivery_tag)
        )
        deadline = time.monotonic() + 10
        while len(held) < 3:
            assert time.monotonic() < deadline, f"the consumer got {len(held)} of 3 deliveries"
            conn.process_data_events(time_limit=0.1)
        served = serve(management_url=management)  # the broker URL's credentials
        # The management API samples its figures every few seconds.
        deadline = time.monotonic() + 30
        while True:
            data = served.get("/api/queues").json()
            work = data["groups"][0]["work"]
            if work["in_flight"] == 3:
                break
            assert time.monotonic() < deadline, f"in flight never reached 3: {data}"
            conn.process_data_events(time_limit=0.5)  # keeps the consumer's heartbeats
        assert (data["source"], data["note"]) == ("management", "")
        assert (work["messages"], work["consumers"]) == (2, 1)
        assert len(held) == 3  # the prefetch held the other two back
        assert isinstance(work["publish_rate"], float) and isinstance(work["deliver_rate"], float)
        dead = data["groups"][0]["dead"]
        assert dead["in_flight"] == 0
        page = served.get("/").text
        assert "in flight and rates need the management API" not in page
        work_row = rf'<tr class="work" data-name="{re.escape(pipeline.queue)}">(.*?)</tr>'
        row = re.search(work_row, page, re.S)
        assert row, "no row for the work queue on the page"
        assert 'data-field="in_flight">3<' in row.group(1)
        assert len(re.findall(r">\d+\.\d/s<", row.group(1))) == 2  # publish and deliver
        metrics = served.get("/metrics").text
        unacked = (
            f'leveret_queue_messages_unacknowledged{{queue="{pipeline.queue}",role="work"}} 3.0'
        )
        assert unacked in metrics
    finally:
        conn.close()


def test_management_api_with_wrong_credentials_falls_back(
    pipeline: Pipeline, serve: Callable[..., Served], management: str
) -> None:
    served = serve(management_url=management.replace("http://", "http://nobody:wrong@"))
    data = served.get("/api/queues").json()
    assert data["source"] == "amqp"
    assert "not available (Unauthorized)" in data["note"]
    assert "wrong" not in str(data)
    assert data["groups"][0]["work"]["messages"] == 0


def test_dlq_list_detail_and_replay_one(pipeline: Pipeline, serve: Callable[..., Served]) -> None:
    ids = dead_letters(pipeline, 3, headers={"leveret-note": SECRET_IN_ERROR})
    served = serve()
    listing = served.get(f"/api/queues/{pipeline.queue}/dlq").json()
    assert [d["id"] for d in listing["letters"]] == ids
    first = listing["letters"][0]
    assert (first["type"], first["version"], first["attempts"]) == ("test.other", 1, 3)
    assert first["reason"] == "attempts-exhausted"
    assert first["error"] == "failing on purpose: attempt 3 of 0"
    assert first["failed_at"] == "2026-11-23T10:00:00.000Z"

    detail = served.get(f"/queues/{pipeline.queue}/dlq/message", params={"id": ids[1]})
    assert detail.status_code == 200
    assert "RuntimeError: failing on purpose" in detail.text
    assert "&#34;fail_times&#34;: 99" in detail.text  # pretty-printed, escaped
    assert "app:***@db.internal" in detail.text

    csrf = served.login()
    confirm = served.get(
        f"/queues/{pipeline.queue}/dlq/confirm", params={"action": "replay", "ids": ids[1]}
    )
    assert re.search(r'id="affected">1<', confirm.text)
    done = served.post(
        f"/queues/{pipeline.queue}/dlq/replay",
        data={"csrf": csrf, "ids": ids[1]},
        headers=served.origin,
    )
    assert done.status_code == 303
    assert "done=replay&count=1" in done.headers["location"]
    assert pipeline.depth(pipeline.queue) == 1
    props, _body = pipeline.get(pipeline.queue) or (None, None)
    assert props is not None and props.message_id == ids[1]
    assert wire.RETRY_COUNT not in (props.headers or {})
    left = served.get(f"/api/queues/{pipeline.queue}/dlq").json()
    assert [d["id"] for d in left["letters"]] == [ids[0], ids[2]]


def test_actions_need_the_token_a_csrf_token_and_the_same_origin(
    pipeline: Pipeline, serve: Callable[..., Served]
) -> None:
    dead_letters(pipeline, 2)
    served = serve()
    path = f"/queues/{pipeline.queue}/dlq/purge"
    assert served.get(f"/queues/{pipeline.queue}/dlq").status_code == 200  # reading is open
    assert served.post(path, data={}, headers=served.origin).status_code == 403
    wrong = served.post("/login", data={"token": "nope"}, headers=served.origin)
    assert wrong.status_code == 401
    cross = served.post("/login", data={"token": TOKEN}, headers={"Origin": "http://evil.example"})
    assert cross.status_code == 403
    csrf = served.login()
    assert served.post(path, data={}, headers=served.origin).status_code == 403
    assert served.post(path, data={"csrf": "f" * 64}, headers=served.origin).status_code == 403
    evil = {"Origin": "http://evil.example"}
    assert served.post(path, data={"csrf": csrf}, headers=evil).status_code == 403
    assert served.get("/", headers={"Host": "evil.example"}).status_code == 421
    assert pipeline.depth(f"{pipeline.queue}.dlq") == 2
    assert served.client.get("/").headers["x-frame-options"] == "DENY"
    cells = served.get("/").text
    assert f'data-name="{pipeline.queue}.dlq"' in cells and 'data-field="messages">2<' in cells

    done = served.post(path, data={"csrf": csrf}, headers=served.origin)
    assert done.status_code == 303
    assert pipeline.depth(f"{pipeline.queue}.dlq") == 0

    bearer = {"Authorization": f"Bearer {TOKEN}", "Accept": "application/json"}
    with httpx.Client(base_url=served.base) as fresh:  # no cookie: a bearer token instead
        assert fresh.post(path, headers=bearer).json()["count"] == 0
        assert fresh.post(path, headers={"Authorization": "Bearer wrong"}).status_code == 403
    assert all(":guest@" not in body and "hunter2" not in body for body in served.bodies)


def test_filtered_replay_and_purge_in_bounded_batches(
    pipeline: Pipeline, serve: Callable[..., Served]
) -> None:
    dead_letters(pipeline, 9)  # dl-0, dl-3, dl-6 are test.other
    served = serve()
    bearer = {"Authorization": f"Bearer {TOKEN}", "Accept": "application/json"}
    confirm = served.get(
        f"/queues/{pipeline.queue}/dlq/confirm", params={"action": "replay", "type": "test.other"}
    )
    assert re.search(r'id="affected">3<', confirm.text)
    assert "dl-0, dl-3, dl-6" in confirm.text
    done = served.post(
        f"/queues/{pipeline.queue}/dlq/replay", data={"type": "test.other"}, headers=bearer
    ).json()
    assert (done["count"], done["scanned"], done["ids"]) == (3, 9, ["dl-0", "dl-3", "dl-6"])
    assert pipeline.depth(pipeline.queue) == 3
    purged = served.post(
        f"/queues/{pipeline.queue}/dlq/purge", data={"ids": "dl-1 dl-2"}, headers=bearer
    ).json()
    assert purged["count"] == 2
    left = served.get(f"/api/queues/{pipeline.queue}/dlq").json()
    assert [d["id"] for d in left["letters"]] == ["dl-4", "dl-5", "dl-7", "dl-8"]


def test_pages_of_a_deep_dlq_read_only_the_window(
    pipeline: Pipeline, serve: Callable[..., Served]
) -> None:
    dead_letters(pipeline, 5000)
    served = serve(reach=1000, page_size=50)
    page = served.get(f"/api/queues/{pipeline.queue}/dlq", params={"page": 3}).json()
    assert page["depth"] == 5000
    assert page["touched"] == 1000  # the window, not the queue
    assert [d["id"] for d in page["letters"]] == [f"dl-{i}" for i in range(100, 150)]
    last = served.get(f"/api/queues/{pipeline.queue}/dlq", params={"page": 20}).json()
    assert last["letters"][-1]["id"] == "dl-999"
    assert not last["has_next"]
    again = served.get(f"/api/queues/{pipeline.queue}/dlq", params={"page": 1}).json()
    assert again["letters"][0]["id"] == "dl-0"  # reading kept the order
    html = served.get(f"/queues/{pipeline.queue}/dlq", params={"page": 2})
    assert html.text.count('class="letter"') == 50
    assert "Pages reach the first 1000" in html.text
    bearer = {"Authorization": f"Bearer {TOKEN}", "Accept": "application/json"}
    done = served.post(
        f"/queues/{pipeline.queue}/dlq/replay", data={"ids": "dl-10 dl-4000"}, headers=bearer
    ).json()
    assert (done["ids"], done["scanned"]) == (["dl-10"], 1000)
    assert pipeline.depth(f"{pipeline.queue}.dlq") == 4999


def test_reading_beyond_loopback_needs_the_token(
    pipeline: Pipeline, serve: Callable[..., Served]
) -> None:
    served = serve(loopback=False)
    assert served.get("/").status_code == 303
    assert served.get("/api/queues").status_code == 401
    ok = served.get("/api/queues", headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200
    served.login()
    assert served.get("/").status_code == 200


def test_metrics_expose_every_queue_to_prometheus(
    pipeline: Pipeline, serve: Callable[..., Served]
) -> None:
    for n in range(3):
        pipeline.publish(apps.Task(n=n))
    dead_letters(pipeline, 2)
    served = serve(loopback=False)
    assert served.get("/metrics").status_code == 401
    assert served.get("/healthz").text == "ok\n"  # no token: a container's health check
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    response = served.get("/metrics", headers=bearer)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    got = {
        (s.name, s.labels["queue"], s.labels["role"]): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }
    q = pipeline.queue
    assert got[("leveret_queue_messages", q, "work")] == 3
    assert got[("leveret_queue_consumers", q, "work")] == 0
    assert got[("leveret_queue_messages", f"{q}.dlq", "dead-letter")] == 2
    tiers = {name for (metric, name, role) in got if role == "retry"}
    assert tiers == {name for name, _ in pipeline.topology.queue(q).tier_queues()}
    assert all(got[("leveret_queue_exists", name, role)] == 1 for (_, name, role) in got)


def test_job_lookup_shows_the_status_store(
    pipeline: Pipeline, serve: Callable[..., Served], tmp_path: Path
) -> None:
    from leveret.status.events import JobStatus, timestamp
    from leveret.status.store import JobStore

    db = f"sqlite:///{tmp_path / 'jobs.db'}"
    store = JobStore(db)
    store.apply(JobStatus(job_id="job-7", state="progress", at=timestamp(), percent=40.0), "e1")
    served = serve(status_db=db)
    page = served.get("/jobs", params={"id": "job-7"})
    assert page.status_code == 200
    assert "progress" in page.text and "40.0 %" in page.text
    assert served.get("/api/jobs/job-7").json()["state"] == "progress"
    assert served.get("/jobs", params={"id": "nope"}).status_code == 404
    assert serve().get("/jobs").status_code == 404  # no store configured


# --- a real browser ----------------------------------------------------------------------


def test_in_headless_chromium(
    pipeline: Pipeline,
    serve: Callable[..., Served],
    chromium: str,
    screenshot: Callable[[Any, str], Path],
) -> None:
    from playwright import sync_api

    for n in range(2):
        pipeline.publish(apps.Task(n=n))
    ids = dead_letters(pipeline, 4)
    served = serve()
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 640})
            page.goto(f"{served.base}/login?next=/")
            page.fill("input[name=token]", TOKEN)
            page.click("button[type=submit]")
            page.wait_for_url(f"{served.base}/")
            row = page.locator(f'tr[data-name="{pipeline.queue}.dlq"] td[data-field="messages"]')
            assert row.inner_text() == "4"
            screenshot(page, "dashboard-queues.png")

            page.click(f'a[href="/queues/{pipeline.queue}/dlq"]')
            assert page.locator("a.letter").count() == 4
            screenshot(page, "dashboard-dlq.png")

            page.click(f"a.letter >> text={ids[2]}")
            assert "RuntimeError: failing on purpose" in page.inner_text("pre.traceback")
            page.click("#replay-one")
            assert page.inner_text("#affected") == "1"
            page.click("#confirm")
            assert "Replayed 1 message(s)." in page.inner_text("p.notice")
            assert page.locator("a.letter").count() == 3
        finally:
            browser.close()
    assert pipeline.depth(pipeline.queue) == 3
