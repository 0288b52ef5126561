"""What the `image-service keys` commands do to a key store."""

from __future__ import annotations

import time
from decimal import Decimal

from server.auth.keys import KeyRecord, Limits, Usage, digest_of, key_id_of, new_key
from server.auth.store import KeyStore

# A fixed key that only `image-service dev` puts into its store, so that the
# README's examples run against `make run` as written.
DEV_KEY = "ck-localdev0000000000000000000000000000000"
DEV_KEY_NAME = "dev"
NO_LIMITS = Limits()


class KeyNotFound(Exception):
    """No key with that id."""


async def create_key(
    store: KeyStore,
    name: str,
    *,
    owner: str = "",
    limits: Limits = NO_LIMITS,
    models: tuple[str, ...] = (),
    key: str | None = None,
) -> tuple[str, KeyRecord]:
    """Store a new key; returns the key (shown once, never stored) and its record."""
    while True:
        secret = key or new_key()
        record = KeyRecord(
            key_id=key_id_of(secret),
            digest=digest_of(secret),
            name=name,
            owner=owner,
            created=int(time.time()),
            limits=limits,
            models=models,
        )
        if await store.add(record):
            return secret, record
        if key is not None:  # a fixed key that is already there
            existing = await store.get(record.key_id)
            assert existing is not None
            return secret, existing


async def ensure_dev_key(store: KeyStore) -> KeyRecord:
    """The dev key's record, creating it (unlimited, all models) if needed."""
    _, record = await create_key(store, DEV_KEY_NAME, owner="image-service dev", key=DEV_KEY)
    return record


async def revoke_key(store: KeyStore, key_id: str) -> None:
    if not await store.revoke(key_id, int(time.time())):
        raise KeyNotFound(key_id)


async def key_usage(store: KeyStore, key_id: str) -> tuple[KeyRecord, dict[str, Usage]]:
    record = await store.get(key_id)
    if record is None:
        raise KeyNotFound(key_id)
    return record, await store.usage(key_id)


def parse_budget(text: str) -> Decimal:
    """A USD amount such as `500` or `12.50`."""
    value = Decimal(text)
    if not value.is_finite() or value < 0:
        raise ValueError(f"not a budget in USD: {text!r}")
    return value
