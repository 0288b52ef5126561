"""Builds the key store, ledger and leases the settings ask for.

With `IMAGE_SERVICE_REDIS_URL` everything shared lives in Redis; without
it, keys and counters are in the embedded SQLite file `IMAGE_SERVICE_AUTH_DB`
and request-id leases are per process.
"""

from __future__ import annotations

from dataclasses import dataclass

from server.auth.access import Authenticator, KeyLedger
from server.auth.redis_limits import RedisUpstreamSlots
from server.auth.sqlite_store import SqliteKeyStore
from server.auth.store import KeyStore
from server.domain.idempotency import RequestLocks
from server.domain.ports import RequestLeases, UsageLedger
from server.domain.usage import Unmetered
from server.settings import Settings


def open_key_store(settings: Settings) -> KeyStore:
    """The store the server and the `keys` commands share."""
    if settings.redis_url is not None:
        from server.auth.redis_store import RedisKeyStore, connect

        return RedisKeyStore(connect(settings.redis_url.get_secret_value(), settings))
    return SqliteKeyStore(settings.auth_db)


@dataclass
class CallerAccess:
    """What the composition root wires: None authenticator means auth is off."""

    authenticator: Authenticator | None
    usage: UsageLedger
    leases: RequestLeases
    store: KeyStore | None
    # Provider limits shared by every replica (Redis only).
    upstream_slots: RedisUpstreamSlots | None = None

    async def aclose(self) -> None:
        if self.store is not None:
            await self.store.aclose()


def build_access(settings: Settings) -> CallerAccess:
    """Authenticator, usage ledger and request leases for `settings`."""
    store: KeyStore | None = None
    if settings.auth == "keys" or settings.redis_url is not None:
        store = open_key_store(settings)
    leases: RequestLeases = RequestLocks()
    slots: RedisUpstreamSlots | None = None
    if settings.redis_url is not None:
        from server.auth.redis_leases import RedisLeases
        from server.auth.redis_store import RedisKeyStore

        assert isinstance(store, RedisKeyStore)
        leases = RedisLeases(store.client, wait_s=settings.idempotency_wait_s)
        slots = RedisUpstreamSlots(store.client)
    if settings.auth == "none" or store is None:
        return CallerAccess(None, Unmetered(), leases, store, slots)
    return CallerAccess(Authenticator(store), KeyLedger(store), leases, store, slots)
