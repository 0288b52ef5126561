"""Two `image-service serve` processes sharing one real redis-server: a key's
rate limit, a provider limit, request-id leases, isolation and revocation
hold for the deployment, not per process; Redis down fails closed; and no
key reaches any log line at DEBUG."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest
from chuizi.image.v1 import image_service_pb2 as pb
from chuizi.image.v1 import image_service_pb2_grpc as pb_grpc

from server.auth.admin import create_key
from server.auth.keys import Limits, key_id_of
from server.auth.redis_store import RedisKeyStore, connect
from server.sandbox.server import SandboxServer
from tests.auth.redis_server import RedisServer
from tests.auth.status_details import bearer, refusal_of

pytestmark = pytest.mark.spawns_processes

CLI = str(pathlib.Path(sys.executable).parent / "image-service")
FLUX = "azure/flux-kontext-pro"
IMAGEN = "google/imagen-4.0-fast"


@dataclass
class Replica:
    process: asyncio.subprocess.Process
    channel: grpc.aio.Channel
    stub: pb_grpc.ImageServiceStub
    log: list[str]


def serve_env(sandbox: SandboxServer, redis: RedisServer, media: pathlib.Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGE_SERVICE_")}
    env.update({f"IMAGE_SERVICE_{k.upper()}": v for k, v in sandbox.settings_overrides().items()})
    env.update(
        IMAGE_SERVICE_REDIS_URL=redis.url,
        IMAGE_SERVICE_LOCAL_STORAGE_DIR=str(media),
        IMAGE_SERVICE_LOG_LEVEL="DEBUG",
        IMAGE_SERVICE_SHUTDOWN_GRACE_S="2",
        IMAGE_SERVICE_UPSTREAM_ATTEMPTS="1",
        IMAGE_SERVICE_METRICS_PORT="0",
        # The provider limit under test: two FLUX calls a minute, deployment-wide.
        IMAGE_SERVICE_AZURE_FLUX_REQUESTS_PER_MINUTE="2",
    )
    return env


@contextlib.asynccontextmanager
async def replica(env: dict[str, str]) -> AsyncIterator[Replica]:
    process = await asyncio.create_subprocess_exec(
        CLI,
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    log: list[str] = []

    async def collect(stream: asyncio.StreamReader) -> None:
        async for line in stream:
            log.append(line.decode(errors="replace"))

    collector = asyncio.create_task(collect(process.stderr))
    try:
        ready = (await asyncio.wait_for(process.stdout.readline(), 60)).decode()
        assert "serving gRPC" in ready, "".join(log)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{int(ready.rsplit(':', 1)[1])}")
        yield Replica(process, channel, pb_grpc.ImageServiceStub(channel), log)
        await channel.close()
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 30) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await collector


async def refused(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return caught.value


async def new_key(redis: RedisServer, name: str, **limits: int) -> str:
    store = RedisKeyStore(connect(redis.url))
    try:
        key, _ = await create_key(store, name, limits=Limits(**limits))
    finally:
        await store.aclose()
    return key


async def test_two_replicas_share_keys_limits_leases_and_revocation(
    sandbox: SandboxServer, redis: RedisServer, tmp_path: pathlib.Path
) -> None:
    env = serve_env(sandbox, redis, tmp_path / "media")
    limited_key = await new_key(redis, "limited", requests_per_minute=3)
    team = await new_key(redis, "team")
    other = await new_key(redis, "other")
    async with replica(env) as a, replica(env) as b:
        models = pb.ListModelsRequest()

        # A key's requests per minute count across both replicas.
        for stub in (a.stub, b.stub, a.stub):
            await stub.ListModels(models, metadata=bearer(limited_key))
        error = refusal_of(await refused(b.stub.ListModels(models, metadata=bearer(limited_key))))
        assert (error.code, error.reason) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "RATE_LIMIT_EXCEEDED",
        )
        assert error.retry_delay_s is not None and 0 < error.retry_delay_s <= 60

        # So does the provider limit: two FLUX calls a minute in all. The
        # third's turn comes after its deadline, so it is refused at once
        # and never reaches the upstream.
        for stub in (a.stub, b.stub):
            done = await stub.Generate(
                pb.GenerateRequest(model=FLUX, prompt="a fox"), metadata=bearer(team), timeout=60
            )
            assert len(done.images) == 1
        error = refusal_of(
            await refused(
                a.stub.Generate(
                    pb.GenerateRequest(model=FLUX, prompt="a fox"),
                    metadata=bearer(team),
                    timeout=20,
                )
            )
        )
        assert (error.code, error.reason) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "UPSTREAM_RATE_LIMITED",
        )
        assert error.metadata["limit"] == "requests_per_minute"
        assert sandbox.azure_flux.faults.stats.received == 2

        # Two first attempts of one request id on two replicas: one pays,
        # the other waits on the Redis lease and replays its result.
        sandbox.vertex_imagen.faults.latencies = [3.0]
        request = pb.GenerateRequest(model=IMAGEN, prompt="a fox", request_id="order-7")
        first = asyncio.ensure_future(a.stub.Generate(request, metadata=bearer(team), timeout=60))
        await sandbox.vertex_imagen.faults.wait_for(lambda s: s.in_flight == 1, within_s=30)
        second = await b.stub.Generate(request, metadata=bearer(team), timeout=60)
        assert (await first).generation_id == second.generation_id
        assert sandbox.vertex_imagen.faults.stats.received == 1

        # Another key sees neither the generation nor the request id.
        get = pb.GetGenerationRequest(generation_id=second.generation_id)
        assert (await b.stub.GetGeneration(get, metadata=bearer(team))).generation_id
        error = refusal_of(await refused(a.stub.GetGeneration(get, metadata=bearer(other))))
        assert error.code == grpc.StatusCode.NOT_FOUND
        theirs = await a.stub.Generate(request, metadata=bearer(other), timeout=60)
        assert theirs.generation_id != second.generation_id

        # Revoked through the CLI: refused by both replicas from the next call.
        revoke = await asyncio.create_subprocess_exec(
            CLI, "keys", "revoke", key_id_of(team), env=env
        )
        assert await asyncio.wait_for(revoke.wait(), 60) == 0
        for stub in (a.stub, b.stub):
            error = refusal_of(await refused(stub.ListModels(models, metadata=bearer(team))))
            assert (error.code, error.reason) == (
                grpc.StatusCode.UNAUTHENTICATED,
                "INVALID_API_KEY",
            )

        # Redis down: authentication fails closed on both.
        await redis.stop()
        for stub in (a.stub, b.stub):
            error = refusal_of(await refused(stub.ListModels(models, metadata=bearer(other))))
            assert (error.code, error.reason) == (grpc.StatusCode.UNAVAILABLE, "AUTH_UNAVAILABLE")

    logs = "".join(a.log + b.log)
    assert "DEBUG" in logs  # the servers did log at DEBUG
    for key in (limited_key, team, other):
        secret = key.removeprefix("ck-")
        assert secret[:12] not in logs
