"""The conformance battery: the Python worker passes it, a careless consumer does not."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from click.testing import CliRunner

from leveret.cli import main
from leveret.conformance import battery

ROOT = Path(__file__).resolve().parent.parent
PYTHON_WORKER = [
    sys.executable,
    "-m",
    "leveret.cli",
    "worker",
    "consumers.python.conformance_app:app",
    "--grace",
    "10",
]


def test_the_python_worker_passes(
    broker_url: str, names: Callable[[str], str], monkeypatch: object
) -> None:
    checks = battery.run(broker_url, names("conformance"), PYTHON_WORKER, timeout=30)
    failed = [(c.name, c.detail) for c in checks if not c.passed]
    assert not failed
    assert len(checks) == 12


def test_the_cli_prints_a_table_and_exits_1_on_failure(
    broker_url: str, names: Callable[[str], str]
) -> None:
    result = CliRunner().invoke(
        main,
        [
            "conformance",
            "--url",
            broker_url,
            "--queue",
            names("cli"),
            "--timeout",
            "3",
            "--",
            sys.executable,
            str(ROOT / "tests/naive_consumer.py"),
        ],
    )
    assert result.exit_code == 1
    rows = {line.split("  ")[0]: line for line in result.output.splitlines()}
    assert "FAIL" in rows["every task accounted for by id"]
    for name in ("invalid JSON", "unknown type", "unknown version", "schema violation"):
        assert "FAIL" in rows[f"{name}: dead-lettered at once"]
