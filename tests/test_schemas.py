"""JSON Schema files: export, drift, draft-07 conversion and version compatibility (no broker)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import jsonschema
import pytest
from click.testing import CliRunner
from pydantic import ConfigDict, Field, create_model

from leveret.cli import main
from leveret.compatibility import check
from leveret.conformance import Conformance
from leveret.demo import ExportRequested, ExportRequestedV2
from leveret.demo import app as demo_app
from leveret.errors import ConfigurationError, SchemaViolation
from leveret.messages import Message, Model
from leveret.schemas import drift, export, schema_of

COMMITTED = Path(__file__).resolve().parent.parent / "schemas"
NEWER_KEYWORDS = {
    "$defs",
    "prefixItems",
    "unevaluatedProperties",
    "unevaluatedItems",
    "dependentRequired",
    "dependentSchemas",
    "$anchor",
    "$dynamicRef",
    "$dynamicAnchor",
    "minContains",
    "maxContains",
}


# --- the test models: version 1 of a widget, and what a version 2 might change -----


class Address(Model):
    city: str
    zip: str | None = None


class Widget(Message, type="test.schemas.widget", version=1):
    size: float
    label: str | None = None
    kind: Literal["a", "b"] = "a"
    address: Address | None = None
    tags: list[str] = Field(default_factory=list)


def widget(version: int = 2, **changes: Any) -> type[Message]:
    """A widget version with version 1's fields, changed by ``changes`` (None removes one)."""
    fields: dict[str, Any] = {
        "size": (float, ...),
        "label": (str | None, None),
        "kind": (Literal["a", "b"], "a"),
        "address": (Address | None, None),
        "tags": (list[str], Field(default_factory=list)),
    }
    fields.update(changes)
    return create_model(
        f"WidgetV{version}",
        __base__=Message,
        __cls_kwargs__={"type": "test.schemas.widget", "version": version},
        **{name: spec for name, spec in fields.items() if spec is not None},
    )


def problems(tmp_path: Path, new: type[Message], old: type[Message] = Widget) -> list[str]:
    export([old, new], tmp_path)
    (finding,) = check(tmp_path)
    return finding.problems


def keys_in(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield key
            yield from keys_in(value)
    elif isinstance(node, list):
        for value in node:
            yield from keys_in(value)


# --- the committed files -------------------------------------------------------------


def test_committed_files_match_the_demo_models() -> None:
    assert drift(demo_app.models(), COMMITTED) == [], "run `leveret schemas export`"


@pytest.mark.parametrize("path", sorted(COMMITTED.glob("*.json")), ids=lambda p: p.name)
def test_committed_files_are_draft_07_only(path: Path) -> None:
    schema = json.loads(path.read_text(encoding="utf-8"))
    jsonschema.Draft7Validator.check_schema(schema)
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert path.name == f"{schema['x-leveret-type']}.v{schema['x-leveret-version']}.json"
    assert NEWER_KEYWORDS.isdisjoint(keys_in(schema))


@pytest.mark.parametrize(
    ("model", "payload", "valid"),
    [
        (ExportRequested, {"user_id": 1}, True),
        (ExportRequested, {"user_id": 1, "unknown": "ignored"}, True),  # a tolerant reader
        (ExportRequested, {"user_id": "1"}, False),  # strict: a string is not an integer
        (ExportRequested, {"user_id": 0}, False),
        (ExportRequested, {"format": "csv"}, False),
        (ExportRequested, {"user_id": 1, "format": "pdf"}, False),
        (ExportRequestedV2, {"user_id": 1, "columns": ["id"]}, True),
        (ExportRequestedV2, {"user_id": 1, "columns": None}, True),
        (ExportRequestedV2, {"user_id": 1, "columns": [1]}, False),
        (Conformance, {"note": None, "sleep_ms": 600_000}, True),
        (Conformance, {"sleep_ms": 600_001}, False),
    ],
)
def test_the_committed_file_and_the_model_agree(
    model: type[Message], payload: dict[str, Any], valid: bool
) -> None:
    schema = json.loads(
        (COMMITTED / f"{model.message_type}.v{model.message_version}.json").read_text()
    )
    assert jsonschema.Draft7Validator(schema).is_valid(payload) is valid
    body = json.dumps(payload).encode()
    if valid:
        model.from_json(body)
    else:
        with pytest.raises(SchemaViolation):
            model.from_json(body)


# --- conversion to draft-07 ----------------------------------------------------------


def test_nested_models_are_definitions_referenced_the_draft_07_way() -> None:
    schema = schema_of(Widget)
    assert "$defs" not in schema
    assert set(schema["definitions"]) == {"Address"}
    branches = schema["properties"]["address"]["anyOf"]
    assert {"$ref": "#/definitions/Address"} in branches


def test_a_tuple_becomes_draft_07_array_items() -> None:
    class Pair(Message, type="test.schemas.pair", version=1):
        pair: tuple[int, str]

    field = schema_of(Pair)["properties"]["pair"]
    assert field["items"] == [{"type": "integer"}, {"type": "string"}]
    assert field["additionalItems"] is False
    assert "prefixItems" not in field
    assert not jsonschema.Draft7Validator(schema_of(Pair)).is_valid({"pair": [1, "a", 2]})


def test_keywords_beside_a_ref_are_kept_in_force() -> None:
    class Described(Message, type="test.schemas.described", version=1):
        address: Address = Field(description="where to send it")

    field = schema_of(Described)["properties"]["address"]
    assert field == {
        "allOf": [{"$ref": "#/definitions/Address"}],
        "description": "where to send it",
    }


def test_a_keyword_draft_07_cannot_express_is_refused() -> None:
    class Loose(Message, type="test.schemas.loose", version=1):
        model_config = ConfigDict(json_schema_extra={"unevaluatedProperties": False})
        x: int

    with pytest.raises(ConfigurationError, match="unevaluatedProperties"):
        schema_of(Loose)


def test_the_file_names_its_type_and_version() -> None:
    schema = schema_of(Widget)
    assert schema["$id"] == "test.schemas.widget.v1.json"
    assert (schema["x-leveret-type"], schema["x-leveret-version"]) == ("test.schemas.widget", 1)
    assert "additionalProperties" not in schema  # unknown fields are ignored, not refused


# --- drift ---------------------------------------------------------------------------


def test_drift_finds_a_hand_edited_file(tmp_path: Path) -> None:
    (path,) = export([Widget], tmp_path)
    assert drift([Widget], tmp_path) == []
    path.write_text(path.read_text().replace('"number"', '"integer"'))
    assert drift([Widget], tmp_path) == ["test.schemas.widget.v1.json"]


def test_drift_finds_a_missing_file(tmp_path: Path) -> None:
    assert drift([Widget], tmp_path) == ["test.schemas.widget.v1.json"]


# --- compatibility ----------------------------------------------------------------------


def test_demo_export_v1_to_v2_is_compatible(tmp_path: Path) -> None:
    export(demo_app.models(), tmp_path)
    assert [(f.type, f.old_version, f.new_version, f.problems) for f in check(tmp_path)] == [
        ("demo.export", 1, 2, [])
    ]


def test_an_added_optional_field_and_enum_value_are_compatible(tmp_path: Path) -> None:
    new = widget(kind=(Literal["a", "b", "c"], "a"), colour=(str | None, None))
    assert problems(tmp_path, new) == []


def test_a_type_made_nullable_is_compatible(tmp_path: Path) -> None:
    assert problems(tmp_path, widget(size=(float | None, ...))) == []


def test_a_removed_field_is_breaking(tmp_path: Path) -> None:
    assert problems(tmp_path, widget(label=None)) == ["field 'label': removed"]


def test_a_new_required_field_is_breaking(tmp_path: Path) -> None:
    assert problems(tmp_path, widget(owner=(str, ...))) == ["field 'owner': new required field"]


def test_a_field_made_required_is_breaking(tmp_path: Path) -> None:
    assert problems(tmp_path, widget(tags=(list[str], ...))) == ["field 'tags': newly required"]


def test_number_narrowed_to_integer_is_breaking(tmp_path: Path) -> None:
    assert problems(tmp_path, widget(size=(int, ...))) == [
        "field 'size': type narrowed from number to integer"
    ]


def test_integer_widened_to_number_is_compatible(tmp_path: Path) -> None:
    old = widget(1, size=(int, ...))
    assert problems(tmp_path, widget(size=(float, ...)), old=old) == []


def test_nullable_made_non_null_is_breaking(tmp_path: Path) -> None:
    assert problems(tmp_path, widget(label=(str, ""))) == ["field 'label': no longer accepts null"]


def test_an_enum_that_lost_a_value_is_breaking(tmp_path: Path) -> None:
    assert problems(tmp_path, widget(kind=(Literal["a"], "a"))) == [
        "field 'kind': enum lost value 'b'"
    ]


def test_a_tightened_bound_is_breaking(tmp_path: Path) -> None:
    new = widget(tags=(list[str], Field(default_factory=list, max_length=3)))
    assert problems(tmp_path, new) == ["field 'tags': maxItems tightened from none to 3"]


def test_a_constraint_inside_a_nullable_field_is_compared(tmp_path: Path) -> None:
    new = widget(label=(str | None, Field(None, max_length=3)))
    assert problems(tmp_path, new) == ["field 'label': maxLength tightened from none to 3"]


def test_a_change_inside_a_nested_model_is_found_through_its_ref(tmp_path: Path) -> None:
    class Address(Model):  # same name, so the $ref is the same; the definition differs
        city: str
        zip: str

    assert problems(tmp_path, widget(address=(Address | None, None))) == [
        "field 'address.zip': newly required",
        "field 'address.zip': no longer accepts null",
    ]


def test_a_recursive_model_is_compared_without_looping(tmp_path: Path) -> None:
    class Node(Message, type="test.schemas.node", version=1):
        name: str
        child: Node | None = None

    class NodeV2(Message, type="test.schemas.node", version=2):
        name: str = Field(max_length=5)
        child: NodeV2 | None = None

    found = problems(tmp_path, NodeV2, old=Node)
    assert "field 'name': maxLength tightened from none to 5" in found
    assert "field 'child.name': maxLength tightened from none to 5" in found


# --- reading the directory -----------------------------------------------------------


def test_an_unreadable_file_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ConfigurationError, match=r"broken\.json: not a readable JSON file"):
        check(tmp_path)


def test_a_file_without_type_and_version_is_refused(tmp_path: Path) -> None:
    (tmp_path / "other.json").write_text('{"type": "object"}')
    with pytest.raises(ConfigurationError, match="needs x-leveret-type"):
        check(tmp_path)


def test_a_missing_directory_is_an_error_not_an_empty_check(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="not a directory"):
        check(tmp_path / "nowhere")


# --- the command line ----------------------------------------------------------------


def test_cli_check_exits_1_on_a_breaking_pair(tmp_path: Path) -> None:
    export([Widget, widget(label=None)], tmp_path)
    result = CliRunner().invoke(main, ["schemas", "check", "--dir", str(tmp_path)])
    assert result.exit_code == 1
    assert "test.schemas.widget v1 -> v2: BREAKING\n  - field 'label': removed" in result.output


def test_cli_check_exits_0_on_a_compatible_pair(tmp_path: Path) -> None:
    export([Widget, widget(colour=(str | None, None))], tmp_path)
    result = CliRunner().invoke(main, ["schemas", "check", "--dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "test.schemas.widget v1 -> v2: compatible" in result.output


def test_cli_export_check_exits_1_on_drift(tmp_path: Path) -> None:
    args = ["schemas", "export", "--check", "--dir", str(tmp_path)]
    export(demo_app.models(), tmp_path)
    assert CliRunner().invoke(main, args).exit_code == 0
    path = tmp_path / "demo.export.v1.json"
    path.write_text(path.read_text().replace('"minimum": 1', '"minimum": 2'))
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    assert "demo.export.v1.json" in result.output
