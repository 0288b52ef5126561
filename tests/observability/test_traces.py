"""One trace per REST request, across both processes and every upstream hop.

The real processes (`image-service serve` and `image-service rest`) export
OTLP/HTTP protobuf to a receiver in this test, which decodes it with
opentelemetry-proto. Each request carries a caller's `traceparent`; its
trace must hold the sidecar's server span (child of the caller's span), the
server's gRPC server span (child of the sidecar's), every upstream
call of the backend (aiohttp HTTP for FLUX, MAI and Wan; the Vertex gRPC
channel; botocore for Bedrock) and the R2 writes (botocore S3 against moto),
all linked parent to child up to the caller.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import re
import secrets
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import httpx
import pytest

from server.sandbox.server import SandboxServer
from tests.observability.otlp_receiver import OtlpReceiver, Span
from tests.observability.s3 import s3_server
from tests.rest.rest_process import rest_process

pytestmark = pytest.mark.spawns_processes

SERVER, CLIENT = 2, 3  # OTLP SpanKind
CLI = str(pathlib.Path(sys.executable).parent / "image-service")

# model -> what its upstream client spans look like
UPSTREAM_KIND = {
    "azure/flux-kontext-pro": "http",
    "azure/mai-image-2": "http",
    "bailian/wan2.7-image": "http",
    "google/imagen-4.0-fast": "grpc",
    "bedrock/stability-stable-image-core": "aws",
}


@pytest.fixture
def moto_url() -> Iterator[str]:
    with s3_server("traces") as url:
        yield url


@pytest.fixture
async def receiver() -> AsyncIterator[OtlpReceiver]:
    running = OtlpReceiver()
    await running.start()
    try:
        yield running
    finally:
        await running.stop()


def _otel_env(endpoint: str) -> dict[str, str]:
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        # Export each batch at once rather than every 5 s.
        "OTEL_BSP_SCHEDULE_DELAY": "50",
    }


@asynccontextmanager
async def serve_process(env: dict[str, str], workdir: pathlib.Path) -> AsyncIterator[str]:
    """`image-service serve` on free ports; yields its gRPC target; SIGTERM at the end."""
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("IMAGE_SERVICE_", "OTEL_"))},
        **env,
    }
    process = await asyncio.create_subprocess_exec(
        CLI,
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        cwd=workdir,
        env=environment,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 60)).decode()
        match = re.search(r"serving gRPC on (\S+:\d+)", line)
        assert match, line
        yield match.group(1)
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 30) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def _is_upstream(span: Span, kind: str, sandbox_port: int) -> bool:
    if span.service != "image-service" or span.kind != CLIENT:
        return False
    attributes = span.attributes
    if kind == "http":
        url = str(attributes.get("url.full", attributes.get("http.url", "")))
        return f":{sandbox_port}/" in url
    if kind == "grpc":
        return attributes.get("rpc.system") == "grpc" and "PredictionService" in str(
            attributes.get("rpc.service", "")
        )
    return attributes.get("rpc.system") == "aws-api" and attributes.get("rpc.service") in (
        "Bedrock Runtime",
        "BedrockRuntime",
    )


def _is_storage_write(span: Span) -> bool:
    return (
        span.service == "image-service"
        and span.attributes.get("rpc.system") == "aws-api"
        and span.attributes.get("rpc.method") == "PutObject"
    )


async def test_one_rest_request_is_one_trace_through_every_hop(
    receiver: OtlpReceiver, moto_url: str, tmp_path: pathlib.Path
) -> None:
    endpoint = receiver.endpoint
    async with SandboxServer("127.0.0.1", 0) as sandbox:
        server_env = {
            **{f"IMAGE_SERVICE_{k.upper()}": v for k, v in sandbox.settings_overrides().items()},
            "IMAGE_SERVICE_METRICS_PORT": "0",
            # These calls carry no API key (tests/auth covers keys).
            "IMAGE_SERVICE_AUTH": "none",
            "IMAGE_SERVICE_STORAGE": "r2",
            "IMAGE_SERVICE_R2_ENDPOINT_URL": moto_url,
            "IMAGE_SERVICE_R2_BUCKET": "traces",
            "IMAGE_SERVICE_R2_ACCESS_KEY_ID": "AKIDTRACESTEST000001",
            "IMAGE_SERVICE_R2_SECRET_ACCESS_KEY": "traces-test-secret",
            "IMAGE_SERVICE_R2_PUBLIC_BASE_URL": "https://img.traces.test",
            **_otel_env(endpoint),
        }
        async with (
            serve_process(server_env, tmp_path) as target,
            rest_process(target, env=_otel_env(endpoint)) as sidecar,
            httpx.AsyncClient(base_url=sidecar.base_url, timeout=60) as client,
        ):
            callers: dict[str, tuple[str, str]] = {}
            for model in UPSTREAM_KIND:
                trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
                response = await client.post(
                    "/v1/images/generations",
                    json={"model": model, "prompt": "a trace through every hop"},
                    headers={"traceparent": f"00-{trace_id}-{parent_id}-01"},
                )
                assert response.status_code == 200, (model, response.text)
                callers[model] = (trace_id, parent_id)

            sandbox_port = sandbox.port

            def complete(spans: list[Span]) -> bool:
                for model, (trace_id, _) in callers.items():
                    trace = [s for s in spans if s.trace_id == trace_id]
                    if not any(_is_upstream(s, UPSTREAM_KIND[model], sandbox_port) for s in trace):
                        return False
                    if sum(_is_storage_write(s) for s in trace) < 2:  # image + record
                        return False
                    if not any(
                        s.service == "image-service-rest" and s.kind == SERVER for s in trace
                    ):
                        return False
                return True

            await receiver.wait_for(complete)

    for model, (trace_id, caller_span) in callers.items():
        trace = receiver.trace(trace_id)
        by_id = {span.span_id: span for span in trace}

        def ancestry(span: Span, by_id: dict[str, Span] = by_id) -> list[Span]:
            chain = [span]
            while chain[-1].parent_id in by_id:
                chain.append(by_id[chain[-1].parent_id])
            return chain

        # Every span hangs, through its parents, off the caller's span.
        for span in trace:
            assert ancestry(span)[-1].parent_id == caller_span, (model, span)
        root = [s for s in trace if s.parent_id == caller_span]
        assert [(s.service, s.kind) for s in root] == [("image-service-rest", SERVER)], model
        upstream = [s for s in trace if _is_upstream(s, UPSTREAM_KIND[model], sandbox_port)]
        writes = [s for s in trace if _is_storage_write(s)]
        for span in [*upstream, *writes]:
            hops = [(s.service, s.kind) for s in ancestry(span)]
            # upstream/storage client span ... the gRPC server span, whose
            # parent is the sidecar's HTTP server span.
            assert hops[-2:] == [("image-service", SERVER), ("image-service-rest", SERVER)], (
                model,
                hops,
            )
        grpc_server = [s for s in trace if s.service == "image-service" and s.kind == SERVER]
        assert [s.name for s in grpc_server] == ["/chuizi.image.v1.ImageService/Generate"], model
        # The sidecar makes one span a request: its HTTP server span (no gRPC
        # client span, no per-message `http send` / `http receive` spans).
        sidecar = [(s.name, s.kind) for s in trace if s.service == "image-service-rest"]
        assert sidecar == [("POST /v1/images/generations", SERVER)], (model, sidecar)
