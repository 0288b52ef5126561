"""Provider limits that hold for every replica: the shared twin of `limits`.

`LimitedBackend` counts per process, so `IMAGE_SERVICE_AZURE_FLUX_
REQUESTS_PER_MINUTE=6` becomes 6 x replicas once the HPA scales out.
`SharedLimitedBackend` takes the same two limits from `SharedSlots`, a
store every replica shares (Redis: server/auth/redis_limits.py), before it
calls the backend it wraps, both in one step (`try_start`):

- `per_minute`: a start time in the model's sliding window, handed out in
  arrival order across replicas exactly as `LimitedBackend` does in one
  process (a turn in the future is waited for; one after the caller's
  deadline is refused at once with the wait as `retry_after`);
- `max_concurrent`: a slot in the model's set of running calls, held (and
  renewed) while the call runs and released after it; a replica that dies
  loses its slots when their lease (`slot_ttl_s`) runs out. While every
  slot is taken the call polls the store until its deadline.

A step takes both or neither: a call refused its turn holds no slot, and a
call that finds no slot reserves no turn.

`fallback` is the per-process `LimitedBackend` with the same limits over
the same backend, which is what applies when the shared store cannot be
reached: the limits then degrade to per replica (logged) rather than
failing calls or dropping the limits altogether. A call the shared store
admitted goes straight to the backend, counted once. Refusals are
`RateLimited` (`UPSTREAM_RATE_LIMITED`), as from `LimitedBackend`.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from server.domain.deadline import Deadline
from server.domain.ports import ImageBackend, UpstreamCall, UpstreamResult
from server.domain.telemetry import report_limiter_wait
from server.providers._shared.limits import refusal

log = logging.getLogger(__name__)
T = TypeVar("T")

WINDOW_S = 60.0
SLOT_TTL_S = 30.0
_POLL_S = 0.05
_POLL_MAX_S = 0.5


class Outcome(enum.Enum):
    """What one `SharedSlots.try_start` step did."""

    STARTED = "started"  # took a slot and a turn (each when limited)
    BUSY = "busy"  # every running-call slot is taken; nothing taken
    LATE = "late"  # the turn would come after `max_wait_s`; nothing taken


@dataclass(frozen=True)
class Start:
    """The answer of `SharedSlots.try_start`.

    `wait_s`: STARTED, until the reserved turn (0 without a rate limit);
    LATE, until the first turn there is. `slot` and `turn` are the tokens of
    what a STARTED step took (None for a limit not set), for `release` and
    `cancel_start`.
    """

    outcome: Outcome
    wait_s: float = 0.0
    slot: str | None = None
    turn: str | None = None


class SharedSlots(Protocol):
    """Rate and concurrency slots shared by every replica.

    Every method raises `ConnectionError` when the store cannot be reached.
    `name` identifies one upstream model (`<backend>:<model>`).
    """

    async def try_start(
        self,
        name: str,
        *,
        max_concurrent: int | None,
        slot_ttl_s: float,
        per_minute: int | None,
        window_s: float,
        max_wait_s: float | None,
    ) -> Start:
        """One atomic step for a call to start (see `Outcome`): a running-call
        slot, leased for `slot_ttl_s`, when fewer than `max_concurrent` are
        taken, and a start time in `name`'s sliding window, in arrival order,
        no later than `max_wait_s` from now (None: any). A limit of None is
        not checked and takes nothing."""
        ...

    async def cancel_start(self, name: str, token: str) -> None: ...

    async def renew(self, name: str, token: str, ttl_s: float) -> None: ...

    async def release(self, name: str, token: str) -> None: ...


class SharedLimitedBackend:
    """An `ImageBackend` that takes shared slots before calling `inner`."""

    def __init__(
        self,
        inner: ImageBackend,
        slots: SharedSlots,
        *,
        fallback: ImageBackend,
        key: str,
        max_concurrent: int | None = None,
        per_minute: int | None = None,
        window_s: float = WINDOW_S,
        slot_ttl_s: float = SLOT_TTL_S,
    ) -> None:
        self.inner = inner
        self.fallback = fallback
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
            start = await self._start(name, call, deadline)
        except _Unshared:
            return await self.fallback.run(call, deadline)
        lease = (
            None if start.slot is None else _Lease(self._slots, name, start.slot, self._slot_ttl_s)
        )
        try:
            if start.wait_s > 0:
                await self._wait_for_turn(name, start)
            return await self.inner.run(call, deadline)
        finally:
            if lease is not None:
                await lease.release()

    async def _start(self, name: str, call: UpstreamCall, deadline: Deadline) -> Start:
        queued = time.monotonic()
        pause = _POLL_S
        while True:
            start = await _shared(
                name,
                self._slots.try_start(
                    name,
                    max_concurrent=self.max_concurrent,
                    slot_ttl_s=self._slot_ttl_s,
                    per_minute=self.per_minute,
                    window_s=self.window_s,
                    max_wait_s=deadline.remaining(),
                ),
            )
            if start.outcome is Outcome.STARTED:
                if self.max_concurrent is not None:
                    report_limiter_wait("max_concurrency", time.monotonic() - queued)
                if self.per_minute is not None:
                    report_limiter_wait("requests_per_minute", max(0.0, start.wait_s))
                return start
            if start.outcome is Outcome.LATE:
                raise refusal(
                    self.key,
                    call,
                    "requests_per_minute",
                    self.per_minute,
                    f"{call.model.name} is limited to {self.per_minute} request(s) a minute "
                    "across this deployment; the next free slot is in "
                    f"{start.wait_s:.0f} s, after the deadline.",
                    start.wait_s,
                )
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

    async def _wait_for_turn(self, name: str, start: Start) -> None:
        log.debug("%s: queued %.1f s for its shared rate limit", name, start.wait_s)
        try:
            await asyncio.sleep(start.wait_s)
        except asyncio.CancelledError:
            if start.turn is not None:
                with contextlib.suppress(ConnectionError):
                    await self._slots.cancel_start(name, start.turn)
            raise

    async def aclose(self) -> None:
        await self.inner.aclose()


class _Lease:
    """A held slot: renewed every third of its lease while the call runs,
    given back after it.

    A timer, not a task, waits for each renewal: most calls end before the
    first one is due, and a task per call (started, cancelled, awaited) was
    measurable work on every call.
    """

    def __init__(self, slots: SharedSlots, name: str, token: str, ttl_s: float) -> None:
        self._slots = slots
        self._name = name
        self._token = token
        self._ttl_s = ttl_s
        self._loop = asyncio.get_running_loop()
        self._timer = self._loop.call_later(ttl_s / 3, self._due)
        self._renewing: asyncio.Task[None] | None = None

    def _due(self) -> None:
        self._renewing = self._loop.create_task(self._renew())

    async def _renew(self) -> None:
        try:
            await self._slots.renew(self._name, self._token, self._ttl_s)
        except ConnectionError as error:
            log.warning("%s: slot lease not renewed (%s)", self._name, error)
        self._timer = self._loop.call_later(self._ttl_s / 3, self._due)

    async def release(self) -> None:
        self._timer.cancel()
        if self._renewing is not None and not self._renewing.done():
            self._renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewing
        try:
            await self._slots.release(self._name, self._token)
        except ConnectionError as error:
            log.warning("%s: slot not released (%s); its lease expires", self._name, error)


class _Unshared(Exception):
    """The shared store is unreachable: fall back to the per-process limits."""


async def _shared(name: str, step: Awaitable[T]) -> T:
    try:
        return await step
    except ConnectionError as error:
        log.warning("%s: shared limits unavailable (%s); per-replica limits apply", name, error)
        raise _Unshared from None
