"""The retry path: N messages published beforehand, each failing on its first attempt and
succeeding on the second, with the system's own delayed retry set to 10 ms. Timed from the
first attempt's start to the last success's end: the failure, the republish (or the delay
mechanism), the 10 ms wait and the second attempt, for every message.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench import common
from bench.systems import System


def run(system: System, n: int, params: dict[str, Any], workdir: Path) -> dict[str, Any]:
    if system.retry_api is None:
        return {"status": "n/a"}
    payloads = common.make_payloads(system.tag, n, 200)
    ids = [p["id"] for p in payloads]
    for p in payloads:
        common.stamp(p)
    system.prefill(payloads)
    depth = common.wait_depth(system.url, system.queue, n)
    if depth != n:
        raise RuntimeError(f"prefill left {depth} messages in {system.queue}, expected {n}")
    consumers = common.Consumers(system, "retry", workdir)
    try:
        consumers.wait(ids, timeout=60 + n / 50)
        rss = consumers.peak_rss_kib()
    finally:
        consumers.stop()
    rec = consumers.records
    _first, last = common.window(rec, ids)
    seconds = last - rec.first_start
    fails = [rec.fails.get(i, 0) for i in ids]
    return {
        "seconds": seconds,
        "msgs_per_s": n / seconds,
        "failed_once": sum(1 for f in fails if f == 1),
        "failed_more": sum(1 for f in fails if f > 1),
        "rss_mib": rss / 1024,
        "left": common.leftovers(system.url, system.queues()),
        "api": system.retry_api,
        **rec.accounting(ids),
    }
