"""Deadlines as absolute points on the monotonic clock."""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Deadline:
    """When the caller stops waiting; `at` is `time.monotonic()` based.

    `Deadline.none()` means the caller set no deadline; the service then
    applies its own default so that nothing waits forever.
    """

    at: float | None

    @classmethod
    def none(cls) -> Deadline:
        return cls(None)

    @classmethod
    def after(cls, seconds: float | None) -> Deadline:
        return cls(None if seconds is None else time.monotonic() + seconds)

    def remaining(self) -> float | None:
        """Seconds left (never negative), or None when unbounded."""
        if self.at is None:
            return None
        return max(0.0, self.at - time.monotonic())

    def expired(self) -> bool:
        remaining = self.remaining()
        return remaining is not None and remaining <= 0

    def cap(self, seconds: float) -> float:
        """The smaller of `seconds` and the time remaining."""
        remaining = self.remaining()
        return seconds if remaining is None else min(seconds, remaining)

    def earliest(self, other: Deadline) -> Deadline:
        if self.at is None:
            return other
        if other.at is None:
            return self
        return self if self.at <= other.at else other
