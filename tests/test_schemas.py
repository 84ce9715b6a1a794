"""JSON Schema export, drift and compatibility checks (no broker)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import jsonschema
import pytest
from click.testing import CliRunner
from pydantic import BaseModel, Field

from leveret import Message
from leveret.cli import main
from leveret.demo import app as demo_app
from leveret.errors import ConfigurationError, SchemaViolation
from leveret.schemas import check, compare, drift, export, render, schema_of

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "schemas"


def test_committed_files_match_the_models() -> None:
    assert drift(demo_app.models(), COMMITTED) == [], "run `leveret schemas export`"


@pytest.mark.parametrize("path", sorted(COMMITTED.glob("*.json")), ids=lambda p: p.name)
def test_committed_files_are_draft_07(path: Path) -> None:
    schema = json.loads(path.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert path.name == f"{schema['x-leveret-type']}.v{schema['x-leveret-version']}.json"
    assert "$defs" not in path.read_text() and "prefixItems" not in path.read_text()


@pytest.mark.parametrize(
    ("payload", "valid"),
    [
        ({"user_id": 3}, True),
        ({"user_id": 3, "format": "xlsx", "columns": ["a"]}, True),
        ({"user_id": "3"}, False),  # strict: a string is not an integer, in both
        ({"user_id": 0}, False),
        ({"format": "csv"}, False),
        ({"user_id": 3, "format": "pdf"}, False),
        ({"user_id": 3, "columns": [1]}, False),
    ],
)
def test_the_schema_file_and_the_model_agree(payload: dict[str, Any], valid: bool) -> None:
    from leveret.demo import ExportRequestedV2

    schema = json.loads((COMMITTED / "demo.export.v2.json").read_text())
    assert jsonschema.Draft7Validator(schema).is_valid(payload) is valid
    if valid:
        ExportRequestedV2.from_payload(payload)
    else:
        with pytest.raises(SchemaViolation):
            ExportRequestedV2.from_json(json.dumps(payload).encode())


class Address(BaseModel):
    city: str
    zip: str | None = None


class Color(BaseModel):
    name: Literal["red", "green"]


class W1(Message, type="test.schemas.widget", version=1):
    size: float
    label: str | None = None
    kind: Literal["a", "b"] = "a"
    address: Address
    tags: list[str] = Field(default_factory=list)


def write(tmp_path: Path, *models: type[Message]) -> Path:
    export(models, tmp_path)
    return tmp_path


def problems_between(tmp_path: Path, old: type[Message], new: type[Message]) -> list[str]:
    (finding,) = check(write(tmp_path, old, new))
    return finding.problems


def test_nested_models_become_definitions() -> None:
    schema = schema_of(W1)
    assert schema["properties"]["address"] == {"$ref": "#/definitions/Address"}
    assert "Address" in schema["definitions"]
    jsonschema.Draft7Validator.check_schema(schema)


def test_demo_export_versions_are_compatible() -> None:
    findings = check(COMMITTED)
    assert [(f.type, f.old_version, f.new_version, f.problems) for f in findings] == [
        ("demo.export", 1, 2, [])
    ]


def test_added_optional_field_is_compatible(tmp_path: Path) -> None:
    class W2(Message, type="test.schemas.widget", version=2):
        size: float
        label: str | None = None
        kind: Literal["a", "b", "c"] = "a"
        address: Address
        tags: list[str] = Field(default_factory=list)
        colour: str | None = None

    assert problems_between(tmp_path, W1, W2) == []


def test_removed_field_is_breaking(tmp_path: Path) -> None:
    class W2(Message, type="test.schemas.widget", version=2):
        size: float
        kind: Literal["a", "b"] = "a"
        address: Address
        tags: list[str] = Field(default_factory=list)

    assert problems_between(tmp_path, W1, W2) == ["field 'label' removed"]


def test_newly_required_field_is_breaking(tmp_path: Path) -> None:
    class W2(Message, type="test.schemas.widget", version=2):
        size: float
        label: str | None = None
        kind: Literal["a", "b"] = "a"
        address: Address
        tags: list[str] = Field(default_factory=list)
        owner: str

    assert problems_between(tmp_path, W1, W2) == ["field 'owner' is newly required"]


def test_narrowed_types_are_breaking(tmp_path: Path) -> None:
    class W2(Message, type="test.schemas.widget", version=2):
        size: int
        label: str
        kind: Literal["a"] = "a"
        address: Address
        tags: list[str] = Field(default_factory=list, max_length=3)

    assert sorted(problems_between(tmp_path, W1, W2)) == [
        "field 'kind': enum lost value \"b\"",
        "field 'label' is newly required",
        "field 'label': no longer accepts null",
        "field 'size': no longer accepts number",
        "field 'tags': maxItems tightened to 3",
    ]


def test_changes_inside_a_nested_model_are_found(tmp_path: Path) -> None:
    class Address2(BaseModel):
        city: str
        zip: str

    class W2(Message, type="test.schemas.widget", version=2):
        size: float
        label: str | None = None
        kind: Literal["a", "b"] = "a"
        address: Address2
        tags: list[str] = Field(default_factory=list)

    assert problems_between(tmp_path, W1, W2) == [
        "field 'address.zip' is newly required",
        "field 'address.zip': no longer accepts null",
    ]


def test_widening_number_from_integer_is_compatible() -> None:
    old = {"type": "object", "properties": {"n": {"type": "integer"}}}
    new = {"type": "object", "properties": {"n": {"type": "number"}}}
    assert compare(old, new) == []
    assert compare(new, old) == ["field 'n': no longer accepts number"]


def test_drift_finds_a_hand_edited_file(tmp_path: Path) -> None:
    write(tmp_path, W1)
    assert drift([W1], tmp_path) == []
    path = tmp_path / "test.schemas.widget.v1.json"
    path.write_text(render(W1).replace('"size"', '"sizes"'))
    assert drift([W1], tmp_path) == ["test.schemas.widget.v1.json"]
    path.unlink()
    assert drift([W1], tmp_path) == ["test.schemas.widget.v1.json"]


def test_a_file_that_is_not_a_schema_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ConfigurationError, match=r"broken\.json: not a leveret schema file"):
        check(tmp_path)


def test_cli_check_exits_1_on_a_breaking_change(tmp_path: Path) -> None:
    class W2(Message, type="test.schemas.widget", version=2):
        size: float
        address: Address

    write(tmp_path, W1, W2)
    result = CliRunner().invoke(main, ["schemas", "check", "--dir", str(tmp_path)])
    assert result.exit_code == 1
    assert "test.schemas.widget v1 -> v2: BREAKING" in result.output
    assert "  - field 'label' removed" in result.output
    ok = CliRunner().invoke(main, ["schemas", "check", "--dir", str(COMMITTED)])
    assert ok.exit_code == 0
    assert "demo.export v1 -> v2: compatible" in ok.output


def test_cli_export_check_fails_on_drift(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["schemas", "export", "--check", "--dir", str(tmp_path)])
    assert result.exit_code == 1
    assert "out of date" in result.output
    CliRunner().invoke(main, ["schemas", "export", "--dir", str(tmp_path)])
    again = CliRunner().invoke(main, ["schemas", "export", "--check", "--dir", str(tmp_path)])
    assert again.exit_code == 0
