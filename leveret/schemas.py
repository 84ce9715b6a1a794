"""JSON Schema files: the language-neutral face of the message models.

``leveret schemas export`` writes one draft-07 file per type and version,
``schemas/<type>.v<version>.json``; Node (ajv), Ruby (json_schemer) and Go
(gojsonschema) all read draft-07. ``leveret schemas check`` compares each
version of a type with the previous one and names what would break a reader
or a writer of the older version.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from leveret.errors import ConfigurationError
from leveret.messages import Message

DRAFT_07 = "http://json-schema.org/draft-07/schema#"
TYPE_KEY = "x-leveret-type"
VERSION_KEY = "x-leveret-version"

# Keywords of 2019-09/2020-12 that draft-07 validators would silently ignore.
_NEWER_KEYWORDS = {
    "$defs",
    "prefixItems",
    "unevaluatedProperties",
    "unevaluatedItems",
    "dependentRequired",
    "dependentSchemas",
    "$anchor",
    "$dynamicRef",
    "minContains",
    "maxContains",
}
_ALL_TYPES = frozenset({"object", "array", "string", "number", "integer", "boolean", "null"})
_LOWER_BOUNDS = ("minimum", "exclusiveMinimum", "minLength", "minItems", "minProperties")
_UPPER_BOUNDS = ("maximum", "exclusiveMaximum", "maxLength", "maxItems", "maxProperties")


def file_name(model: type[Message]) -> str:
    """The schema file's name for a model: ``<type>.v<version>.json``."""
    return f"{model.message_type}.v{model.message_version}.json"


def schema_of(model: type[Message]) -> dict[str, Any]:
    """The draft-07 JSON Schema of a model, with its type and version as annotations.

    Raises:
        ConfigurationError: the model needs a keyword draft-07 cannot express.
    """
    schema = model.model_json_schema(ref_template="#/definitions/{model}")
    if "$defs" in schema:
        schema["definitions"] = schema.pop("$defs")
    schema = _to_draft_07(schema)
    _refuse_newer_keywords(model, schema)
    return {
        "$schema": DRAFT_07,
        "$id": file_name(model),
        TYPE_KEY: model.message_type,
        VERSION_KEY: model.message_version,
        **schema,
    }


def render(model: type[Message]) -> str:
    """The exact text of a model's schema file (stable, so diffs stay small)."""
    return json.dumps(schema_of(model), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def export(models: Iterable[type[Message]], directory: Path) -> list[Path]:
    """Write one schema file per model into ``directory``. Returns the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for model in models:
        path = directory / file_name(model)
        path.write_text(render(model), encoding="utf-8")
        written.append(path)
    return written


def drift(models: Iterable[type[Message]], directory: Path) -> list[str]:
    """Names of schema files that are missing or differ from their model."""
    stale = []
    for model in models:
        path = directory / file_name(model)
        if not path.exists() or path.read_text(encoding="utf-8") != render(model):
            stale.append(path.name)
    return stale


@dataclass(frozen=True)
class Finding:
    """The comparison of two consecutive versions of a type; no problems means compatible."""

    type: str
    old_version: int
    new_version: int
    problems: list[str] = field(default_factory=list)


def check(directory: Path) -> list[Finding]:
    """Compare every version of each type in ``directory`` with the previous one.

    Raises:
        ConfigurationError: a file is not JSON or lacks the leveret annotations.
    """
    by_type: dict[str, dict[int, dict[str, Any]]] = {}
    for path in sorted(directory.glob("*.json")):
        try:
            schema = json.loads(path.read_text(encoding="utf-8"))
            by_type.setdefault(schema[TYPE_KEY], {})[int(schema[VERSION_KEY])] = schema
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigurationError(
                f"{path}: not a leveret schema file ({type(exc).__name__}: {exc})"
            ) from exc
    findings = []
    for type_name, versions in sorted(by_type.items()):
        for old, new in itertools.pairwise(sorted(versions)):
            problems = compare(versions[old], versions[new])
            findings.append(Finding(type_name, old, new, problems))
    return findings


def compare(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What in ``new`` would break a reader or writer of ``old`` (empty: compatible).

    Breaking: a removed field, a newly required field, a narrowed type, an enum
    that lost values, a tightened bound or pattern. Widening is compatible.
    """
    return _diff(_inline(old, old), _inline(new, new), "")


def _diff(old: Any, new: Any, where: str) -> list[str]:
    if not isinstance(old, dict) or not isinstance(new, dict):
        return []
    label = f"field '{where}'" if where else "the message"
    problems = []
    lost = _types(old) - _types(new)
    if "integer" in lost and "number" in _types(new):
        lost.discard("integer")
    if lost:
        problems.append(f"{label}: no longer accepts {', '.join(sorted(lost))}")
    problems += _values(old, new, label)
    problems += _bounds(old, new, label)
    old_obj, new_obj = _branch(old, "properties"), _branch(new, "properties")
    if old_obj is not None and new_obj is not None:
        problems += _objects(old_obj, new_obj, where)
    old_arr, new_arr = _branch(old, "items"), _branch(new, "items")
    if old_arr is not None and new_arr is not None:
        problems += _diff(old_arr.get("items"), new_arr.get("items"), f"{where}[]")
    return problems


def _values(old: dict[str, Any], new: dict[str, Any], label: str) -> list[str]:
    old_values, new_values = _allowed(old), _allowed(new)
    if new_values is None:
        return []
    if old_values is None:
        return [f"{label}: now restricted to {', '.join(sorted(new_values))}"]
    return [f"{label}: enum lost value {v}" for v in sorted(old_values - new_values)]


def _bounds(old: dict[str, Any], new: dict[str, Any], label: str) -> list[str]:
    problems = []
    for key in _LOWER_BOUNDS + _UPPER_BOUNDS:
        if key not in new:
            continue
        lower = key in _LOWER_BOUNDS
        if key not in old or (new[key] > old[key] if lower else new[key] < old[key]):
            problems.append(f"{label}: {key} tightened to {new[key]!r}")
    for key in ("pattern", "format"):
        if key in new and new.get(key) != old.get(key):
            problems.append(f"{label}: {key} changed to {new[key]!r}")
    return problems


def _objects(old: dict[str, Any], new: dict[str, Any], where: str) -> list[str]:
    old_props, new_props = old.get("properties", {}), new.get("properties", {})
    prefix = f"{where}." if where else ""
    problems = [f"field '{prefix}{name}' removed" for name in old_props if name not in new_props]
    newly = set(new.get("required", [])) - set(old.get("required", []))
    problems += [f"field '{prefix}{name}' is newly required" for name in sorted(newly)]
    if new.get("additionalProperties") is False and old.get("additionalProperties") is not False:
        problems.append(f"field '{where or '(body)'}': no longer accepts extra fields")
    for name in old_props:
        if name in new_props:
            problems += _diff(old_props[name], new_props[name], f"{prefix}{name}")
    return problems


def _inline(node: Any, root: dict[str, Any], depth: int = 0) -> Any:
    """Replace local ``$ref``s by what they point to (recursive models stop at a depth)."""
    if isinstance(node, list):
        return [_inline(n, root, depth) for n in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node and depth < 16:
        ref = node["$ref"]
        if not isinstance(ref, str) or not ref.startswith("#/"):
            raise ConfigurationError(f"only local $ref is supported, got {ref!r}")
        target: Any = root
        for part in ref[2:].split("/"):
            target = target[part]
        return _inline(target, root, depth + 1)
    if len(node.get("allOf", [])) == 1:
        return _inline(node["allOf"][0], root, depth)
    return {k: _inline(v, root, depth) for k, v in node.items() if k != "definitions"}


def _types(schema: dict[str, Any]) -> set[str]:
    if "anyOf" in schema or "oneOf" in schema:
        found: set[str] = set()
        for branch in schema.get("anyOf", schema.get("oneOf", [])):
            found |= _types(branch) if isinstance(branch, dict) else set(_ALL_TYPES)
        return found
    declared = schema.get("type")
    if declared is None:
        if "const" in schema or "enum" in schema:
            return {_json_type(v) for v in schema.get("enum", [schema.get("const")])}
        return set(_ALL_TYPES)
    return {declared} if isinstance(declared, str) else set(declared)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    return {float: "number", str: "string", list: "array", dict: "object"}.get(
        type(value), "string"
    )


def _allowed(schema: dict[str, Any]) -> set[Any] | None:
    if "const" in schema:
        return {json.dumps(schema["const"])}
    if "enum" in schema:
        return {json.dumps(v) for v in schema["enum"]}
    return None


def _branch(schema: dict[str, Any], key: str) -> dict[str, Any] | None:
    """The schema, or the ``anyOf`` branch of it, that describes an object or array."""
    kind = "object" if key == "properties" else "array"
    for candidate in [schema, *schema.get("anyOf", []), *schema.get("oneOf", [])]:
        if isinstance(candidate, dict) and (key in candidate or candidate.get("type") == kind):
            return candidate
    return None


def _to_draft_07(node: Any) -> Any:
    if isinstance(node, list):
        return [_to_draft_07(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _to_draft_07(v) for k, v in node.items()}
    if "prefixItems" in out:  # a tuple: draft-07 spells it as an array of items
        out["items"] = out.pop("prefixItems")
        out.setdefault("additionalItems", False)
    return out


def _refuse_newer_keywords(model: type[Message], node: Any) -> None:
    if isinstance(node, list):
        for n in node:
            _refuse_newer_keywords(model, n)
    elif isinstance(node, dict):
        newer = _NEWER_KEYWORDS & node.keys()
        if newer:
            raise ConfigurationError(
                f"{model.message_type} v{model.message_version}: draft-07 cannot express "
                f"{', '.join(sorted(newer))}; simplify the model"
            )
        for value in node.values():
            _refuse_newer_keywords(model, value)
