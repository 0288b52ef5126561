"""Provider limits in Redis: the `SharedSlots` every replica takes from.

Per upstream model (`name`, `<backend>:<model>`):

- `upstream:rate:<name>`: sorted set of reserved start times (ms, the Redis
  server's clock). A reservation gets the earliest time that keeps at most
  `per_minute` starts in any window and is not before a turn already given,
  the rule `LimitedBackend` applies in one process, so callers on every
  replica queue in arrival order.
- `upstream:running:<name>`: sorted set of running calls' tokens, scored by
  when their lease runs out; expired ones (a replica that died) are dropped
  before counting.

Every script is atomic on the Redis server; Redis failures become
`StoreUnavailable`, a `ConnectionError`, on which `SharedLimitedBackend` falls back to per-process
limits.
"""

from __future__ import annotations

import secrets

import redis.asyncio as aioredis

from server.auth.redis_store import guarded

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# ARGV: per_minute, window_ms, max_wait_ms (-1: unbounded), member suffix.
# Returns {1, wait_ms, member} when reserved, {0, wait_ms} when refused.
_RESERVE = (
    _NOW
    + """
local per_minute = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local max_wait = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local turn = now
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if #last > 0 then turn = math.max(turn, tonumber(last[2])) end
local count = redis.call('ZCARD', KEYS[1])
if count >= per_minute then
  local kth = redis.call('ZRANGE', KEYS[1], count - per_minute, count - per_minute, 'WITHSCORES')
  turn = math.max(turn, tonumber(kth[2]) + window)
end
local wait = turn - now
if max_wait >= 0 and wait > max_wait then return {0, wait} end
local member = turn .. ':' .. ARGV[4]
redis.call('ZADD', KEYS[1], turn, member)
redis.call('PEXPIRE', KEYS[1], wait + window)
return {1, wait, member}
"""
)

# ARGV: limit, ttl_ms, token. Returns 1 when the slot is taken.
_ACQUIRE = (
    _NOW
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
return 1
"""
)

_RENEW = (
    _NOW
    + """
redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[1]), ARGV[2])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]) * 2)
return 1
"""
)


class RedisUpstreamSlots:
    """`SharedSlots` (server/providers/_shared/shared_limits.py) in Redis."""

    def __init__(self, client: aioredis.Redis, prefix: str = "ck:") -> None:
        self._client = client
        self._prefix = prefix
        self._reserve = client.register_script(_RESERVE)
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)

    def _rate(self, name: str) -> str:
        return f"{self._prefix}upstream:rate:{name}"

    def _running(self, name: str) -> str:
        return f"{self._prefix}upstream:running:{name}"

    async def reserve_start(
        self, name: str, per_minute: int, window_s: float, max_wait_s: float | None
    ) -> tuple[str | None, float]:
        max_wait_ms = -1 if max_wait_s is None else int(max_wait_s * 1000)
        answer = await guarded(
            self._reserve(
                keys=[self._rate(name)],
                args=[per_minute, int(window_s * 1000), max_wait_ms, secrets.token_hex(6)],
            )
        )
        wait_s = max(0, int(answer[1])) / 1000
        return (str(answer[2]) if int(answer[0]) == 1 else None), wait_s

    async def cancel_start(self, name: str, token: str) -> None:
        await guarded(self._client.zrem(self._rate(name), token))

    async def try_acquire(self, name: str, limit: int, ttl_s: float) -> str | None:
        token = secrets.token_hex(8)
        taken = await guarded(
            self._acquire(keys=[self._running(name)], args=[limit, int(ttl_s * 1000), token])
        )
        return token if int(taken) == 1 else None

    async def renew(self, name: str, token: str, ttl_s: float) -> None:
        await guarded(self._renew(keys=[self._running(name)], args=[int(ttl_s * 1000), token]))

    async def release(self, name: str, token: str) -> None:
        await guarded(self._client.zrem(self._running(name), token))
