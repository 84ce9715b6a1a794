"""Scenario families, one module each. Every scenario function takes a
:class:`~bench.systems.System`, the message count, its parameters and a work directory, and
returns a dict of figures plus the accounting (``expected``, ``lost``, ``duplicates``).

A result with ``status: "n/a"`` means the system has no such API; ``"error"`` carries ``error``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench.scenarios import drain, latency, publish, retry

Scenario = Callable[..., dict[str, Any]]

SCENARIOS: dict[str, Scenario] = {
    "publish_1": publish.one_caller,
    "publish_8": publish.eight_callers,
    "publish_batch": publish.batch,
    "publish_concurrent": publish.concurrent,
    "drain": drain.run,
    "latency": latency.run,
    "retry": retry.run,
}
