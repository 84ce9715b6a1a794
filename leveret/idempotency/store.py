"""What an idempotency store keeps per key, and the protocol every store follows."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal, Protocol

MAX_KEY_LENGTH = 255


@dataclass(frozen=True, slots=True)
class Claim:
    """What a store found when a caller asked for a key.

    Attributes:
        state: ``taken`` (the caller holds the lease now), ``done`` (the side
            effect ran) or ``busy`` (another caller holds the lease).
        result: when done, the result's JSON text.
        until: when busy, the other caller's lease expiry, if known.
    """

    state: Literal["taken", "done", "busy"]
    result: str | None = None
    until: datetime | None = None


class Store(Protocol):
    """Where keys are leased and marked done. Every method is atomic per key."""

    def acquire(self, key: str, owner: str, lease: timedelta, ttl: timedelta) -> Claim:
        """Take the key for ``owner`` unless it is done or leased by a live owner."""

    def finish(self, key: str, owner: str, result: str, ttl: timedelta) -> bool:
        """Mark the key done with ``result``; False if another owner took it meanwhile."""

    def release(self, key: str, owner: str) -> bool:
        """Drop ``owner``'s lease so another caller can run; False if not its lease."""

    def purge(self) -> int:
        """Delete expired records; returns how many."""


def now() -> datetime:
    """The current time in UTC: leases and expiries are written in it."""
    return datetime.now(UTC)


def aware(moment: datetime) -> datetime:
    """A time read back from a store, made timezone-aware (SQLite drops the zone)."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
