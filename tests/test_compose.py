"""docker-compose.yml and the Dockerfile, checked statically: no Docker engine, no broker.

Every command a container runs is resolved the way it would run: ``leveret ...``
through the click CLI (subcommands, options, arguments, the app it loads),
``python FILE`` against the files the image copies. A renamed command or option
fails here instead of in a crash-looping container.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any
from unittest import mock
from urllib.parse import urlsplit

import click
import pytest
import yaml

from leveret.cli import load_app, main
from leveret.errors import ConfigurationError

ROOT = Path(__file__).resolve().parent.parent
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
IMAGE = "leveret:latest"
# Services that run the Python image (one builds it, the others use its tag).
OURS = [n for n, svc in SERVICES.items() if svc.get("image") == IMAGE]
# The other languages' workers, each with its own Dockerfile under consumers/.
POLYGLOT = {
    "node-worker": "consumers/node/Dockerfile",
    "ruby-worker": "consumers/ruby/Dockerfile",
    "go-worker": "consumers/go/Dockerfile",
}


# --- resolving a command line ---------------------------------------------------


@dataclass
class Resolved:
    """What a container's command line runs."""

    argv: list[str]
    path: tuple[str, ...] = ()  # the leveret subcommand path, e.g. ("topology", "apply")
    params: dict[str, Any] = field(default_factory=dict)  # parsed by click, defaults included
    script: Path | None = None  # python FILE


def resolve(argv: list[str], env: dict[str, str] | None = None) -> Resolved:
    """Resolve a command line as the container would run it, or fail saying why.

    ``leveret`` commands are parsed by the real click command (unknown options,
    missing arguments and bad values fail) with only ``env`` in the environment,
    as in the container; the app they load must be a leveret App. ``python FILE``
    must name a file in the repository; ``python -m MODULE`` an importable module.
    """
    assert argv, "empty command"
    program, *args = argv
    if program in ("python", "python3"):
        assert args, f"{argv}: python without a script"
        if args[0] == "-m":
            assert len(args) > 1 and importlib.util.find_spec(args[1]), f"{argv}: no module"
            return Resolved(argv)
        script = ROOT / args[0]
        assert script.is_file(), f"{argv}: {args[0]} does not exist in the repository"
        return Resolved(argv, script=script)
    assert program == "leveret", f"{argv}: runs {program!r}, expected leveret or python"

    command: click.Command = main
    path: list[str] = []
    ctx = parse(argv, command, path, args, env)
    while isinstance(command, click.Group):
        # A group parses its own options and stops at the subcommand's name.
        consumed = args[: len(args) - len(ctx.args)]
        if not consumed or consumed[-1].startswith("-"):
            pytest.fail(f"{argv}: `leveret {' '.join(path)}` needs a subcommand", pytrace=False)
        name, args = consumed[-1], list(ctx.args)
        found = command.get_command(ctx, name)
        assert found is not None, (
            f"{argv}: no command `leveret {' '.join([*path, name])}`; "
            f"choose from {sorted(command.commands)}"
        )
        command, path = found, [*path, name]
        ctx = parse(argv, command, path, args, env)
    for name, value in ctx.params.items():
        if name == "app_target":
            try:
                load_app(value)
            except ConfigurationError as exc:
                pytest.fail(f"{argv}: {exc}", pytrace=False)
    return Resolved(argv, tuple(path), dict(ctx.params))


def parse(
    argv: list[str],
    command: click.Command,
    path: list[str],
    args: list[str],
    env: dict[str, str] | None,
) -> click.Context:
    """Parse ``args`` with ``command`` (without running it) in exactly ``env``."""
    if isinstance(command, click.Group) and not args:
        pytest.fail(f"{argv}: `leveret {' '.join(path)}` needs a subcommand", pytrace=False)
    with mock.patch.dict(os.environ, env or {}, clear=True):
        try:
            return command.make_context(" ".join(["leveret", *path]), list(args))
        except click.ClickException as exc:
            pytest.fail(f"{argv}: {exc.format_message()}", pytrace=False)


def words(command: str | list[str]) -> list[str]:
    """A compose ``command`` as words (compose splits the string form like a shell)."""
    return shlex.split(command) if isinstance(command, str) else [str(w) for w in command]


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A compose service's environment, from its mapping or ``KEY=VALUE`` list form.

    ``${NAME:-default}`` is read as compose reads it with ``NAME`` unset.
    """
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: DEFAULTED.sub(lambda m: m.group(1), str(v)) for k, v in env.items()}


DEFAULTED = re.compile(r"\$\{\w+:-([^}]*)\}")


def run(name: str) -> Resolved:
    """Resolve what a compose service runs, in its own environment."""
    service = SERVICES[name]
    return resolve(words(service["command"]), environment(service))


# --- reading the Dockerfile ------------------------------------------------------


def dockerfile(path: str = "Dockerfile") -> list[tuple[str, str]]:
    """A Dockerfile's instructions as (KEYWORD, rest), continuations joined."""
    text = (ROOT / path).read_text()
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    out = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def exec_form(rest: str) -> list[str]:
    """A CMD's words: the JSON array form, or the shell form split like a shell."""
    return list(json.loads(rest)) if rest.startswith("[") else shlex.split(rest)


def instruction(keyword: str, path: str = "Dockerfile") -> str:
    """The last (effective) ``keyword`` instruction of a Dockerfile."""
    found = [rest for kw, rest in dockerfile(path) if kw == keyword]
    assert found, f"{path} has no {keyword}"
    return found[-1]


def dockerfile_cmd() -> list[str]:
    return exec_form(instruction("CMD"))


def dockerfile_healthcheck(path: str = "Dockerfile") -> list[str]:
    rest = instruction("HEALTHCHECK", path)
    assert rest.upper() != "NONE", f"{path} disables its HEALTHCHECK"
    options, found, command = rest.partition("CMD ")
    assert found and all(o.startswith("--") for o in options.split()), f"HEALTHCHECK {rest}"
    return exec_form(command.strip())


def copied_paths(path: str = "Dockerfile") -> list[str]:
    """Source paths of a Dockerfile's COPY instructions (build context relative).

    ``COPY --from=STAGE`` copies from an earlier build stage, not the context.
    """
    sources = []
    for keyword, rest in dockerfile(path):
        if keyword == "COPY" and "--from=" not in rest:
            parts = [p for p in exec_form(rest) if not p.startswith("--")]
            sources += parts[:-1]
    return sources


def seconds(duration: str | int) -> float:
    """A compose duration ("40s", "1m30s") in seconds."""
    if isinstance(duration, int):
        return float(duration)
    units = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
    parts = re.findall(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"bad duration {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


# --- compose ---------------------------------------------------------------------


def test_our_services_exist() -> None:
    assert OURS, "no service builds or runs the leveret image"
    assert {"topology", "worker", "publisher"} <= set(OURS)
    assert [n for n in OURS if "build" in SERVICES[n]] == ["topology"]


@pytest.mark.parametrize("name", OURS)
def test_service_command_resolves(name: str) -> None:
    assert "command" in SERVICES[name], f"{name}: no command; the image's CMD is the worker"
    run(name)


@pytest.mark.parametrize("name", OURS)
def test_service_healthcheck_resolves(name: str) -> None:
    check = SERVICES[name].get("healthcheck")
    if check is None or check.get("disable"):
        return
    test = check["test"]
    if isinstance(test, str) or test[0] == "CMD-SHELL":
        argv = shlex.split(test if isinstance(test, str) else test[1])
    else:
        assert test[0] == "CMD", f"{name}: healthcheck test starts with {test[0]!r}"
        argv = [str(w) for w in test[1:]]
    resolve(argv, environment(SERVICES[name]))


@pytest.mark.parametrize("name", list(SERVICES))
def test_dependencies_name_real_services(name: str) -> None:
    depends = SERVICES[name].get("depends_on", {})
    for dependency in depends:
        assert dependency in SERVICES, f"{name} depends on unknown service {dependency!r}"
        assert dependency != name, f"{name} depends on itself"


@pytest.mark.parametrize("name", [n for n in SERVICES if "build" in SERVICES[n]])
def test_build_context_and_dockerfile_exist(name: str) -> None:
    build = SERVICES[name]["build"]
    if isinstance(build, str):
        build = {"context": build}
    context = ROOT / build.get("context", ".")
    assert context.is_dir(), f"{name}: build context {context} does not exist"
    dockerfile_path = context / build.get("dockerfile", "Dockerfile")
    assert dockerfile_path.is_file(), f"{name}: {dockerfile_path} does not exist"


def test_one_service_builds_each_image() -> None:
    builders = [svc.get("image") for svc in SERVICES.values() if "build" in svc]
    assert len(builders) == len(set(builders)), (
        "services building the same tag in parallel collide; let one build it"
    )


def test_every_service_reaches_the_broker_by_name() -> None:
    for name in [*OURS, *POLYGLOT]:
        url = environment(SERVICES[name]).get("LEVERET_URL", "")
        where = urlsplit(url)
        assert (where.scheme, where.hostname, where.port) == ("amqp", "rabbitmq", 5672), (
            f"{name}: LEVERET_URL {url!r} is not the rabbitmq service"
        )


def test_topology_runs_once_after_the_broker_is_healthy() -> None:
    topology = SERVICES["topology"]
    assert run("topology").path == ("topology", "apply")
    assert topology.get("restart") == "no", "topology must run once, not restart"
    condition = topology["depends_on"]["rabbitmq"]["condition"]
    assert condition == "service_healthy", f"topology waits for rabbitmq to be {condition}"


@pytest.mark.parametrize("name", ["worker", "publisher"])
def test_waits_for_the_topology(name: str) -> None:
    condition = SERVICES[name]["depends_on"]["topology"]["condition"]
    assert condition == "service_completed_successfully", f"{name} waits for topology {condition}"


def test_topology_declares_what_the_worker_consumes() -> None:
    applied, consumed = run("topology").params["app_target"], run("worker").params["app_target"]
    assert applied == consumed, f"topology applies {applied}, the worker runs {consumed}"


def test_worker_can_scale() -> None:
    worker = SERVICES["worker"]
    assert "container_name" not in worker, "a fixed container_name breaks --scale worker=N"
    assert "ports" not in worker, "published ports break --scale worker=N"


def test_compose_waits_longer_than_the_worker_grace() -> None:
    grace = run("worker").params["grace"]
    stop = seconds(SERVICES["worker"].get("stop_grace_period", "10s"))
    assert stop > grace, f"stop_grace_period {stop:g}s must exceed the worker's grace {grace:g}s"


def test_broker_ports_are_bound_to_loopback() -> None:
    for port in SERVICES["rabbitmq"].get("ports", []):
        assert str(port).startswith("127.0.0.1:"), f"rabbitmq port {port} is open to the network"


# --- the Node, Ruby and Go workers -----------------------------------------------------


@pytest.mark.parametrize("name", list(POLYGLOT))
def test_polyglot_worker_builds_its_own_dockerfile(name: str) -> None:
    service = SERVICES[name]
    assert service["build"] == {"context": ".", "dockerfile": POLYGLOT[name]}, (
        f"{name}: build from the repository root (the workers read schemas/) with its Dockerfile"
    )
    assert service["image"] not in (IMAGE, None)
    for src in copied_paths(POLYGLOT[name]):
        assert (ROOT / src).exists(), f"{POLYGLOT[name]} copies {src}, which does not exist"
    assert instruction("USER", POLYGLOT[name]) not in ("root", "0"), f"{name} runs as root"
    assert instruction("STOPSIGNAL", POLYGLOT[name]) == "SIGTERM"


@pytest.mark.parametrize("name", list(POLYGLOT))
def test_polyglot_worker_consumes_what_the_topology_declares(name: str) -> None:
    from leveret.demo import TOPOLOGY

    service = SERVICES[name]
    assert environment(service)["LEVERET_QUEUE"] in {q.name for q in TOPOLOGY.queues}
    assert run("topology").params["app_target"] == "leveret.demo:app"
    condition = service["depends_on"]["topology"]["condition"]
    assert condition == "service_completed_successfully", f"{name} waits for topology {condition}"
    # The workers' grace on SIGTERM is 30 s unless LEVERET_GRACE says otherwise.
    grace = float(environment(service).get("LEVERET_GRACE", 30))
    assert seconds(service["stop_grace_period"]) > grace
    assert "container_name" not in service and "ports" not in service, f"{name} cannot scale"


def image_env(path: str) -> dict[str, str]:
    """The ``ENV`` a Dockerfile's last stage sets (``KEY=value`` pairs)."""
    stages = [i for i, (kw, _) in enumerate(dockerfile(path)) if kw == "FROM"]
    env: dict[str, str] = {}
    for keyword, rest in dockerfile(path)[stages[-1] :]:
        if keyword == "ENV":
            for pair in shlex.split(rest):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def probe_url(argv: list[str]) -> str:
    """The one http:// URL in a health check's command line (inside a script, say)."""
    urls: list[str] = [u for arg in argv for u in re.findall(r"http://[^\s'\"]+", arg)]
    assert len(urls) == 1, f"{argv}: expected one URL, found {urls}"
    return urls[0]


# What each polyglot image's health check runs: the program, and how it tells
# success (a 200 only) from anything else.
HEALTH_PROGRAMS = {
    "node-worker": (["node", "-e"], "statusCode === 200"),
    "ruby-worker": (["ruby", "-rnet/http", "-e"], "Net::HTTPOK"),
    "go-worker": (["/usr/local/bin/leveret-worker", "-health-url"], ""),
}


@pytest.mark.parametrize("name", list(POLYGLOT))
def test_polyglot_healthcheck_asks_the_port_the_worker_serves(name: str) -> None:
    path = POLYGLOT[name]
    argv = dockerfile_healthcheck(path)
    program, success = HEALTH_PROGRAMS[name]
    assert argv[: len(program)] == program, f"{path}: HEALTHCHECK runs {argv}"
    assert success in argv[-1]
    url = urlsplit(probe_url(argv))
    assert (url.hostname, url.path) == ("127.0.0.1", "/livez"), f"{path} asks {url.geturl()}"
    # The image's worker serves that port, on every address (Prometheus is
    # another container); compose does not override it.
    env = {**image_env(path), **environment(SERVICES[name])}
    assert env.get("LEVERET_HTTP_PORT") == str(url.port), (
        f"{name} serves port {env.get('LEVERET_HTTP_PORT')}, the HEALTHCHECK asks {url.port}"
    )
    host = env.get("LEVERET_HTTP_HOST")
    assert host == "0.0.0.0", f"{name} listens on {host}"
    assert str(url.port) in instruction("EXPOSE", path).split()
    assert "healthcheck" not in SERVICES[name], f"{name}: keep the image's HEALTHCHECK"


def test_prometheus_scrapes_the_polyglot_workers() -> None:
    config = yaml.safe_load((ROOT / "docs/prometheus/prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    (sd,) = jobs["leveret-polyglot-workers"]["dns_sd_configs"]
    assert sorted(sd["names"]) == sorted(POLYGLOT)
    for name in POLYGLOT:
        assert image_env(POLYGLOT[name])["LEVERET_HTTP_PORT"] == str(sd["port"])


# --- Dockerfile -----------------------------------------------------------------------


def test_dockerfile_has_no_entrypoint() -> None:
    # compose `command` replaces CMD; with an ENTRYPOINT it would become its arguments.
    assert not [kw for kw, _ in dockerfile() if kw == "ENTRYPOINT"]


def test_dockerfile_runs_as_non_root() -> None:
    user = instruction("USER")
    assert user not in ("root", "0"), "the image runs as root"


def test_dockerfile_cmd_resolves() -> None:
    assert resolve(dockerfile_cmd()).path == ("worker",)


def test_dockerfile_healthcheck_resolves() -> None:
    assert resolve(dockerfile_healthcheck()).path == ("health",)


def test_healthcheck_asks_the_port_the_worker_serves() -> None:
    url = urlsplit(resolve(dockerfile_healthcheck()).params["probe"])
    assert (url.hostname, url.path) == ("127.0.0.1", "/livez")
    served = {
        "the Dockerfile's CMD": resolve(dockerfile_cmd()).params,
        "the compose worker": run("worker").params,
    }
    for where, params in served.items():
        assert params["http_port"] == url.port, (
            f"{where} serves port {params['http_port']}, the HEALTHCHECK asks {url.port}"
        )
        # Prometheus, in another container, scrapes the same port.
        assert params["http_host"] == "0.0.0.0", f"{where} listens on {params['http_host']}"
    assert str(url.port) in instruction("EXPOSE").split()


def test_prometheus_scrapes_what_the_services_serve() -> None:
    prometheus = SERVICES["prometheus"]
    mount, _, target = prometheus["volumes"][0].partition(":")
    target = target.removesuffix(":ro")
    config_file = next(a for a in prometheus["command"] if a.startswith("--config.file="))
    config_path = Path(config_file.split("=", 1)[1])
    assert config_path.parent == Path(target)
    local = ROOT / mount / config_path.name
    config = yaml.safe_load(local.read_text())
    for rules in config["rule_files"]:
        assert (ROOT / mount / rules).is_file(), f"{rules} is not in {mount}"
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    workers = jobs["leveret-workers"]["dns_sd_configs"][0]
    assert workers["names"] == ["worker"]
    assert workers["port"] == run("worker").params["http_port"]
    (target_address,) = jobs["leveret-queues"]["static_configs"][0]["targets"]
    host, _, port = target_address.partition(":")
    dashboard = run(host).params
    assert int(port) == dashboard["port"] and dashboard["host"] == "0.0.0.0"
    assert SERVICES[host]["ports"] == [f"127.0.0.1:{port}:{port}"]
    # The scrape sends the token the dashboard was given, as a compose secret.
    token_file = Path(jobs["leveret-queues"]["authorization"]["credentials_file"])
    assert token_file.parent == Path("/run/secrets")
    assert token_file.name in prometheus["secrets"]
    secret = COMPOSE["secrets"][token_file.name]
    assert secret == {"environment": "LEVERET_DASHBOARD_TOKEN"}
    assert "LEVERET_DASHBOARD_TOKEN" in SERVICES[host]["environment"]


def test_dockerfile_copies_existing_paths() -> None:
    for src in copied_paths():
        assert (ROOT / src).exists(), f"the Dockerfile copies {src}, which does not exist"


@pytest.mark.parametrize("name", OURS)
def test_python_scripts_are_in_the_image(name: str) -> None:
    script = run(name).script
    if script is None:
        return
    # The image's WORKDIR holds what COPY put there; the repository root is the context.
    relative = script.relative_to(ROOT)
    copied = [Path(src) for src in copied_paths()]
    assert any(src == relative or src in relative.parents for src in copied), (
        f"{name}: runs {relative}, which the Dockerfile does not copy into the image"
    )


# --- the example publisher ---------------------------------------------------------


def load_example(monkeypatch: pytest.MonkeyPatch, publisher: type) -> ModuleType:
    """Import examples/publish_example.py with ``publisher`` in place of Publisher."""
    monkeypatch.setattr("leveret.publisher.Publisher", publisher)
    spec = importlib.util.spec_from_file_location(
        "publish_example", ROOT / "examples" / "publish_example.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_example_publishes_nothing_on_import(monkeypatch: pytest.MonkeyPatch) -> None:
    class NoPublisher:
        def __init__(self, *args: object, **kwargs: object) -> None:
            raise AssertionError("the example connected at import time")

    module = load_example(monkeypatch, NoPublisher)
    assert callable(module.main)


def test_the_example_publishes_count_exports(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    sent: list[Any] = []

    class FakePublisher:
        def __init__(self, url: str) -> None:
            self.url = url

        def __enter__(self) -> FakePublisher:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def publish(self, message: Any) -> str:
            sent.append((self.url, message))
            return f"id-{len(sent)}"

    monkeypatch.setenv("LEVERET_URL", "amqp://u:p@example:5672/")
    module = load_example(monkeypatch, FakePublisher)
    assert module.main(["2"]) == 0
    assert [(url, m.message_type, m.user_id, m.format) for url, m in sent] == [
        ("amqp://u:p@example:5672/", "demo.export", 1, "csv"),
        ("amqp://u:p@example:5672/", "demo.export", 2, "csv"),
    ]
    assert "id-2" in capsys.readouterr().out


def test_the_example_help_runs_without_a_broker() -> None:
    result = subprocess.run(
        [sys.executable, "examples/publish_example.py", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "LEVERET_URL": "amqp://127.0.0.1:1/"},
    )
    assert result.returncode == 0, result.stderr
    assert "LEVERET_URL" in result.stdout
