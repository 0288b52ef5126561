"""The key store interface both implementations honour.

Every method is one atomic step on the store, which is what lets several
processes (the server's replicas, the `keys` CLI) share it: a key created
or revoked is seen by the next call anywhere, because calls read the store
and nothing caches a key. Periods are UTC days (`2026-12-04`) and months
(`2026-12`); costs are integer units of 1e-8 USD (`keys.COST_UNITS_PER_USD`).

Any method raises `StoreUnavailable` when the store cannot be reached.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

from server.auth.keys import KeyRecord, Usage, digests_match


class StoreUnavailable(ConnectionError):
    """The key store did not answer (Redis down, database file unreadable).

    A ConnectionError, which is what `SharedSlots` users expect from the
    Redis provider limits (server/providers/_shared/shared_limits.py)."""


class QuotaRefusal(enum.Enum):
    """Which quota a request would exceed."""

    IMAGES_PER_DAY = "images_per_day"
    MONTHLY_BUDGET = "monthly_budget"


@dataclass(frozen=True)
class QuotaCheck:
    """A request to admit: its periods, its worst case, and the key's caps."""

    key_id: str
    day: str
    month: str
    images: int
    cost_units: int
    images_per_day: int | None
    budget_units: int | None


@dataclass(frozen=True)
class PeriodUsage:
    """A key's counters in a UTC day and month, as one store step read them."""

    day: str
    month: str
    day_images: int
    month_units: int


@dataclass(frozen=True)
class Lookup:
    """What `KeyStore.lookup` found: the key's record (None: unknown); the
    wait when the call was not counted in the key's full window (None: counted,
    or nothing to count); and for an admitted key with a quota (images per day
    or a monthly budget), its usage in the periods asked for."""

    record: KeyRecord | None
    wait_s: float | None = None
    usage: PeriodUsage | None = None


def has_quota(record: KeyRecord) -> bool:
    """Whether admitting a generation of `record`'s key reads its usage."""
    limits = record.limits
    return limits.images_per_day is not None or limits.monthly_budget is not None


def refusal(check: QuotaCheck, *, day_images: int, month_units: int) -> QuotaRefusal | None:
    """The admission rule of every store: the request, at its worst case
    (every image it asks for produced), must fit both quotas."""
    if check.images_per_day is not None and day_images + check.images > check.images_per_day:
        return QuotaRefusal.IMAGES_PER_DAY
    if check.budget_units is not None and month_units + check.cost_units > check.budget_units:
        return QuotaRefusal.MONTHLY_BUDGET
    return None


def admits(record: KeyRecord | None, digest: str) -> bool:
    """Whether a call presenting a key of `digest` is let in: a known,
    active key whose digest matches (compared in constant time)."""
    return record is not None and record.active and digests_match(record.digest, digest)


def rate_to_count(record: KeyRecord | None, digest: str) -> int | None:
    """The requests-per-minute limit a call presenting `digest` is counted
    against: only an admitted key's, when it has one. A wrong secret for a
    known (public) key id counts nothing, so it cannot use up the key's
    window. (Redis's `_LOOKUP` script applies the same rule on the Redis
    server.)"""
    if record is None or not admits(record, digest):
        return None
    return record.limits.requests_per_minute


class KeyStore(Protocol):
    async def add(self, record: KeyRecord) -> bool:
        """Store a new key; False if its key id is taken."""
        ...

    async def get(self, key_id: str) -> KeyRecord | None: ...

    async def list(self) -> list[KeyRecord]: ...

    async def revoke(self, key_id: str, at: int) -> bool:
        """Mark the key revoked at `at` (epoch seconds); False if there is no such key."""
        ...

    async def lookup(self, key_id: str, digest: str, day: str, month: str) -> Lookup:
        """Everything a call's authentication reads (see `Lookup`): the key's
        record; for a call that `rate_to_count` counts, one request taken in
        the key's window as by `take_request`; and for an admitted key that
        `has_quota`, its usage in `day` and `month`. Redis does it in one
        round trip (one script), SQLite in one transaction per part."""
        ...

    async def take_request(self, key_id: str, per_minute: int) -> float | None:
        """Count one request in the key's sliding minute if it has room.

        None when counted; otherwise the seconds until the oldest request in
        the window leaves it (nothing is counted then).
        """
        ...

    async def check_quota(self, check: QuotaCheck) -> QuotaRefusal | None:
        """None when the request fits both quotas at its worst case."""
        ...

    async def add_usage(
        self, key_id: str, day: str, month: str, images: int, cost_units: int
    ) -> None: ...

    async def usage(self, key_id: str) -> dict[str, Usage]:
        """Every period the key has usage in, day and month keys mixed."""
        ...

    async def aclose(self) -> None: ...
