"""``leveret check``: one line and a non-zero exit when a queue needs a person."""

from __future__ import annotations

import pytest

from leveret.admin import QueueStats
from leveret.checks import Limits, problems
from tests.apps import Task
from tests.conftest import Pipeline
from tests.test_cli import run

HEALTHY = [
    QueueStats("jobs", "work", True, 3, 2),
    QueueStats("jobs.retry.1", "retry 1s", True, 5000, 0),
    QueueStats("jobs.dlq", "dead-letter", True, 0, 0),
]


def test_a_healthy_pipeline_has_no_problem() -> None:
    assert problems(HEALTHY, Limits()) == []


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        (QueueStats("jobs", "work", True, 1001, 2), "jobs holds 1001 messages (over 1000)"),
        (QueueStats("jobs", "work", True, 0, 0), "jobs has no consumer"),
        (QueueStats("jobs.dlq", "dead-letter", True, 2, 0), "jobs.dlq holds 2 dead letter(s)"),
        (QueueStats("jobs", "work", False), "jobs does not exist"),
    ],
)
def test_each_problem_is_named(row: QueueStats, expected: str) -> None:
    assert problems([row], Limits()) == [expected]


def test_limits_can_be_relaxed_and_queues_chosen() -> None:
    rows = [
        QueueStats("a", "work", True, 0, 0),
        QueueStats("a.dlq", "dead-letter", True, 4, 0),
        QueueStats("b", "work", True, 50, 1),
    ]
    assert problems(rows, Limits(consumers=False, dead_letters=False)) == []
    assert problems(rows, Limits(max_depth=10), queues=["b"]) == ["b holds 50 messages (over 10)"]
    assert problems(rows, Limits(), queues=["a"]) == [
        "a has no consumer",
        "a.dlq holds 4 dead letter(s)",
    ]


def test_the_command_exits_1_with_one_line_then_0_when_relaxed(pipeline: Pipeline) -> None:
    pipeline.publish(Task(n=1))
    pipeline.reject_one()

    failed = run(pipeline, "check")
    assert failed.returncode == 1
    assert failed.stderr.strip().splitlines()[-1] == (
        f"leveret check: 2 problems: {pipeline.queue} has no consumer; "
        f"{pipeline.queue}.dlq holds 1 dead letter(s)"
    )
    relaxed = run(pipeline, "check", "--allow-no-consumer", "--allow-dead-letters")
    assert relaxed.returncode == 0, relaxed.stderr
    assert relaxed.stdout.strip() == "ok: 1 queue(s) checked"
    unknown = run(pipeline, "check", "--queue", "nope")
    assert unknown.returncode == 1
    assert "nope" in unknown.stderr
