"""Fixtures for the REST sidecar: a sidecar in front of a scripted fake gRPC
service (`fake`), and one in front of the real service and sandbox (`stack`).

Both run every server on 127.0.0.1 port 0 on the session's event loop; the
real one uses the session's sandbox (the root conftest's `sandbox`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from chuizi.image.v1 import image_service_pb2 as pb
from chuizi.image.v1 import image_service_pb2_grpc as pb_grpc
from google.protobuf import message as protobuf_message
from opentelemetry.trace import Tracer

from server.asgi import AsgiServer
from server.rest import create_app, open_channel
from server.sandbox.server import SandboxServer
from server.settings import Settings

# Not a real PNG: the sidecar never decodes images, it only relays bytes.
FAKE_IMAGE = b"\x89PNG\r\n\x1a\n fake image bytes \x00\xff"


def sample_image(index: int = 0, *, data: bytes = b"", stored: bool = True) -> pb.Image:
    return pb.Image(
        index=index,
        url=f"https://media.test/images/gen-0123456789abcdef-{index}.png" if stored else "",
        data=data,
        mime_type="image/png",
        width=1024,
        height=1024,
        stored=stored,
    )


def sample_generation(n: int = 1, *, inline: bool = False) -> pb.Generation:
    return pb.Generation(
        generation_id="gen-0123456789abcdef",
        model="azure/flux-kontext-pro",
        operation=pb.OPERATION_GENERATE,
        prompt="a fox",
        size="1024x1024",
        n=n,
        created=1712000000,
        images=[sample_image(i, data=FAKE_IMAGE if inline else b"") for i in range(n)],
        cost=f"{0.05 * n:.8f}",
        latency_ms=8500,
    )


@dataclass
class Received:
    """One call the fake service got."""

    method: str
    request: protobuf_message.Message
    metadata: dict[str, str]
    time_remaining: float | None


Context = grpc.aio.ServicerContext[Any, Any]
UnaryBehaviour = Callable[[str, Any, Context], Awaitable[protobuf_message.Message]]
StreamBehaviour = Callable[[str, Any, Context], AsyncIterator[protobuf_message.Message]]


async def _default_unary(method: str, request: Any, context: Context) -> protobuf_message.Message:
    if method == "ListModels":
        return pb.ListModelsResponse(
            models=[
                pb.Model(
                    name="azure/flux-kontext-pro",
                    provider="Azure (FLUX)",
                    max_size="1440x1440",
                    sizes=["1024x1024"],
                    images_per_call=1,
                    max_images_per_request=4,
                    operations=[pb.OPERATION_GENERATE, pb.OPERATION_PROMPT_EDIT],
                    price_per_image="0.05000000",
                    configured=True,
                    description="Flux Kontext Pro",
                )
            ]
        )
    n = getattr(request, "n", 0) or 1
    inline = getattr(request, "response_format", 0) == pb.RESPONSE_FORMAT_INLINE
    return sample_generation(n, inline=inline)


async def _default_stream(
    method: str, request: Any, context: Context
) -> AsyncIterator[protobuf_message.Message]:
    message = pb.StreamGenerateResponse if method == "StreamGenerate" else pb.StreamEditResponse
    n = request.n or 1
    inline = request.response_format == pb.RESPONSE_FORMAT_INLINE
    for i in reversed(range(n)):  # finish order, not index order
        yield message(image=sample_image(i, data=FAKE_IMAGE if inline else b""))
    yield message(generation=sample_generation(n))


@dataclass
class FakeImageService(pb_grpc.ImageServiceServicer):  # type: ignore[misc]
    """A scripted ImageService: set `unary` / `stream` to change what it does.

    It records every call and which calls were cancelled by the client.
    """

    calls: list[Received] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    started: asyncio.Event = field(default_factory=asyncio.Event)
    cancel_seen: asyncio.Event = field(default_factory=asyncio.Event)
    unary: UnaryBehaviour = _default_unary
    stream: StreamBehaviour = _default_stream

    def _record(self, method: str, request: Any, context: Context) -> None:
        metadata = {key: value for key, value in context.invocation_metadata() or ()}
        self.calls.append(Received(method, request, metadata, context.time_remaining()))
        self.started.set()

    async def _unary(self, method: str, request: Any, context: Context) -> Any:
        self._record(method, request, context)
        try:
            return await self.unary(method, request, context)
        except asyncio.CancelledError:
            self.cancelled.append(method)
            self.cancel_seen.set()
            raise

    async def _stream(self, method: str, request: Any, context: Context) -> AsyncIterator[Any]:
        self._record(method, request, context)
        try:
            async for message in self.stream(method, request, context):
                yield message
        except asyncio.CancelledError:
            self.cancelled.append(method)
            self.cancel_seen.set()
            raise

    async def Generate(self, request: Any, context: Context) -> Any:
        return await self._unary("Generate", request, context)

    async def Edit(self, request: Any, context: Context) -> Any:
        return await self._unary("Edit", request, context)

    async def ListModels(self, request: Any, context: Context) -> Any:
        return await self._unary("ListModels", request, context)

    async def GetGeneration(self, request: Any, context: Context) -> Any:
        return await self._unary("GetGeneration", request, context)

    # grpc.aio serves a streaming method as one only if it is itself an
    # async generator function.
    async def StreamGenerate(self, request: Any, context: Context) -> AsyncIterator[Any]:
        async for message in self._stream("StreamGenerate", request, context):
            yield message

    async def StreamEdit(self, request: Any, context: Context) -> AsyncIterator[Any]:
        async for message in self._stream("StreamEdit", request, context):
            yield message


@dataclass
class FakeStack:
    service: FakeImageService
    sidecar: AsgiServer
    settings: Settings
    # The fake gRPC service's host:port.
    target: str

    @property
    def base_url(self) -> str:
        return self.sidecar.base_url


@pytest.fixture
def rest_settings() -> Settings:
    """Settings for the sidecar under test; tests may replace fields first."""
    return Settings(rest_upstream_timeout_s=120.0, rest_max_upload_bytes=2 * 1024 * 1024)


@contextlib.asynccontextmanager
async def fake_service() -> AsyncIterator[tuple[FakeImageService, str]]:
    """A running `FakeImageService` on 127.0.0.1 port 0, and its host:port."""
    service = FakeImageService()
    server = grpc.aio.server()
    pb_grpc.add_ImageServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield service, f"127.0.0.1:{port}"
    finally:
        await server.stop(0)


@pytest.fixture
async def fake(rest_settings: Settings) -> AsyncIterator[FakeStack]:
    """A sidecar in front of `FakeImageService`."""
    async with fake_service() as (service, target), sidecar_for(target, rest_settings) as sidecar:
        yield FakeStack(service, sidecar, rest_settings, target)


@contextlib.asynccontextmanager
async def sidecar_for(
    target: str, settings: Settings, *, tracer: Tracer | None = None
) -> AsyncIterator[AsgiServer]:
    """A running sidecar (its own channel) in front of the gRPC service at
    `target`, tracing its requests with `tracer` if given."""
    channel = open_channel(settings, target)
    sidecar = AsgiServer(create_app(channel, settings, tracer=tracer))
    await sidecar.start()
    try:
        yield sidecar
    finally:
        await sidecar.stop()
        await channel.close()


@dataclass
class RealStack:
    sidecar: AsgiServer
    sandbox: SandboxServer
    settings: Settings
    # The real gRPC service's host:port.
    grpc_target: str

    @property
    def base_url(self) -> str:
        return self.sidecar.base_url


@pytest.fixture
async def stack(sandbox: SandboxServer, tmp_path: Path) -> AsyncIterator[RealStack]:
    """The sidecar in front of the real gRPC service, whose backends talk to
    the session's sandbox emulators; images go to a local directory."""
    from server.app import create_grpc_service

    settings = Settings(
        **sandbox.settings_overrides(),
        grpc_host="127.0.0.1",
        grpc_port=0,
        metrics_host="127.0.0.1",
        metrics_port=0,
        local_storage_dir=tmp_path / "media",
        local_public_base_url="https://media.test/media",
        # Faults injected in the sandbox reach the caller without retries.
        upstream_attempts=1,
        storage_attempts=1,
        rest_upstream_timeout_s=60.0,
        rest_max_upload_bytes=4 * 1024 * 1024,
        # Authentication has its own tests (tests/auth); these call without a key.
        auth="none",
    )
    service = await create_grpc_service(settings)
    port = await service.start()
    try:
        async with sidecar_for(f"127.0.0.1:{port}", settings) as sidecar:
            yield RealStack(sidecar, sandbox, settings, f"127.0.0.1:{port}")
    finally:
        await service.stop(0)
