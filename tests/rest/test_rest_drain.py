"""`image-service rest` on SIGTERM: readiness flips first, requests in flight
finish within the grace period, and what cannot finish gets an OpenAI 503.

Before the drain, uvicorn's 1 s graceful timeout answered every request
still in flight with a plain-text 500, and /readyz was never 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from typing import Any

import grpc
import httpx
import pytest
from chuizi.image.v1 import image_service_pb2 as pb
from chuizi.image.v1 import image_service_pb2_grpc as pb_grpc
from google.protobuf import message as protobuf_message
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from tests.rest.conftest import Context, FakeImageService, sample_generation, sample_image
from tests.rest.rest_process import RestProcess, rest_process

pytestmark = pytest.mark.spawns_processes

BODY = {"model": "azure/flux-kontext-pro", "prompt": "a fox"}


class HeldService(FakeImageService):  # type: ignore[misc]
    """Every Generate / StreamGenerate waits for `release`."""

    def __init__(self, expected: int) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.all_started = asyncio.Event()
        self._expected = expected
        self.unary = self._held_unary
        self.stream = self._held_stream

    def _arrived(self) -> None:
        if len(self.calls) >= self._expected:
            self.all_started.set()

    async def _held_unary(
        self, method: str, request: Any, context: Context
    ) -> protobuf_message.Message:
        self._arrived()
        await self.release.wait()
        return sample_generation(1)

    async def _held_stream(
        self, method: str, request: Any, context: Context
    ) -> AsyncIterator[protobuf_message.Message]:
        yield pb.StreamGenerateResponse(image=sample_image(0))
        self._arrived()
        await self.release.wait()
        yield pb.StreamGenerateResponse(generation=sample_generation(1))


@contextlib.asynccontextmanager
async def sidecar_process(service: HeldService, grace_s: float) -> AsyncIterator[RestProcess]:
    """`image-service rest` in front of `service` (which also reports SERVING)."""
    server = grpc.aio.server()
    pb_grpc.add_ImageServiceServicer_to_server(service, server)
    health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    try:
        async with rest_process(
            f"127.0.0.1:{port}", {"IMAGE_SERVICE_REST_SHUTDOWN_GRACE_S": str(grace_s)}
        ) as rest:
            yield rest
    finally:
        await server.stop(0)


def _client(base_url: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=base_url,
        timeout=60,
        limits=httpx.Limits(max_connections=100, max_keepalive_connections=100),
    )


async def test_sigterm_flips_readiness_then_lets_requests_in_flight_finish() -> None:
    in_flight = 20
    service = HeldService(expected=in_flight)
    async with sidecar_process(service, grace_s=60) as rest, _client(rest.base_url) as http:
        assert (await http.get("/readyz")).status_code == 200
        requests = [
            asyncio.ensure_future(http.post("/v1/images/generations", json=BODY))
            for _ in range(in_flight)
        ]
        await asyncio.wait_for(service.all_started.wait(), 30)
        rest.process.send_signal(signal.SIGTERM)
        # Readiness answers 503 while the requests are still running...
        ready = await http.get("/readyz")
        assert (ready.status_code, ready.json()) == (503, {"status": "draining"})
        # ...and they run past uvicorn's old 1 s cut-off, then finish.
        await asyncio.sleep(1.5)
        assert not any(request.done() for request in requests)
        service.release.set()
        responses = await asyncio.gather(*requests)
        assert [r.status_code for r in responses] == [200] * in_flight
        assert await asyncio.wait_for(rest.process.wait(), 30) == 0


async def test_what_cannot_finish_in_the_grace_gets_an_openai_503() -> None:
    service = HeldService(expected=4)
    async with sidecar_process(service, grace_s=0.5) as rest, _client(rest.base_url) as http:
        unary = [
            asyncio.ensure_future(http.post("/v1/images/generations", json=BODY)) for _ in range(3)
        ]
        stream = asyncio.ensure_future(
            http.post("/v1/images/generations", json={**BODY, "stream": True})
        )
        await asyncio.wait_for(service.all_started.wait(), 30)
        rest.process.send_signal(signal.SIGTERM)
        for response in await asyncio.gather(*unary):
            assert response.status_code == 503
            assert response.headers["retry-after"] == "1"
            assert response.json()["error"] == {
                "message": "The server is shutting down; retry the request.",
                "type": "server_error",
                "param": None,
                "code": "shutting_down",
            }
        events = (await stream).text
        assert "event: image_generation.completed" in events
        assert events.rstrip().endswith('"code":"shutting_down"}}')
        assert await asyncio.wait_for(rest.process.wait(), 30) == 0
    # The upstream calls were cancelled, not left running.
    assert sorted(service.cancelled) == ["Generate"] * 3 + ["StreamGenerate"]


@pytest.mark.parametrize("grace", ["-1", "soon"])
def test_grace_must_be_a_non_negative_number(grace: str) -> None:
    from pydantic import ValidationError

    from server.settings import Settings

    with pytest.raises(ValidationError):
        Settings(rest_shutdown_grace_s=grace)


async def _until_active_requests(base_url: str, method: str, count: int) -> None:
    """Wait until the sidecar's `/metrics` counts `count` `method` requests in progress."""
    line = f'http_server_active_requests{{http_request_method="{method}"}} {float(count)}'
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as http:
        for _ in range(600):
            if line in (await http.get("/metrics")).text:
                return
            await asyncio.sleep(0.05)
    raise AssertionError(f"the sidecar never had {count} {method} request(s) in progress")


async def test_an_upload_still_arriving_when_the_grace_ends_gets_the_503_too() -> None:
    # A request whose body is still arriving waits on its client, not on the
    # service, so nothing told it to stop: uvicorn cut it off with a plain 500.
    service = HeldService(expected=1)
    async with sidecar_process(service, grace_s=0.2) as rest:
        url = httpx.URL(rest.base_url)
        reader, writer = await asyncio.open_connection(url.host, url.port)
        try:
            head = (
                "POST /v1/images/generations HTTP/1.1\r\n"
                f"Host: {url.host}\r\n"
                "Content-Type: application/json\r\n"
                "Content-Length: 100000\r\n\r\n"
                '{"model": "azure/flux-kontext-pro", "prompt": "'
            )
            writer.write(head.encode())
            await writer.drain()
            # SIGTERM only once the sidecar has the request: sent earlier, on
            # a busy machine the connection could still be in the listen
            # backlog when the listener closed, and was reset instead.
            await _until_active_requests(rest.base_url, "POST", 1)
            rest.process.send_signal(signal.SIGTERM)
            answer = await asyncio.wait_for(reader.read(), 60)
        finally:
            writer.close()
        status_line, _, rest_of_answer = answer.partition(b"\r\n")
        assert status_line == b"HTTP/1.1 503 Service Unavailable"
        assert b'"code":"shutting_down"' in rest_of_answer
        assert b"retry-after: 1" in rest_of_answer.lower()
        assert await asyncio.wait_for(rest.process.wait(), 30) == 0
