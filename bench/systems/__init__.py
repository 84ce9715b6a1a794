"""The systems under test, one small module each, all with the interface of :class:`System`.

A system module is imported lazily (only the one being measured), in a fresh driver process
per measurement, so no library's state leaks into another's figures.
"""

from __future__ import annotations

import asyncio
import importlib
from pathlib import Path
from typing import Any

MODULES = {
    "leveret": "bench.systems.leveret_",
    "pika": "bench.systems.pika_",
    "aiopika": "bench.systems.aiopika_",
    "dramatiq": "bench.systems.dramatiq_",
    "celery": "bench.systems.celery_",
    "faststream": "bench.systems.faststream_",
    "go": "bench.systems.go_",
}
ALL = list(MODULES)


class Caller:
    """One publishing caller (a thread's or a task's handle). ``send`` returns once confirmed."""

    def send(self, payload: dict[str, Any]) -> Any:
        raise NotImplementedError

    def close(self) -> None:
        """Release the caller's connection, if it owns one."""


class System:
    """What a scenario needs from a system. One instance lives for one measurement.

    Args:
        url: the broker.
        tag: unique to this measurement; every queue and exchange name includes it.
        params: scenario parameters (``prefetch``, ``concurrency``, ``queue_type`` ...).
    """

    name = ""
    is_async = False
    """True when the publishing API is asyncio (callers are then tasks, not threads)."""
    batch_api: str | None = None
    """What the batch publish scenario uses, or None: the system has none."""
    batch_async = False
    """True when the batch API is asyncio (:meth:`abatcher`), else :meth:`batcher`."""
    concurrent_api: str | None = None
    """What the concurrent publish scenario uses (many asyncio callers at once, each awaiting
    its own confirm: :meth:`aconcurrent`), or None: the system has no asyncio API."""
    unavailable: str | None = None
    """Why the system cannot run here (a missing toolchain), or None."""
    retry_api: str | None = None
    """How the retry scenario retries after 10 ms, or None: the system has no delayed retry."""
    consumer_desc = ""
    """The consumer's settings, for the report."""

    def __init__(self, url: str, tag: str, params: dict[str, Any]) -> None:
        self.url = url
        self.tag = tag
        self.params = params
        self.queue = f"bench.{tag}.{self.name}"

    # topology
    def declare(self) -> None:
        """Create what a run needs (before any clock starts)."""

    def queues(self) -> list[str]:
        """Every queue a run may leave messages in: checked empty, then deleted."""
        return [self.queue]

    def exchanges(self) -> list[str]:
        return []

    # publishing (sync systems implement caller/batch, async ones acaller/abatch)
    def caller(self) -> Caller:
        raise NotImplementedError

    async def acaller(self) -> Any:
        """An asyncio caller: ``await .send(payload)``; callers may share one connection."""
        raise NotImplementedError

    async def aclose(self) -> None:
        """Close what :meth:`acaller` opened."""

    def batcher(self, warm: bool = True) -> Any:
        """A connected batch publisher: ``.run(payloads)`` (timed), then ``.close()``.

        With ``warm``, it has already published one warm-up message (id ``warm-...``).
        """
        raise NotImplementedError

    async def abatcher(self, warm: bool = True) -> Any:
        """The asyncio form of :meth:`batcher`: ``await .run(payloads)``, ``await .close()``."""
        raise NotImplementedError

    async def aconcurrent(self, warm: bool = True) -> Any:
        """Concurrent asyncio callers: ``await .run(payloads)``, ``await .close()``.

        By default the batch API, for systems whose batch API is concurrent callers already.
        """
        return await self.abatcher(warm)

    def publish_external(self, n: int, callers: int, window: int) -> float | None:
        """Publish ``n`` payloads (ids ``<tag>-0000000`` ...) from a program of the system's own,
        ``callers`` at once with ``window`` unconfirmed each; return the seconds taken, after
        warm-up. None: the system publishes from Python (:meth:`caller`, :meth:`batcher`).
        """
        return None

    def prefill(self, payloads: list[dict[str, Any]]) -> None:
        """Put ``payloads`` in the work queue quickly (untimed, before a consumer starts)."""
        if self.batch_async:
            asyncio.run(self._aprefill(payloads))
        else:
            b = self.batcher(warm=False)
            try:
                b.run(payloads)
            finally:
                b.close()

    async def _aprefill(self, payloads: list[dict[str, Any]]) -> None:
        b = await self.abatcher(warm=False)
        try:
            await b.run(payloads)
        finally:
            await b.close()

    def extract_id(self, body: bytes) -> str:
        """The benchmark id inside a published body (to count what a publish left in the queue)."""
        raise NotImplementedError

    # consuming
    def consumer_argv(self, python: str) -> list[str]:
        """The command that runs one consumer process; its settings come from the environment."""
        raise NotImplementedError

    def consumer_env(self, mode: str, records: Path) -> dict[str, str]:
        return {
            "BENCH_URL": self.url,
            "BENCH_QUEUE": self.queue,
            "BENCH_TAG": self.tag,
            "BENCH_MODE": mode,
            "BENCH_RECORDS": str(records),
            "BENCH_PREFETCH": str(self.params.get("prefetch") or ""),
            "BENCH_CONCURRENCY": str(self.params.get("concurrency") or ""),
            "BENCH_QUEUE_TYPE": str(self.params.get("queue_type") or "quorum"),
        }

    def close(self) -> None:
        """Close whatever the driver process opened."""


def load(name: str, url: str, tag: str, params: dict[str, Any]) -> System:
    module = importlib.import_module(MODULES[name])
    system: System = module.System(url, tag, params)
    return system
