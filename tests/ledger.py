"""Exact accounting by message id, for the fault and load tests.

Every published id must be processed at least once or sit in the dead-letter
queue with its reason; none may be missing. Duplicates are counted, not failed:
at-least-once delivery allows them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from leveret import dlq

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Ledger:
    """What was published, processed and dead-lettered, by message id."""

    published: set[str] = field(default_factory=set)
    processed: Counter[str] = field(default_factory=Counter)
    dead: dict[str, str] = field(default_factory=dict)

    def record_outcomes(self, outcomes: Iterable[dict[str, Any]]) -> None:
        """Count the ``processed`` outcomes of worker log lines or Outcome records."""
        for o in outcomes:
            if o["outcome"] == "processed":
                self.processed[o["message_id"]] += 1

    def record_dead_letters(self, url: str, queue: str) -> None:
        """Read the dead-letter queue (leaving it as it is)."""
        for letter in dlq.browse(url, queue, limit=1_000_000):
            self.dead[str(letter.message_id)] = letter.reason

    @property
    def lost(self) -> set[str]:
        return self.published - set(self.processed) - set(self.dead)

    @property
    def duplicates(self) -> int:
        return sum(n - 1 for n in self.processed.values() if n > 1)

    def summary(self) -> dict[str, int]:
        return {
            "published": len(self.published),
            "processed": len(set(self.processed) & self.published),
            "dead_lettered": len(set(self.dead) & self.published),
            "duplicates": self.duplicates,
            "lost": len(self.lost),
        }


def outcomes_in(log_text: str) -> list[dict[str, Any]]:
    """The outcome lines of a worker's JSON log."""
    found = []
    for line in log_text.splitlines():
        if line.startswith("{") and '"outcome"' in line:
            event = json.loads(line)
            if "outcome" in event:
                found.append(event)
    return found


def spawn_worker(
    url: str, queue: str, exchange: str, log: Path, *args: str, **env: str
) -> subprocess.Popen[bytes]:
    """Start ``leveret worker tests.apps:app`` with its JSON log written to ``log``."""
    environment = dict(
        os.environ, LEVERET_URL=url, LEVERET_TEST_QUEUE=queue, LEVERET_TEST_EXCHANGE=exchange, **env
    )
    with log.open("ab") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "leveret.cli", "--json-logs", "worker", "tests.apps:app", *args],
            cwd=ROOT,
            env=environment,
            stdout=subprocess.DEVNULL,
            stderr=sink,
        )


def rss_kib(pid: int) -> int:
    """Resident memory of a process, in KiB (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0
