"""The envelope both publishers send (no broker)."""

from __future__ import annotations

import os
import uuid

import pytest

from leveret import tracing, wire
from leveret.errors import ConfigurationError, MessageTooLarge
from leveret.publisher.core import PublisherCore
from tests.apps import Task, TaskV2

CORE = PublisherCore("amqp://localhost/")


def test_envelope_carries_the_contract() -> None:
    env = CORE.envelope(TaskV2(n=1), exchange="ex", correlation_id="c", headers={"tenant": "t"})
    assert (env.exchange, env.routing_key, env.type) == ("ex", "task", "test.task")
    headers = dict(env.headers)
    assert tracing.parse(headers.pop(tracing.TRACEPARENT)) is not None
    assert headers == {wire.VERSION: 2, "tenant": "t"}
    assert uuid.UUID(env.message_id).version == 4
    assert env.correlation_id == "c"
    assert env.body == TaskV2(n=1).to_json()


def test_a_given_message_id_is_kept() -> None:
    assert CORE.envelope(Task(n=1), exchange="ex", message_id="fixed").message_id == "fixed"


def test_callers_cannot_forge_contract_headers() -> None:
    env = CORE.envelope(
        Task(n=1), exchange="ex", headers={wire.RETRY_COUNT: 5, wire.REASON: "x", wire.VERSION: 7}
    )
    assert env.headers.keys() == {wire.VERSION, tracing.TRACEPARENT}
    assert env.headers[wire.VERSION] == 1


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


PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_a_message_outside_any_trace_starts_one() -> None:
    first, second = (CORE.envelope(Task(n=1), exchange="ex") for _ in range(2))
    a, b = tracing.of(first.headers), tracing.of(second.headers)
    assert a is not None and b is not None
    assert a.trace_id != b.trace_id
    assert tracing.TRACESTATE not in first.headers


def test_a_traceparent_the_caller_passes_is_the_parent() -> None:
    env = CORE.envelope(
        Task(n=1), exchange="ex", headers={"traceparent": PARENT, "tracestate": "web=1"}
    )
    sent = tracing.of(env.headers)
    assert sent is not None
    assert (sent.trace_id, sent.flags) == ("0af7651916cd43dd8448eb211c80319c", "01")
    assert sent.parent_id != "b7ad6b7169203331"
    assert env.headers[tracing.TRACESTATE] == "web=1"


def test_a_malformed_traceparent_from_the_caller_is_replaced() -> None:
    env = CORE.envelope(
        Task(n=1), exchange="ex", headers={"traceparent": "garbage", "tracestate": "web=1"}
    )
    sent = tracing.of(env.headers)
    assert sent is not None and sent.state is None
    assert tracing.TRACESTATE not in env.headers


def test_inside_a_trace_a_message_continues_it() -> None:
    parent = tracing.TraceContext("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331", "00")
    with tracing.continuing(parent):
        env = CORE.envelope(Task(n=1), exchange="ex")
    sent = tracing.of(env.headers)
    assert sent is not None
    assert (sent.trace_id, sent.flags) == (parent.trace_id, "00")
    assert sent.parent_id != parent.parent_id
    # The block is over: the next message starts a trace of its own.
    after = tracing.of(CORE.envelope(Task(n=1), exchange="ex").headers)
    assert after is not None and after.trace_id != parent.trace_id


def test_message_ids_are_uuid4_unique_and_new_in_a_forked_child() -> None:
    ids = [wire.new_message_id() for _ in range(5000)]
    assert len(set(ids)) == len(ids)
    for message_id in ids[:100]:
        parsed = uuid.UUID(message_id)
        assert parsed.version == 4 and str(parsed) == message_id
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: the same ids as the parent would be duplicates
        os.write(write, (wire.new_message_id() + tracing.root().trace_id).encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 100).decode()
    os.close(read)
    os.waitpid(pid, 0)
    parent = wire.new_message_id() + tracing.root().trace_id
    assert len(child) == 36 + 32 and child != parent
