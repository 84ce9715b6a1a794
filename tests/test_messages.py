"""Message models: naming, strict validation, one-pass decoding."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import pytest
from pydantic import field_validator

from leveret import Message
from leveret.errors import ConfigurationError, DecodeError, SchemaViolation
from tests.apps import Task


def test_type_and_version_come_from_the_class() -> None:
    assert Task.key() == ("test.task", 1)
    assert Task.default_routing_key == "task"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"type": "Bad Name", "version": 1}, "dotted lower-case"),
        ({"type": "ok.name", "version": 0}, "integer >= 1"),
        ({"type": "ok.name", "version": "2"}, "integer >= 1"),
        ({"type": "ok.name"}, "integer >= 1"),
    ],
)
def test_bad_declarations_are_refused(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        type("Bad", (Message,), {"__annotations__": {}}, **kwargs)


def test_building_from_bad_data_is_a_schema_violation() -> None:
    with pytest.raises(SchemaViolation, match=r"test.task v1: n: Input should be a valid integer"):
        Task(n="1")  # type: ignore[arg-type]  # what bad input looks like


def test_messages_are_frozen() -> None:
    task = Task(n=1)
    with pytest.raises(Exception, match="frozen"):
        task.n = 2  # type: ignore[misc]


def test_json_round_trip() -> None:
    assert Task.from_json(Task(n=5).to_json()) == Task(n=5)


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"{", DecodeError),
        (b"\xff", DecodeError),
        (b"", DecodeError),
        (b"[]", SchemaViolation),
        (b"3", SchemaViolation),
        (b'{"n": "3"}', SchemaViolation),
        (b'{"fail_times": -1}', SchemaViolation),
    ],
)
def test_decoding_tells_bad_json_from_a_schema_violation(
    body: bytes, error: type[Exception]
) -> None:
    with pytest.raises(error):
        Task.from_json(body)


def test_a_body_is_validated_as_json_once() -> None:
    checks: list[int] = []

    class Stamped(Message, type="test.stamped", version=1):
        n: int
        at: datetime
        ref: UUID

        @field_validator("n")
        @classmethod
        def count(cls, n: int) -> int:
            checks.append(n)
            return n

    body = b'{"n": 7, "at": "2026-11-23T10:00:00Z", "ref": "12345678-1234-5678-1234-567812345678"}'
    # Strict JSON validation takes the JSON forms of a time and a UUID (strict
    # Python validation, which building from keywords is, would not).
    message = Stamped.from_json(body)
    assert isinstance(message, Stamped)
    assert message.at == datetime(2026, 11, 23, 10, tzinfo=UTC)
    assert message.ref == UUID("12345678-1234-5678-1234-567812345678")
    assert checks == [7]
    assert Stamped.from_json(message.to_json()) == message
    with pytest.raises(SchemaViolation, match=r"test\.stamped v1: n: Input should be a valid"):
        Stamped.from_json(body.replace(b"7,", b'"7",'))
    with pytest.raises(SchemaViolation, match=r"test\.stamped v1: n: Input should be a valid"):
        Stamped(n="7", at=message.at, ref=message.ref)  # type: ignore[arg-type]


def test_unknown_fields_are_ignored() -> None:
    assert Task.from_json(b'{"n": 1, "added_later": true}') == Task(n=1)


def test_a_deeply_nested_payload_is_rejected_cleanly() -> None:
    body = b'{"n": 1, "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with pytest.raises((DecodeError, SchemaViolation)):
        Task.from_json(body)


def test_nested_models_must_be_strict_like_the_schema() -> None:
    from pydantic import BaseModel

    from leveret.messages import Model

    class Plain(BaseModel):
        x: int

    with pytest.raises(
        ConfigurationError, match=r"nested model Plain must derive from leveret\.Model"
    ):

        class Loose(Message, type="test.loose", version=1):
            inner: list[Plain] | None = None

    class Inner(Model):
        x: int

    class Outer(Message, type="test.outer", version=1):
        inner: Inner

    with pytest.raises(SchemaViolation, match=r"inner\.x"):
        Outer.from_json(b'{"inner": {"x": "1"}}')
    assert Outer.from_json(b'{"inner": {"x": 1}}') == Outer(inner=Inner(x=1))
