from __future__ import annotations

import asyncio
import time

import pytest

from server.domain.deadline import Deadline
from server.domain.errors import ContentRejected, RateLimited, UpstreamUnavailable
from server.domain.retry import RetryPolicy


class Flaky:
    def __init__(self, errors: list[Exception]) -> None:
        self.errors = errors
        self.attempts = 0

    async def __call__(self) -> str:
        self.attempts += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


async def test_retries_retryable_errors_then_succeeds() -> None:
    flaky = Flaky([UpstreamUnavailable("x"), RateLimited("y")])
    policy = RetryPolicy(attempts=3, base_delay=0.001)
    assert await policy.run(flaky, Deadline.none()) == "ok"
    assert flaky.attempts == 3


async def test_never_retries_safety_refusals() -> None:
    flaky = Flaky([ContentRejected("no")])
    with pytest.raises(ContentRejected):
        await RetryPolicy(attempts=5, base_delay=0.001).run(flaky, Deadline.none())
    assert flaky.attempts == 1


async def test_honours_retry_after() -> None:
    flaky = Flaky([RateLimited("y", retry_after=0.3)])
    # Timed by the loop's clock, which the wait is. uvloop's is libuv's
    # millisecond clock, so against `time.monotonic()` a 300 ms sleep can end
    # up to a millisecond early; asyncio's fires up to its clock resolution
    # early; and a difference of two floats near 10^3 s is exact only to
    # ~1e-13 s. Hence the microsecond of slack, far below a wait that was
    # not made at all.
    loop = asyncio.get_running_loop()
    started = loop.time()
    await RetryPolicy(attempts=2, base_delay=0.001).run(flaky, Deadline.none())
    assert loop.time() - started >= 0.3 - 1e-6


async def test_gives_up_with_the_real_error_when_the_wait_would_pass_the_deadline() -> None:
    flaky = Flaky([RateLimited("y", retry_after=30)])
    started = time.monotonic()
    with pytest.raises(RateLimited) as caught:
        await RetryPolicy(attempts=5).run(flaky, Deadline.after(10))
    assert caught.value.retry_after == 30
    # At once: sleeping until the deadline would take 10 s.
    assert time.monotonic() - started < 5


async def test_stops_after_the_last_attempt() -> None:
    flaky = Flaky([UpstreamUnavailable(str(i)) for i in range(5)])
    with pytest.raises(UpstreamUnavailable):
        await RetryPolicy(attempts=3, base_delay=0.001).run(flaky, Deadline.none())
    assert flaky.attempts == 3


def test_backoff_is_jittered_and_capped() -> None:
    policy = RetryPolicy(base_delay=1, max_delay=4)
    delays = [policy.backoff(10) for _ in range(200)]
    assert max(delays) <= 4 and min(delays) >= 0 and len(set(delays)) > 100
