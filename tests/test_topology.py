"""The topology description and its expansion into declarations (no broker)."""

from __future__ import annotations

from typing import Any

import pytest

from leveret import Binding, Exchange, Queue, RetryPolicy, Topology, wire
from leveret.errors import ConfigurationError
from leveret.topology import Bind, DeclareExchange, DeclareQueue, Unbind, delay_label


def topo(**retry: object) -> Topology:
    return Topology(
        exchanges=(Exchange("ex"),),
        queues=(Queue("q", bindings=(Binding("ex", "k"),), retry=RetryPolicy(**retry)),),  # type: ignore[arg-type]
    )


def test_work_queue_is_quorum_and_dead_letters_at_least_once() -> None:
    ops = {op.name: op for op in topo().declarations() if isinstance(op, DeclareQueue)}
    assert ops["q"].arguments == {
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": "q.dead",
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
        "x-delivery-limit": 20,
    }
    assert ops["q.dlq"].arguments == {"x-queue-type": "quorum"}


def test_classic_queues_get_no_quorum_arguments() -> None:
    t = Topology(exchanges=(Exchange("ex"),), queues=(Queue("q", queue_type="classic"),))
    args = {op.name: op.arguments for op in t.declarations() if isinstance(op, DeclareQueue)}
    assert args["q"] == {"x-queue-type": "classic", "x-dead-letter-exchange": "q.dead"}
    assert args["q.retry.1"]["x-dead-letter-routing-key"] == "q"


def test_tiers_use_queue_level_ttl_and_return_to_their_queue_only() -> None:
    ops = [
        op
        for op in topo(delays=(1, 10, 60), max_attempts=5).declarations()
        if isinstance(op, DeclareQueue)
    ]
    tiers = {op.name: op.arguments for op in ops if ".retry." in op.name}
    assert list(tiers) == ["q.retry.1", "q.retry.2", "q.retry.3"]
    assert [a["x-message-ttl"] for a in tiers.values()] == [1000, 10000, 60000]
    for args in tiers.values():
        assert args["x-dead-letter-exchange"] == ""  # the default exchange: straight to q
        assert args["x-dead-letter-routing-key"] == "q"


def test_counts_bind_to_tiers_and_the_last_tier_repeats() -> None:
    ops = topo(delays=(1, 10), max_attempts=5).declarations()
    binds = {
        (op.arguments or {}).get(wire.RETRY_COUNT): op.queue
        for op in ops
        if isinstance(op, Bind) and op.exchange == "q.retry"
    }
    assert binds == {1: "q.retry.1", 2: "q.retry.2", 3: "q.retry.2", 4: "q.retry.2"}
    # Count 5 (the fifth failure) has no tier: it falls through to the DLQ.
    unbound = {
        (op.queue, (op.arguments or {})[wire.RETRY_COUNT]) for op in ops if isinstance(op, Unbind)
    }
    assert {("q.retry.1", 5), ("q.retry.2", 5), ("q.retry.1", 4)} <= unbound
    assert ("q.retry.2", 4) not in unbound


def test_binding_arguments_have_no_x_prefix_besides_x_match() -> None:
    for op in topo().declarations():
        if isinstance(op, Bind) and op.arguments:
            assert [k for k in op.arguments if k.startswith("x-")] == ["x-match"]


def test_retry_exchange_has_the_dead_exchange_as_alternate() -> None:
    exchanges = {op.name: op for op in topo().declarations() if isinstance(op, DeclareExchange)}
    assert exchanges["q.retry"].type == "headers"
    assert exchanges["q.retry"].arguments == {"alternate-exchange": "q.dead"}
    assert exchanges["q.dead"].type == "fanout"


def test_one_attempt_means_no_tiers() -> None:
    t = topo(delays=(), max_attempts=1)
    assert t.queues[0].tier_queues() == []


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_attempts": 0},
        {"max_attempts": 26},
        {"delays": (), "max_attempts": 2},
        {"delays": (0,)},
        {"delays": (float("nan"),)},
    ],
)
def test_bad_policies_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        RetryPolicy(**kwargs)


def test_bindings_must_name_described_exchanges() -> None:
    with pytest.raises(ConfigurationError, match="which the topology does not describe"):
        Topology(queues=(Queue("q", bindings=(Binding("nope", "k"),)),))


def test_unknown_queue_lookup_names_the_known_ones() -> None:
    with pytest.raises(ConfigurationError, match="known: q"):
        topo().queue("other")


@pytest.mark.parametrize(
    ("seconds", "label"), [(0.2, "200ms"), (1, "1s"), (90, "90s"), (600, "10m"), (7200, "2h")]
)
def test_delay_labels(seconds: float, label: str) -> None:
    assert delay_label(seconds) == label
