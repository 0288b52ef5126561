"""A real gRPC service on port 0, its sandbox emulators and its media server."""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from chuizi.image.v1 import image_service_pb2_grpc as pb_grpc
from google.rpc import error_details_pb2, status_pb2
from starlette.applications import Starlette

from server.app import GrpcService, create_grpc_service
from server.asgi import AsgiServer
from server.sandbox.server import SandboxServer
from server.settings import Settings
from server.storage.media_http import media_mount

CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
]


@dataclass
class Stack:
    """Everything a test needs to drive and observe the running service."""

    service: GrpcService
    sandbox: SandboxServer
    media: AsgiServer
    stub: pb_grpc.ImageServiceStub
    channel: grpc.aio.Channel
    target: str
    media_dir: pathlib.Path


def settings_for(
    sandbox: SandboxServer, media_dir: pathlib.Path, media_url: str, **changes: Any
) -> Settings:
    values: dict[str, Any] = {
        **sandbox.settings_overrides(),
        "grpc_host": "127.0.0.1",
        "grpc_port": 0,
        "local_storage_dir": media_dir,
        "local_public_base_url": media_url,
        "upstream_backoff_base_s": 0.01,
        "upstream_backoff_max_s": 0.05,
        "shutdown_grace_s": 1.0,
    }
    values.update(changes)
    return Settings(**values)


@pytest.fixture
async def sandbox() -> AsyncIterator[SandboxServer]:
    async with SandboxServer("127.0.0.1", 0) as running:
        yield running


@pytest.fixture
async def stack(sandbox: SandboxServer, tmp_path: pathlib.Path) -> AsyncIterator[Stack]:
    media_dir = tmp_path / "media"
    media = AsgiServer(Starlette(routes=[media_mount(media_dir)]))
    await media.start()
    service = await create_grpc_service(settings_for(sandbox, media_dir, f"{media.base_url}/media"))
    await service.start()
    target = f"127.0.0.1:{service.port}"
    channel = grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
    try:
        yield Stack(
            service, sandbox, media, pb_grpc.ImageServiceStub(channel), channel, target, media_dir
        )
    finally:
        await channel.close()
        await service.stop(0)
        await media.stop()


@dataclass
class ErrorDetails:
    code: grpc.StatusCode
    message: str
    reason: str
    metadata: dict[str, str]
    violations: list[tuple[str, str]]
    retry_delay_s: float | None


def details_of(error: grpc.aio.AioRpcError) -> ErrorDetails:
    """The google.rpc.Status details the server attached to `error`."""
    raw = dict(error.trailing_metadata() or ()).get("grpc-status-details-bin")
    assert raw is not None, f"no status details on {error.code()}: {error.details()}"
    status = status_pb2.Status.FromString(raw)
    info = error_details_pb2.ErrorInfo()
    bad = error_details_pb2.BadRequest()
    retry = error_details_pb2.RetryInfo()
    found_retry = False
    for detail in status.details:
        if detail.Is(info.DESCRIPTOR):
            detail.Unpack(info)
        elif detail.Is(bad.DESCRIPTOR):
            detail.Unpack(bad)
        elif detail.Is(retry.DESCRIPTOR):
            detail.Unpack(retry)
            found_retry = True
    return ErrorDetails(
        code=error.code(),
        message=error.details() or "",
        reason=info.reason,
        metadata=dict(info.metadata),
        violations=[(v.field, v.description) for v in bad.field_violations],
        retry_delay_s=(
            retry.retry_delay.seconds + retry.retry_delay.nanos / 1e9 if found_retry else None
        ),
    )
