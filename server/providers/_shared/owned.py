"""A backend's long-lived connection object, closed only by whoever made it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

R = TypeVar("R")


@dataclass
class Owned(Generic[R]):
    """`resource` (an HTTP client, a gRPC channel's client) and how to close it.

    A backend makes its own client unless a test or a benchmark hands it
    one to share; `close` is None for one handed in, which `aclose` then
    leaves open for its owner.
    """

    resource: R
    close: Callable[[], Awaitable[None]] | None = None

    async def aclose(self) -> None:
        if self.close is not None:
            close, self.close = self.close, None
            await close()
