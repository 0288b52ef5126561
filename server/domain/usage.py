"""The usage ledger of a deployment without quotas."""

from __future__ import annotations

from decimal import Decimal

from server.domain.callers import Caller


class Unmetered:
    """`UsageLedger` that admits everything and records nothing (authentication off)."""

    async def admit(self, caller: Caller, images: int, cost: Decimal | None) -> None:
        return None

    async def record(self, caller: Caller, images: int, cost: Decimal | None) -> None:
        return None
