"""The one retry policy: exponential backoff with full jitter, honouring
the upstream's Retry-After, never past the caller's deadline.

Used by every backend and by storage writes, so that "retryable" means the
same thing everywhere: `ImageServiceError.retryable` (429, 5xx, connection
failures, storage hiccups). Safety refusals and bad requests are never
retried.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from server.domain.deadline import Deadline
from server.domain.errors import ImageServiceError, UpstreamTimeout
from server.domain.telemetry import report_retry

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to wait between attempts."""

    attempts: int = 4
    base_delay: float = 0.5
    max_delay: float = 20.0

    def backoff(self, attempt: int) -> float:
        """Full-jitter delay before attempt `attempt + 1` (attempt >= 1)."""
        ceiling = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
        return random.uniform(0, ceiling)

    def delay_after(self, error: ImageServiceError, attempt: int) -> float:
        if error.retry_after is not None:
            # Honour the upstream's wish, plus a little jitter so that a burst
            # of callers told the same number does not return in lockstep.
            return error.retry_after + random.uniform(0, min(1.0, self.base_delay))
        return self.backoff(attempt)

    async def run(self, attempt_fn: Callable[[], Awaitable[T]], deadline: Deadline) -> T:
        """Run `attempt_fn` until it succeeds, fails permanently or time runs out.

        The last error is re-raised unchanged when the next wait would pass
        the deadline, so the caller still sees why it failed (and any
        Retry-After) rather than a bare timeout.
        """
        attempt = 0
        while True:
            attempt += 1
            if deadline.expired():
                raise UpstreamTimeout("The deadline passed before the upstream answered.")
            try:
                return await attempt_fn()
            except ImageServiceError as error:
                if not error.retryable or attempt >= self.attempts:
                    raise
                delay = self.delay_after(error, attempt)
                remaining = deadline.remaining()
                if remaining is not None and delay >= remaining:
                    raise
                report_retry(error)
                await asyncio.sleep(delay)


NO_RETRY = RetryPolicy(attempts=1)
