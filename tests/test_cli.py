"""The command line, as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from leveret import admin
from leveret.cli import main
from leveret.cli.lazy import LazyGroup
from tests.apps import topology
from tests.conftest import Pipeline, login, rabbitmqctl

ROOT = Path(__file__).resolve().parent.parent


def commands(group: click.Group, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    # As click looks them up: the top group imports a command's module on demand.
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None, name
        yield (*prefix, name)
        if isinstance(command, click.Group):
            yield from commands(command, (*prefix, name))


@pytest.mark.parametrize("path", list(commands(main)), ids=" ".join)
def test_every_command_has_help(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(main, [*path, "--help"])
    assert result.exit_code == 0
    assert "Usage:" in result.output


def test_help_lists_every_command_with_its_help_line() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    listing = result.output.split("Commands:\n", 1)[1].splitlines()
    lines = dict(line.split(None, 1) for line in listing if line.strip())
    assert sorted(lines) == sorted(main.lazy_commands)
    assert lines["worker"] == "Run the handlers of MODULE:APP until SIGTERM or SIGINT."


def test_a_command_missing_from_its_module_is_a_loud_error() -> None:
    group = LazyGroup(lazy_commands={"nowhere": "leveret.cli.base"})
    with pytest.raises(RuntimeError, match="does not define the command 'nowhere'"):
        group.get_command(click.Context(group), "nowhere")


# Run in a fresh interpreter: this test process has imported everything already.
WORKER_IMPORTS = """
import json, sys
from leveret.cli import main
from leveret.cli.base import DEFAULT_APP, load_app
try:
    main(["worker", "--help"], prog_name="leveret")
except SystemExit:
    pass
load_app(DEFAULT_APP)  # what `leveret worker` runs when given no MODULE:APP
print(json.dumps(sorted(sys.modules)))
"""


def test_leveret_worker_imports_no_pika_sqlalchemy_or_starlette() -> None:
    result = subprocess.run(
        [sys.executable, "-c", WORKER_IMPORTS],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    modules = set(json.loads(result.stdout.strip().splitlines()[-1]))
    assert "leveret.cli.run" in modules  # the worker command was looked up and loaded
    assert {m.split(".")[0] for m in modules} & {"pika", "sqlalchemy", "starlette"} == set()
    others = {"leveret.cli.dashboard", "leveret.cli.dlq", "leveret.cli.outbox"}
    assert modules & others == set()  # the other commands' modules stay unloaded


def run(p: Pipeline, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(
        os.environ,
        LEVERET_URL=p.url,
        LEVERET_APP="tests.apps:app",
        LEVERET_TEST_QUEUE=p.queue,
        LEVERET_TEST_EXCHANGE=p.exchange,
    )
    return subprocess.run(
        [sys.executable, "-m", "leveret.cli", "--json-logs", *args],
        cwd=ROOT,
        env=env,
        input=input,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_topology_show_lists_the_declarations(pipeline: Pipeline) -> None:
    out = run(pipeline, "topology", "show").stdout
    assert f"queue    {pipeline.queue}  " in out
    assert f"exchange {pipeline.queue}.retry (headers)" in out
    assert '"x-message-ttl": 200' in out


def test_publish_validates_then_sends(pipeline: Pipeline) -> None:
    ok = run(
        pipeline,
        "publish",
        "test.task",
        "--version",
        "2",
        "--json",
        '{"n": 4, "label": "cli"}',
        "--exchange",
        pipeline.exchange,
    )
    assert ok.returncode == 0, ok.stderr
    message_id = ok.stdout.strip()
    props, body = pipeline.get(pipeline.queue)  # type: ignore[misc]
    assert props.message_id == message_id
    assert json.loads(body)["label"] == "cli"
    from_stdin = run(
        pipeline,
        "publish",
        "test.task",
        "--version",
        "1",
        "--exchange",
        pipeline.exchange,
        input='{"n": 5}',
    )
    assert from_stdin.returncode == 0, from_stdin.stderr


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (
            ["--version", "1", "--json", '{"n": "x"}'],
            None,
            "leveret: test.task v1: n: Input should be a valid integer",
        ),
        (["--version", "1", "--json", "{nope"], None, "leveret: body is not valid UTF-8 JSON"),
        (
            ["--version", "9", "--json", "{}"],
            None,
            "leveret: test.task has no version 9 (known: [1, 2])",
        ),
        (["--version", "1"], "[1]", "leveret: test.task v1: (body): Input should be an object"),
    ],
)
def test_publish_refuses_bad_payloads_in_one_line(
    pipeline: Pipeline, args: list[str], stdin: str | None, message: str
) -> None:
    result = run(pipeline, "publish", "test.task", *args, input=stdin)
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(message)
    assert pipeline.depth(pipeline.queue) == 0


def test_queues_dlq_and_replay(pipeline: Pipeline) -> None:
    published = run(
        pipeline,
        "publish",
        "test.task",
        "--version",
        "1",
        "--json",
        '{"n": 1}',
        "--exchange",
        pipeline.exchange,
    )
    assert published.returncode == 0, published.stderr
    rejected = published.stdout.strip()
    pipeline.reject_one()
    queues = run(pipeline, "queues").stdout
    assert f"{pipeline.queue}.dlq" in queues and "dead-letter" in queues
    listing = run(pipeline, "dlq", "list", pipeline.queue).stdout
    assert rejected in listing and "rejected" in listing
    replay = run(pipeline, "dlq", "replay", pipeline.queue, "--id", rejected)
    assert replay.stdout.strip() == f"replayed 1 message(s) to {pipeline.queue}"
    assert pipeline.depth(pipeline.queue) == 1
    assert (
        run(pipeline, "dlq", "list", pipeline.queue).stdout.strip()
        == f"{pipeline.queue}.dlq is empty"
    )
    purge = run(pipeline, "dlq", "purge", pipeline.queue, "--yes")
    assert purge.stdout.strip() == f"purged 0 message(s) from {pipeline.queue}.dlq"


def test_apply_mismatch_is_one_line(pipeline: Pipeline) -> None:
    env_app = run(pipeline, "topology", "apply")
    assert env_app.returncode == 0, env_app.stderr
    admin.delete(pipeline.url, pipeline.topology)
    admin.apply(pipeline.url, topology(pipeline.queue, pipeline.exchange, delays=(0.3, 0.4)))
    result = run(pipeline, "topology", "apply")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert (
        len(lines) == 1
        and "exists with other arguments" in lines[0]
        and "x-message-ttl" in lines[0]
    )


def test_no_broker_is_one_line_with_the_fix() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "leveret.cli", "demo", "--url", "amqp://guest:pw@127.0.0.1:1/"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "leveret: no RabbitMQ broker reachable at amqp://guest:***@127.0.0.1:1/; "
        "start one with `rabbitmq-server -detached` or `docker compose up -d rabbitmq`"
    )


@pytest.fixture
def vhost(broker_url: str) -> Iterator[str]:
    """A vhost of its own, for the demo's fixed names; deleted afterwards."""
    name = f"leveret-test-{uuid.uuid4().hex[:8]}"
    rabbitmqctl("add_vhost", name)
    try:
        user, _password = login(broker_url)
        rabbitmqctl("set_permissions", "-p", name, user, ".*", ".*", ".*")
        yield broker_url.rstrip("/") + "/" + name
    finally:
        rabbitmqctl("delete_vhost", name)


def test_demo_runs_end_to_end_and_leaves_the_dead_letter(vhost: str) -> None:
    env = dict(os.environ, LEVERET_URL=vhost)
    result = subprocess.run(
        [sys.executable, "-m", "leveret.cli", "demo"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    rows = [
        line
        for line in result.stdout.splitlines()
        if "leveret.conformance v1" in line or "demo.export" in line
    ]
    assert len(rows) == 5
    ended = [r.rsplit("  ", 1)[-1] for r in rows]  # the last column
    assert ended.count("processed on attempt 1") == 3
    assert ended.count("processed on attempt 2") == 1
    assert (
        sum(e.startswith("dead-letter queue after 3 attempts (attempts-exhausted") for e in ended)
        == 1
    )
    listing = subprocess.run(
        [sys.executable, "-m", "leveret.cli", "dlq", "list", "leveret.demo.tasks"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "attempts-exhausted" in listing.stdout


def test_the_url_can_come_from_a_secret_file(pipeline: Pipeline, tmp_path: Path) -> None:
    secret = tmp_path / "url"
    secret.write_text(pipeline.url + "\n")
    env = dict(
        os.environ,
        LEVERET_URL_FILE=str(secret),
        LEVERET_APP="tests.apps:app",
        LEVERET_TEST_QUEUE=pipeline.queue,
        LEVERET_TEST_EXCHANGE=pipeline.exchange,
    )
    env.pop("LEVERET_URL", None)
    result = subprocess.run(
        [sys.executable, "-m", "leveret.cli", "queues"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert pipeline.queue in result.stdout
    missing = subprocess.run(
        [sys.executable, "-m", "leveret.cli", "queues"],
        cwd=ROOT,
        env=dict(env, LEVERET_URL_FILE=str(tmp_path / "nope")),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 2
    assert "cannot read LEVERET_URL_FILE" in missing.stderr


def test_no_output_of_the_cli_shows_a_password(pipeline: Pipeline) -> None:
    env = dict(
        os.environ,
        LEVERET_URL=pipeline.url,
        LEVERET_APP="tests.apps:app",
        LEVERET_TEST_QUEUE=pipeline.queue,
        LEVERET_TEST_EXCHANGE=pipeline.exchange,
    )
    for args in (
        ["queues"],
        ["topology", "show"],
        ["topology", "users"],
        ["dlq", "list", pipeline.queue],
        ["queues", "--url", "amqp://guest:s3cr3t@127.0.0.1:1/"],
    ):
        result = subprocess.run(
            [sys.executable, "-m", "leveret.cli", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert "s3cr3t" not in result.stdout + result.stderr
        assert "guest:guest" not in result.stdout + result.stderr, args
