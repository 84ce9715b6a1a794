"""The envelope both publishers send (no broker)."""

from __future__ import annotations

import uuid

import pytest

from leveret import wire
from leveret.errors import ConfigurationError, MessageTooLarge
from leveret.publisher.core import PublisherCore
from tests.apps import Task, TaskV2

CORE = PublisherCore("amqp://guest:guest@localhost/")


def test_envelope_carries_the_contract() -> None:
    env = CORE.envelope(TaskV2(n=1), exchange="ex", correlation_id="c", headers={"tenant": "t"})
    assert (env.exchange, env.routing_key, env.type) == ("ex", "task", "test.task")
    assert env.headers == {wire.VERSION: 2, "tenant": "t"}
    assert uuid.UUID(env.message_id).version == 4
    assert env.correlation_id == "c"
    assert env.body == TaskV2(n=1).to_json()


def test_a_given_message_id_is_kept() -> None:
    assert CORE.envelope(Task(n=1), exchange="ex", message_id="fixed").message_id == "fixed"


def test_callers_cannot_forge_contract_headers() -> None:
    env = CORE.envelope(
        Task(n=1), exchange="ex", headers={wire.RETRY_COUNT: 5, wire.REASON: "x", wire.VERSION: 7}
    )
    assert env.headers == {wire.VERSION: 1}


def test_routing_is_required() -> None:
    with pytest.raises(ConfigurationError, match="no exchange or routing key"):
        CORE.envelope(Task(n=1))


def test_too_large_is_refused() -> None:
    core = PublisherCore("amqp://localhost/", max_size=8)
    with pytest.raises(MessageTooLarge, match="over the limit of 8"):
        core.envelope(Task(n=1), exchange="ex")


def test_only_messages_are_published() -> None:
    with pytest.raises(ConfigurationError, match="instance of a Message subclass"):
        CORE.envelope({"n": 1}, exchange="ex")  # type: ignore[arg-type]
