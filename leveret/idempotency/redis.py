"""RedisStore: idempotency keys in Redis, with the lease as the key's expiry."""

from __future__ import annotations

from datetime import timedelta

import redis

from leveret.idempotency.store import Claim, now

DEFAULT_PREFIX = "leveret:idempotency:"

# Compare-and-set in one step on the server: only the lease's owner finishes
# or releases. A key that expired untaken may still be finished by its owner,
# as SQLStore does.
_FINISH = """
local held = redis.call('get', KEYS[1])
if held == ARGV[1] or not held then
  redis.call('set', KEYS[1], ARGV[2], 'px', ARGV[3])
  return 1
end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""
_RUNNING, _DONE = "running:", "done:"


class RedisStore:
    """Keys in Redis: ``running:<owner>`` with the lease as its expiry, then ``done:<result>``.

    A caller takes a key with ``SET NX PX`` (the lease expires on the server,
    so no clocks need agree); finishing and releasing are Lua scripts that
    compare the holder first. Done keys expire ``ttl`` later by themselves.

    Args:
        client: a ``redis.Redis`` client (either ``decode_responses`` setting).
        prefix: put before every key, to share a database with other data.
    """

    def __init__(self, client: redis.Redis, *, prefix: str = DEFAULT_PREFIX) -> None:
        self.client = client
        self.prefix = prefix
        self._finish = client.register_script(_FINISH)
        self._release = client.register_script(_RELEASE)

    def acquire(self, key: str, owner: str, lease: timedelta, ttl: timedelta) -> Claim:
        """Set the key if absent; else read what holds it."""
        name = self.prefix + key
        for _ in range(3):
            if self.client.set(name, _RUNNING + owner, nx=True, px=_ms(lease)):
                return Claim("taken")
            pipe = self.client.pipeline()  # MULTI: the value and its expiry together
            pipe.get(name)
            pipe.pttl(name)
            value, pttl = pipe.execute()
            if value is None:
                continue  # expired or released between the two calls: try again
            text = value.decode() if isinstance(value, bytes) else str(value)
            if text.startswith(_DONE):
                return Claim("done", result=text[len(_DONE) :])
            until = now() + timedelta(milliseconds=pttl) if pttl > 0 else None
            return Claim("busy", until=until)
        return Claim("busy")

    def finish(self, key: str, owner: str, result: str, ttl: timedelta) -> bool:
        """Replace ``owner``'s lease with the done value, expiring ``ttl`` later."""
        args: list[str | int] = [_RUNNING + owner, _DONE + result, _ms(ttl)]
        return bool(self._finish(keys=[self.prefix + key], args=args))

    def release(self, key: str, owner: str) -> bool:
        """Delete the key if ``owner`` holds its lease."""
        return bool(self._release(keys=[self.prefix + key], args=[_RUNNING + owner]))

    def purge(self) -> int:
        """Nothing to do: Redis expires leases and done keys by itself."""
        return 0


def _ms(span: timedelta) -> int:
    return max(1, int(span.total_seconds() * 1000))
