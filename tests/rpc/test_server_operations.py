"""Operating the server: health, graceful drain on SIGTERM, reflection
through the real grpcurl binary."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import pathlib
import signal
import sys

import grpc
import pytest
from chuizi.image.v1 import image_service_pb2 as pb
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.sandbox.server import SandboxServer
from server.settings import Settings
from tests.rpc.conftest import Stack
from tests.rpc.stacks import running_stack
from tests.support.images import png

GRPCURL = pathlib.Path(sys.executable).parent / "grpcurl"
SERVICE = "chuizi.image.v1.ImageService"


async def _health(channel: grpc.aio.Channel, service: str) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    response = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    return int(response.status)


async def test_health_is_serving_then_not_serving_while_draining(stack: Stack) -> None:
    assert await _health(stack.channel, "") == health_pb2.HealthCheckResponse.SERVING
    assert await _health(stack.channel, SERVICE) == health_pb2.HealthCheckResponse.SERVING

    # The upstream answers only once the drain has begun (see below).
    release = stack.sandbox.azure_flux.faults.hold()
    in_flight = asyncio.ensure_future(
        stack.stub.Generate(
            pb.GenerateRequest(model="azure/flux-kontext-pro", prompt="x"), timeout=30
        )
    )
    await stack.sandbox.azure_flux.faults.wait_for(lambda s: s.in_flight == 1)
    # Watch sees the flip while the server drains.
    watch = health_pb2_grpc.HealthStub(stack.channel).Watch(
        health_pb2.HealthCheckRequest(service=SERVICE), timeout=10
    )
    assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
    stopping = asyncio.ensure_future(stack.service.stop(grace=5))
    assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
    release.set()
    generation = await in_flight  # the in-flight RPC finishes during the drain
    assert len(generation.images) == 1
    await stopping


async def _grpcurl(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        str(GRPCURL),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    return process.returncode or 0, out.decode(), err.decode()


@pytest.mark.spawns_processes
async def test_grpcurl_lists_describes_and_invokes_without_proto_files(stack: Stack) -> None:
    code, out, err = await _grpcurl("-plaintext", stack.target, "list")
    assert code == 0, err
    assert SERVICE in out.split() and "grpc.health.v1.Health" in out.split()

    code, out, err = await _grpcurl("-plaintext", stack.target, "describe", SERVICE)
    assert code == 0, err
    for rpc in ("Generate", "StreamGenerate", "Edit", "StreamEdit", "ListModels", "GetGeneration"):
        assert f"rpc {rpc}" in out

    code, out, err = await _grpcurl("-plaintext", stack.target, f"{SERVICE}/ListModels")
    assert code == 0, err
    assert any(m["name"] == "azure/flux-kontext-pro" for m in json.loads(out)["models"])

    request = json.dumps({"model": "azure/flux-kontext-pro", "prompt": "a red fox", "n": 2})
    code, out, err = await _grpcurl(
        "-plaintext", "-d", request, stack.target, f"{SERVICE}/Generate"
    )
    assert code == 0, err
    generation = json.loads(out)
    assert len(generation["images"]) == 2 and generation["cost"] == "0.10000000"

    code, out, err = await _grpcurl(
        "-plaintext",
        "-d",
        json.dumps({"generation_id": generation["generation_id"]}),
        stack.target,
        f"{SERVICE}/GetGeneration",
    )
    assert code == 0, err
    assert json.loads(out)["generation_id"] == generation["generation_id"]

    code, out, err = await _grpcurl(
        "-plaintext", "-d", request, stack.target, f"{SERVICE}/StreamGenerate"
    )
    assert code == 0, err
    assert out.count('"image"') == 2 and out.count('"generation"') == 1

    edit = json.dumps(
        {
            "model": "azure/flux-kontext-pro",
            "prompt": "make it blue",
            "images": [base64.b64encode(png()).decode()],
        }
    )
    code, out, err = await _grpcurl(
        "-plaintext", "-max-msg-sz", str(64 << 20), "-d", edit, stack.target, f"{SERVICE}/Edit"
    )
    assert code == 0, err
    assert json.loads(out)["operation"] == "OPERATION_PROMPT_EDIT"


@pytest.mark.spawns_processes
async def test_grpcurl_shows_error_details(stack: Stack) -> None:
    request = json.dumps({"model": "azure/flux-kontext-pro", "prompt": "x", "n": 9})
    code, out, err = await _grpcurl(
        "-plaintext", "-format-error", "-d", request, stack.target, f"{SERVICE}/Generate"
    )
    assert code != 0
    error = json.loads(out or err)
    assert error["code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    kinds = {d["@type"].rsplit("/", 1)[-1]: d for d in error["details"]}
    assert kinds["google.rpc.ErrorInfo"]["reason"] == "INVALID_ARGUMENT"
    assert kinds["google.rpc.BadRequest"]["field_violations"][0]["field"] == "n"


@pytest.mark.spawns_processes
async def test_serve_drains_in_flight_rpcs_on_sigterm(
    sandbox: SandboxServer, tmp_path: pathlib.Path
) -> None:
    env = {
        **os.environ,
        **{f"IMAGE_SERVICE_{k.upper()}": v for k, v in sandbox.settings_overrides().items()},
        "IMAGE_SERVICE_LOCAL_STORAGE_DIR": str(tmp_path),
        "IMAGE_SERVICE_SHUTDOWN_GRACE_S": "10",
        "IMAGE_SERVICE_METRICS_PORT": "0",
        "IMAGE_SERVICE_AUTH": "none",
    }
    process = await asyncio.create_subprocess_exec(
        str(pathlib.Path(sys.executable).parent / "image-service"),
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        ready = (await asyncio.wait_for(process.stdout.readline(), 30)).decode()
        port = int(ready.rsplit(":", 1)[1])
        sandbox.azure_flux.faults.latencies = [1.5]
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        from chuizi.image.v1 import image_service_pb2_grpc as pb_grpc

        call = asyncio.ensure_future(
            pb_grpc.ImageServiceStub(channel).Generate(
                pb.GenerateRequest(model="azure/flux-kontext-pro", prompt="x"), timeout=30
            )
        )
        await sandbox.azure_flux.faults.wait_for(lambda s: s.in_flight == 1)
        process.send_signal(signal.SIGTERM)
        generation = await call
        assert len(generation.images) == 1
        assert await asyncio.wait_for(process.wait(), 30) == 0
        await channel.close()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_the_default_bind_address_takes_ipv4_and_ipv6_callers(
    sandbox: SandboxServer, tmp_path: pathlib.Path
) -> None:
    # One listener for IPv4, IPv6 and dual-stack clusters.
    default_host = Settings.model_fields["grpc_host"].default
    async with running_stack(sandbox, tmp_path, grpc_host=default_host) as stack:
        port = stack.service.port
        for target in (f"127.0.0.1:{port}", f"[::1]:{port}"):
            async with grpc.aio.insecure_channel(target) as channel:
                assert await _health(channel, "") == health_pb2.HealthCheckResponse.SERVING
