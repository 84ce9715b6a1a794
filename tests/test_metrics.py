"""Prometheus metrics and the example alert rules, checked by promtool.

promtool comes from Debian's prometheus package (``scripts/promtool.sh``); the
tests that need it skip without it, unless LEVERET_PROMTOOL=required (CI).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from leveret.admin import QueueStats
from leveret.consumers.delivery import Outcome
from leveret.metrics import WorkerMetrics, render_queues, role_label
from tests.apps import Task
from tests.conftest import Pipeline
from tests.test_cli import run

ROOT = Path(__file__).resolve().parent.parent
PROMTOOL = ROOT / "tools" / "promtool" / "promtool"


@pytest.fixture
def promtool() -> Path:
    if not PROMTOOL.exists():
        if os.environ.get("LEVERET_PROMTOOL") == "required":
            pytest.fail(f"LEVERET_PROMTOOL=required, but {PROMTOOL} is missing", pytrace=False)
        pytest.skip("promtool is missing: run scripts/promtool.sh")
    return PROMTOOL


def check(promtool: Path, *args: str, stdin: bytes | None = None, cwd: Path = ROOT) -> str:
    done = subprocess.run(
        [str(promtool), *args], input=stdin, capture_output=True, cwd=cwd, timeout=60
    )
    out = (done.stdout + done.stderr).decode()
    assert done.returncode == 0, out
    return out


def test_alert_rules_are_valid(promtool: Path) -> None:
    assert "SUCCESS: 7 rules found" in check(
        promtool, "check", "rules", "docs/prometheus/alerts.yml"
    )


def test_prometheus_config_for_compose_is_valid(promtool: Path) -> None:
    # Syntax only: the token file is a compose secret, there only in the container.
    check(promtool, "check", "config", "--syntax-only", "docs/prometheus/prometheus.yml")


def test_alert_rules_fire_when_they_should(promtool: Path) -> None:
    check(promtool, "test", "rules", "alerts_test.yml", cwd=ROOT / "tests" / "prometheus")


def test_worker_metrics_follow_the_naming_rules(promtool: Path) -> None:
    metrics = WorkerMetrics()
    metrics.settled(Outcome("m1", "order.placed", 1, "orders", 1, "processed", 0.02))
    metrics.settled(Outcome(None, None, None, "orders", 1, "dead_lettered", 0.001))
    metrics.checked({"orders": 2}, {"orders": 7})
    metrics.in_flight.labels("orders").inc()
    text = metrics.render()
    check(promtool, "check", "metrics", stdin=text)
    got = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }
    bad_input = (("outcome", "dead_lettered"), ("queue", "orders"), ("type", "unknown"))
    assert got[("leveret_messages_total", bad_input)] == 1
    assert got[("leveret_queue_messages", (("queue", "orders"), ("role", "work")))] == 7
    assert got[("leveret_messages_in_flight", (("queue", "orders"),))] == 1


def test_two_workers_never_share_a_counter() -> None:
    a, b = WorkerMetrics(), WorkerMetrics()
    a.settled(Outcome("m1", "t", 1, "q", 1, "processed", 0.01))
    assert b'leveret_messages_total{outcome="processed",queue="q",type="t"} 1.0' in a.render()
    assert b"leveret_messages_total{" not in b.render()


def test_queue_roles_are_one_label_per_kind() -> None:
    assert [role_label(r) for r in ("work", "retry 30s", "dead-letter", "delay 1h")] == [
        "work",
        "retry",
        "dead-letter",
        "delay",
    ]
    text = render_queues(
        [QueueStats("gone", "work", False), QueueStats("q.retry.1", "retry 5s", True, 3, 0)]
    ).decode()
    assert 'leveret_queue_exists{queue="gone",role="work"} 1.0' not in text
    assert 'leveret_queue_exists{queue="gone",role="work"} 0.0' in text
    assert 'leveret_queue_messages{queue="gone"' not in text  # no figure for a missing queue
    assert 'leveret_queue_messages{queue="q.retry.1",role="retry"} 3.0' in text


def test_queues_command_prints_prometheus_text(pipeline: Pipeline, promtool: Path) -> None:
    pipeline.publish(Task(n=1))
    pipeline.reject_one()  # into the dead-letter queue
    done = run(pipeline, "queues", "--prometheus")
    assert done.returncode == 0, done.stderr
    check(promtool, "check", "metrics", stdin=done.stdout.encode())
    dlq = f'leveret_queue_messages{{queue="{pipeline.queue}.dlq",role="dead-letter"}} 1.0'
    assert dlq in done.stdout
    work = f'leveret_queue_consumers{{queue="{pipeline.queue}",role="work"}} 0.0'
    assert work in done.stdout
