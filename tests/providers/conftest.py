"""What every backend test shares: a quick retry policy and a fixture that
opens (and closes) a backend on the session's sandbox (the root conftest's
`sandbox`)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import pytest

from server.domain.ports import ImageBackend
from server.domain.retry import RetryPolicy
from server.sandbox.server import SandboxServer

# Three attempts, backing off in milliseconds, so retry tests take no time.
FAST_RETRY = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.05)

B = TypeVar("B", bound=ImageBackend)


def backend_fixture(build: Callable[[SandboxServer], B]) -> Any:
    """A fixture yielding `build(sandbox)`, closed after the test:

    backend = backend_fixture(make_backend)
    """

    @pytest.fixture
    async def opened(sandbox: SandboxServer) -> AsyncIterator[B]:
        async with contextlib.aclosing(build(sandbox)) as backend:
            yield backend

    return opened
