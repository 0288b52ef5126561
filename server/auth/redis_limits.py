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

A call takes both in one script (`_START`), or neither. Every script is
atomic on the Redis server; Redis failures become `StoreUnavailable`, a
`ConnectionError`, on which `SharedLimitedBackend` falls back to
per-process limits.
"""

from __future__ import annotations

import secrets

import redis.asyncio as aioredis

from server.auth.redis_store import guarded
from server.providers._shared.shared_limits import Outcome, Start

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# One call's start, atomically (shared_limits.SharedSlots.try_start).
# KEYS: running set, rate set. ARGV: max_concurrent (-1: none), slot ttl_ms,
# slot token, per_minute (-1: none), window_ms, max_wait_ms (-1: unbounded),
# turn member suffix. Returns {0} busy, {2, wait_ms} late (neither takes
# anything), {1, wait_ms, turn member or ''} started.
_START = (
    _NOW
    + """
local limit = tonumber(ARGV[1])
if limit >= 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  if redis.call('ZCARD', KEYS[1]) >= limit then return {0} end
end
local wait = 0
local member = ''
local per_minute = tonumber(ARGV[4])
if per_minute >= 0 then
  local window = tonumber(ARGV[5])
  local max_wait = tonumber(ARGV[6])
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - window)
  local turn = now
  local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
  if #last > 0 then turn = math.max(turn, tonumber(last[2])) end
  local count = redis.call('ZCARD', KEYS[2])
  if count >= per_minute then
    local kth = redis.call('ZRANGE', KEYS[2], count - per_minute, count - per_minute, 'WITHSCORES')
    turn = math.max(turn, tonumber(kth[2]) + window)
  end
  wait = turn - now
  if max_wait >= 0 and wait > max_wait then return {2, wait} end
  member = turn .. ':' .. ARGV[7]
  redis.call('ZADD', KEYS[2], turn, member)
  redis.call('PEXPIRE', KEYS[2], wait + window)
end
if limit >= 0 then
  local ttl = tonumber(ARGV[2])
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], ttl * 2)
end
return {1, wait, member}
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
        self._start = client.register_script(_START)
        self._renew = client.register_script(_RENEW)

    def _rate(self, name: str) -> str:
        return f"{self._prefix}upstream:rate:{name}"

    def _running(self, name: str) -> str:
        return f"{self._prefix}upstream:running:{name}"

    async def try_start(
        self,
        name: str,
        *,
        max_concurrent: int | None,
        slot_ttl_s: float,
        per_minute: int | None,
        window_s: float,
        max_wait_s: float | None,
    ) -> Start:
        slot = secrets.token_hex(8)
        answer = await guarded(
            self._start(
                keys=[self._running(name), self._rate(name)],
                args=[
                    -1 if max_concurrent is None else max_concurrent,
                    int(slot_ttl_s * 1000),
                    slot,
                    -1 if per_minute is None else per_minute,
                    int(window_s * 1000),
                    -1 if max_wait_s is None else int(max_wait_s * 1000),
                    secrets.token_hex(6),
                ],
            )
        )
        status = int(answer[0])
        if status == 0:
            return Start(Outcome.BUSY)
        wait_s = max(0, int(answer[1])) / 1000
        if status == 2:
            return Start(Outcome.LATE, wait_s)
        return Start(
            Outcome.STARTED,
            wait_s,
            slot=None if max_concurrent is None else slot,
            turn=str(answer[2]) or None,
        )

    async def cancel_start(self, name: str, token: str) -> None:
        await guarded(self._client.zrem(self._rate(name), token))

    async def renew(self, name: str, token: str, ttl_s: float) -> None:
        await guarded(self._renew(keys=[self._running(name)], args=[int(ttl_s * 1000), token]))

    async def release(self, name: str, token: str) -> None:
        await guarded(self._client.zrem(self._running(name), token))
