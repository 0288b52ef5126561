"""How long to wait between polls of an upstream's asynchronous task.

Shared by DashScope's tasks and Azure FLUX's polling answers: the first
poll comes `initial_s` after the submission, each wait is `BACKOFF` times
the last (with a little jitter, so tasks submitted together do not poll in
lockstep) up to `max_s`, and no wait runs past the caller's deadline.
"""

from __future__ import annotations

import asyncio
import random

from server.domain.deadline import Deadline

BACKOFF = 1.5
_JITTER = 0.1


def check_poll_interval(initial_s: float, max_s: float) -> None:
    """ValueError unless 0 < initial_s <= max_s (a backend's settings check)."""
    if initial_s <= 0 or max_s < initial_s:
        raise ValueError("need 0 < poll_initial_s <= poll_max_s")


class PollPacing:
    """The waits of one task's polling; make one per task."""

    def __init__(self, initial_s: float, max_s: float) -> None:
        check_poll_interval(initial_s, max_s)
        self._interval = initial_s
        self._max_s = max_s

    async def wait(self, deadline: Deadline) -> bool:
        """Sleep until the next poll is due; False if the deadline passed meanwhile."""
        pause = self._interval * random.uniform(1 - _JITTER, 1 + _JITTER)
        remaining = deadline.remaining()
        await asyncio.sleep(pause if remaining is None else min(pause, remaining))
        self._interval = min(self._max_s, self._interval * BACKOFF)
        return not deadline.expired()
