"""The load run: many messages of mixed types through several worker processes.

A handler fails a random share of attempts; at the end every id is accounted
for (processed, or dead-lettered after exactly ``max_attempts`` attempts), the
attempt numbers of each message run 1, 2, ... without gaps, and the workers'
memory is sampled for growth.

    python -m tests.load --messages 100000 --workers 3     # the full run
    python -m tests.load --messages 3000                    # what the test suite runs
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

from leveret import AsyncPublisher, admin, logs
from tests import apps
from tests.ledger import Ledger, outcomes_in, rss_kib, spawn_worker

MAX_ATTEMPTS = 3


async def _publish(url: str, exchange: str, messages: int, fail_rate: float) -> set[str]:
    ids: set[str] = set()
    async with AsyncPublisher(url) as pub:
        for start in range(0, messages, 500):
            batch = []
            for n in range(start, min(start + 500, messages)):
                model = apps.Task if n % 2 else apps.TaskV2
                batch.append(pub.publish(model(n=n, fail_rate=fail_rate), exchange=exchange))
            ids.update(await asyncio.gather(*batch))
    return ids


def run(
    url: str, *, messages: int, workers: int = 3, fail_rate: float = 0.1, timeout: float = 900
) -> dict[str, Any]:
    """Run the load and return its figures; raises AssertionError on any loss."""
    tag = uuid.uuid4().hex[:8]
    queue, exchange = f"load.{tag}.work", f"load.{tag}.ex"
    topology = apps.topology(queue, exchange, delays=(0.05, 0.1), max_attempts=MAX_ATTEMPTS)
    admin.apply(url, topology)
    tmp = Path(tempfile.mkdtemp(prefix="leveret-load-"))
    logs = [tmp / f"worker{i}.log" for i in range(workers)]
    procs = [spawn_worker(url, queue, exchange, log, "--concurrency", "16") for log in logs]
    samples: list[tuple[float, int]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.5):
            live = [p.pid for p in procs if p.poll() is None]
            samples.append((time.monotonic(), sum(rss_kib(pid) for pid in live)))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.monotonic()
    try:
        ledger = Ledger(published=asyncio.run(_publish(url, exchange, messages, fail_rate)))
        published_in = time.monotonic() - started
        deadline = started + timeout
        names = [queue, *(name for name, _ in topology.queues[0].tier_queues())]
        idle = 0
        while idle < 4:  # two seconds with nothing waiting anywhere
            assert time.monotonic() < deadline, "the load did not drain in time"
            time.sleep(0.5)
            depth = sum(r.messages for r in admin.stats(url, topology) if r.name in names)
            idle = idle + 1 if depth == 0 else 0
        drained_in = time.monotonic() - started
    finally:
        done.set()
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(60)
    try:
        outcomes = [o for log in logs for o in outcomes_in(log.read_text())]
        ledger.record_outcomes(outcomes)
        ledger.record_dead_letters(url, queue)
        attempts: dict[str, list[int]] = defaultdict(list)
        for o in outcomes:
            attempts[o["message_id"]].append(o["attempt"])
        gaps = [
            i for i, seen in attempts.items() if sorted(set(seen)) != list(range(1, max(seen) + 1))
        ]
        dead_counts = {d.attempts for d in _dead(url, queue)}
    finally:
        admin.delete(url, topology)
    figures = {
        **ledger.summary(),
        "workers": workers,
        "fail_rate": fail_rate,
        "attempts": len(outcomes),
        "retries": sum(1 for o in outcomes if o["outcome"] == "retry_scheduled"),
        "attempt_gaps": len(gaps),
        "dead_letter_attempts": sorted(dead_counts),
        "publish_s": round(published_in, 1),
        "drain_s": round(drained_in, 1),
        **_memory(samples),
    }
    assert figures["lost"] == 0, figures
    assert not gaps, f"attempt numbers with gaps: {gaps[:5]}"
    assert dead_counts <= {MAX_ATTEMPTS}, figures
    return figures


def _dead(url: str, queue: str) -> list[Any]:
    from leveret import dlq

    return dlq.browse(url, queue, limit=1_000_000)


def _memory(samples: list[tuple[float, int]]) -> dict[str, int]:
    """Resident memory of all workers: after warm-up, at the middle and at the end."""
    if len(samples) < 6:
        return {"rss_kib_warm": 0, "rss_kib_end": 0, "rss_kib_growth": 0}
    third = len(samples) // 3
    warm = max(kib for _, kib in samples[third : 2 * third])
    end = max(kib for _, kib in samples[2 * third :])
    return {"rss_kib_warm": warm, "rss_kib_end": end, "rss_kib_growth": end - warm}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--url", default=os.environ.get("LEVERET_TEST_URL", "amqp://127.0.0.1:5672/")
    )
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--fail-rate", type=float, default=0.1)
    args = parser.parse_args()
    logs.configure(level="WARNING")
    figures = run(args.url, messages=args.messages, workers=args.workers, fail_rate=args.fail_rate)
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
