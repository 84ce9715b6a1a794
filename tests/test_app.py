"""Handlers and resolving a delivery to one (no broker)."""

from __future__ import annotations

from typing import Any

import pytest

from leveret import App, Context, wire
from leveret.errors import (
    ConfigurationError,
    DecodeError,
    InvalidContentType,
    MessageTooLarge,
    SchemaViolation,
    UnknownMessageType,
    UnknownVersion,
)
from tests.apps import Task, TaskV2, topology

APP = App(topology("q", "ex"))


@APP.handler(Task, TaskV2, queue="q")
async def handle(message: Task | TaskV2, ctx: Context) -> None:
    """A handler for both versions."""


def delivery(body: bytes = b'{"n": 1}', **kw: object) -> wire.Delivery:
    fields: dict[str, Any] = {
        "type": "test.task",
        "headers": {wire.VERSION: 1},
        "content_type": "application/json",
    }
    fields.update(kw)
    return wire.Delivery(body=body, exchange="ex", routing_key="task", **fields)


def test_resolves_each_version_to_its_model() -> None:
    handler, message = APP.resolve("q", delivery())
    assert handler.func is handle and handler.is_async
    assert message == Task(n=1)
    _, v2 = APP.resolve("q", delivery(b'{"n": 2, "label": "x"}', headers={wire.VERSION: 2}))
    assert v2 == TaskV2(n=2, label="x")


@pytest.mark.parametrize(
    ("kw", "body", "error", "match"),
    [
        ({"content_type": "text/plain"}, b"{}", InvalidContentType, "content type 'text/plain'"),
        ({"type": None}, b"{}", UnknownMessageType, "no type property"),
        (
            {"type": "other"},
            b"{}",
            UnknownMessageType,
            "no handler for message type 'other' on queue 'q'",
        ),
        ({"headers": {}}, b"{}", UnknownVersion, "missing or non-integer leveret-version"),
        ({"headers": {wire.VERSION: True}}, b"{}", UnknownVersion, "missing or non-integer"),
        (
            {"headers": {wire.VERSION: 3}},
            b"{}",
            UnknownVersion,
            r"v3 is not handled on 'q' \(accepted: \[1, 2\]\)",
        ),
        ({}, b"nope", DecodeError, "not valid UTF-8 JSON"),
        ({}, b'{"n": []}', SchemaViolation, "test.task v1: n"),
    ],
)
def test_resolve_errors(
    kw: dict[str, Any], body: bytes, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        APP.resolve("q", delivery(body, **kw))


def test_content_type_must_be_json() -> None:
    with pytest.raises(InvalidContentType, match="content type None"):
        APP.resolve("q", delivery(content_type=None))
    with_charset = delivery(content_type="application/json; charset=utf-8")
    assert APP.resolve("q", with_charset)[1] == Task(n=1)


def test_size_limit() -> None:
    with pytest.raises(MessageTooLarge, match="over the limit of 4"):
        APP.resolve("q", delivery(), max_size=4)


def test_registration_errors() -> None:
    app = App(topology("q", "ex"))
    with pytest.raises(ConfigurationError, match="not in the topology"):
        app.handler(Task, queue="missing")
    with pytest.raises(ConfigurationError, match="at least one"):
        app.handler(queue="q")
    app.handler(Task, queue="q")(lambda m, c: None)
    with pytest.raises(ConfigurationError, match="already has a handler"):
        app.handler(TaskV2, queue="q")(lambda m, c: None)


def test_models_and_lookup() -> None:
    assert APP.models() == [Task, TaskV2]
    assert APP.model("test.task", 2) is TaskV2
    with pytest.raises(UnknownVersion):
        APP.model("test.task", 7)
    with pytest.raises(UnknownMessageType):
        APP.model("nope", 1)
