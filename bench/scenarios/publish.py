"""Publish throughput with confirms: single ``publish`` calls from one caller, from eight, the
system's batch API, and many concurrent asyncio callers. Callers are threads for a blocking API
and asyncio tasks for an asyncio one. Connections are opened and warmed up (one message each)
before the clock starts; afterwards every message is read back from the queue and counted by id.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

from bench import common
from bench.systems import System

WINDOW = 1000
"""Unconfirmed messages in flight for a system whose batch API is a program of its own (Go)."""


def one_caller(system: System, n: int, params: dict[str, Any], workdir: Path) -> dict[str, Any]:
    return _callers(system, n, 1)


def eight_callers(system: System, n: int, params: dict[str, Any], workdir: Path) -> dict[str, Any]:
    return _callers(system, n, 8)


def _callers(system: System, n: int, count: int) -> dict[str, Any]:
    payloads = common.make_payloads(system.tag, n, 200)
    lanes = [payloads[i::count] for i in range(count)]
    elapsed = system.publish_external(n, count, 1)
    if elapsed is None:
        elapsed = (
            asyncio.run(_async_lanes(system, lanes))
            if system.is_async
            else _thread_lanes(system, lanes)
        )
    return _verify(system, payloads, elapsed)


async def _async_lanes(system: System, lanes: list[list[dict[str, Any]]]) -> float:
    caller = await system.acaller()
    await caller.send(common.warm_payload())

    async def lane(items: list[dict[str, Any]]) -> None:
        for p in items:
            await caller.send(common.stamp(p))

    start = time.perf_counter()
    await asyncio.gather(*(lane(items) for items in lanes))
    elapsed = time.perf_counter() - start
    await system.aclose()
    return elapsed


def _thread_lanes(system: System, lanes: list[list[dict[str, Any]]]) -> float:
    callers = [system.caller() for _ in lanes]
    for c in callers:
        c.send(common.warm_payload())
    gate = threading.Barrier(len(lanes) + 1)
    errors: list[BaseException] = []

    def lane(caller: Any, items: list[dict[str, Any]]) -> None:
        gate.wait()
        try:
            for p in items:
                caller.send(common.stamp(p))
        except BaseException as exc:  # reported by the driver
            errors.append(exc)

    threads = [
        threading.Thread(target=lane, args=(c, items))
        for c, items in zip(callers, lanes, strict=True)
    ]
    for t in threads:
        t.start()
    gate.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    for c in callers:
        c.close()
    if errors:
        raise errors[0]
    return elapsed


def batch(system: System, n: int, params: dict[str, Any], workdir: Path) -> dict[str, Any]:
    if system.batch_api is None:
        return {"status": "n/a"}
    payloads = common.make_payloads(system.tag, n, 200)
    external = system.publish_external(n, 1, WINDOW)
    if external is not None:
        elapsed = external
    elif system.batch_async:
        elapsed = asyncio.run(_async_batch(system, payloads))
    else:
        b = system.batcher()
        start = time.perf_counter()
        b.run(payloads)
        elapsed = time.perf_counter() - start
        b.close()
    result = _verify(system, payloads, elapsed)
    result["api"] = system.batch_api
    return result


def concurrent(system: System, n: int, params: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Many asyncio callers at once (up to 1000 awaiting), each waiting for its own confirm."""
    if system.concurrent_api is None:
        return {"status": "n/a"}
    payloads = common.make_payloads(system.tag, n, 200)
    elapsed = asyncio.run(_async_batch(system, payloads, concurrent=True))
    result = _verify(system, payloads, elapsed)
    result["api"] = system.concurrent_api
    return result


async def _async_batch(
    system: System, payloads: list[dict[str, Any]], *, concurrent: bool = False
) -> float:
    b = await (system.aconcurrent() if concurrent else system.abatcher())
    start = time.perf_counter()
    await b.run(payloads)
    elapsed = time.perf_counter() - start
    await b.close()
    return elapsed


def _verify(system: System, payloads: list[dict[str, Any]], elapsed: float) -> dict[str, Any]:
    ids = common.read_ids(system.url, system.queue, system.extract_id)
    counted = common.count_ids(ids, [p["id"] for p in payloads])
    return {
        "msgs_per_s": len(payloads) / elapsed,
        "seconds": elapsed,
        "read_back": len(ids),
        **counted,
    }
