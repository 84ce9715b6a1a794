"""docker-compose.yml and the Dockerfile, checked statically (no Docker engine needed)."""

from __future__ import annotations

import importlib
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from leveret import App
from leveret.cli import main

ROOT = Path(__file__).resolve().parent.parent
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
OURS = [name for name, svc in SERVICES.items() if "build" in svc]


def resolve(argv: list[str]) -> None:
    """Check that a command line names a real leveret command, options and targets, or file."""
    program, *args = argv
    if program == "python":
        assert (ROOT / args[0]).is_file(), f"{args[0]} does not exist"
        return
    assert program == "leveret", f"unexpected program {program!r}"
    command: click.Command = main
    while isinstance(command, click.Group) and args and args[0] in command.commands:
        command = command.commands[args.pop(0)]
    assert not isinstance(command, click.Group), f"{argv}: incomplete command"
    known = {opt for param in command.params for opt in getattr(param, "opts", [])}
    for arg in args:
        if arg.startswith("--"):
            assert arg.split("=", 1)[0] in known, f"{argv}: unknown option {arg}"
        elif ":" in arg and re.fullmatch(r"[\w.]+:\w+", arg):
            module, attr = arg.split(":")
            assert isinstance(getattr(importlib.import_module(module), attr), App), arg


def dockerfile_instruction(name: str) -> list[str]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    (line,) = [ln for ln in text.splitlines() if ln.startswith(name + " ")]
    rest = line[len(name) :].strip()
    if name == "HEALTHCHECK":
        rest = rest[rest.index("CMD") + 3 :].strip()
    return list(json.loads(rest)) if rest.startswith("[") else shlex.split(rest)


@pytest.mark.parametrize("name", [n for n in SERVICES if "command" in SERVICES[n]])
def test_service_commands_exist(name: str) -> None:
    resolve(SERVICES[name]["command"])


@pytest.mark.parametrize(
    "name", [n for n in SERVICES if "healthcheck" in SERVICES[n] and n in OURS]
)
def test_service_healthchecks_exist(name: str) -> None:
    test = SERVICES[name]["healthcheck"]["test"]
    assert test[0] == "CMD"
    resolve(test[1:])


@pytest.mark.parametrize("name", list(SERVICES))
def test_dependencies_name_real_services(name: str) -> None:
    for dependency in SERVICES[name].get("depends_on", {}):
        assert dependency in SERVICES, f"{name} depends on unknown service {dependency}"


def test_topology_runs_once_before_workers_and_publishers() -> None:
    assert SERVICES["topology"]["restart"] == "no"
    assert SERVICES["topology"]["depends_on"]["rabbitmq"]["condition"] == "service_healthy"
    for name in ("worker", "publisher"):
        condition = SERVICES[name]["depends_on"]["topology"]["condition"]
        assert condition == "service_completed_successfully"


def test_worker_can_scale() -> None:
    worker = SERVICES["worker"]
    assert "container_name" not in worker and "ports" not in worker
    grace = int(worker["stop_grace_period"].rstrip("s"))
    assert grace > 30, "compose must wait longer than the worker's grace period"


def test_every_service_reaches_the_broker_by_name() -> None:
    for name in OURS:
        assert "@rabbitmq:5672" in SERVICES[name]["environment"]["LEVERET_URL"]


def test_build_context_and_copied_paths_exist() -> None:
    for name in OURS:
        assert (ROOT / SERVICES[name]["build"] / "Dockerfile").is_file()
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            for src in line.split()[1:-1]:
                assert (ROOT / src).exists(), f"Dockerfile copies missing {src}"


def test_dockerfile_cmd_and_healthcheck_exist() -> None:
    resolve(dockerfile_instruction("CMD"))
    resolve(dockerfile_instruction("HEALTHCHECK"))


def test_the_example_publisher_does_nothing_on_import() -> None:
    result = subprocess.run(
        [sys.executable, "examples/publish_example.py", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0
    assert "LEVERET_URL" in result.stdout
