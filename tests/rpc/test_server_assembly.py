"""`GrpcServer.build` on its own: what it binds and what it serves, over real
sockets, without backends or emulators."""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from server.domain.backends import Backends
from server.domain.catalogue import Catalogue
from server.domain.orchestrator import Orchestrator
from server.domain.retry import RetryPolicy
from server.netloc import host_port
from server.rpc.server import GrpcServer
from server.settings import Settings
from server.storage.local import LocalDirectoryStore


@pytest.fixture
def orchestrator(tmp_path: pathlib.Path) -> Orchestrator:
    return Orchestrator(
        Catalogue.load(),
        Backends({}),
        LocalDirectoryStore(tmp_path, "http://127.0.0.1:1/media"),
        storage_retry=RetryPolicy(attempts=1, base_delay=0.01, max_delay=0.01),
        default_deadline_s=5,
    )


def _settings(**changes: Any) -> Settings:
    return Settings(**{"grpc_host": "127.0.0.1", "grpc_port": 0, **changes})


async def _reflection_names(channel: grpc.aio.Channel) -> list[str]:
    call = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
    )
    response = await call.read()
    call.cancel()
    return [s.name for s in response.list_services_response.service]


@pytest.fixture
async def running(orchestrator: Orchestrator) -> AsyncIterator[tuple[GrpcServer, grpc.aio.Channel]]:
    server = GrpcServer.build(_settings(), orchestrator)
    await server.start()
    channel = grpc.aio.insecure_channel(host_port("127.0.0.1", server.port))
    try:
        yield server, channel
    finally:
        await channel.close()
        await server.drain(0)


async def test_serves_health_and_reflection_by_default(
    running: tuple[GrpcServer, grpc.aio.Channel],
) -> None:
    _, channel = running
    health = health_pb2_grpc.HealthStub(channel)
    checked = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert checked.status == health_pb2.HealthCheckResponse.SERVING
    assert set(await _reflection_names(channel)) == {
        "chuizi.image.v1.ImageService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }


async def test_reflection_can_be_turned_off(orchestrator: Orchestrator) -> None:
    server = GrpcServer.build(_settings(reflection=False), orchestrator)
    await server.start()
    async with grpc.aio.insecure_channel(host_port("127.0.0.1", server.port)) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _reflection_names(channel)
        assert caught.value.code() is grpc.StatusCode.UNIMPLEMENTED
    await server.drain(0)


async def test_a_taken_port_fails_loudly_instead_of_sharing_it(
    running: tuple[GrpcServer, grpc.aio.Channel], orchestrator: Orchestrator
) -> None:
    # grpc.so_reuseport is off: a second server must not split the traffic.
    server, _ = running
    with pytest.raises(RuntimeError, match="Failed to bind"):
        GrpcServer.build(_settings(grpc_port=server.port), orchestrator)


def test_host_port_brackets_ipv6_literals() -> None:
    assert host_port("::", 50051) == "[::]:50051"
    assert host_port("0.0.0.0", 50051) == "0.0.0.0:50051"
