"""What ``leveret check`` alerts on, decided from the queues' figures.

Pure: it takes :class:`leveret.admin.QueueStats` rows and returns problems, one
short sentence each, so a cron job or a CI step can exit non-zero with a reason.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from leveret.admin import QueueStats


@dataclass(frozen=True)
class Limits:
    """What counts as a problem.

    Args:
        max_depth: a work queue holding more messages than this.
        dead_letters: whether a non-empty dead-letter queue is a problem.
        consumers: whether a work queue without a consumer is a problem.
    """

    max_depth: int = 1000
    dead_letters: bool = True
    consumers: bool = True


def problems(rows: Iterable[QueueStats], limits: Limits, queues: Sequence[str] = ()) -> list[str]:
    """The problems among ``rows`` (only ``queues``' rows, if given), in row order."""
    wanted = set(queues)
    found: list[str] = []
    for row in rows:
        owner = row.name.removesuffix(".dlq") if row.role == "dead-letter" else row.name
        if wanted and owner not in wanted:
            continue
        if not row.exists:
            found.append(f"{row.name} does not exist")
        elif row.role == "work":
            if row.messages > limits.max_depth:
                found.append(f"{row.name} holds {row.messages} messages (over {limits.max_depth})")
            if limits.consumers and row.consumers == 0:
                found.append(f"{row.name} has no consumer")
        elif row.role == "dead-letter" and limits.dead_letters and row.messages:
            found.append(f"{row.name} holds {row.messages} dead letter(s)")
    return found
