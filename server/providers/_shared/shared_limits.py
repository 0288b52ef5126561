"""Provider limits that hold for every replica: the shared twin of `limits`.

`LimitedBackend` counts per process, so `IMAGE_SERVICE_AZURE_FLUX_
REQUESTS_PER_MINUTE=6` becomes 6 x replicas once the HPA scales out.
`SharedLimitedBackend` takes the same two limits from `SharedSlots`, a
store every replica shares (Redis: server/auth/redis_limits.py), before it
calls the backend it wraps:

- `per_minute`: a start time in the model's sliding window, handed out in
  arrival order across replicas exactly as `LimitedBackend` does in one
  process (a turn in the future is waited for; one after the caller's
  deadline is refused at once with the wait as `retry_after`);
- `max_concurrent`: a slot in the model's set of running calls, held (and
  renewed) while the call runs and released after it; a replica that dies
  loses its slots when their lease (`slot_ttl_s`) runs out. Waiting for a
  slot polls the store until the deadline.

The wrapped backend is the per-process `LimitedBackend` with the same
limits, which is what applies when the shared store cannot be reached: the
limits then degrade to per replica (logged) rather than failing calls or
dropping the limits altogether. Refusals are `RateLimited`
(`UPSTREAM_RATE_LIMITED`), as from `LimitedBackend`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable
from typing import Protocol, TypeVar

from server.domain.deadline import Deadline
from server.domain.ports import ImageBackend, UpstreamCall, UpstreamResult
from server.providers._shared.limits import refusal

log = logging.getLogger(__name__)
T = TypeVar("T")

WINDOW_S = 60.0
SLOT_TTL_S = 30.0
_POLL_S = 0.05
_POLL_MAX_S = 0.5


class SharedSlots(Protocol):
    """Rate and concurrency slots shared by every replica.

    Every method raises `ConnectionError` when the store cannot be reached.
    `name` identifies one upstream model (`<backend>:<model>`).
    """

    async def reserve_start(
        self, name: str, per_minute: int, window_s: float, max_wait_s: float | None
    ) -> tuple[str | None, float]:
        """A start time in `name`'s sliding window, in arrival order.

        Returns `(token, wait_s)`: the start is reserved `wait_s` from now;
        or `(None, wait_s)` without reserving when `wait_s` would exceed
        `max_wait_s`.
        """
        ...

    async def cancel_start(self, name: str, token: str) -> None: ...

    async def try_acquire(self, name: str, limit: int, ttl_s: float) -> str | None:
        """A running-call slot (its token), or None when `limit` are taken."""
        ...

    async def renew(self, name: str, token: str, ttl_s: float) -> None: ...

    async def release(self, name: str, token: str) -> None: ...


class SharedLimitedBackend:
    """An `ImageBackend` that takes shared slots before calling `inner`."""

    def __init__(
        self,
        inner: ImageBackend,
        slots: SharedSlots,
        *,
        key: str,
        max_concurrent: int | None = None,
        per_minute: int | None = None,
        window_s: float = WINDOW_S,
        slot_ttl_s: float = SLOT_TTL_S,
    ) -> None:
        self.inner = inner
        self.key = key
        self.max_concurrent = max_concurrent
        self.per_minute = per_minute
        self.window_s = window_s
        self._slots = slots
        self._slot_ttl_s = slot_ttl_s

    async def run(self, call: UpstreamCall, deadline: Deadline) -> UpstreamResult:
        """`inner.run(call, deadline)` within the shared limits; see the module doc."""
        name = f"{self.key}:{call.model.name}"
        try:
            async with self._slot(name, call, deadline):
                await self._wait_for_turn(name, call, deadline)
                return await self.inner.run(call, deadline)
        except _Unshared:
            return await self.inner.run(call, deadline)

    @contextlib.asynccontextmanager
    async def _slot(self, name: str, call: UpstreamCall, deadline: Deadline) -> AsyncIterator[None]:
        if self.max_concurrent is None:
            yield
            return
        token = await self._acquire(name, call, deadline)
        keeper = asyncio.create_task(self._keep(name, token))
        try:
            yield
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
            try:
                await self._slots.release(name, token)
            except ConnectionError as error:
                log.warning("%s: slot not released (%s); its lease expires", name, error)

    async def _acquire(self, name: str, call: UpstreamCall, deadline: Deadline) -> str:
        assert self.max_concurrent is not None
        pause = _POLL_S
        while True:
            token = await _shared(
                name, self._slots.try_acquire(name, self.max_concurrent, self._slot_ttl_s)
            )
            if token is not None:
                return token
            remaining = deadline.remaining()
            if remaining is not None and remaining <= pause:
                raise refusal(
                    self.key,
                    call,
                    "max_concurrency",
                    self.max_concurrent,
                    f"{call.model.name} is limited to {self.max_concurrent} concurrent "
                    "request(s) across this deployment and none finished before the deadline.",
                    None,
                )
            await asyncio.sleep(pause)
            pause = min(pause * 2, _POLL_MAX_S)

    async def _keep(self, name: str, token: str) -> None:
        while True:
            await asyncio.sleep(self._slot_ttl_s / 3)
            try:
                await self._slots.renew(name, token, self._slot_ttl_s)
            except ConnectionError as error:
                log.warning("%s: slot lease not renewed (%s)", name, error)

    async def _wait_for_turn(self, name: str, call: UpstreamCall, deadline: Deadline) -> None:
        if self.per_minute is None:
            return
        token, wait = await _shared(
            name,
            self._slots.reserve_start(name, self.per_minute, self.window_s, deadline.remaining()),
        )
        if token is None:
            raise refusal(
                self.key,
                call,
                "requests_per_minute",
                self.per_minute,
                f"{call.model.name} is limited to {self.per_minute} request(s) a minute across "
                f"this deployment; the next free slot is in {wait:.0f} s, after the deadline.",
                wait,
            )
        if wait <= 0:
            return
        log.debug("%s: queued %.1f s for its shared rate limit", name, wait)
        try:
            await asyncio.sleep(wait)
        except asyncio.CancelledError:
            with contextlib.suppress(ConnectionError):
                await self._slots.cancel_start(name, token)
            raise

    async def aclose(self) -> None:
        await self.inner.aclose()


class _Unshared(Exception):
    """The shared store is unreachable: fall back to the per-process limits."""


async def _shared(name: str, step: Awaitable[T]) -> T:
    try:
        return await step
    except ConnectionError as error:
        log.warning("%s: shared limits unavailable (%s); per-replica limits apply", name, error)
        raise _Unshared from None
