"""One generation in flight: the state every upstream call of its fan-out shares."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from server.domain.call_plan import CallOutcome
from server.domain.deadline import Deadline
from server.domain.generation_ids import new_generation_id
from server.domain.records import DeliveredImage
from server.domain.requests import ResponseFormat

# Part of the caller's deadline that storage may not use, so that when
# uploads hang (not just fail) the paid images still go back inline before
# the caller gives up, instead of the RPC ending in DEADLINE_EXCEEDED.
_INLINE_RESERVE_FRACTION = 0.1
_INLINE_RESERVE_MAX_S = 5.0


def storage_deadline(deadline: Deadline) -> Deadline:
    """When uploads and the record write must be done: `deadline` minus the reserve."""
    remaining = deadline.remaining()
    if deadline.at is None or remaining is None:
        return deadline
    return Deadline(deadline.at - min(_INLINE_RESERVE_MAX_S, remaining * _INLINE_RESERVE_FRACTION))


@dataclass
class Generation:
    """A generation's id, deadlines, response format and output queue.

    Each upstream call puts its delivered images on `output` as they are
    stored, then one `CallOutcome`; the orchestrator relays the images and
    counts the outcomes. Build with `Generation.begin`.
    """

    id: str
    deadline: Deadline
    # Fixed when the generation begins, for every upload and the record.
    storage_deadline: Deadline
    response_format: ResponseFormat
    started: float = field(default_factory=time.monotonic)
    output: asyncio.Queue[DeliveredImage | CallOutcome] = field(default_factory=asyncio.Queue)

    @classmethod
    def begin(cls, deadline: Deadline, response_format: ResponseFormat) -> Generation:
        return cls(new_generation_id(), deadline, storage_deadline(deadline), response_format)

    def latency_ms(self) -> int:
        """Milliseconds since the generation began."""
        return int((time.monotonic() - self.started) * 1000)
