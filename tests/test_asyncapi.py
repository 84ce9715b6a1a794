"""The AsyncAPI document: up to date with the app, and valid for the AsyncAPI parser."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from leveret.asyncapi import document
from leveret.cli import main
from leveret.demo import app

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "docs" / "asyncapi.json"
VALIDATOR = ROOT / "tools" / "asyncapi"


def test_the_committed_document_matches_the_app() -> None:
    fresh = document(app, title="leveret pipeline", version="1.0.0", schemas_path="../schemas")
    committed = json.loads(COMMITTED.read_text())
    assert committed == fresh, "run `leveret asyncapi --output docs/asyncapi.json`"


def test_the_cli_writes_refs_relative_to_the_document(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    out = tmp_path / "api.json"
    result = CliRunner().invoke(main, ["asyncapi", "--output", str(out)])
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    ref = doc["components"]["messages"]["demo.export.v1"]["payload"]["schema"]["$ref"]
    assert (out.parent / ref).resolve() == ROOT / "schemas" / "demo.export.v1.json"


def test_every_message_refers_to_its_schema_file() -> None:
    doc = document(app, title="t", version="1", schemas_path="schemas")
    for key, message in doc["components"]["messages"].items():
        ref = message["payload"]["schema"]["$ref"]
        assert (ROOT / ref).is_file(), ref
        assert ref == f"schemas/{key}.json"
        assert message["headers"]["properties"]["leveret-version"]["const"] == int(
            key.rsplit(".v", 1)[1]
        )


def test_the_asyncapi_parser_accepts_it() -> None:
    if shutil.which("node") is None or not (VALIDATOR / "node_modules").is_dir():
        pytest.fail(
            "the AsyncAPI parser is not installed: run `make test` (npm ci in tools/asyncapi)"
        )
    result = subprocess.run(
        ["node", "validate.mjs", str(COMMITTED)],
        cwd=VALIDATOR,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    schema_files = len(list((ROOT / "schemas").glob("*.json")))
    assert f"valid: {schema_files} messages" in result.stdout
