"""Request-id leases in a real redis-server, as two replicas hold them; and
what a caller gets when another replica keeps the lease too long."""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import AsyncIterator

import grpc
import pytest
import redis.asyncio as aioredis

from server.auth.redis_leases import RedisLeases
from server.auth.redis_store import connect
from server.domain.deadline import Deadline
from server.domain.errors import AuthUnavailable, RequestInProgress
from server.rest.errors import from_status
from server.rpc.status import to_status
from tests.auth.redis_server import RedisServer, redis_server


@pytest.fixture
async def redis(tmp_path: pathlib.Path) -> AsyncIterator[RedisServer]:
    async with redis_server(tmp_path / "redis") as server:
        yield server


@pytest.fixture
async def clients(redis: RedisServer) -> AsyncIterator[tuple[aioredis.Redis, aioredis.Redis]]:
    a, b = connect(redis.url), connect(redis.url)
    yield a, b
    await a.aclose()
    await b.aclose()


async def test_a_second_replica_waits_for_the_holder_then_gets_the_lease(
    clients: tuple[aioredis.Redis, aioredis.Redis],
) -> None:
    a, b = RedisLeases(clients[0], wait_s=30), RedisLeases(clients[1], wait_s=30)
    order: list[str] = []
    holding = asyncio.Event()
    finish = asyncio.Event()

    async def first() -> None:
        async with a.hold("key_1/order-1", Deadline.after(30)):
            order.append("a in")
            holding.set()
            await finish.wait()
            order.append("a out")

    async def then() -> None:
        async with b.hold("key_1/order-1", Deadline.after(30)):
            order.append("b in")

    task = asyncio.ensure_future(first())
    await holding.wait()
    second = asyncio.ensure_future(then())
    await asyncio.sleep(0.3)  # it polls; it must still be waiting
    assert not second.done()
    finish.set()
    await task
    await second
    assert order == ["a in", "a out", "b in"]


async def test_a_holder_that_runs_too_long_gets_request_in_progress(
    clients: tuple[aioredis.Redis, aioredis.Redis],
) -> None:
    a, b = RedisLeases(clients[0], wait_s=30), RedisLeases(clients[1], wait_s=0.2)
    async with a.hold("key_1/order-2", Deadline.after(30)):
        with pytest.raises(RequestInProgress) as refused:
            async with b.hold("key_1/order-2", Deadline.after(30)):
                pass
        # Another key's equal request id is another lease.
        async with b.hold("key_2/order-2", Deadline.after(30)):
            pass
    assert refused.value.retry_after is not None
    # Over REST that is a 409 the SDKs may retry, after Retry-After.
    status = to_status(refused.value)
    rest = from_status(status.code, status.details, status.trailing_metadata)
    assert rest.status == 409 and rest.code == "request_in_progress"
    assert rest.headers["Retry-After"] == "2" and "x-should-retry" not in rest.headers
    assert status.code == grpc.StatusCode.ABORTED


async def test_a_dead_holders_lease_expires(
    clients: tuple[aioredis.Redis, aioredis.Redis],
) -> None:
    # A holder that never releases (its replica died) frees the id after the TTL.
    dead = RedisLeases(clients[0], wait_s=30, ttl_s=0.3)
    await dead._acquire("ck:lease:x", "token", 0)
    b = RedisLeases(clients[1], wait_s=5)
    await b._acquire("ck:lease:x", "other", asyncio.get_running_loop().time() + 5)
    assert await clients[1].get("ck:lease:x") == "other"


async def test_redis_down_refuses_before_anything_is_paid(
    redis: RedisServer, clients: tuple[aioredis.Redis, aioredis.Redis]
) -> None:
    leases = RedisLeases(clients[0], wait_s=1)
    await redis.stop()
    with pytest.raises(AuthUnavailable):
        async with leases.hold("key_1/order-3", Deadline.after(5)):
            pass
