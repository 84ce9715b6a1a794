"""Scale curves, each point a drain measurement (see :mod:`bench.scenarios.drain`) with one
setting changed: the number of worker processes (1, 2, 4), the prefetch (1, 10, 100, 1000; the
other settings at their defaults, so leveret keeps concurrency 8), the queue type (quorum, the
default of leveret and of the raw clients here, against classic, the default of Dramatiq, Celery
and FastStream) and the payload size (1 KB, 10 KB, 100 KB). One round each, on the systems below
that were selected.
"""

from __future__ import annotations

from typing import Any

CURVES: dict[str, dict[str, Any]] = {
    "workers": {
        "systems": ["leveret", "pika", "dramatiq"],
        "points": [(1, {"workers": 1}, 6000), (2, {"workers": 2}, 6000), (4, {"workers": 4}, 6000)],
        "label": "worker processes",
    },
    "prefetch": {
        "systems": ["leveret", "pika"],
        "points": [(p, {"prefetch": p}, 4000) for p in (1, 10, 100, 1000)],
        "label": "prefetch",
    },
    "queue_type": {
        "systems": ["leveret", "pika", "aiopika"],
        "points": [
            ("quorum", {"queue_type": "quorum"}, 6000),
            ("classic", {"queue_type": "classic"}, 6000),
        ],
        "label": "queue type",
    },
    "payload": {
        "systems": ["leveret", "pika"],
        "points": [
            ("1KB", {"size": 1024}, 4000),
            ("10KB", {"size": 10 * 1024}, 3000),
            ("100KB", {"size": 100 * 1024}, 1000),
        ],
        "label": "payload size",
    },
}


def points(selected: list[str]) -> list[dict[str, Any]]:
    """Every measurement of every curve, for the selected systems, in an interleaved order."""
    out = []
    for curve, spec in CURVES.items():
        for x, params, n in spec["points"]:
            for system in spec["systems"]:
                if system in selected:
                    out.append({"curve": curve, "x": x, "system": system, "n": n, "params": params})
    return out
