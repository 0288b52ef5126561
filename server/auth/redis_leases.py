"""Request-id leases in Redis: one attempt per (key, request id) fleet-wide.

The first attempt takes `lease:<sha256 of name>` with SET NX and a TTL,
and renews it while it runs, so a replica that dies frees it within
`ttl_s`. Another attempt (on any replica) polls until the lease is free,
then finds the first attempt's record and replays it; if the holder is
still running after `wait_s` (or the caller's deadline), the attempt is
refused with `RequestInProgress` (ABORTED / HTTP 409 with Retry-After).
Attempts on the same replica queue on a local lock first, so only one per
replica polls Redis.

Redis unreachable while taking the lease refuses the call (nothing is paid
yet); failing to renew or release is logged, and the TTL frees the lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import time
from collections.abc import AsyncIterator

import redis.asyncio as aioredis

from server.auth.redis_store import guarded
from server.auth.store import StoreUnavailable
from server.domain.deadline import Deadline
from server.domain.errors import AuthUnavailable, RequestInProgress
from server.domain.idempotency import RequestLocks

log = logging.getLogger(__name__)

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
RETRY_AFTER_S = 2.0


class RedisLeases:
    """`RequestLeases` shared by every replica through Redis (see module doc)."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        wait_s: float,
        ttl_s: float = 30.0,
        poll_s: float = 0.1,
        prefix: str = "ck:",
    ) -> None:
        self._client = client
        self._wait_s = wait_s
        self._ttl_ms = int(ttl_s * 1000)
        self._poll_s = poll_s
        self._prefix = prefix
        self._local = RequestLocks()
        self._release = client.register_script(_RELEASE)
        self._renew = client.register_script(_RENEW)

    @contextlib.asynccontextmanager
    async def hold(self, name: str, deadline: Deadline) -> AsyncIterator[None]:
        async with self._local.hold(name, deadline):
            key = f"{self._prefix}lease:{hashlib.sha256(name.encode()).hexdigest()}"
            token = secrets.token_hex(16)
            await self._acquire(key, token, time.monotonic() + deadline.cap(self._wait_s))
            renewing = asyncio.create_task(self._keep(key, token))
            try:
                yield
            finally:
                renewing.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await renewing
                try:
                    await guarded(self._release(keys=[key], args=[token]))
                except StoreUnavailable as error:
                    log.warning("request lease not released (%s); it expires by itself", error)

    async def _acquire(self, key: str, token: str, give_up_at: float) -> None:
        while True:
            try:
                taken = await guarded(self._client.set(key, token, nx=True, px=self._ttl_ms))
            except StoreUnavailable as error:
                log.error("request leases unavailable (%s): refusing the call", error)
                raise AuthUnavailable(
                    "Shared state is unavailable; retry shortly.", retry_after=1.0
                ) from None
            if taken:
                return
            if time.monotonic() >= give_up_at:
                raise RequestInProgress(
                    "Another attempt with this request id is still running; retry shortly.",
                    retry_after=RETRY_AFTER_S,
                )
            await asyncio.sleep(self._poll_s)

    async def _keep(self, key: str, token: str) -> None:
        while True:
            await asyncio.sleep(self._ttl_ms / 3000)
            try:
                await guarded(self._renew(keys=[key], args=[token, self._ttl_ms]))
            except StoreUnavailable as error:
                log.warning("request lease not renewed (%s)", error)
