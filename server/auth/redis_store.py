"""The shared key store: Redis, for a fleet of replicas.

Every replica (and the `image-service keys` commands) reads and writes the
same keys, counters and leases, so a key created or revoked, a rate window,
a daily image cap and a monthly budget hold for the whole deployment.
Every step is one Lua script (atomic on the Redis server, timed by the
server's clock so replicas' clocks do not matter, and one command to pack
and one reply to parse where a MULTI transaction has one per command).

Layout (`prefix` defaults to `ck:`): `key:<id>` hash per key, `keys` set
of ids, `rate:<id>` sorted set of request times (ms) in the sliding minute,
`usage:<id>:<period>` hash of `images` and `cost_units` (days kept 40 days,
months 400), `periods:<id>` set of periods with usage.

Redis errors and timeouts become `StoreUnavailable`; `Authenticator` turns
that into refusing the call (fail closed).

One process shares one bounded pool of connections (`connect`). Commands
past its size wait for a connection, up to `IMAGE_SERVICE_REDIS_POOL_TIMEOUT_S`,
instead of failing:
a burst of calls is a busy Redis, not an unreachable one. redis-py's default
pool (100 connections) raises `MaxConnectionsError` at once on the 101st
concurrent command, which refused calls with Redis idle.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Awaitable
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from server.auth.keys import KeyRecord, Limits, Usage, from_units, to_units
from server.auth.store import (
    Lookup,
    PeriodUsage,
    QuotaCheck,
    QuotaRefusal,
    StoreUnavailable,
    refusal,
)
from server.settings import Settings

T = TypeVar("T")
WINDOW_MS = 60_000
_DAY_TTL_S = 40 * 24 * 3600
_MONTH_TTL_S = 400 * 24 * 3600

_ADD = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('SADD', KEYS[2], ARGV[1])
return 1
"""

_REVOKE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSETNX', KEYS[1], 'revoked', ARGV[1])
return 1
"""

# Sliding-window log: returns -1 when counted, else ms until a slot frees.
_TAKE_FUNCTION = """
local function take(rate, per_minute, window, token)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('ZREMRANGEBYSCORE', rate, '-inf', now - window)
  if redis.call('ZCARD', rate) >= per_minute then
    local oldest = redis.call('ZRANGE', rate, 0, 0, 'WITHSCORES')
    return math.max(0, tonumber(oldest[2]) + window - now)
  end
  redis.call('ZADD', rate, now, now .. ':' .. token)
  redis.call('PEXPIRE', rate, window)
  return -1
end
"""
_TAKE = _TAKE_FUNCTION + "return take(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3])"

# One round trip per call. KEYS: the key's hash, its rate window, its usage
# in the day and the month asked for. For an admitted key (known, active,
# the presented digest matches: `store.admits`), the request is taken in its
# window when it has a limit (`store.rate_to_count`), and its usage is read
# when it has a quota (`store.has_quota`). Returns {fields, -1 or ms to wait,
# images that day or -1, cost units that month or -1}.
_LOOKUP = (
    _TAKE_FUNCTION
    + """
local fields = redis.call('HGETALL', KEYS[1])
local record = {}
for i = 1, #fields, 2 do record[fields[i]] = fields[i + 1] end
local revoked = record['revoked']
if record['digest'] ~= ARGV[1] or (revoked ~= nil and revoked ~= '') then
  return {fields, -1, -1, -1}
end
local wait = -1
local rpm = tonumber(record['rpm'] or '')
if rpm ~= nil then wait = take(KEYS[2], rpm, tonumber(ARGV[2]), ARGV[3]) end
if (record['images_per_day'] or '') == '' and (record['budget_units'] or '') == '' then
  return {fields, wait, -1, -1}
end
return {
  fields,
  wait,
  tonumber(redis.call('HGET', KEYS[3], 'images') or '0'),
  tonumber(redis.call('HGET', KEYS[4], 'cost_units') or '0'),
}
"""
)


# A key's usage in a day and a month, in one reply: {images today, cost
# units this month}, each 0 when unset.
_QUOTA = """
return {
  tonumber(redis.call('HGET', KEYS[1], 'images') or '0'),
  tonumber(redis.call('HGET', KEYS[2], 'cost_units') or '0'),
}
"""

# Count one generation's images and cost in its day and month (KEYS 1-2,
# TTLs ARGV 3-4) and remember both periods (KEYS[3]; ARGV 5-6).
_ADD_USAGE = """
for i = 1, 2 do
  redis.call('HINCRBY', KEYS[i], 'images', ARGV[1])
  redis.call('HINCRBY', KEYS[i], 'cost_units', ARGV[2])
  redis.call('EXPIRE', KEYS[i], ARGV[2 + i])
end
redis.call('SADD', KEYS[3], ARGV[5], ARGV[6])
return 1
"""


def connect(url: str, settings: Settings | None = None) -> aioredis.Redis:
    """A client for `url` on at most `settings.redis_max_connections` connections
    (the defaults without `settings`).

    A command waits up to `redis_pool_timeout_s` for a free connection, then
    up to `redis_timeout_s` to connect and for Redis's answer; past either it
    fails (`ConnectionError`, `TimeoutError`: `StoreUnavailable` through
    `guarded`).
    """
    pool_settings = settings or Settings.model_construct()
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=pool_settings.redis_max_connections,
        timeout=pool_settings.redis_pool_timeout_s,
        socket_timeout=pool_settings.redis_timeout_s,
        socket_connect_timeout=pool_settings.redis_timeout_s,
        decode_responses=True,
    )
    return aioredis.Redis.from_pool(pool)


async def guarded(call: Awaitable[T]) -> T:
    """Await a Redis call; any Redis failure becomes `StoreUnavailable`."""
    try:
        return await call
    except (RedisError, OSError) as error:
        raise StoreUnavailable(f"redis {type(error).__name__}") from None


class RedisKeyStore:
    """`KeyStore` in Redis (see module doc)."""

    def __init__(self, client: aioredis.Redis, prefix: str = "ck:") -> None:
        self.client = client
        self._prefix = prefix
        self._add = client.register_script(_ADD)
        self._revoke = client.register_script(_REVOKE)
        self._take = client.register_script(_TAKE)
        self._lookup = client.register_script(_LOOKUP)
        self._quota = client.register_script(_QUOTA)
        self._add_usage = client.register_script(_ADD_USAGE)

    def _key(self, key_id: str) -> str:
        return f"{self._prefix}key:{key_id}"

    async def add(self, record: KeyRecord) -> bool:
        fields: dict[str, str] = {
            "digest": record.digest,
            "name": record.name,
            "owner": record.owner,
            "created": str(record.created),
            "models": json.dumps(list(record.models)),
        }
        limits = record.limits
        if limits.requests_per_minute is not None:
            fields["rpm"] = str(limits.requests_per_minute)
        if limits.images_per_day is not None:
            fields["images_per_day"] = str(limits.images_per_day)
        if limits.monthly_budget is not None:
            fields["budget_units"] = str(to_units(limits.monthly_budget))
        if record.revoked is not None:
            fields["revoked"] = str(record.revoked)
        args = [record.key_id, *(item for pair in fields.items() for item in pair)]
        added = await guarded(
            self._add(keys=[self._key(record.key_id), f"{self._prefix}keys"], args=args)
        )
        return bool(added)

    async def get(self, key_id: str) -> KeyRecord | None:
        fields: dict[Any, Any] = await guarded(self.client.hgetall(self._key(key_id)))
        return _record(key_id, fields) if fields else None

    async def lookup(self, key_id: str, digest: str, day: str, month: str) -> Lookup:
        fields, wait_ms, day_images, month_units = await guarded(
            self._lookup(
                keys=[
                    self._key(key_id),
                    self._rate(key_id),
                    self._usage_key(key_id, day),
                    self._usage_key(key_id, month),
                ],
                args=[digest, WINDOW_MS, secrets.token_hex(4)],
            )
        )
        if not fields:
            return Lookup(None)
        record = _record(key_id, dict(zip(fields[::2], fields[1::2], strict=True)))
        usage = (
            None
            if int(day_images) < 0
            else PeriodUsage(day, month, int(day_images), int(month_units))
        )
        return Lookup(record, None if int(wait_ms) < 0 else int(wait_ms) / 1000, usage)

    async def list(self) -> list[KeyRecord]:
        ids: set[Any] = await guarded(self.client.smembers(f"{self._prefix}keys"))
        records = [await self.get(key_id) for key_id in sorted(ids)]
        found = [r for r in records if r is not None]
        return sorted(found, key=lambda r: (r.created, r.key_id))

    async def revoke(self, key_id: str, at: int) -> bool:
        return bool(await guarded(self._revoke(keys=[self._key(key_id)], args=[at])))

    async def take_request(self, key_id: str, per_minute: int) -> float | None:
        wait_ms = await guarded(
            self._take(
                keys=[self._rate(key_id)],
                args=[per_minute, WINDOW_MS, secrets.token_hex(4)],
            )
        )
        return None if int(wait_ms) < 0 else int(wait_ms) / 1000

    def _rate(self, key_id: str) -> str:
        return f"{self._prefix}rate:{key_id}"

    def _usage_key(self, key_id: str, period: str) -> str:
        return f"{self._prefix}usage:{key_id}:{period}"

    async def check_quota(self, check: QuotaCheck) -> QuotaRefusal | None:
        day_images, month_units = await guarded(
            self._quota(
                keys=[
                    self._usage_key(check.key_id, check.day),
                    self._usage_key(check.key_id, check.month),
                ]
            )
        )
        return refusal(check, day_images=int(day_images), month_units=int(month_units))

    async def add_usage(
        self, key_id: str, day: str, month: str, images: int, cost_units: int
    ) -> None:
        await guarded(
            self._add_usage(
                keys=[
                    self._usage_key(key_id, day),
                    self._usage_key(key_id, month),
                    f"{self._prefix}periods:{key_id}",
                ],
                args=[images, cost_units, _DAY_TTL_S, _MONTH_TTL_S, day, month],
            )
        )

    async def usage(self, key_id: str) -> dict[str, Usage]:
        periods: set[Any] = await guarded(self.client.smembers(f"{self._prefix}periods:{key_id}"))
        found: dict[str, Usage] = {}
        for period in sorted(periods):
            fields: dict[Any, Any] = await guarded(
                self.client.hgetall(self._usage_key(key_id, period))
            )
            if fields:  # expired periods drop out
                found[period] = Usage(
                    int(fields.get("images", 0)), from_units(int(fields.get("cost_units", 0)))
                )
        return found

    async def aclose(self) -> None:
        await self.client.aclose()


def _optional_int(fields: dict[str, str], name: str) -> int | None:
    value = fields.get(name)
    return None if value in (None, "") else int(str(value))


def _record(key_id: str, fields: dict[str, Any]) -> KeyRecord:
    budget = _optional_int(fields, "budget_units")
    return KeyRecord(
        key_id=key_id,
        digest=fields["digest"],
        name=fields.get("name", ""),
        owner=fields.get("owner", ""),
        created=int(fields.get("created", 0)),
        revoked=_optional_int(fields, "revoked"),
        limits=Limits(
            requests_per_minute=_optional_int(fields, "rpm"),
            images_per_day=_optional_int(fields, "images_per_day"),
            monthly_budget=None if budget is None else from_units(budget),
        ),
        models=tuple(json.loads(fields.get("models", "[]"))),
    )
