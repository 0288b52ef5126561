"""What the domain reports about its work, without knowing who listens.

`Telemetry` is the observer the composition root hands in (Prometheus in
production, `NO_TELEMETRY` by default and in unit tests), so the domain and
the backends count upstream calls, retries, limiter waits and storage writes
without importing a metrics library. Labels are always bounded: catalogue
model names (the name the caller used, also when it routes to a successor),
registry backend keys and `ImageServiceError.reason` values, never prompts,
keys or free text.

`ObservedBackend` and `ObservedStore` wrap the ports: the first times each
upstream call and opens a `scope` (a context variable, so it reaches the
retry loop and the limiter inside the call without threading arguments
through them); `report_retry` and `report_limiter_*` report against it.
The orchestrator reports each new generation's images and cost.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

from server.domain.deadline import Deadline
from server.domain.errors import ImageServiceError, RateLimited
from server.domain.ports import BlobStore, ImageBackend, UpstreamCall, UpstreamResult

OK = "OK"


class Telemetry(Protocol):
    """Receives the domain's events; every method must be cheap and never raise."""

    def upstream_call(self, backend: str, model: str, outcome: str, seconds: float) -> None:
        """One call to a backend ended; `outcome` is OK or an error reason."""

    def upstream_retry(self, backend: str, model: str, reason: str) -> None:
        """A failed attempt (`reason`) is about to be retried."""

    def limiter_wait(self, backend: str, model: str, limit: str, seconds: float) -> None:
        """A call queued `seconds` for a per-deployment limit before it started."""

    def limiter_refused(self, backend: str, model: str, limit: str) -> None:
        """A limit refused a call (no slot before its deadline)."""

    def storage_put(self, outcome: str, seconds: float) -> None:
        """One write to the blob store ended; `outcome` is OK or an error reason."""

    def generation_delivered(
        self,
        model: str,
        backend: str,
        *,
        images: int,
        inline_fallbacks: int,
        cost: Decimal | None,
        key_id: str = "",
    ) -> None:
        """A new generation (not a replay) delivered `images`, `inline_fallbacks` of
        them inline because storing failed, for `cost` USD (None: price unknown),
        to the API key `key_id` (its public id; "" when auth is off)."""


class NoTelemetry:
    """The default observer: does nothing."""

    def upstream_call(self, backend: str, model: str, outcome: str, seconds: float) -> None:
        pass

    def upstream_retry(self, backend: str, model: str, reason: str) -> None:
        pass

    def limiter_wait(self, backend: str, model: str, limit: str, seconds: float) -> None:
        pass

    def limiter_refused(self, backend: str, model: str, limit: str) -> None:
        pass

    def storage_put(self, outcome: str, seconds: float) -> None:
        pass

    def generation_delivered(
        self,
        model: str,
        backend: str,
        *,
        images: int,
        inline_fallbacks: int,
        cost: Decimal | None,
        key_id: str = "",
    ) -> None:
        pass


NO_TELEMETRY: Telemetry = NoTelemetry()


@dataclass(frozen=True)
class CallScope:
    """The upstream call the current task is making."""

    telemetry: Telemetry
    backend: str
    model: str


_scope: contextvars.ContextVar[CallScope | None] = contextvars.ContextVar(
    "upstream_call_scope", default=None
)


@contextmanager
def scope(telemetry: Telemetry, backend: str, model: str) -> Iterator[CallScope]:
    """Mark the code inside as part of one upstream call of `backend`/`model`."""
    current = CallScope(telemetry, backend, model)
    token = _scope.set(current)
    try:
        yield current
    finally:
        _scope.reset(token)


def report_retry(error: ImageServiceError) -> None:
    """Count a retry of the current upstream call (no-op outside a call)."""
    current = _scope.get()
    if current is not None:
        current.telemetry.upstream_retry(current.backend, current.model, error.reason)


def report_limiter_wait(limit: str, seconds: float) -> None:
    """Report time the current call queued for `limit` (no-op outside a call)."""
    current = _scope.get()
    if current is not None:
        current.telemetry.limiter_wait(current.backend, current.model, limit, seconds)


def report_limiter_refused(limit: str) -> None:
    """Report that `limit` refused the current call (no-op outside a call)."""
    current = _scope.get()
    if current is not None:
        current.telemetry.limiter_refused(current.backend, current.model, limit)


def outcome_of(error: BaseException | None) -> str:
    """OK, the domain reason of `error`, or CANCELLED / INTERNAL: always bounded."""
    if error is None:
        return OK
    if isinstance(error, ImageServiceError):
        return error.reason
    if isinstance(error, asyncio.CancelledError):
        return "CANCELLED"
    return "INTERNAL"


class ObservedBackend:
    """An `ImageBackend` that reports each call's duration and outcome."""

    def __init__(self, inner: ImageBackend, key: str, telemetry: Telemetry) -> None:
        self.inner = inner
        self.key = key
        self._telemetry = telemetry

    async def run(self, call: UpstreamCall, deadline: Deadline) -> UpstreamResult:
        model = call.model.name
        started = time.monotonic()
        error: BaseException | None = None
        with scope(self._telemetry, self.key, model):
            try:
                return await self.inner.run(call, deadline)
            except BaseException as exc:
                error = exc
                if isinstance(exc, RateLimited) and "limit" in exc.metadata:
                    # Our own limiter refused it; the upstream never saw it.
                    report_limiter_refused(exc.metadata["limit"])
                raise
            finally:
                self._telemetry.upstream_call(
                    self.key, model, outcome_of(error), time.monotonic() - started
                )

    async def aclose(self) -> None:
        await self.inner.aclose()


class ObservedStore:
    """A `BlobStore` that reports each write's duration and outcome."""

    def __init__(self, inner: BlobStore, telemetry: Telemetry) -> None:
        self.inner = inner
        self._telemetry = telemetry

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        started = time.monotonic()
        error: BaseException | None = None
        try:
            await self.inner.put(key, data, content_type)
        except BaseException as exc:
            error = exc
            raise
        finally:
            self._telemetry.storage_put(outcome_of(error), time.monotonic() - started)

    async def get(self, key: str) -> bytes | None:
        return await self.inner.get(key)

    def url_for(self, key: str) -> str:
        return self.inner.url_for(key)

    async def aclose(self) -> None:
        await self.inner.aclose()
