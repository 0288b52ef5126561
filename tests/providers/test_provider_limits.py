"""LimitedBackend: concurrency and rate limits, over real sockets against the
MAI emulator, and how the registry applies them from settings."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import pytest

from server.domain.catalogue import Catalogue, ModelSpec
from server.domain.deadline import Deadline
from server.domain.errors import RateLimited
from server.domain.ports import UpstreamCall, UpstreamResult
from server.domain.requests import Size
from server.providers._shared.limits import LimitedBackend, limited
from server.providers.azure_mai.backend import AzureMaiBackend
from server.providers.registry import build_backends, load_plugin
from server.sandbox.azure_mai import AzureMaiEmulator
from server.sandbox.server import SandboxServer
from server.settings import Settings
from tests.providers.backends import azure_mai
from tests.providers.conftest import backend_fixture

MAI = Catalogue.load().get("azure/mai-image-2")
BACKEND_KEYS = ("azure_flux", "azure_mai", "vertex_imagen", "bailian_wan", "bedrock_stability")


@pytest.fixture
def emulator(sandbox: SandboxServer) -> AzureMaiEmulator:
    return sandbox.azure_mai


mai = backend_fixture(azure_mai)


def call(model: ModelSpec = MAI, seed: int = 0) -> UpstreamCall:
    return UpstreamCall(model=model, prompt=f"fox {seed}", size=Size(1024, 1024), count=1)


async def burst(backend: LimitedBackend | AzureMaiBackend, count: int, deadline_s: float) -> None:
    results = await asyncio.gather(
        *(backend.run(call(seed=i), Deadline.after(deadline_s)) for i in range(count))
    )
    assert all(len(result.images) == 1 for result in results)


async def test_a_burst_queues_inside_the_rate_instead_of_drawing_429s(
    mai: AzureMaiBackend, emulator: AzureMaiEmulator
) -> None:
    # The deployment takes 2 requests per 1.6 s; the limiter allows 2 per 2 s
    # (the margin absorbs how late a request on a fresh connection arrives).
    # The second pair goes at 2 s; a limiter that waited a window too many
    # would send it at 4 s, which the upper bound tells apart with room for
    # a busy machine.
    emulator.requests_per_minute, emulator.rate_window_s = 2, 1.6
    backend = LimitedBackend(mai, key="azure_mai", per_minute=2, window_s=2.0)
    started = time.monotonic()

    await burst(backend, 4, deadline_s=10)

    assert 2.0 <= time.monotonic() - started < 3.8
    assert emulator.rate_limited == 0
    arrivals = [r.at for r in emulator.received]
    assert len(arrivals) == 4
    # Never more than 2 within the deployment's window.
    assert all(arrivals[i + 2] - arrivals[i] >= 1.6 for i in range(len(arrivals) - 2))


async def test_without_the_limiter_the_same_burst_hits_429s(
    mai: AzureMaiBackend, emulator: AzureMaiEmulator
) -> None:
    emulator.requests_per_minute, emulator.rate_window_s = 2, 0.8
    await burst(mai, 4, deadline_s=10)
    assert emulator.rate_limited >= 2


async def test_a_turn_after_the_deadline_fails_fast_with_retry_after(
    mai: AzureMaiBackend, emulator: AzureMaiEmulator
) -> None:
    backend = LimitedBackend(mai, key="azure_mai", per_minute=1, window_s=60.0)
    await backend.run(call(), Deadline.after(5))
    started = time.monotonic()

    with pytest.raises(RateLimited) as caught:
        await backend.run(call(), Deadline.after(20))

    # Refused at once: waiting for the deadline would take 20 s, for the turn 60 s.
    assert time.monotonic() - started < 10
    error = caught.value
    assert error.reason == "UPSTREAM_RATE_LIMITED"
    assert error.retry_after is not None and 50.0 < error.retry_after <= 60.0
    assert error.metadata == {
        "upstream": "azure_mai",
        "model": MAI.name,
        "limit": "requests_per_minute",
        "limit_value": "1",
    }
    assert emulator.faults.stats.received == 1


async def test_a_queued_call_completes_when_its_turn_fits_the_deadline(
    mai: AzureMaiBackend, emulator: AzureMaiEmulator
) -> None:
    backend = LimitedBackend(mai, key="azure_mai", per_minute=1, window_s=0.5)
    await backend.run(call(), Deadline.after(5))
    result = await backend.run(call(), Deadline.after(3))
    assert len(result.images) == 1
    first, second = (r.at for r in emulator.received)
    assert second - first >= 0.45


async def test_max_concurrency_one_keeps_one_request_in_flight(
    mai: AzureMaiBackend, emulator: AzureMaiEmulator
) -> None:
    emulator.faults.default_latency = 0.1
    backend = LimitedBackend(mai, key="azure_mai", max_concurrent=1)
    await burst(backend, 4, deadline_s=10)
    assert emulator.faults.stats.max_in_flight == 1
    assert emulator.faults.stats.completed == 4

    emulator.faults.reset()
    await burst(mai, 4, deadline_s=10)  # the control: unlimited
    assert emulator.faults.stats.max_in_flight == 4


async def test_no_concurrency_slot_before_the_deadline_is_rate_limited(
    mai: AzureMaiBackend, emulator: AzureMaiEmulator
) -> None:
    backend = LimitedBackend(mai, key="azure_mai", max_concurrent=1)
    await backend.run(call(), Deadline.after(5))  # a duration sample
    emulator.faults.latencies = [60.0]
    slow = asyncio.create_task(backend.run(call(), Deadline.after(90)))
    await emulator.faults.wait_for(lambda s: s.in_flight == 1)
    started = time.monotonic()

    with pytest.raises(RateLimited) as caught:
        await backend.run(call(), Deadline.after(0.3))

    # It waited for a slot until its deadline, not for the slow call (60 s).
    assert 0.25 <= time.monotonic() - started < 10
    assert caught.value.metadata["limit"] == "max_concurrency"
    assert caught.value.retry_after is not None
    assert emulator.faults.stats.received == 2
    slow.cancel()
    with pytest.raises(asyncio.CancelledError):
        await slow


async def test_cancelling_a_queued_call_gives_back_only_what_it_took(
    mai: AzureMaiBackend, emulator: AzureMaiEmulator
) -> None:
    backend = LimitedBackend(mai, key="azure_mai", max_concurrent=1)
    emulator.faults.latencies = [0.5]
    running = asyncio.create_task(backend.run(call(), Deadline.after(10)))
    await emulator.faults.wait_for(lambda s: s.in_flight == 1)
    queued = asyncio.create_task(backend.run(call(), Deadline.after(10)))
    await asyncio.sleep(0.05)
    queued.cancel()
    with pytest.raises(asyncio.CancelledError):
        await queued
    await running

    # Had the cancelled waiter released a slot it never held, two would run.
    emulator.faults.default_latency = 0.1
    await burst(backend, 3, deadline_s=10)
    assert emulator.faults.stats.max_in_flight == 1
    assert emulator.faults.stats.received == 4


async def test_cancelling_a_call_waiting_for_its_turn_frees_the_turn(
    mai: AzureMaiBackend, emulator: AzureMaiEmulator
) -> None:
    backend = LimitedBackend(mai, key="azure_mai", per_minute=1, window_s=2.0)
    started = time.monotonic()
    await backend.run(call(), Deadline.after(10))
    queued = asyncio.create_task(backend.run(call(), Deadline.after(10)))
    await asyncio.sleep(0.1)
    queued.cancel()
    with pytest.raises(asyncio.CancelledError):
        await queued

    await backend.run(call(), Deadline.after(10))

    # The next call takes the freed turn (2 s in), not the one after it (4 s).
    assert 1.95 <= time.monotonic() - started < 3.8
    assert emulator.faults.stats.received == 2


async def test_cancelling_a_running_call_cancels_the_upstream_request(
    mai: AzureMaiBackend, emulator: AzureMaiEmulator
) -> None:
    backend = LimitedBackend(mai, key="azure_mai", max_concurrent=1, per_minute=10)
    emulator.faults.latencies = [30.0]
    task = asyncio.create_task(backend.run(call(), Deadline.after(60)))
    await emulator.faults.wait_for(lambda s: s.in_flight == 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await emulator.faults.wait_for(lambda s: s.in_flight == 0 and s.cancelled == 1)
    # The slot came back.
    assert len((await backend.run(call(), Deadline.after(5))).images) == 1


async def test_limits_are_per_model(mai: AzureMaiBackend, emulator: AzureMaiEmulator) -> None:
    emulator.deployments["mai-copy"] = "mai-copy"
    other = dataclasses.replace(MAI, name="azure/mai-copy", upstream_id="mai-copy")
    backend = LimitedBackend(mai, key="azure_mai", per_minute=1, window_s=30.0)
    started = time.monotonic()
    await backend.run(call(MAI), Deadline.after(5))
    await backend.run(call(other), Deadline.after(5))
    assert time.monotonic() - started < 10  # not queued behind MAI's turn (30 s)
    with pytest.raises(RateLimited):
        await backend.run(call(MAI), Deadline.after(5))


class _Closing:
    closed = False

    async def run(self, call: UpstreamCall, deadline: Deadline) -> UpstreamResult:
        raise AssertionError("not called")

    async def aclose(self) -> None:
        self.closed = True


async def test_unlimited_is_the_backend_itself_and_close_is_passed_on() -> None:
    inner = _Closing()
    assert limited(inner, key="x", max_concurrent=None, per_minute=None) is inner
    wrapped = limited(inner, key="x", max_concurrent=2, per_minute=None)
    assert isinstance(wrapped, LimitedBackend)
    await wrapped.aclose()
    assert inner.closed
    for bad in ({"max_concurrent": 0}, {"per_minute": 0}, {"window_s": 0.0}):
        with pytest.raises(ValueError):
            LimitedBackend(inner, key="x", **bad)


def _limits(key: str) -> tuple[int | None, int | None]:
    limits = load_plugin(key).load_limits()
    return limits.max_concurrency, limits.requests_per_minute


def test_every_backend_has_both_limit_settings() -> None:
    for key in BACKEND_KEYS:
        # Named after the key, whatever the backend's own prefix.
        assert load_plugin(key).limits_prefix == f"IMAGE_SERVICE_{key.upper()}_"
        assert _limits(key) == (None, None)


def test_limits_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGE_SERVICE_AZURE_FLUX_REQUESTS_PER_MINUTE", "6")
    monkeypatch.setenv("IMAGE_SERVICE_BAILIAN_WAN_MAX_CONCURRENCY", "2")
    assert _limits("azure_flux") == (None, 6)
    assert _limits("bailian_wan") == (2, None)
    monkeypatch.setenv("IMAGE_SERVICE_AZURE_MAI_MAX_CONCURRENCY", "0")
    with pytest.raises(ValueError):
        _limits("azure_mai")


async def test_the_registry_wraps_every_configured_backend_with_its_limits() -> None:
    configured = Settings.model_validate(
        {
            "azure_mai_endpoint": "https://res.services.ai.azure.com",
            "azure_mai_api_key": "k",
            "azure_mai_max_concurrency": 3,
            "azure_mai_requests_per_minute": 9,
            "azure_flux_endpoint": "https://res.services.ai.azure.com",
            "azure_flux_api_key": "k",
        }
    )
    backends, _ = build_backends(configured)
    try:
        mai = backends["azure_mai"]
        assert isinstance(mai, LimitedBackend)
        assert (mai.max_concurrent, mai.per_minute, mai.key) == (3, 9, "azure_mai")
        assert isinstance(mai.inner, AzureMaiBackend)
        # No limits set: the backend as built, unwrapped.
        assert not isinstance(backends["azure_flux"], LimitedBackend)
    finally:
        for backend in backends.values():
            await backend.aclose()
