"""What the emulator tests share: the running sandbox and a plain HTTP client."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from server.sandbox.server import SandboxServer


@pytest.fixture
async def sandbox() -> AsyncIterator[SandboxServer]:
    """Every emulator, on 127.0.0.1 port 0."""
    async with SandboxServer("127.0.0.1", 0) as server:
        yield server


@pytest.fixture
async def client(sandbox: SandboxServer) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client on the sandbox's base URL (Vertex's tests, whose
    emulator speaks gRPC, define their own `client`)."""
    async with httpx.AsyncClient(base_url=sandbox.base_url, timeout=10) as client:
        yield client
