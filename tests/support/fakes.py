"""Narrow in-memory stand-ins for unit tests of the orchestration logic.

Integration tests use the real sandbox emulators, backends and stores; these
exist only to drive edge cases (partial failure, storage outage) precisely.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from server.domain.deadline import Deadline
from server.domain.errors import StorageUnavailable
from server.domain.ports import ProducedImage, UpstreamCall, UpstreamResult
from tests.support.images import png

Script = Callable[[UpstreamCall, int], UpstreamResult]


class ScriptedBackend:
    """Answers call number i with `script(call, i)` after `delays[i]` seconds
    and, when `gates` are given, once the test has set `gates[i]` (controlled
    release: a test of completion order sets them in the order it wants)."""

    def __init__(
        self,
        script: Script | None = None,
        delays: list[float] | None = None,
        gates: list[asyncio.Event] | None = None,
    ) -> None:
        self.calls: list[UpstreamCall] = []
        self.cancelled = 0
        self._script = script or (
            lambda call, i: UpstreamResult(tuple(ProducedImage(png()) for _ in range(call.count)))
        )
        self._delays = delays or []
        self._gates = gates or []

    async def run(self, call: UpstreamCall, deadline: Deadline) -> UpstreamResult:
        number = len(self.calls)
        self.calls.append(call)
        try:
            if number < len(self._delays):
                await asyncio.sleep(self._delays[number])
            if number < len(self._gates):
                await self._gates[number].wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return self._script(call, number)

    async def aclose(self) -> None:
        pass


class MemoryStore:
    """A dict-backed BlobStore whose writes can be made to fail."""

    def __init__(self) -> None:
        self.objects: dict[str, tuple[bytes, str]] = {}
        self.failing_writes = 0  # fail this many puts, then succeed
        self.down = False  # fail every put
        self.put_delay_s = 0.0  # how long each put takes
        self.puts = 0

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        self.puts += 1
        if self.put_delay_s:
            await asyncio.sleep(self.put_delay_s)
        if self.down or self.failing_writes > 0:
            self.failing_writes -= 1
            raise StorageUnavailable("store is down")
        self.objects[key] = (data, content_type)

    async def get(self, key: str) -> bytes | None:
        entry = self.objects.get(key)
        return entry[0] if entry else None

    def url_for(self, key: str) -> str:
        return f"https://media.test/{key}"

    async def aclose(self) -> None:
        pass
