"""One generation in flight: the state every upstream call of its fan-out shares."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from server.domain.call_plan import CallOutcome
from server.domain.deadline import Deadline
from server.domain.generation_ids import new_generation_id
from server.domain.output_options import OutputPlan
from server.domain.records import DeliveredImage
from server.domain.requests import ResponseFormat

# Part of the caller's deadline that storage may not use, so that when
# uploads hang (not just fail) the paid images still go back inline before
# the caller gives up, instead of the RPC ending in DEADLINE_EXCEEDED.
_INLINE_RESERVE_FRACTION = 0.1
_INLINE_RESERVE_MAX_S = 5.0


# Part of what is left before the storage deadline that the upstream calls
# may not use: a call that hangs until the deadline would otherwise leave no
# time to store the images the other calls returned, or the record, and the
# whole generation (paid images included) would end in DEADLINE_EXCEEDED.
_STORE_RESERVE_FRACTION = 0.1
_STORE_RESERVE_MAX_S = 10.0


def _before(deadline: Deadline, fraction: float, max_s: float) -> Deadline:
    """`deadline` moved earlier by `fraction` of what remains, at most `max_s`."""
    remaining = deadline.remaining()
    if deadline.at is None or remaining is None:
        return deadline
    return Deadline(deadline.at - min(max_s, remaining * fraction))


def storage_deadline(deadline: Deadline) -> Deadline:
    """When uploads and the record write must be done: `deadline` minus the reserve."""
    return _before(deadline, _INLINE_RESERVE_FRACTION, _INLINE_RESERVE_MAX_S)


def upstream_deadline(deadline: Deadline) -> Deadline:
    """When the upstream calls must have answered: the storage deadline minus
    a slice for storing what they returned and writing the record."""
    return _before(storage_deadline(deadline), _STORE_RESERVE_FRACTION, _STORE_RESERVE_MAX_S)


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
    # Fixed when the generation begins: when every upstream call must end.
    upstream_deadline: Deadline
    response_format: ResponseFormat
    # What the delivered images must be (format, compression); None: as made.
    plan: OutputPlan | None = None
    started: float = field(default_factory=time.monotonic)
    output: asyncio.Queue[DeliveredImage | CallOutcome] = field(default_factory=asyncio.Queue)

    @classmethod
    def begin(
        cls, deadline: Deadline, response_format: ResponseFormat, plan: OutputPlan | None = None
    ) -> Generation:
        return cls(
            new_generation_id(),
            deadline,
            storage_deadline(deadline),
            upstream_deadline(deadline),
            response_format,
            plan,
        )

    def latency_ms(self) -> int:
        """Milliseconds since the generation began."""
        return int((time.monotonic() - self.started) * 1000)
