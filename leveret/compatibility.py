"""Compatibility of schema versions: what a new version of a type would break.

:func:`check` compares each version of a type with the one before. A version is
compatible when it accepts every message the old one accepts (a consumer upgraded
first still reads old producers) and keeps every field (one not yet upgraded still
finds what it reads).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

from leveret.errors import ConfigurationError
from leveret.schemas import FILE_SUFFIX, REF_PREFIX, TYPE_KEY, VERSION_KEY, load

_JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array"}
# (keyword, its exclusive twin, whether a larger value is the stricter one)
_BOUNDS = [("minimum", "exclusiveMinimum", True), ("maximum", "exclusiveMaximum", False)] + [
    (f"{k}{n}", "", k == "min") for n in ("Length", "Items", "Properties") for k in ("min", "max")
]


@dataclass(frozen=True)
class Finding:
    """How one version of a type compares with the version before it.

    Attributes:
        type: the message type.
        old_version: the earlier version.
        new_version: the next version present.
        problems: what the new version breaks, one sentence each; empty when compatible.
    """

    type: str
    old_version: int
    new_version: int
    problems: list[str]


def check(directory: Path) -> list[Finding]:
    """Compare each version of each type in a directory of schema files with the one before.

    Returns:
        One finding per pair of consecutive versions, sorted by type and version.

    Raises:
        ConfigurationError: the directory or a file cannot be read, a file is not a
            leveret schema, or two files claim the same type and version.
    """
    if not directory.is_dir():
        raise ConfigurationError(f"{directory}: not a directory")
    by_type: dict[str, dict[int, dict[str, Any]]] = {}
    for path in sorted(directory.glob("*" + FILE_SUFFIX)):
        schema = load(path)
        versions = by_type.setdefault(schema[TYPE_KEY], {})
        if schema[VERSION_KEY] in versions:
            raise ConfigurationError(f"{path}: a second file for the same type and version")
        versions[schema[VERSION_KEY]] = schema
    findings = []
    for type_name, versions in sorted(by_type.items()):
        for old, new in pairwise(sorted(versions)):
            try:
                problems = compare(versions[old], versions[new])
            except ConfigurationError as exc:
                raise ConfigurationError(f"{type_name} v{old} -> v{new}: {exc}") from exc
            findings.append(Finding(type_name, old, new, problems))
    return findings


def compare(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Return what schema ``new`` breaks for readers and writers of ``old`` (empty: nothing).

    Raises:
        ConfigurationError: a ``$ref`` that is not ``#/definitions/...`` or is dangling.
    """
    # A definition reached along two paths can report the same sentence twice.
    return list(dict.fromkeys(_Diff(old, new).compare(old, new, "", frozenset())))


class _Diff:
    """Walks an old and a new schema side by side, collecting what the new one breaks."""

    def __init__(self, old: dict[str, Any], new: dict[str, Any]) -> None:
        self.roots = (old, new)

    def resolve(self, schema: Any, side: int, refs: list[str]) -> dict[str, Any]:
        """Follow ``$ref`` and merge ``allOf``, so keywords can be read off one dict."""
        if not isinstance(schema, dict):
            return {"type": []} if schema is False else {}
        merged: dict[str, Any] = {}
        if "$ref" in schema:
            ref = str(schema["$ref"])
            target = self.roots[side].get("definitions", {}).get(ref.removeprefix(REF_PREFIX))
            if not ref.startswith(REF_PREFIX) or not isinstance(target, dict) or ref in refs:
                raise ConfigurationError(f"cannot resolve $ref {ref!r}")
            refs.append(ref)
            merged.update(self.resolve(target, side, refs))
        for part in schema.get("allOf", []):
            merged.update(self.resolve(part, side, refs))
        merged.update({k: v for k, v in schema.items() if k not in ("$ref", "allOf")})
        return merged

    def compare(self, old_raw: Any, new_raw: Any, path: str, active: frozenset[Any]) -> list[str]:
        old_refs: list[str] = []
        new_refs: list[str] = []
        old, new = self.resolve(old_raw, 0, old_refs), self.resolve(new_raw, 1, new_refs)
        pair = (tuple(old_refs), tuple(new_refs))
        if pair in active:
            return []  # a recursive model: this pair is already being compared further up
        if old_refs or new_refs:
            active |= {pair}
        old_branches, new_branches = _branches(old), _branches(new)
        if old_branches or new_branches:
            return self.branches(old_branches or [old], new_branches or [new], path, active)
        problems = _leaf_problems(old, new, _where(path))
        return problems + self.objects(old, new, path, active) + self.arrays(old, new, path, active)

    def branches(self, old: list[Any], new: list[Any], path: str, active: Any) -> list[str]:
        """anyOf / oneOf: each old branch must live on in the closest new branch of its type."""
        problems: list[str] = []
        news = [(b, _types(self.resolve(b, 1, []))) for b in new]
        for branch in old:
            kinds = _types(self.resolve(branch, 0, []))
            tries = [self.compare(branch, b, path, active) for b, k in news if _overlap(kinds, k)]
            if not tries:
                tries = [[f"{_where(path)}: no longer accepts {_show_types(kinds)}"]]
            problems += sorted(tries, key=len)[0]
        return problems

    def objects(self, old: Any, new: Any, path: str, active: frozenset[Any]) -> list[str]:
        old_props, new_props = old.get("properties", {}), new.get("properties", {})
        problems = [f"{_where(_join(path, n))}: removed" for n in old_props if n not in new_props]
        for name in new.get("required", []):
            if name not in old.get("required", []):
                what = "newly required" if name in old_props else "new required field"
                problems.append(f"{_where(_join(path, name))}: {what}")
        for name in (n for n in old_props if n in new_props):
            problems += self.compare(old_props[name], new_props[name], _join(path, name), active)
        old_extra = old.get("additionalProperties", True)
        new_extra = new.get("additionalProperties", True)
        if new_extra is False and old_extra is not False:
            problems.append(f"{_where(path)}: no longer accepts unknown fields")
        elif isinstance(new_extra, dict):
            problems += self.compare(old_extra, new_extra, _join(path, "*"), active)
        return problems

    def arrays(self, old: Any, new: Any, path: str, active: frozenset[Any]) -> list[str]:
        if "items" not in old and "items" not in new:
            return []
        # Tuples (items as a list) compare position by position, then what may follow.
        count = max(len(s["items"]) if isinstance(s.get("items"), list) else 0 for s in (old, new))
        problems = []
        for i in range(count + 1):
            where = f"{path}[{i if i < count else ''}]"
            problems += self.compare(_item(old, i), _item(new, i), where, active)
        return problems


def _where(path: str) -> str:
    return f"field '{path}'" if path else "message"


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _branches(schema: dict[str, Any]) -> list[Any]:
    """The alternatives of an anyOf / oneOf, each with the keywords beside it; [] if none."""
    union = schema.get("anyOf", schema.get("oneOf"))
    if not isinstance(union, list):
        return []
    rest = {k: v for k, v in schema.items() if k not in ("anyOf", "oneOf")}
    return [{**rest, **b} if isinstance(b, dict) else b for b in union]


def _item(schema: dict[str, Any], index: int) -> Any:
    items = schema.get("items", True)
    if not isinstance(items, list):
        return items
    return items[index] if index < len(items) else schema.get("additionalItems", True)


def _values(schema: dict[str, Any]) -> list[Any] | None:
    if "const" in schema:
        return [schema["const"]]
    return list(schema["enum"]) if isinstance(schema.get("enum"), list) else None


def _types(schema: dict[str, Any]) -> set[str] | None:
    """The JSON types a schema admits (from enum or const if it names none); None for any."""
    kind = schema.get("type")
    if kind is not None:
        return {kind} if isinstance(kind, str) else set(kind)
    values = _values(schema)
    if values is None:
        return None
    return {"null" if v is None else _JSON_TYPES.get(type(v), "object") for v in values}


def _covers(kinds: set[str] | None, kind: str) -> bool:
    return kinds is None or kind in kinds or (kind == "integer" and "number" in kinds)


def _overlap(a: set[str] | None, b: set[str] | None) -> bool:
    if a is None or b is None:
        return True
    return any(_covers(b, k) or (k == "number" and "integer" in b) for k in a)


def _show_types(kinds: set[str] | None) -> str:
    return "any type" if kinds is None else "|".join(sorted(kinds)) or "nothing"


def _show(value: Any) -> str:
    return f"'{value}'" if isinstance(value, str) else json.dumps(value)


def _bound(schema: dict[str, Any], key: str, exclusive: str, lower: bool) -> Any:
    """The stricter of a schema's inclusive and exclusive bound as (value, exclusive), or None.

    Upper bounds are negated, so that of two bounds the larger is always the stricter.
    """
    sign = 1 if lower else -1
    keys = [k for k in (key, exclusive) if type(schema.get(k)) in (int, float)]  # bool is no bound
    return max(((sign * schema[k], k == exclusive) for k in keys), default=None)


def _show_bound(bound: Any, lower: bool) -> str:
    if bound is None:
        return "none"
    return f"{bound[0] if lower else -bound[0]}" + (" (exclusive)" if bound[1] else "")


def _leaf_problems(old: dict[str, Any], new: dict[str, Any], where: str) -> list[str]:
    """What one schema node alone (types, values, bounds; not its children) now rejects."""
    problems = []
    old_types, new_types = _types(old), _types(new)
    if new_types is not None and (
        old_types is None or not all(_covers(new_types, k) for k in old_types)
    ):
        what = f"type narrowed from {_show_types(old_types)} to {_show_types(new_types)}"
        problems.append(f"{where}: {what if new_types else 'no longer allowed'}")
    old_values, new_values = _values(old), _values(new)
    if new_values is not None and old_values is None:
        problems.append(f"{where}: now restricted to {', '.join(map(_show, new_values))}")
    elif new_values is not None and old_values is not None:
        kept = {json.dumps(v, sort_keys=True) for v in new_values}
        lost = [v for v in old_values if json.dumps(v, sort_keys=True) not in kept]
        problems += [f"{where}: enum lost value {_show(v)}" for v in lost]
    for key, exclusive, lower in _BOUNDS:
        was, now = _bound(old, key, exclusive, lower), _bound(new, key, exclusive, lower)
        if now is not None and (was is None or now > was):
            change = f"from {_show_bound(was, lower)} to {_show_bound(now, lower)}"
            problems.append(f"{where}: {key} tightened {change}")
    for key in ("pattern", "format", "multipleOf"):
        if key in new and new[key] != old.get(key):
            change = f"from {_show(old[key]) if key in old else 'none'} to {_show(new[key])}"
            problems.append(f"{where}: {key} changed {change}")
    if new.get("uniqueItems") is True and old.get("uniqueItems") is not True:
        problems.append(f"{where}: items must now be unique")
    return problems
