"""The test suite's own guarantees (tests/conftest.py): a scrubbed
environment, no connection beyond loopback, and a sandbox put back as it was
between tests."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc
import httpx
import pytest
import uvloop
from chuizi.image.v1 import image_service_pb2 as pb
from chuizi.image.v1 import image_service_pb2_grpc as pb_grpc
from pytest_socket import SocketConnectBlockedError

from server.app import create_grpc_service
from server.providers.bailian_wan import BailianWanSettings
from server.sandbox.azure_flux import SANDBOX_AZURE_FLUX_KEY
from server.sandbox.faults import FaultMode
from server.sandbox.server import SandboxServer
from server.settings import Settings
from tests.support.environment import HERMETIC_VALUES, make_hermetic, scrubbed
from tests.support.sandbox import SandboxBaseline

# Documentation addresses (RFC 5737, RFC 3849): never routed anywhere.
OUTSIDE_V4 = "203.0.113.7"
OUTSIDE_V6 = "2001:db8::7"

# --- the environment --------------------------------------------------------


def test_settings_variables_credentials_and_proxies_are_scrubbed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    planted = {
        "IMAGE_SERVICE_BAILIAN_BASE_URL": "https://example.invalid/api/v1",
        "AWS_PROFILE": "production",
        "AWS_ACCESS_KEY_ID": "AKIAREALKEY",
        "GOOGLE_APPLICATION_CREDENTIALS": "/home/me/key.json",
        "HTTPS_PROXY": "http://proxy.invalid:3128",
        "https_proxy": "http://proxy.invalid:3128",
        "all_proxy": "socks5://proxy.invalid:1080",
        "NO_PROXY": "internal.invalid",
    }
    for name, value in planted.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("PATH_THAT_STAYS", "kept")

    make_hermetic(monkeypatch)

    assert not [name for name in os.environ if name in planted]
    assert os.environ["PATH_THAT_STAYS"] == "kept"
    for name, value in HERMETIC_VALUES.items():
        assert os.environ[name] == value
    # A subprocess inherits the scrubbed environment.
    seen = subprocess.run(
        [sys.executable, "-c", "import os; print('\\n'.join(os.environ))"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.split()
    assert not [name for name in seen if scrubbed(name) and name not in HERMETIC_VALUES]


def test_every_test_starts_scrubbed() -> None:
    leaked = [name for name in os.environ if scrubbed(name) and name not in HERMETIC_VALUES]
    assert leaked == []
    assert not Path(os.environ["AWS_SHARED_CREDENTIALS_FILE"]).exists()


# --- the network kill-switch --------------------------------------------------


@pytest.mark.parametrize("address", [OUTSIDE_V4, OUTSIDE_V6])
def test_a_blocking_connect_outside_loopback_is_refused(address: str) -> None:
    with (
        pytest.warns(UserWarning, match=address),
        pytest.raises(SocketConnectBlockedError),
    ):
        socket.create_connection((address, 443), timeout=5)


def _skip_unless_the_guard_can_see() -> None:
    # `--event-loop=uvloop`: libuv connects in C, past pytest-socket's patch
    # of Python's socket module, so the guard is checked on asyncio's loop.
    if isinstance(asyncio.get_running_loop(), uvloop.Loop):
        pytest.skip("pytest-socket cannot see uvloop's connects")


async def test_an_asyncio_connect_outside_loopback_is_refused() -> None:
    _skip_unless_the_guard_can_see()
    with (
        pytest.warns(UserWarning, match=OUTSIDE_V4),
        pytest.raises(SocketConnectBlockedError),
    ):
        await asyncio.wait_for(asyncio.open_connection(OUTSIDE_V4, 443), 5)


async def test_loopback_stays_open() -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"ok")
        await writer.drain()
        writer.close()

    for host in ("127.0.0.1", "::1"):
        server = await asyncio.start_server(answer, host, 0)
        port = server.sockets[0].getsockname()[1]
        try:
            reader, writer = await asyncio.open_connection(host, port)
            assert await reader.read() == b"ok"
            writer.close()
            await writer.wait_closed()
        finally:
            server.close()
            await server.wait_closed()


@pytest.fixture
def cloud_resolves_to_outside(monkeypatch: pytest.MonkeyPatch) -> str:
    """Make Bailian's default host (the real cloud) resolve, as it would on a
    machine with internet, to an address outside loopback."""
    host = urlsplit(BailianWanSettings().base_url).hostname
    assert host is not None and host.endswith(".aliyuncs.com")
    real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(name: Any, *args: Any, **kwargs: Any) -> Any:
        return real_getaddrinfo(OUTSIDE_V4 if name == host else name, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return host


@pytest.fixture
async def bailian_on_its_default_url(tmp_path: Path) -> AsyncIterator[pb_grpc.ImageServiceStub]:
    """The service with a Bailian key and nothing else: its base URL is the
    default, the real cloud."""
    settings = Settings(
        grpc_host="127.0.0.1",
        grpc_port=0,
        bailian_api_key="sk-not-a-real-key",
        local_storage_dir=tmp_path / "media",
        upstream_attempts=1,
        # Called without an API key (tests/auth covers keys).
        auth="none",
    )
    service = await create_grpc_service(settings)
    port = await service.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield pb_grpc.ImageServiceStub(channel)
    finally:
        await service.stop(0)


async def test_the_bailian_default_url_is_never_reached(
    cloud_resolves_to_outside: str, bailian_on_its_default_url: pb_grpc.ImageServiceStub
) -> None:
    _skip_unless_the_guard_can_see()
    request = pb.GenerateRequest(model="bailian/wan2.7-image", prompt="a fox", n=1)
    with (
        pytest.warns(UserWarning, match=OUTSIDE_V4),
        pytest.raises(grpc.aio.AioRpcError),
    ):
        await bailian_on_its_default_url.Generate(request, timeout=30)


# --- the shared sandbox -------------------------------------------------------


async def test_the_sandbox_is_put_back_after_a_test() -> None:
    async with SandboxServer("127.0.0.1", 0) as sandbox:
        baseline = SandboxBaseline(sandbox)
        flux, mai, wan = sandbox.azure_flux, sandbox.azure_mai, sandbox.bailian_wan
        received = flux.received
        async with httpx.AsyncClient(base_url=sandbox.base_url, timeout=10) as client:
            # A request left hanging in the emulator by a test that moved on.
            flux.faults.push(FaultMode.TIMEOUT)
            hung = asyncio.create_task(
                client.post(
                    "/providers/blackforestlabs/v1/flux-2-pro",
                    params={"api-version": "preview"},
                    json={"prompt": "x"},
                    headers={"Authorization": f"Bearer {SANDBOX_AZURE_FLUX_KEY}"},
                )
            )
            await flux.faults.wait_for(lambda stats: stats.in_flight == 1)
            flux.faults.push(FaultMode.SERVER_ERROR, times=3)
            flux.api_key = "rotated"
            flux.faults.latencies = [0.5]
            flux.faults.default_latency = 0.2
            mai.requests_per_minute = 2
            mai.deployments["extra"] = "Extra"
            sandbox.vertex_imagen.require_auth = True
            wan.pending_fraction = 0.9
            wan.stats.submits = 4

            await baseline.restore()

            assert (await hung).status_code == 503
        assert flux.api_key == SANDBOX_AZURE_FLUX_KEY
        assert (flux.faults.pending, flux.faults.latencies) == (0, [])
        assert flux.faults.default_latency == 0.0
        stats = flux.faults.stats
        assert (stats.received, stats.in_flight, stats.completed, stats.cancelled) == (0, 0, 0, 0)
        assert flux.received is received and len(received) == 0
        assert mai.requests_per_minute is None and "extra" not in mai.deployments
        assert sandbox.vertex_imagen.require_auth is False
        assert wan.pending_fraction == 0.2 and wan.stats.submits == 0
        # And it still serves.
        async with httpx.AsyncClient(base_url=sandbox.base_url, timeout=10) as client:
            assert (await client.get("/healthz")).text == "ok"
