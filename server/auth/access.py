"""What the server does with the key store on each call.

`Authenticator.authenticate` turns the `authorization` metadata of a call
into the domain's `Caller`, or raises `InvalidApiKey` (missing, malformed,
unknown, revoked: one answer for all, naming no key), `KeyRateLimited` (the
key's requests per minute, with the wait) or `AuthUnavailable` (the store
did not answer: the call is refused, never let through). Nothing is cached,
so a revocation holds from the next call on every replica.

`KeyLedger` is the domain's `UsageLedger` on the store: images per UTC day
and cost per UTC month, checked against the key's caps before a generation
(at its worst case: every image it asks for, at the model's price) and
counted from what it produced after. The two steps are separate atomic
store operations, so N requests of one key admitted together can overspend
by at most what those N produce: the bound is the in-flight requests.

The check reads no store of its own when it can help it: authentication
reads a key's usage with the key, in the same store step, and the check
uses that reading while it is fresh (`USAGE_SEEN_FRESH_S`, same UTC day and
month). The bound above then also counts the requests of the key that
finished in that second.
"""

from __future__ import annotations

import calendar
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from server.auth.keys import bearer_key, digest_of, from_units, key_id_of, to_units
from server.auth.store import (
    KeyStore,
    QuotaCheck,
    QuotaRefusal,
    StoreUnavailable,
    admits,
    refusal,
)
from server.domain.callers import Caller, UsageSeen
from server.domain.errors import (
    AuthUnavailable,
    InvalidApiKey,
    KeyRateLimited,
    QuotaExceeded,
)

log = logging.getLogger(__name__)

# How long the usage read with the key stands in for the quota check's own
# read (`KeyLedger.admit`): the validation between the two takes
# milliseconds; a call that waited longer (for another attempt's request-id
# lease) reads the store again.
USAGE_SEEN_FRESH_S = 1.0

_NO_KEY = "Send a valid API key as 'Authorization: Bearer ck-...'."
_BAD_KEY = "The API key is not valid (unknown, revoked or mistyped)."
_UNAVAILABLE = "The key store is unavailable; retry shortly."


class Authenticator:
    """Resolves `Authorization: Bearer ck-...` into a `Caller` (see module doc)."""

    def __init__(self, store: KeyStore, *, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock

    async def authenticate(self, authorization: str | None) -> Caller:
        key = bearer_key(authorization)
        if key is None:
            raise InvalidApiKey(_BAD_KEY if authorization else _NO_KEY)
        key_id = key_id_of(key)
        digest = digest_of(key)
        now = self._clock()
        try:
            # One store step: the record, the request counted in the key's
            # window only if the key is admitted (`rate_to_count`), and the
            # key's usage today and this month if it has a quota.
            found = await self._store.lookup(key_id, digest, day_of(now), month_of(now))
        except StoreUnavailable as error:
            log.error("key store unavailable (%s): refusing the call", error)
            raise AuthUnavailable(_UNAVAILABLE, retry_after=1.0) from None
        record = found.record
        if record is None or not admits(record, digest):
            raise InvalidApiKey(_BAD_KEY)
        per_minute = record.limits.requests_per_minute
        if per_minute is not None and found.wait_s is not None:
            raise KeyRateLimited(
                f"This API key's limit of {per_minute} requests per minute is reached.",
                metadata={"key_id": key_id, "limit": str(per_minute)},
                retry_after=found.wait_s,
            )
        usage = found.usage
        return Caller(
            key_id=key_id,
            models=record.models,
            images_per_day=record.limits.images_per_day,
            monthly_budget=record.limits.monthly_budget,
            usage=None
            if usage is None
            else UsageSeen(
                now, usage.day, usage.month, usage.day_images, from_units(usage.month_units)
            ),
        )


def day_of(at: float) -> str:
    """The UTC day of epoch second `at`, `2026-12-04`."""
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d")


def month_of(at: float) -> str:
    """The UTC month of epoch second `at`, `2026-12`."""
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m")


def _seconds_to_next_day(at: float) -> float:
    now = datetime.fromtimestamp(at, UTC)
    midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return (midnight - now).total_seconds()


def _seconds_to_next_month(at: float) -> float:
    now = datetime.fromtimestamp(at, UTC)
    days = calendar.monthrange(now.year, now.month)[1]
    first = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return (first + timedelta(days=days) - now).total_seconds()


def _fresh(seen: UsageSeen, check: QuotaCheck, now: float) -> bool:
    """Whether the usage read with the key may stand in for reading it again."""
    return (
        0 <= now - seen.at <= USAGE_SEEN_FRESH_S
        and seen.day == check.day
        and seen.month == check.month
    )


class KeyLedger:
    """`UsageLedger` on a `KeyStore` (see module doc)."""

    def __init__(self, store: KeyStore, *, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock

    async def admit(self, caller: Caller, images: int, cost: Decimal | None) -> None:
        if caller.images_per_day is None and caller.monthly_budget is None:
            return
        now = self._clock()
        budget = caller.monthly_budget
        check = QuotaCheck(
            key_id=caller.key_id,
            day=day_of(now),
            month=month_of(now),
            images=images,
            # A cost known only afterwards (token-priced models) must at least
            # find the month under budget: one unit is the least it can cost.
            cost_units=1 if cost is None else to_units(cost),
            images_per_day=caller.images_per_day,
            budget_units=None if budget is None else to_units(budget),
        )
        seen = caller.usage
        if seen is not None and _fresh(seen, check, now):
            refused = refusal(check, day_images=seen.images, month_units=to_units(seen.cost))
        else:
            try:
                refused = await self._store.check_quota(check)
            except StoreUnavailable as error:
                # Fail closed: nothing has been paid for yet.
                log.error("usage counters unavailable (%s): refusing the call", error)
                raise AuthUnavailable(_UNAVAILABLE, retry_after=1.0) from None
        if refused is None:
            return
        if refused is QuotaRefusal.IMAGES_PER_DAY:
            message = (
                f"This API key's {caller.images_per_day} images per day are used up"
                f" (this request asks for {images})."
            )
            limit, wait = f"{caller.images_per_day}", _seconds_to_next_day(now)
        else:
            message = (
                f"This API key's monthly budget of {budget} USD is spent"
                f" (this request may cost {cost})."
            )
            limit, wait = f"{budget} USD", _seconds_to_next_month(now)
        raise QuotaExceeded(
            message,
            subject=f"key:{caller.key_id}",
            description=f"{refused.value} {limit}",
            metadata={"key_id": caller.key_id, "quota": refused.value},
            retry_after=wait,
        )

    async def record(self, caller: Caller, images: int, cost: Decimal | None) -> None:
        now = self._clock()
        units = to_units(cost or Decimal(0))
        await self._store.add_usage(caller.key_id, day_of(now), month_of(now), images, units)
