"""End-to-end latency at a fixed offered rate (500 msg/s by default): the consumer is running
and warmed up; messages are published on a fixed schedule, each stamped with its send time
(wall clock) just before its publish call; the consumer records when its handler starts.
Latency = handler start - send time. Blocking APIs publish from PACERS threads, or one per
PACE_PER_THREAD msg/s offered if that is more (so one slow confirm does not hold the schedule
back), asyncio APIs from one task per message.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import threading
import time
from pathlib import Path
from typing import Any

from bench import common
from bench.systems import System

PACERS = 4
PACE_PER_THREAD = 250
"""Blocking APIs get one pacing thread per this many msg/s offered, and at least PACERS: a
thread waits for each confirm (about a millisecond here) before its next publish."""
WARMUP = 20


def run(system: System, n: int, params: dict[str, Any], workdir: Path) -> dict[str, Any]:
    rate = float(params.get("rate") or 500)
    payloads = common.make_payloads(system.tag, n, 200)
    ids = [p["id"] for p in payloads]
    warm = [common.warm_payload() for _ in range(WARMUP)]
    consumers = common.Consumers(system, "latency", workdir)
    try:
        if system.is_async:
            sent_span = asyncio.run(_async_paced(system, warm, payloads, rate, consumers))
        else:
            sent_span = thread_paced(system, warm, payloads, rate, consumers)
        consumers.wait(ids, timeout=60 + n / 50)
        rss = consumers.peak_rss_kib()
    finally:
        consumers.stop()
    rec = consumers.records
    lat = [(rec.ok[i][0][0] - rec.ok[i][0][2]) * 1000 for i in ids]
    first, last = common.window(rec, ids)
    return {
        "p50_ms": common.percentile(lat, 50),
        "p99_ms": common.percentile(lat, 99),
        "max_ms": max(lat),
        "offered_rate": rate,
        "achieved_rate": (n - 1) / sent_span if sent_span > 0 else float("nan"),
        # Below the offered rate: the consumer fell behind, and latency is queueing time.
        "consumer_rate": n / (last - first),
        "rss_mib": rss / 1024,
        "left": common.leftovers(system.url, system.queues()),
        **rec.accounting(ids),
    }


def _warm_wait(consumers: common.Consumers, warm: list[dict[str, Any]]) -> None:
    consumers.wait([p["id"] for p in warm], timeout=90)


def thread_paced(
    system: System,
    warm: list[dict[str, Any]],
    payloads: list[dict[str, Any]],
    rate: float,
    consumers: common.Consumers,
) -> float:
    pacers = max(PACERS, math.ceil(rate / PACE_PER_THREAD))
    callers = [system.caller() for _ in range(pacers)]
    for i, p in enumerate(warm):
        callers[i % pacers].send(common.stamp(p))
    _warm_wait(consumers, warm)
    counter = itertools.count()
    lock = threading.Lock()
    sent_at: list[float] = [0.0] * len(payloads)
    errors: list[BaseException] = []
    start = time.perf_counter() + 0.05

    def pace(caller: Any) -> None:
        try:
            while True:
                with lock:
                    i = next(counter)
                if i >= len(payloads):
                    return
                delay = start + i / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                sent_at[i] = time.perf_counter()
                caller.send(common.stamp(payloads[i]))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=pace, args=(c,)) for c in callers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for c in callers:
        c.close()
    if errors:
        raise errors[0]
    return max(sent_at) - min(sent_at)


async def _async_paced(
    system: System,
    warm: list[dict[str, Any]],
    payloads: list[dict[str, Any]],
    rate: float,
    consumers: common.Consumers,
) -> float:
    caller = await system.acaller()
    for p in warm:
        await caller.send(common.stamp(p))
    await asyncio.to_thread(_warm_wait, consumers, warm)
    loop = asyncio.get_running_loop()
    tasks = []
    start = loop.time() + 0.05
    first = last = 0.0
    for i, p in enumerate(payloads):
        delay = start + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        last = time.perf_counter()
        first = first or last
        tasks.append(asyncio.create_task(caller.send(common.stamp(p))))
    await asyncio.gather(*tasks)
    await system.aclose()
    return last - first
