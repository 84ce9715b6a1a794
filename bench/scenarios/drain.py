"""Drain throughput and peak RSS: N messages published beforehand (untimed), then one consumer
process (or ``workers`` of them) started on the full queue. Timed from the first handler's start
to the last handler's end (the consumer's start-up is not counted). Every id is counted; after
the consumers stop, every queue of the system must be empty (nothing left unacked).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench import common
from bench.systems import System


def run(system: System, n: int, params: dict[str, Any], workdir: Path) -> dict[str, Any]:
    size = int(params.get("size") or 200)
    workers = int(params.get("workers") or 1)
    payloads = common.make_payloads(system.tag, n, size)
    ids = [p["id"] for p in payloads]
    for p in payloads:
        common.stamp(p)
    system.prefill(payloads)
    depth = common.wait_depth(system.url, system.queue, n)
    if depth != n:
        raise RuntimeError(f"prefill left {depth} messages in {system.queue}, expected {n}")
    consumers = common.Consumers(system, "drain", workdir, workers)
    try:
        consumers.wait(ids, timeout=60 + n / 100)
        rss = consumers.peak_rss_kib()
    finally:
        consumers.stop()
    first, last = common.window(consumers.records, ids)
    return {
        "msgs_per_s": n / (last - first),
        "seconds": last - first,
        "rss_mib": rss / 1024,
        "left": common.leftovers(system.url, system.queues()),
        "consumer": system.consumer_desc,
        **consumers.records.accounting(ids),
    }
