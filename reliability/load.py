"""Load under faults, a storage outage, SIGTERM with requests in flight, and
a soak of concurrent streams: each returns a `Tally`.

"Paid images lost" is counted two ways. From the caller's side, every
successful answer must account for all `n` images: delivered, or named in
a failure entry (`n - len(images) - sum(failure counts)` must be 0). From
the upstream's side, under faults, each emulator request that was answered
without a fault (and not cancelled first) produced one image at n=1, and
every one of them must be among the images delivered (`UPSTREAM_COUNTED`).
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import httpx
from chuizi.image.v1 import image_service_pb2 as pb
from chuizi.image.v1 import image_service_pb2_grpc as pb_grpc

from benchmarks.processes import Child
from reliability.stack import Services
from reliability.tally import SERVER_FAULT_CODES, Tally
from server.sandbox.faults import FaultMode
from server.sandbox.server import SandboxServer

# One model per backend (the emulators that count faults per request).
MODELS = {
    "azure_flux": "azure/flux-kontext-pro",
    "azure_mai": "azure/mai-image-2",
    "bailian_wan": "bailian/wan2.7-image",
    "bedrock_stability": "bedrock/stability-stable-image-core",
    "vertex_imagen": "google/imagen-4.0",
}
# Backends whose emulator answers each HTTP request on its own, so that its
# count of requests answered without a fault is the count of images paid for.
# DashScope counts faults per task, not per request, and Vertex multiplexes
# every call on one gRPC connection, which a dropped-connection fault cuts
# for all of them, answered or not: those two are checked caller-side only.
UPSTREAM_COUNTED = ("azure_flux", "azure_mai", "bedrock_stability")
FAULTS = ["bad_request", "content_filter", "rate_limit", "server_error", "drop_connection"]
_LIMIT = 64 * 1024 * 1024
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", _LIMIT),
    ("grpc.max_receive_message_length", _LIMIT),
]


def unaccounted(generation: pb.Generation, n: int) -> int:
    """Images of a successful answer that are neither delivered nor explained."""
    explained = len(generation.images) + sum(f.image_count for f in generation.failures)
    return max(0, max(n, 1) - explained)


async def _bounded(jobs: list[Callable[[], Awaitable[None]]], concurrency: int) -> None:
    gate = asyncio.Semaphore(concurrency)

    async def one(job: Callable[[], Awaitable[None]]) -> None:
        async with gate:
            await job()

    await asyncio.gather(*(one(job) for job in jobs))


async def warm_up(services: Services) -> None:
    """One request of each kind on every backend: the first ones load code,
    open clients and grow thread pools once, which is not growth under load."""
    async with grpc.aio.insecure_channel(services.grpc_target, options=CHANNEL_OPTIONS) as ch:
        stub = pb_grpc.ImageServiceStub(ch)  # type: ignore[no-untyped-call]
        for model in MODELS.values():
            await stub.Generate(pb.GenerateRequest(model=model, prompt="warm up"), timeout=60)
            async for _ in stub.StreamGenerate(
                pb.GenerateRequest(model=model, prompt="warm up", n=2), timeout=60
            ):
                pass
    if services.rest_url:
        async with httpx.AsyncClient(base_url=services.rest_url, timeout=60) as http:
            body = {"model": MODELS["azure_flux"], "prompt": "warm up", "n": 2}
            await http.post("/v1/images/generations", json=body)
            await http.post("/v1/images/generations", json={**body, "stream": True})


async def under_faults(
    services: Services, sandbox: SandboxServer, per_backend: int, run_seed: int
) -> Tally:
    """`per_backend` generations on every backend, ~30% with an injected fault."""
    tally = Tally("upstream faults ~30%")
    started = time.monotonic()
    rng = random.Random(run_seed)
    sandbox.reset()
    delivered: dict[str, int] = dict.fromkeys(MODELS, 0)
    async with grpc.aio.insecure_channel(services.grpc_target, options=CHANNEL_OPTIONS) as ch:
        stub = pb_grpc.ImageServiceStub(ch)  # type: ignore[no-untyped-call]

        def job(backend: str, prompt: str) -> Callable[[], Awaitable[None]]:
            async def run() -> None:
                request = pb.GenerateRequest(model=MODELS[backend], prompt=prompt, n=1)
                try:
                    generation = await stub.Generate(request, timeout=30)
                except grpc.aio.AioRpcError as error:
                    code = error.code().name
                    tally.add(code, server_error=code in SERVER_FAULT_CODES, example=code)
                    return
                tally.add("OK")
                delivered[backend] += len(generation.images)
                tally.images_lost += unaccounted(generation, 1)

            return run

        jobs = []
        injected = 0
        for backend in MODELS:
            for _ in range(per_backend):
                prompt = "a red fox"
                if rng.random() < 0.3:
                    injected += 1
                    prompt += f" [sandbox:fault={rng.choice(FAULTS)}] [sandbox:retry_after=0.05]"
                jobs.append(job(backend, prompt))
        rng.shuffle(jobs)
        await _bounded(jobs, 16)
    produced = checked = 0
    for backend in UPSTREAM_COUNTED:
        stats = sandbox.emulator(backend).faults.stats
        made = stats.faults[FaultMode.NONE] - stats.cancelled
        produced += made
        checked += delivered[backend]
        if made > delivered[backend]:
            tally.images_lost += made - delivered[backend]
            tally.examples.append(f"{backend}: {made} produced, {delivered[backend]} delivered")
    tally.notes.append(
        f"{injected} of {tally.sent} requests carried a fault directive "
        f"({100 * injected / max(1, tally.sent):.0f}%); the FLUX, MAI and Bedrock "
        f"emulators answered {produced} requests without a fault, and {checked} of their "
        "images were delivered"
    )
    tally.seconds = time.monotonic() - started
    return tally


async def storage_outage(services: Services, kill: Callable[[], None], requests: int) -> Tally:
    """`requests` generations (n=2) with storage killed once a third are in."""
    tally = Tally("storage killed mid-load")
    started = time.monotonic()
    done = 0
    killed = asyncio.Event()
    inline = 0
    async with grpc.aio.insecure_channel(services.grpc_target, options=CHANNEL_OPTIONS) as ch:
        stub = pb_grpc.ImageServiceStub(ch)  # type: ignore[no-untyped-call]

        async def run() -> None:
            nonlocal done, inline
            request = pb.GenerateRequest(
                model="azure/flux-kontext-pro", prompt="a fox [sandbox:latency=0.3]", n=2
            )
            try:
                generation = await stub.Generate(request, timeout=60)
            except grpc.aio.AioRpcError as error:
                tally.add(error.code().name, example=error.code().name)
                tally.failed += 1
                return
            finally:
                done += 1
                if done >= requests // 3 and not killed.is_set():
                    killed.set()
                    kill()
            tally.add("OK")
            tally.images_lost += unaccounted(generation, 2)
            for image in generation.images:
                if not image.stored:
                    inline += 1
                    if not image.data:
                        tally.images_lost += 1  # neither stored nor handed over

        await _bounded([run for _ in range(requests)], 16)
    tally.notes.append(f"{inline} images came back inline (not stored) after the kill")
    tally.seconds = time.monotonic() - started
    return tally


def _slow_prompt(i: int) -> str:
    """3 to 4 s at the upstream: long enough for all calls to be in flight at once."""
    return f"a fox [sandbox:latency={3.0 + (i % 10) / 10}]"


async def _sigterm_under_load(
    tally: Tally,
    child: Child,
    sandbox: SandboxServer,
    in_flight: int,
    call: Callable[[int], Awaitable[None]],
) -> None:
    """Start `in_flight` calls, SIGTERM `child` once all wait on the upstream,
    let them finish, and check that `child` exited cleanly."""
    started = time.monotonic()
    plan = sandbox.azure_flux.faults
    plan.reset()
    calls = [asyncio.ensure_future(call(i)) for i in range(in_flight)]
    await plan.wait_for(lambda s: s.in_flight >= in_flight, within_s=60)
    child.process.send_signal(signal.SIGTERM)
    await asyncio.gather(*calls)
    code = await asyncio.to_thread(child.process.wait, 60)
    if code != 0:
        tally.deaths.append(f"{child.name} exited with {code} after SIGTERM")
    tally.seconds = time.monotonic() - started


async def sigterm_grpc(services: Services, sandbox: SandboxServer, in_flight: int) -> Tally:
    """`in_flight` Generate calls, then SIGTERM the gRPC server."""
    tally = Tally(f"SIGTERM gRPC, {in_flight} in flight")
    assert services.server is not None
    async with grpc.aio.insecure_channel(services.grpc_target, options=CHANNEL_OPTIONS) as ch:
        stub = pb_grpc.ImageServiceStub(ch)  # type: ignore[no-untyped-call]

        async def run(i: int) -> None:
            request = pb.GenerateRequest(model="azure/flux-kontext-pro", prompt=_slow_prompt(i))
            try:
                generation = await stub.Generate(request, timeout=60)
            except grpc.aio.AioRpcError as error:
                tally.add(error.code().name, example=f"{error.code().name}")
                tally.failed += 1
                return
            tally.add("OK")
            tally.images_lost += unaccounted(generation, 1)

        await _sigterm_under_load(tally, services.server, sandbox, in_flight, run)
    return tally


async def sigterm_rest(services: Services, sandbox: SandboxServer, in_flight: int) -> Tally:
    """`in_flight` REST generations, then SIGTERM the sidecar."""
    tally = Tally(f"SIGTERM REST, {in_flight} in flight")
    assert services.sidecar is not None
    limits = httpx.Limits(max_connections=in_flight + 10, max_keepalive_connections=in_flight)
    async with httpx.AsyncClient(base_url=services.rest_url, timeout=60, limits=limits) as http:

        async def run(i: int) -> None:
            body = {"model": "azure/flux-kontext-pro", "prompt": _slow_prompt(i)}
            try:
                response = await http.post("/v1/images/generations", json=body)
            except httpx.HTTPError as error:
                tally.add(type(error).__name__, example=type(error).__name__)
                tally.failed += 1
                return
            tally.add(str(response.status_code))
            if response.status_code != 200:
                tally.failed += 1
                tally.examples.append(response.text[:160])

        await _sigterm_under_load(tally, services.sidecar, sandbox, in_flight, run)
    return tally


async def soak(services: Services, streams: int, rounds: int) -> Tally:
    """`rounds` waves of `streams` concurrent StreamGenerate calls (n=2)."""
    tally = Tally(f"soak, {streams} concurrent streams")
    started = time.monotonic()
    async with grpc.aio.insecure_channel(services.grpc_target, options=CHANNEL_OPTIONS) as ch:
        stub = pb_grpc.ImageServiceStub(ch)  # type: ignore[no-untyped-call]

        async def run(i: int) -> None:
            latency = 0.5 + (i % 10) / 10
            request = pb.GenerateRequest(
                model="azure/flux-kontext-pro", prompt=f"a fox [sandbox:latency={latency}]", n=2
            )
            images = 0
            record: Any = None
            try:
                async for message in stub.StreamGenerate(request, timeout=120):
                    if message.WhichOneof("event") == "image":
                        images += 1
                    else:
                        record = message.generation
            except grpc.aio.AioRpcError as error:
                code = error.code().name
                tally.add(code, server_error=code in SERVER_FAULT_CODES, example=code)
                tally.failed += 1
                return
            if record is None:
                tally.add("no record")
                tally.failed += 1
                return
            tally.add("OK")
            tally.images_lost += unaccounted(record, 2) + max(0, len(record.images) - images)

        for _ in range(rounds):
            await asyncio.gather(*(run(i) for i in range(streams)))
    tally.seconds = time.monotonic() - started
    return tally
