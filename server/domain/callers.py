"""Who is calling: the caller an RPC runs on behalf of.

The gRPC auth interceptor (`server.rpc.auth`) resolves the API key of every
call into a `Caller` and runs the handler under `acting_as(caller)`; the
orchestrator reads it back with `current_caller()` to scope what the call
may see (its own generations and request ids), which models it may use and
what it may spend. A context variable carries it, as OpenTelemetry carries
its context, so the servicer and every signature in between stay unaware of
authentication; asyncio tasks the orchestrator starts inherit it.

With authentication off (`IMAGE_SERVICE_AUTH=none`) every call runs as
`ANONYMOUS`: no key id, every model, no limits, and it sees every record.
"""

from __future__ import annotations

import contextlib
import fnmatch
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from decimal import Decimal


@dataclass(frozen=True)
class UsageSeen:
    """A key's usage as its authentication read it, in the same store step
    as the key: `images` in the UTC `day`, `cost` (USD) in the UTC `month`,
    read at epoch second `at`. While fresh, it spares the quota check before
    a generation a second read of the store (`server.auth.access.KeyLedger`).
    """

    at: float
    day: str
    month: str
    images: int
    cost: Decimal


@dataclass(frozen=True)
class Caller:
    """An authenticated API key, as the domain needs it.

    `key_id` is the key's public id (never the key itself); "" is the
    anonymous caller of a deployment without authentication. `models` are
    shell-style patterns (`azure/*`); empty allows every model. A limit of
    None is no limit. `usage` is the key's usage when it has a limit on it.
    """

    key_id: str
    models: tuple[str, ...] = ()
    images_per_day: int | None = None
    monthly_budget: Decimal | None = None
    usage: UsageSeen | None = None

    @property
    def anonymous(self) -> bool:
        return not self.key_id

    def may_use(self, model: str) -> bool:
        """Whether the key's allowed-model patterns cover `model`."""
        return not self.models or any(fnmatch.fnmatchcase(model, p) for p in self.models)


ANONYMOUS = Caller(key_id="")

_CURRENT: ContextVar[Caller] = ContextVar("image_service_caller", default=ANONYMOUS)


def current_caller() -> Caller:
    """The caller of the RPC being served (ANONYMOUS outside any)."""
    return _CURRENT.get()


@contextlib.contextmanager
def acting_as(caller: Caller) -> Iterator[Caller]:
    """Run the block (and the tasks it starts) on behalf of `caller`."""
    token = _CURRENT.set(caller)
    try:
        yield caller
    finally:
        _CURRENT.reset(token)
