"""The closed-loop load driver.

`closed_loop` keeps `concurrency` workers busy: each sends a request, waits
for the whole answer, and sends the next, so the offered load adapts to how
fast the system answers (no queue builds up in front of it, unlike an
open-loop arrival rate).

- Warm-up: every worker first makes one unmeasured request (connections
  opened, caches warm). Workers start `stagger_s / concurrency` apart, so
  with `stagger_s` equal to the upstream latency their requests arrive
  evenly spread, as independent callers' would, instead of in lockstep
  waves that measure the queue a synchronized burst builds.
- The measured window opens once every worker is warm (`on_start` runs
  then) and closes after `duration_s` once `min_requests` have completed
  (but after `max_duration_s` at most), or at `max_requests` completions
  (`on_stop` runs then), so an overloaded cell whose requests take longer
  than the time box still has enough of them to mean something. A request
  counts if it completes inside the window, so CPU time read at `on_start`
  and `on_stop` divides by the requests that did that work; at the edges at
  most the requests in flight straddle it.
- Then no new request starts, and those in flight are awaited (bounded).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

# A request that takes longer than this is counted as an error, so that no
# cell (and no `make bench`) can hang.
REQUEST_TIMEOUT_S = 60.0


@dataclass
class LoadResult:
    """What one measured window produced."""

    concurrency: int
    # Seconds per successful request completed in the window, in completion order.
    latencies: list[float] = field(default_factory=list)
    # Error class name -> count (warm-up failures are prefixed "warmup").
    errors: Counter[str] = field(default_factory=Counter)
    # Wall time of the measured window, seconds.
    elapsed: float = 0.0

    @property
    def completed(self) -> int:
        return len(self.latencies)

    @property
    def throughput(self) -> float:
        """Successful requests per second."""
        return self.completed / self.elapsed if self.elapsed > 0 else 0.0

    def percentile(self, q: float) -> float:
        """The `q`-th percentile latency in seconds (nearest rank); NaN if none."""
        return percentile(self.latencies, q)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile of `values` (0 < q <= 100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


Call = Callable[[], Awaitable[object]]


async def _attempt(call: Call) -> str | None:
    """Run `call` once: None on success, else the failure's class name."""
    try:
        async with asyncio.timeout(REQUEST_TIMEOUT_S):
            await call()
    except Exception as error:
        return type(error).__name__
    return None


class _Loop:
    """The shared state of one `closed_loop` run."""

    def __init__(
        self, call: Call, concurrency: int, min_requests: int, max_requests: int, warmup: bool
    ) -> None:
        self.call = call
        self.concurrency = concurrency
        self.min_requests = min_requests
        self.max_requests = max_requests
        self.warmup = warmup
        self.result = LoadResult(concurrency)
        self.warm = 0
        self.all_warm = asyncio.Event()
        self.enough = asyncio.Event()
        self.minimum = asyncio.Event()
        self.open = False
        self.closed = False

    async def worker(self, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        if self.warmup:
            failure = await _attempt(self.call)
            if failure is not None:
                self.result.errors[f"warmup {failure}"] += 1
        self.warm += 1
        if self.warm == self.concurrency:
            self.all_warm.set()
        while not self.closed:
            started = time.perf_counter()
            failure = await _attempt(self.call)
            if self.open and not self.closed:
                self.record(failure, time.perf_counter() - started)

    def record(self, failure: str | None, seconds: float) -> None:
        if failure is None:
            self.result.latencies.append(seconds)
        else:
            self.result.errors[failure] += 1
        done = self.result.completed + sum(self.result.errors.values())
        if done >= self.min_requests:
            self.minimum.set()
        if done >= self.max_requests:
            self.enough.set()


async def closed_loop(
    call: Call,
    *,
    concurrency: int,
    duration_s: float,
    max_requests: int,
    min_requests: int = 1,
    max_duration_s: float | None = None,
    stagger_s: float = 0.0,
    on_start: Callable[[], object] | None = None,
    on_stop: Callable[[], object] | None = None,
    warmup: bool = True,
) -> LoadResult:
    """Run `call` from `concurrency` workers and return the measured window
    (see the module doc).

    `call` raises on any failure (a wrong answer included); failures are
    counted by exception class and do not stop the run.
    """
    if concurrency < 1 or max_requests < 1:
        raise ValueError("concurrency and max_requests must be at least 1")
    loop = _Loop(call, concurrency, min(min_requests, max_requests), max_requests, warmup)
    longest = max(duration_s, max_duration_s or duration_s)
    workers = [
        asyncio.create_task(loop.worker(stagger_s * i / concurrency)) for i in range(concurrency)
    ]
    try:
        await loop.all_warm.wait()
        if on_start is not None:
            on_start()
        loop.open = True
        opened_at = time.perf_counter()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(duration_s):
                await loop.enough.wait()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(longest - (time.perf_counter() - opened_at)):
                await loop.minimum.wait()
        loop.result.elapsed = time.perf_counter() - opened_at
        loop.closed = True
        if on_stop is not None:
            on_stop()
        async with asyncio.timeout(REQUEST_TIMEOUT_S + 5):
            await asyncio.gather(*workers)
    finally:
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
    return loop.result
