"""Least privilege: a RabbitMQ user per role, allowed exactly what the role needs.

RabbitMQ grants three regular expressions per user and vhost, matched against
resource names: *configure* (declare, delete), *write* (publish to an
exchange, bind) and *read* (consume, get, purge). Passive declares need none.

* **publisher**: writes to the topology's exchanges (and, for a delayed
  topology, to the delay levels); nothing else.
* **worker of Q**: reads ``Q``; writes to ``Q.retry`` and ``Q.dead`` (its
  failure path); configures nothing.
* **admin**: configures, writes and reads every name of the topology, and
  writes to the default exchange (``dlq replay`` publishes through it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from leveret import delay
from leveret.topology import Topology, dead_exchange, dead_letter_queue, retry_exchange

NOTHING = "^$"


@dataclass(frozen=True)
class Role:
    """One user's permissions on the vhost."""

    user: str
    configure: str
    write: str
    read: str
    purpose: str


def _any_of(names: list[str], patterns: list[str] | None = None) -> str:
    alternatives = sorted({re.escape(n) for n in names}) + sorted(set(patterns or []))
    return "^(" + "|".join(alternatives) + ")$" if alternatives else NOTHING


def roles(topology: Topology, *, prefix: str = "leveret-") -> list[Role]:
    """The roles of a topology: a publisher, a worker per queue, and an admin."""
    exchanges = [e.name for e in topology.exchanges]
    # A delayed message is published to the exchange of its highest delay level.
    levels = delay.level_names() if topology.delayed else []
    result = [
        Role(f"{prefix}publisher", NOTHING, _any_of(exchanges + levels), NOTHING, "publish tasks"),
    ]
    everything = list(exchanges)
    if topology.delayed:
        everything += [*levels, delay.DELIVER, delay.UNROUTABLE]
    tiers: list[str] = []
    for q in topology.queues:
        failure_path = [retry_exchange(q.name), dead_exchange(q.name)]
        result.append(
            Role(
                f"{prefix}worker-{q.name}",
                NOTHING,
                _any_of(failure_path),
                _any_of([q.name]),
                f"consume {q.name}",
            )
        )
        # Every tier number, not only today's: apply unbinds tiers a longer
        # policy left behind.
        tiers.append(re.escape(retry_exchange(q.name)) + r"\.[0-9]+")
        everything += [q.name, dead_letter_queue(q.name), *failure_path]
    all_names = _any_of(everything, tiers)
    with_default = _any_of([*everything, "amq.default"], tiers)
    result.append(
        Role(
            f"{prefix}admin", all_names, with_default, all_names, "apply the topology, manage DLQs"
        )
    )
    return result


def rabbitmqctl_commands(roles_: list[Role], vhost: str = "/") -> list[list[str]]:
    """The ``rabbitmqctl set_permissions`` command lines for the roles."""
    return [
        ["rabbitmqctl", "set_permissions", "-p", vhost, r.user, r.configure, r.write, r.read]
        for r in roles_
    ]
