"""Counting the requests in flight, for graceful drains.

Both processes drain the same way on SIGTERM: report not ready, then wait
until nothing is in flight or the grace runs out. The REST sidecar counts
HTTP requests (server/rest/drain.py), the gRPC server counts RPCs
(server/rpc/draining.py); this is the counter both use.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class InFlightCounter:
    """How many requests are in flight, and a way to wait for none."""

    def __init__(self) -> None:
        self._count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def count(self) -> int:
        return self._count

    async def wait_idle(self, timeout_s: float) -> bool:
        """True once nothing is in flight; False after `timeout_s`."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    @contextlib.asynccontextmanager
    async def counted(self) -> AsyncIterator[None]:
        """Count one request for as long as the block runs."""
        self._count += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._count -= 1
            if self._count == 0:
                self._idle.set()
