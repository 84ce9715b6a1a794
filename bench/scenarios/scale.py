"""Scale curves, one setting changed per curve, one round each, on the systems below that were
selected. Each point of the first four is a drain measurement (see :mod:`bench.scenarios.drain`):
the number of worker processes (1, 2, 4), the prefetch (1, 10, 100, 1000; the other settings at
their defaults, so leveret keeps concurrency 8), the queue type (quorum, the default of leveret
and of the raw clients here, against classic, the default of Dramatiq, Celery and FastStream) and
the payload size (1 KB, 10 KB, 100 KB). Each point of the last is a latency measurement (see
:mod:`bench.scenarios.latency`) at a higher offered rate, up to and past the rate where the
machine (publishers, broker and consumer on the same cores) no longer keeps up.
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
    "load": {
        "scenario": "latency",
        "systems": ["leveret", "pika", "dramatiq"],
        # About 3 seconds of publishing per point, at least 1000 messages.
        "points": [
            (r, {"rate": r}, max(1000, 3 * r))
            for r in (250, 500, 1000, 1500, 2000, 2500, 3000, 4000)
        ],
        "label": "offered load (msg/s)",
    },
}

KEPT_UP = 0.95
"""A latency point kept up with its offered rate when both the publishers and the consumer ran
at this share of it or more, and its median stayed under QUEUED_MS."""
QUEUED_MS = 10.0
"""A median latency above this means messages waited behind a standing queue: a consumer a few
percent short of the offered rate builds one up within the few seconds of a point."""


def kept_up(result: dict[str, Any]) -> bool:
    """Whether a latency point's publishers and consumer kept up with the offered rate."""
    offered = result.get("offered_rate") or 0.0
    return (
        result.get("achieved_rate", 0.0) >= KEPT_UP * offered
        and result.get("consumer_rate", 0.0) >= KEPT_UP * offered
        and result.get("p50_ms", 0.0) < QUEUED_MS
    )


def points(selected: list[str], curves: list[str] | None = None) -> list[dict[str, Any]]:
    """Every measurement of every curve (or of ``curves``), for the selected systems, in an
    interleaved order."""
    out = []
    for curve, spec in CURVES.items():
        if curves is not None and curve not in curves:
            continue
        for x, params, n in spec["points"]:
            for system in spec["systems"]:
                if system in selected:
                    out.append(
                        {
                            "curve": curve,
                            "scenario": spec.get("scenario", "drain"),
                            "x": x,
                            "system": system,
                            "n": n,
                            "params": params,
                        }
                    )
    return out
