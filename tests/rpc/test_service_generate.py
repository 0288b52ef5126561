"""Generate / StreamGenerate / GetGeneration over a real socket, end to end:
the real Azure FLUX backend against its emulator, the local store, and the
media server that the returned URLs point at."""

from __future__ import annotations

import asyncio
import re
import time

import grpc
import httpx
import pytest
from chuizi.image.v1 import image_service_pb2 as pb

from server.sandbox.faults import FaultMode
from tests.rpc.conftest import Stack, details_of
from tests.support.images import size_of

KONTEXT = "azure/flux-kontext-pro"


async def test_generate_returns_permanent_urls_to_real_pngs(stack: Stack) -> None:
    generation = await stack.stub.Generate(
        pb.GenerateRequest(model=KONTEXT, prompt="a red fox", n=2), timeout=30
    )
    assert re.fullmatch(r"gen-[0-9a-f]{16}", generation.generation_id)
    assert (generation.model, generation.n, generation.size) == (KONTEXT, 2, "1024x1024")
    assert generation.cost == "0.10000000"
    assert generation.latency_ms > 0 and generation.created > 1_700_000_000
    assert generation.operation == pb.OPERATION_GENERATE
    assert sorted(i.index for i in generation.images) == [0, 1]
    async with httpx.AsyncClient() as http:
        for image in generation.images:
            assert image.stored and not image.data
            assert image.url.startswith(stack.media.base_url + "/media/images/")
            response = await http.get(image.url)
            assert response.status_code == 200
            assert response.headers["content-type"] == "image/png"
            assert size_of(response.content) == (image.width, image.height) == (1024, 1024)


async def test_inline_response_carries_the_bytes_and_the_url(stack: Stack) -> None:
    generation = await stack.stub.Generate(
        pb.GenerateRequest(
            model=KONTEXT, prompt="a fox", response_format=pb.RESPONSE_FORMAT_INLINE
        ),
        timeout=30,
    )
    image = generation.images[0]
    assert size_of(image.data) == (1024, 1024)
    assert image.url and image.stored and image.mime_type == "image/png"


@pytest.mark.parametrize(
    ("model", "size", "produced"),
    [
        (KONTEXT, "1792x1024", (1376, 768)),
        (KONTEXT, "1024x1792", (768, 1376)),
        ("azure/flux-2-pro", "1792x1024", (1440, 816)),
        ("azure/flux-2-pro", "1024x1024", (1024, 1024)),
    ],
)
async def test_the_size_actually_produced_is_reported(
    stack: Stack, model: str, size: str, produced: tuple[int, int]
) -> None:
    generation = await stack.stub.Generate(
        pb.GenerateRequest(model=model, prompt="a fox", size=size), timeout=30
    )
    image = generation.images[0]
    assert (image.width, image.height) == produced
    assert generation.size == size


async def test_stream_delivers_the_first_image_when_the_fastest_call_finishes(
    stack: Stack,
) -> None:
    # The four upstream calls answer in the order [1, 3, 2, 0], each released
    # by the test (as latencies of 1.2, 0.1, 0.7 and 0.4 s would, but not
    # timed, so a busy machine cannot reorder them).
    plan = stack.sandbox.azure_flux.faults
    gates = [plan.hold() for _ in range(4)]
    call = stack.stub.StreamGenerate(
        pb.GenerateRequest(model=KONTEXT, prompt="four foxes", n=4), timeout=30
    )
    await plan.wait_for(lambda s: s.faults.total() == 4)
    arrivals: list[int] = []
    for index in (1, 3, 2, 0):
        gates[index].set()
        # Each image arrives while the slower calls are still held upstream:
        # the stream never waits for a slower call.
        message = await asyncio.wait_for(call.read(), 10)
        assert message.HasField("image"), message
        arrivals.append(message.image.index)
    record = (await asyncio.wait_for(call.read(), 10)).generation
    assert await call.read() == grpc.aio.EOF
    assert record is not None and len(record.images) == 4
    assert all(not image.data for image in record.images)
    # Indexes follow the order in which the upstream calls were made (the
    # emulator holds them in arrival order), so finish order is 1,3,2,0.
    assert arrivals == [1, 3, 2, 0]


async def test_cancelling_the_stream_cancels_the_upstream_calls(stack: Stack) -> None:
    plan = stack.sandbox.azure_flux.faults
    plan.latencies = [0.05, 30, 30, 30]
    call = stack.stub.StreamGenerate(
        pb.GenerateRequest(model=KONTEXT, prompt="slow foxes", n=4), timeout=60
    )
    first = await call.read()
    assert first.HasField("image")
    call.cancel()
    stats = await plan.wait_for(lambda s: s.cancelled == 3 and s.in_flight == 0, within_s=10)
    assert stats.completed == 1


async def test_unary_deadline_reaches_the_upstream_call(stack: Stack) -> None:
    plan = stack.sandbox.azure_flux.faults
    plan.push(FaultMode.TIMEOUT)
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.stub.Generate(pb.GenerateRequest(model=KONTEXT, prompt="x"), timeout=1.0)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 5
    await plan.wait_for(lambda s: s.in_flight == 0, within_s=5)


async def test_get_generation_returns_the_record(stack: Stack) -> None:
    made = await stack.stub.Generate(
        pb.GenerateRequest(model=KONTEXT, prompt="a fox", n=2, request_id="req-1"), timeout=30
    )
    got = await stack.stub.GetGeneration(
        pb.GetGenerationRequest(generation_id=made.generation_id), timeout=10
    )
    assert got.generation_id == made.generation_id
    assert (got.cost, got.request_id, got.prompt) == (made.cost, "req-1", "a fox")
    assert [i.url for i in got.images] == [i.url for i in made.images]
    assert all(not i.data for i in got.images)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.stub.GetGeneration(
            pb.GetGenerationRequest(generation_id="gen-0000000000000000"), timeout=10
        )
    assert details_of(caught.value).reason == "GENERATION_NOT_FOUND"
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.stub.GetGeneration(
            pb.GetGenerationRequest(generation_id="../etc/passwd"), timeout=10
        )
    assert details_of(caught.value).violations[0][0] == "generation_id"


async def test_retry_with_the_same_request_id_does_not_pay_twice(stack: Stack) -> None:
    request = pb.GenerateRequest(model=KONTEXT, prompt="a fox", request_id="once")
    first = await stack.stub.Generate(request, timeout=30)
    again = await stack.stub.Generate(request, timeout=30)
    assert again.generation_id == first.generation_id
    assert stack.sandbox.azure_flux.faults.stats.received == 1
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.stub.Generate(
            pb.GenerateRequest(model=KONTEXT, prompt="another", request_id="once"), timeout=30
        )
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_urls_survive_a_restart(stack: Stack) -> None:
    made = await stack.stub.Generate(pb.GenerateRequest(model=KONTEXT, prompt="x"), timeout=30)
    from server.app import create_grpc_service

    await stack.service.stop(0)
    service = await create_grpc_service(stack.service.settings)
    await service.start()
    try:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{service.port}")
        from chuizi.image.v1 import image_service_pb2_grpc as pb_grpc

        got = await pb_grpc.ImageServiceStub(channel).GetGeneration(
            pb.GetGenerationRequest(generation_id=made.generation_id), timeout=10
        )
        await channel.close()
    finally:
        await service.stop(0)
    assert got.images[0].url == made.images[0].url
    async with httpx.AsyncClient() as http:
        assert (await http.get(got.images[0].url)).status_code == 200


async def test_concurrent_generations_run_in_parallel(stack: Stack) -> None:
    plan = stack.sandbox.azure_flux.faults
    gates = [plan.hold() for _ in range(6)]
    calls = asyncio.gather(
        *(
            stack.stub.Generate(pb.GenerateRequest(model=KONTEXT, prompt=f"fox {i}"), timeout=30)
            for i in range(6)
        )
    )
    # All six are upstream at once before any is answered: in parallel, not
    # one after another (held rather than timed, so load cannot matter).
    await plan.wait_for(lambda s: s.in_flight == 6)
    for gate in gates:
        gate.set()
    results = await calls
    assert len({r.generation_id for r in results}) == 6
