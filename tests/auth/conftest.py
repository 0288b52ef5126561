"""Fixtures for the API-key tests: the service with authentication on (keys in
an SQLite file under tmp_path) over the session sandbox (tests/conftest.py),
and a real redis-server."""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest

from server.auth.admin import create_key
from server.auth.keys import Limits
from server.auth.sqlite_store import SqliteKeyStore
from server.sandbox.server import SandboxServer
from tests.auth.redis_server import RedisServer, redis_server
from tests.rpc.stacks import Stack, running_stack

NewKey = Callable[..., Coroutine[Any, Any, str]]


@dataclass
class AuthStack:
    stack: Stack
    db: pathlib.Path

    async def new_key(
        self,
        name: str = "team",
        *,
        rpm: int | None = None,
        images_per_day: int | None = None,
        monthly_budget: str | None = None,
        models: tuple[str, ...] = (),
    ) -> str:
        """Create a key in the stack's store (as `image-service keys create` does)."""
        store = SqliteKeyStore(self.db)
        try:
            key, _ = await create_key(
                store,
                name,
                limits=Limits(
                    rpm, images_per_day, None if monthly_budget is None else Decimal(monthly_budget)
                ),
                models=models,
            )
        finally:
            await store.aclose()
        return key


@pytest.fixture
async def auth_stack(sandbox: SandboxServer, tmp_path: pathlib.Path) -> AsyncIterator[AuthStack]:
    db = tmp_path / "keys" / "auth.sqlite3"
    async with running_stack(sandbox, tmp_path, auth="keys", auth_db=db) as stack:
        yield AuthStack(stack, db)


@pytest.fixture
async def redis(tmp_path: pathlib.Path) -> AsyncIterator[RedisServer]:
    async with redis_server(tmp_path / "redis") as server:
        yield server
