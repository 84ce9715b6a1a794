"""JSON Schema files: the language-neutral face of every message type.

One draft-07 file per type and version, ``schemas/<type>.v<version>.json``, is the
contract that workers in other languages validate (ajv in draft-07 mode, json_schemer,
gojsonschema). pydantic emits 2020-12: :func:`schema_of` converts, and refuses what
draft-07 cannot say rather than leave a keyword a reader would silently ignore.
:mod:`leveret.compatibility` compares the versions of a type.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic.errors import PydanticInvalidForJsonSchema

from leveret.errors import ConfigurationError
from leveret.messages import Message

DRAFT_07 = "http://json-schema.org/draft-07/schema#"
FILE_SUFFIX = ".json"
TYPE_KEY = "x-leveret-type"
VERSION_KEY = "x-leveret-version"
REF_PREFIX = "#/definitions/"

# Keywords whose value is a subschema, a list of them, or a name-to-subschema map. Other
# values (enum, const, default, required...) are data: a field named "prefixItems" is fine.
_ONE = {"additionalItems", "additionalProperties", "contains", "else", "if", "items", "not"}
_ONE |= {"propertyNames", "then"}
_MANY = {"allOf", "anyOf", "oneOf", "prefixItems"}
_NAMED = {"definitions", "patternProperties", "properties"}
# 2019-09 and 2020-12 keywords that draft-07 has no spelling for (and pydantic never emits).
_NEWER = {"$anchor", "$defs", "$dynamicAnchor", "$dynamicRef", "$recursiveAnchor", "$recursiveRef"}
_NEWER |= {"$vocabulary", "contentSchema", "dependentRequired", "dependentSchemas"}
_NEWER |= {"maxContains", "minContains", "unevaluatedItems", "unevaluatedProperties"}


def file_name(model: type[Message]) -> str:
    """Return the name of a model's schema file: ``<type>.v<version>.json``."""
    return f"{model.message_type}.v{model.message_version}{FILE_SUFFIX}"


def schema_of(model: type[Message]) -> dict[str, Any]:
    """Return the draft-07 JSON Schema of a message model.

    Returns:
        The schema, with ``$id`` and the ``x-leveret-type`` and ``x-leveret-version``
        annotations that map a file back to its type and version.

    Raises:
        ConfigurationError: the model has no type and version, or needs something
            draft-07 cannot express.
    """
    if not hasattr(model, "message_version"):
        raise ConfigurationError(f"{model.__name__} has no message type and version")
    label = f"{model.message_type} v{model.message_version}"
    try:
        raw = model.model_json_schema(ref_template=REF_PREFIX + "{model}")
    except PydanticInvalidForJsonSchema as exc:
        raise ConfigurationError(f"{label}: no JSON Schema: {exc}") from exc
    definitions = {name: _draft07(d, label) for name, d in raw.pop("$defs", {}).items()}
    schema: dict[str, Any] = _draft07(raw, label)
    if set(schema) == {"$ref"}:
        # A self-referencing model comes out as a bare $ref. Inline it, or $id and the
        # annotations would be siblings of $ref, which draft-07 ignores.
        schema = dict(definitions[str(schema["$ref"]).removeprefix(REF_PREFIX)])
    if definitions:
        schema["definitions"] = definitions
    schema.setdefault("title", label)
    schema.update({"$schema": DRAFT_07, "$id": file_name(model)})
    schema.update({TYPE_KEY: model.message_type, VERSION_KEY: model.message_version})
    return schema


def render(model: type[Message]) -> str:
    """Return the exact text of a model's schema file (sorted keys, so diffs stay small)."""
    return json.dumps(schema_of(model), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def export(models: Iterable[type[Message]], directory: Path) -> list[Path]:
    """Write one schema file per model into ``directory``, creating it.

    Returns:
        The paths written, in the order of the models.

    Raises:
        ConfigurationError: as :func:`schema_of`.
    """
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for model in models:
        path = directory / file_name(model)
        path.write_bytes(render(model).encode("utf-8"))  # bytes: no newline translation
        written.append(path)
    return written


def drift(models: Iterable[type[Message]], directory: Path) -> list[str]:
    """Return the names of the files missing from ``directory`` or differing from the models.

    Files that no model describes are not drift: old versions stay for :func:`check`.

    Raises:
        ConfigurationError: as :func:`schema_of`.
    """
    stale = []
    for model in models:
        path = directory / file_name(model)
        if not path.is_file() or path.read_bytes() != render(model).encode("utf-8"):
            stale.append(path.name)
    return stale


def _draft07(schema: Any, label: str) -> Any:
    """Return a draft-07 copy of one 2020-12 (sub)schema."""
    if not isinstance(schema, dict):
        return schema  # the true and false schemas
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _NEWER:
            raise ConfigurationError(f"{label}: draft-07 cannot express {key!r}")
        if key in _MANY or (key == "items" and isinstance(value, list)):
            out[key] = [_draft07(v, label) for v in value]
        elif key in _ONE:
            out[key] = _draft07(value, label)
        elif key in _NAMED:
            out[key] = {k: _draft07(v, label) for k, v in value.items()}
        else:
            out[key] = value
    if "prefixItems" in out:
        # A 2020-12 tuple: prefixItems are the positions, items what may follow (none).
        out["additionalItems"] = out.pop("items", False)
        out["items"] = out.pop("prefixItems")
    if "$ref" in out and len(out) > 1:
        # Draft-07 ignores every keyword beside $ref; under allOf they stay in force.
        out["allOf"] = [{"$ref": out.pop("$ref")}, *out.get("allOf", [])]
    return out


def load(path: Path) -> dict[str, Any]:
    """Read one schema file, making sure it says which type and version it describes."""
    try:
        schema = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"{path}: not a readable JSON file: {exc}") from exc
    if not isinstance(schema, dict) or schema.get("$schema", DRAFT_07) != DRAFT_07:
        raise ConfigurationError(f"{path}: not a draft-07 JSON Schema object")
    type_name, version = schema.get(TYPE_KEY), schema.get(VERSION_KEY)
    if not isinstance(type_name, str) or type(version) is not int or version < 1:
        raise ConfigurationError(f"{path}: needs {TYPE_KEY} (a name) and {VERSION_KEY} (>= 1)")
    return schema
