"""What the emulator tests share: a plain HTTP client on the session's
sandbox (the `sandbox` fixture is the root conftest's)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from server.sandbox.server import SandboxServer


@pytest.fixture
async def client(sandbox: SandboxServer) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client on the sandbox's base URL (Vertex's tests, whose
    emulator speaks gRPC, define their own `client`)."""
    async with httpx.AsyncClient(base_url=sandbox.base_url, timeout=10) as client:
        yield client
