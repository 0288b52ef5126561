"""Provider limits shared through a real redis-server: two limiter instances
(as two replicas would hold) over one Redis obey one concurrency and one rate
limit; with Redis gone they fall back to per-process limits."""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio as aioredis

from server.auth.redis_limits import RedisUpstreamSlots
from server.auth.redis_store import connect
from server.domain.catalogue import Catalogue
from server.domain.deadline import Deadline
from server.domain.errors import RateLimited
from server.domain.ports import ImageBackend, ProducedImage, UpstreamCall, UpstreamResult
from server.domain.requests import Size
from server.providers._shared.limits import limited
from server.providers._shared.shared_limits import Outcome, SharedLimitedBackend, Start
from tests.auth.redis_server import RedisServer, redis_server

FLUX = Catalogue.load().get("azure/flux-kontext-pro")


class Gated:
    """A backend whose calls finish when the test says so."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.started = asyncio.Event()
        self.running = 0
        self.calls = 0

    async def run(self, call: UpstreamCall, deadline: Deadline) -> UpstreamResult:
        self.calls += 1
        self.running += 1
        self.started.set()
        try:
            await self.release.wait()
        finally:
            self.running -= 1
        return UpstreamResult((ProducedImage(b"png"),))

    async def aclose(self) -> None:
        return None


def call() -> UpstreamCall:
    return UpstreamCall(model=FLUX, prompt="a fox", size=Size(1024, 1024), count=1)


@pytest.fixture
async def redis(tmp_path: pathlib.Path) -> AsyncIterator[RedisServer]:
    async with redis_server(tmp_path / "redis") as server:
        yield server


Replicas = Callable[..., tuple[ImageBackend, ImageBackend]]


@pytest.fixture
async def replicas(redis: RedisServer) -> AsyncIterator[Replicas]:
    """Two limited views of one backend, each with its own Redis client."""
    clients: list[aioredis.Redis] = []

    def build(inner: ImageBackend, **limits: int | None) -> tuple[ImageBackend, ImageBackend]:
        built = []
        for _ in range(2):
            clients.append(connect(redis.url))
            built.append(
                limited(
                    inner,
                    key="azure_flux",
                    max_concurrent=limits.get("max_concurrent"),
                    per_minute=limits.get("per_minute"),
                    shared=RedisUpstreamSlots(clients[-1]),
                )
            )
        return built[0], built[1]

    yield build
    for client in clients:
        await client.aclose()


async def test_one_concurrency_slot_across_two_replicas(replicas: Replicas) -> None:
    inner = Gated()
    a, b = replicas(inner, max_concurrent=1)
    holding = asyncio.ensure_future(a.run(call(), Deadline.after(30)))
    await inner.started.wait()
    with pytest.raises(RateLimited) as refused:
        await b.run(call(), Deadline.after(0.3))
    assert refused.value.metadata["limit"] == "max_concurrency"
    assert inner.calls == 1
    # A waiting call gets the slot once the holder finishes.
    waiting = asyncio.ensure_future(b.run(call(), Deadline.after(30)))
    await asyncio.sleep(0.2)  # it polls; it must still be waiting
    assert inner.calls == 1 and not waiting.done()
    inner.release.set()
    await holding
    await waiting
    assert inner.calls == 2


async def test_one_rate_window_across_two_replicas(replicas: Replicas) -> None:
    inner = Gated()
    inner.release.set()
    a, b = replicas(inner, per_minute=2)
    await a.run(call(), Deadline.after(10))
    await b.run(call(), Deadline.after(10))
    with pytest.raises(RateLimited) as refused:
        await a.run(call(), Deadline.after(10))
    assert refused.value.retry_after is not None and 10 < refused.value.retry_after <= 60
    assert inner.calls == 2


async def test_redis_down_falls_back_to_per_process_limits(
    redis: RedisServer, replicas: Replicas, caplog: pytest.LogCaptureFixture
) -> None:
    inner = Gated()
    inner.release.set()
    a, _ = replicas(inner, per_minute=1)
    await redis.stop()
    await a.run(call(), Deadline.after(10))
    assert "per-replica limits apply" in caplog.text
    # The process's own limiter still holds the line: one a minute.
    with pytest.raises(RateLimited):
        await a.run(call(), Deadline.after(5))
    assert inner.calls == 1


@pytest.fixture
async def client(redis: RedisServer) -> AsyncIterator[aioredis.Redis]:
    """A client of the test's redis-server, to take slots and look at them."""
    opened = connect(redis.url)
    yield opened
    await opened.aclose()


@pytest.fixture
def slots(client: aioredis.Redis) -> RedisUpstreamSlots:
    return RedisUpstreamSlots(client, prefix="t:")


async def test_a_start_refused_its_turn_takes_no_slot(
    slots: RedisUpstreamSlots, client: aioredis.Redis
) -> None:
    limits = {"max_concurrent": 1, "slot_ttl_s": 30.0, "per_minute": 1, "window_s": 60.0}
    first = await slots.try_start("m", **limits, max_wait_s=5.0)
    assert first.outcome is Outcome.STARTED and first.slot and first.turn
    assert first.wait_s == 0
    await slots.release("m", first.slot)
    late = await slots.try_start("m", **limits, max_wait_s=5.0)
    assert late.outcome is Outcome.LATE and 55 < late.wait_s <= 60
    assert (late.slot, late.turn) == (None, None)
    assert await client.zcard("t:upstream:running:m") == 0
    assert await client.zcard("t:upstream:rate:m") == 1


async def test_a_start_that_finds_no_slot_reserves_no_turn(
    slots: RedisUpstreamSlots, client: aioredis.Redis
) -> None:
    limits = {"max_concurrent": 1, "slot_ttl_s": 30.0, "per_minute": 10, "window_s": 60.0}
    first = await slots.try_start("m", **limits, max_wait_s=None)
    assert first.outcome is Outcome.STARTED
    busy = await slots.try_start("m", **limits, max_wait_s=None)
    assert busy == Start(Outcome.BUSY)
    assert await client.zcard("t:upstream:rate:m") == 1
    assert await client.zcard("t:upstream:running:m") == 1


async def test_a_cancelled_turn_is_given_back_to_the_next_caller(
    slots: RedisUpstreamSlots, client: aioredis.Redis
) -> None:
    limits = {"max_concurrent": None, "slot_ttl_s": 30.0, "per_minute": 1, "window_s": 60.0}
    await slots.try_start("m", **limits, max_wait_s=None)
    queued = await slots.try_start("m", **limits, max_wait_s=None)
    assert queued.outcome is Outcome.STARTED and queued.turn and 55 < queued.wait_s <= 60
    # The queued call gave up (cancelled while waiting for its turn).
    await slots.cancel_start("m", queued.turn)
    assert await client.zcard("t:upstream:rate:m") == 1
    # So the next caller gets that turn, not the one after it.
    after = await slots.try_start("m", **limits, max_wait_s=None)
    assert 55 < after.wait_s <= 60


async def test_a_limit_not_set_takes_nothing(
    slots: RedisUpstreamSlots, client: aioredis.Redis
) -> None:
    only_rate = await slots.try_start(
        "m", max_concurrent=None, slot_ttl_s=30.0, per_minute=5, window_s=60.0, max_wait_s=None
    )
    assert only_rate.outcome is Outcome.STARTED and only_rate.slot is None and only_rate.turn
    only_slots = await slots.try_start(
        "n", max_concurrent=2, slot_ttl_s=30.0, per_minute=None, window_s=60.0, max_wait_s=None
    )
    assert only_slots.outcome is Outcome.STARTED and only_slots.slot and only_slots.turn is None
    assert await client.exists("t:upstream:running:m", "t:upstream:rate:n") == 0


async def test_a_running_call_keeps_renewing_its_slot_and_gives_it_back(
    client: aioredis.Redis,
) -> None:
    inner = Gated()
    backend = SharedLimitedBackend(
        inner,
        RedisUpstreamSlots(client),
        fallback=inner,
        key="azure_flux",
        max_concurrent=1,
        slot_ttl_s=0.6,  # renewed every 0.2 s
    )
    running = f"ck:upstream:running:azure_flux:{FLUX.name}"
    holding = asyncio.ensure_future(backend.run(call(), Deadline.after(30)))
    await inner.started.wait()
    ((_, first_expiry),) = await client.zrange(running, 0, -1, withscores=True)
    # The lease's expiry moves on while the call runs (polled: a busy loop
    # may renew late, never not at all).
    for _ in range(100):
        await asyncio.sleep(0.1)
        ((_, expiry),) = await client.zrange(running, 0, -1, withscores=True)
        if expiry > first_expiry + 300:  # ms
            break
    assert expiry > first_expiry + 300
    inner.release.set()
    await holding
    assert await client.zcard(running) == 0
