"""Client-side limits on the calls a backend makes: concurrency and rate.

Upstream quotas are small (FLUX.1 Kontext [pro] on Azure: 6 requests a
minute by default; MAI-Image-2: 9 at the lowest tier), and a burst such as
a few `n=4` requests would otherwise turn into a storm of 429s, each retried
with backoff until it gives up. `LimitedBackend` wraps any `ImageBackend`
so that such a burst queues instead, within each caller's deadline:

- `max_concurrent`: at most this many calls in flight at once;
- `per_minute`: at most this many calls started in any sliding window of
  `window_s` (60) seconds. Start times are handed out in arrival order, so
  the queue is fair and each caller knows at once when its turn comes.

Limits count per model, not per backend: every upstream here meters quota
per deployment or model (an Azure deployment, a Vertex base model, a
DashScope model, a Bedrock model id), so two models of one backend do not
share a budget. The settings are per backend (`IMAGE_SERVICE_<BACKEND>_
MAX_CONCURRENCY`, `..._REQUESTS_PER_MINUTE`) and apply to each of its
models; `registry.build_backends` applies them to every backend. With
Redis configured they hold across replicas (`shared_limits`).

A call that cannot start before its deadline fails with `RateLimited`
(`UPSTREAM_RATE_LIMITED`) instead of waiting past it: at once when the rate
window says its turn comes too late (with `retry_after` the wait), or when
the deadline passes while it waits for a concurrency slot (with
`retry_after` an estimate from recent call durations, when there are any).
A call cancelled while it waits gives back only what it took.

One call is one `run` of the wrapped backend, retries included: the
backend's own retries (on a 429 or a 5xx) are few and backed off, and
polling an async task is part of the call it polls for.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from server.domain.deadline import Deadline
from server.domain.errors import RateLimited
from server.domain.ports import ImageBackend, UpstreamCall, UpstreamResult
from server.domain.telemetry import report_limiter_wait

if TYPE_CHECKING:
    from server.providers._shared.shared_limits import SharedSlots

log = logging.getLogger(__name__)

WINDOW_S = 60.0
# Recent call durations kept to estimate when a concurrency slot frees.
_DURATION_SAMPLES = 16


@dataclass
class _Gate:
    """The slots of one model."""

    semaphore: asyncio.Semaphore | None
    # Start times handed out (monotonic; some may be in the future), sorted.
    starts: deque[float] = field(default_factory=deque)
    # Start times of the calls running now.
    running: list[float] = field(default_factory=list)
    durations: deque[float] = field(default_factory=lambda: deque(maxlen=_DURATION_SAMPLES))


class LimitedBackend:
    """An `ImageBackend` that queues calls to `inner` within its limits.

    `key` names the backend in errors and logs. A limit of None is no limit.
    """

    def __init__(
        self,
        inner: ImageBackend,
        *,
        key: str,
        max_concurrent: int | None = None,
        per_minute: int | None = None,
        window_s: float = WINDOW_S,
    ) -> None:
        for name, value in (("max_concurrent", max_concurrent), ("per_minute", per_minute)):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1 (or None for no limit)")
        if window_s <= 0:
            raise ValueError("window_s must be positive")
        self.inner = inner
        self.key = key
        self.max_concurrent = max_concurrent
        self.per_minute = per_minute
        self.window_s = window_s
        self._gates: dict[str, _Gate] = {}

    def _gate(self, model: str) -> _Gate:
        gate = self._gates.get(model)
        if gate is None:
            semaphore = asyncio.Semaphore(self.max_concurrent) if self.max_concurrent else None
            gate = self._gates[model] = _Gate(semaphore)
        return gate

    async def run(self, call: UpstreamCall, deadline: Deadline) -> UpstreamResult:
        """`inner.run(call, deadline)` once a slot is free; see the module doc."""
        gate = self._gate(call.model.name)
        if gate.semaphore is not None:
            await self._acquire(gate, call, deadline)
        try:
            await self._wait_for_turn(gate, call, deadline)
            started = time.monotonic()
            gate.running.append(started)
            try:
                return await self.inner.run(call, deadline)
            finally:
                gate.running.remove(started)
                gate.durations.append(time.monotonic() - started)
        finally:
            if gate.semaphore is not None:
                gate.semaphore.release()

    async def _acquire(self, gate: _Gate, call: UpstreamCall, deadline: Deadline) -> None:
        assert gate.semaphore is not None
        queued = time.monotonic()
        try:
            # A cancelled or timed-out acquire takes nothing.
            async with asyncio.timeout(deadline.remaining()):
                await gate.semaphore.acquire()
            report_limiter_wait("max_concurrency", time.monotonic() - queued)
        except TimeoutError:
            raise self._limited(
                call,
                "max_concurrency",
                self.max_concurrent,
                f"{call.model.name} is limited to {self.max_concurrent} concurrent "
                "request(s) on this deployment and none finished before the deadline.",
                self._slot_estimate(gate),
            ) from None

    async def _wait_for_turn(self, gate: _Gate, call: UpstreamCall, deadline: Deadline) -> None:
        if self.per_minute is None:
            return
        now = time.monotonic()
        starts = gate.starts
        while starts and starts[0] <= now - self.window_s:
            starts.popleft()
        turn = now
        if starts:
            # Never before a turn already handed out, so `starts` stays sorted.
            turn = max(turn, starts[-1])
        if len(starts) >= self.per_minute:
            turn = max(turn, starts[-self.per_minute] + self.window_s)
        wait = turn - now
        remaining = deadline.remaining()
        if remaining is not None and wait > remaining:
            raise self._limited(
                call,
                "requests_per_minute",
                self.per_minute,
                f"{call.model.name} is limited to {self.per_minute} request(s) a minute on "
                f"this deployment; the next free slot is in {wait:.0f} s, after the deadline.",
                wait,
            )
        starts.append(turn)
        report_limiter_wait("requests_per_minute", max(0.0, wait))
        if wait <= 0:
            return
        log.debug("%s: %s queued %.1f s for its rate limit", self.key, call.model.name, wait)
        try:
            await asyncio.sleep(wait)
        except asyncio.CancelledError:
            starts.remove(turn)
            raise

    def _slot_estimate(self, gate: _Gate) -> float | None:
        """Seconds until a running call is likely to finish, from recent durations."""
        if not gate.durations or not gate.running:
            return None
        typical = statistics.median(gate.durations)
        oldest_age = time.monotonic() - min(gate.running)
        return max(0.0, typical - oldest_age)

    def _limited(
        self, call: UpstreamCall, limit: str, value: int | None, message: str, wait: float | None
    ) -> RateLimited:
        return refusal(self.key, call, limit, value, message, wait)

    async def aclose(self) -> None:
        await self.inner.aclose()


def refusal(
    key: str, call: UpstreamCall, limit: str, value: int | None, message: str, wait: float | None
) -> RateLimited:
    """The error (and warning) of a call that a client-side limit refused."""
    log.warning("%s: %s refused by the %s limit (%s)", key, call.model.name, limit, value)
    return RateLimited(
        message,
        metadata={
            "upstream": key,
            "model": call.model.name,
            "limit": limit,
            "limit_value": str(value),
        },
        retry_after=wait,
    )


def limited(
    inner: ImageBackend,
    *,
    key: str,
    max_concurrent: int | None,
    per_minute: int | None,
    shared: SharedSlots | None = None,
) -> ImageBackend:
    """`inner` within its limits, or `inner` itself without limits.

    With `shared` (Redis), the limits hold across replicas
    (`shared_limits.SharedLimitedBackend`), falling back to this process's
    `LimitedBackend` over the same `inner` when the shared store is
    unreachable.
    """
    if max_concurrent is None and per_minute is None:
        return inner
    local = LimitedBackend(inner, key=key, max_concurrent=max_concurrent, per_minute=per_minute)
    if shared is None:
        return local
    from server.providers._shared.shared_limits import SharedLimitedBackend

    return SharedLimitedBackend(
        inner,
        shared,
        fallback=local,
        key=key,
        max_concurrent=max_concurrent,
        per_minute=per_minute,
    )
