"""FaultPlan bookkeeping and SandboxServer lifecycle."""

from __future__ import annotations

import asyncio
import logging
import time

import httpx
import pytest

from server.domain.catalogue import Catalogue
from server.providers.registry import build_backends
from server.sandbox.azure_flux import SANDBOX_AZURE_FLUX_KEY
from server.sandbox.faults import (
    NO_FAULT,
    Fault,
    FaultMode,
    FaultPlan,
    parse_directives,
    strip_directives,
)
from server.sandbox.server import SandboxServer
from server.settings import Settings


def test_queue_and_latencies_are_consumed_in_order() -> None:
    plan = FaultPlan(default_latency=0.05)
    plan.push(FaultMode.RATE_LIMIT, retry_after=1)
    plan.push(FaultMode.SERVER_ERROR, times=2)
    plan.latencies = [0.8, 0.1]

    steps = [plan.next() for _ in range(4)]

    assert [s.fault.mode for s in steps] == [
        FaultMode.RATE_LIMIT,
        FaultMode.SERVER_ERROR,
        FaultMode.SERVER_ERROR,
        FaultMode.NONE,
    ]
    assert steps[0].fault.retry_after == 1
    assert [s.latency for s in steps] == [0.8, 0.1, 0.05, 0.05]
    assert plan.pending == 0
    assert plan.stats.faults[FaultMode.SERVER_ERROR] == 2


def test_holds_are_consumed_in_order_and_forgotten_on_reset() -> None:
    plan = FaultPlan()
    first, second = plan.hold(), plan.hold()

    assert [plan.next().gate for _ in range(3)] == [first, second, None]
    plan.hold()
    plan.reset()
    assert plan.next().gate is None


async def test_held_requests_answer_in_the_order_they_are_released(
    sandbox: SandboxServer,
) -> None:
    faults = sandbox.azure_flux.faults
    gates = [faults.hold() for _ in range(2)]
    answered: asyncio.Queue[int] = asyncio.Queue()

    async def send(client: httpx.AsyncClient, index: int) -> None:
        response = await client.post(
            "/providers/blackforestlabs/v1/flux-2-pro",
            params={"api-version": "preview"},
            json={"prompt": f"fox {index}", "width": 256, "height": 256},
            headers={"Authorization": f"Bearer {SANDBOX_AZURE_FLUX_KEY}"},
        )
        assert response.status_code == 200
        answered.put_nowait(index)

    async with (
        httpx.AsyncClient(base_url=sandbox.base_url, timeout=10) as client,
        asyncio.TaskGroup() as group,
    ):
        for index in range(2):
            group.create_task(send(client, index))
            await faults.wait_for(lambda s, n=index + 1: s.faults.total() == n)
        await faults.wait_for(lambda s: s.in_flight == 2)
        assert answered.empty()
        gates[1].set()
        assert await asyncio.wait_for(answered.get(), 10) == 1
        assert faults.stats.in_flight == 1
        gates[0].set()
        assert await asyncio.wait_for(answered.get(), 10) == 0


async def test_a_held_request_whose_client_leaves_is_cancelled(sandbox: SandboxServer) -> None:
    faults = sandbox.azure_flux.faults
    faults.hold()
    async with httpx.AsyncClient(base_url=sandbox.base_url, timeout=10) as client:
        request = asyncio.create_task(
            client.post(
                "/providers/blackforestlabs/v1/flux-2-pro",
                params={"api-version": "preview"},
                json={"prompt": "fox"},
                headers={"Authorization": f"Bearer {SANDBOX_AZURE_FLUX_KEY}"},
            )
        )
        await faults.wait_for(lambda s: s.in_flight == 1)
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request
    await faults.wait_for(lambda s: s.cancelled == 1 and s.in_flight == 0)


def test_directives_override_but_still_consume_the_queue() -> None:
    plan = FaultPlan()
    plan.push(FaultMode.SERVER_ERROR)
    step = plan.next("fox [sandbox:fault=content_filter] [sandbox:variant=finish_reason]")
    assert step.fault == Fault(FaultMode.CONTENT_FILTER, None, "finish_reason")
    assert plan.pending == 0
    assert plan.next("fox [sandbox:latency=1.5]").latency == 1.5
    assert plan.next("fox [sandbox:fault=bogus]").fault == NO_FAULT


def test_directive_parsing() -> None:
    prompt = "a fox [sandbox:fault=rate_limit]  in snow [SANDBOX:retry_after=2]"
    assert parse_directives(prompt) == {"fault": "rate_limit", "retry_after": "2"}
    assert strip_directives(prompt) == "a fox in snow"


def test_reset_keeps_the_stats_object() -> None:
    plan = FaultPlan()
    stats = plan.stats
    plan.push(FaultMode.TIMEOUT)
    plan.next()
    stats.received = 3
    plan.reset()
    assert plan.stats is stats
    assert (stats.received, plan.pending, stats.faults.total()) == (0, 0, 0)


def test_push_rejects_zero_times() -> None:
    with pytest.raises(ValueError):
        FaultPlan().push(FaultMode.RATE_LIMIT, times=0)


async def test_port_zero_base_url_and_overrides() -> None:
    async with SandboxServer("127.0.0.1", 0) as sandbox:
        assert sandbox.port > 0
        assert sandbox.base_url == f"http://127.0.0.1:{sandbox.port}"
        async with httpx.AsyncClient() as client:
            health = await client.get(f"{sandbox.base_url}/healthz")
        assert health.text == "ok"
        overrides = sandbox.settings_overrides()
        assert overrides["azure_flux_endpoint"] == sandbox.base_url
        assert overrides["azure_flux_api_key"] == SANDBOX_AZURE_FLUX_KEY
        assert sandbox.emulator("azure_flux") is sandbox.azure_flux
        # The sandbox configures every backend the catalogue names.
        catalogue_backends = {model.backend for model in Catalogue.load()}
        backends, missing = build_backends(Settings(**overrides), catalogue_backends)
        try:
            assert missing == {}
            assert set(backends) == catalogue_backends
        finally:
            for backend in backends.values():
                await backend.aclose()
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient() as client:
            await client.get(f"{sandbox.base_url}/healthz")


async def test_start_and_stop_are_quiet(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="uvicorn"):
        async with SandboxServer():
            pass
    assert not [r for r in caplog.records if r.name.startswith("uvicorn")]


async def test_stop_releases_hanging_requests() -> None:
    sandbox = SandboxServer()
    await sandbox.start()
    sandbox.azure_flux.faults.push(FaultMode.TIMEOUT)
    async with httpx.AsyncClient(base_url=sandbox.base_url, timeout=30) as client:
        request = asyncio.create_task(
            client.post(
                "/providers/blackforestlabs/v1/flux-2-pro",
                params={"api-version": "preview"},
                json={"prompt": "x"},
                headers={"Authorization": f"Bearer {SANDBOX_AZURE_FLUX_KEY}"},
            )
        )
        await sandbox.azure_flux.faults.wait_for(lambda s: s.in_flight == 1)
        started = time.monotonic()
        await sandbox.stop()
        response = await request
    assert response.status_code == 503
    assert time.monotonic() - started < 10  # answered at the stop, not when the hold ends


async def test_restart_after_stop() -> None:
    sandbox = SandboxServer()
    for _ in range(2):
        await sandbox.start()
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"{sandbox.base_url}/healthz")).status_code == 200
        await sandbox.stop()
