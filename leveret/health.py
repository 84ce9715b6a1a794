"""Whether a worker is healthy: the pure judgement behind its probes.

The worker tells :class:`Health` what it sees (connected, the broker's count
of its consumers and of the messages waiting, each settled delivery) and the
probes ask it. A worker is *ready* when it is connected, every queue it
consumes has a consumer registered, and it is not stalled: stalled means its
queues have held messages for ``stall_after`` seconds without a single delivery
settled. It is *live* unless it has been unready for ``grace`` seconds on end,
which gives a reconnect the time to succeed before a container is restarted.

No I/O and no clock of its own: every call takes ``now`` (``time.monotonic()``),
so the rules are tested without a broker or a sleep.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

STALL_AFTER = 300.0
"""Seconds with messages waiting and nothing settled before a worker is stalled."""

GRACE = 60.0
"""Seconds a worker may stay unready before it is no longer live."""


@dataclass(frozen=True)
class Verdict:
    """One probe's answer: ``ok``, and the reason when it is not."""

    ok: bool
    reason: str = ""

    def as_dict(self) -> dict[str, object]:
        """The probe's JSON body."""
        return {"status": "ok" if self.ok else "failing", "reason": self.reason}


@dataclass
class Health:
    """What a worker knows of its own health.

    Args:
        queues: the queues the worker consumes.
        stall_after: seconds with messages waiting and none settled before the
            worker counts as stalled (set it above the longest handler's run).
        grace: seconds of being unready before the worker is no longer live.
        now: the clock reading at creation.
    """

    queues: tuple[str, ...]
    stall_after: float = STALL_AFTER
    grace: float = GRACE
    now: float = 0.0
    connected: bool = False
    stopping: bool = False
    consumers: dict[str, int] = field(default_factory=dict)
    waiting: dict[str, int] = field(default_factory=dict)
    # The progress clock runs only while there is work: it restarts when a
    # delivery settles, and when work is seen after the queues were seen empty.
    _progress_at: float = field(init=False)
    _unready_since: float | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self._progress_at = self.now
        self._unready_since = self.now

    def connection_up(self, now: float) -> None:
        """The worker connected; its consumers are not counted yet."""
        self.connected = True
        self.consumers = {}
        self._progress_at = now
        self._update(now)

    def connection_down(self, now: float) -> None:
        """The connection (or a channel the worker needs) was lost."""
        self.connected = False
        self.consumers = {}
        self._update(now)

    def draining(self, now: float) -> None:
        """The worker is shutting down: it takes no new work."""
        self.stopping = True
        self._update(now)

    def checked(self, consumers: Mapping[str, int], waiting: Mapping[str, int], now: float) -> None:
        """The broker's figures for the worker's queues, from a passive declare."""
        had_work = any(self.waiting.values())
        self.consumers = dict(consumers)
        self.waiting = dict(waiting)
        if not had_work:
            self._progress_at = now
        self._update(now)

    def settled(self, now: float) -> None:
        """A delivery was settled (acked, retried or dead-lettered)."""
        self._progress_at = now
        self._update(now)

    def readiness(self, now: float) -> Verdict:
        """Whether the worker can take work now."""
        if self.stopping:
            return Verdict(False, "the worker is shutting down")
        if not self.connected:
            return Verdict(False, "not connected to the broker")
        missing = [q for q in self.queues if self.consumers.get(q, 0) < 1]
        if missing:
            return Verdict(False, "no consumer registered on " + ", ".join(missing))
        idle = now - self._progress_at
        if any(self.waiting.values()) and idle > self.stall_after:
            total = sum(self.waiting.values())
            return Verdict(
                False,
                f"stalled: {total} message(s) waiting and none settled for {idle:.0f}s "
                f"(limit {self.stall_after:.0f}s)",
            )
        return Verdict(True)

    def liveness(self, now: float) -> Verdict:
        """Whether the worker is alive: unready for less than ``grace`` seconds."""
        ready = self.readiness(now)
        self._update(now, ready)
        if ready.ok or self.stopping or self._unready_since is None:
            return Verdict(True)
        since = now - self._unready_since
        if since <= self.grace:
            return Verdict(True)
        return Verdict(False, f"{ready.reason} for {since:.0f}s (grace {self.grace:.0f}s)")

    def _update(self, now: float, ready: Verdict | None = None) -> None:
        ok = (ready or self.readiness(now)).ok
        if ok:
            self._unready_since = None
        elif self._unready_since is None:
            self._unready_since = now
