"""The service over a running sandbox: what the `stack` fixture
(tests/rpc/conftest.py) yields, and `running_stack` for tests that need other
settings or a second service on the same sandbox."""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import grpc
from chuizi.image.v1 import image_service_pb2_grpc as pb_grpc
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
        "metrics_host": "127.0.0.1",
        "metrics_port": 0,
        "local_storage_dir": media_dir,
        "local_public_base_url": media_url,
        "upstream_backoff_base_s": 0.01,
        "upstream_backoff_max_s": 0.05,
        "shutdown_grace_s": 1.0,
        # Authentication has its own tests (tests/auth); these call without a key.
        "auth": "none",
    }
    values.update(changes)
    return Settings(**values)


@asynccontextmanager
async def running_stack(
    sandbox: SandboxServer, tmp_path: pathlib.Path, **changes: Any
) -> AsyncIterator[Stack]:
    """The service (with `changes` to its settings) and a media server, over `sandbox`."""
    media_dir = tmp_path / "media"
    media = AsgiServer(Starlette(routes=[media_mount(media_dir)]))
    await media.start()
    service = await create_grpc_service(
        settings_for(sandbox, media_dir, f"{media.base_url}/media", **changes)
    )
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
