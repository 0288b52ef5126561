"""azure/mai-image-2 end to end: gRPC service → AzureMaiBackend → the MAI
emulator, over real sockets, including the per-backend limits from settings.

MAI-Image-2 was retired on 2026-08-15: the seed's name stays callable and is
routed to MAI-Image-2.6 (same route and body), whose price is unknown."""

from __future__ import annotations

import pathlib
from typing import Any

import grpc
import pytest
from chuizi.image.v1 import image_service_pb2 as pb

from server.sandbox.faults import FaultMode
from server.sandbox.server import SandboxServer
from tests.rpc.conftest import ErrorDetails, Stack, details_of
from tests.rpc.stacks import running_stack
from tests.support.images import png, size_of

MAI = "azure/mai-image-2"


async def failure(stack: Stack, **fields: Any) -> ErrorDetails:
    request = pb.GenerateRequest(**{"model": MAI, "prompt": "a fox", **fields})
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.stub.Generate(request, timeout=30)
    return details_of(caught.value)


async def test_list_models_shows_mai_configured_with_the_sizes_it_can_make(stack: Stack) -> None:
    models = {m.name: m for m in (await stack.stub.ListModels(pb.ListModelsRequest())).models}
    mai = models[MAI]
    assert mai.configured
    assert list(mai.sizes) == ["1024x1024", "1792x1024", "1024x1792"]
    assert (mai.max_size, mai.images_per_call) == ("1024x1024", 1)
    assert list(mai.operations) == [pb.OPERATION_GENERATE]


@pytest.mark.parametrize(
    ("size", "produced"),
    [("1024x1024", (1024, 1024)), ("1792x1024", (1344, 768)), ("1024x1792", (768, 1344))],
)
async def test_each_offered_size_reports_the_size_produced(
    stack: Stack, size: str, produced: tuple[int, int]
) -> None:
    generation = await stack.stub.Generate(
        pb.GenerateRequest(
            model=MAI, prompt="a fox", size=size, response_format=pb.RESPONSE_FORMAT_INLINE
        ),
        timeout=30,
    )
    (image,) = generation.images
    assert (image.width, image.height) == produced == size_of(image.data)
    assert image.mime_type == "image/png" and image.stored
    # Unknown price: reported as unknown (empty), never as zero.
    assert (generation.size, generation.cost) == (size, "")
    assert (generation.model, generation.served_by) == (MAI, "azure/mai-image-2.6")
    assert generation.upstream_model == "MAI-Image-2.6"
    assert "served by its successor azure/mai-image-2.6" in generation.warnings[0]
    assert stack.sandbox.azure_mai.faults.stats.received == 1
    assert [r.body["model"] for r in stack.sandbox.azure_mai.received] == ["MAI-Image-2.6"]


async def test_n4_fans_out_to_four_upstream_calls(stack: Stack) -> None:
    generation = await stack.stub.Generate(
        pb.GenerateRequest(model=MAI, prompt="four foxes", n=4, seed=3), timeout=30
    )
    assert sorted(i.index for i in generation.images) == [0, 1, 2, 3]
    assert generation.cost == ""
    assert "takes no seed" in generation.warnings[-1]
    assert all(not image.HasField("seed") for image in generation.images)
    assert stack.sandbox.azure_mai.faults.stats.received == 4
    assert all("n" not in r.body and "seed" not in r.body for r in stack.sandbox.azure_mai.received)


async def test_2048_is_refused_naming_size_and_what_mai_offers(stack: Stack) -> None:
    details = await failure(stack, size="2048x2048")
    assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    [(field, description)] = details.violations
    assert field == "size"
    assert "1024x1024" in description and "1792x1024" in description
    assert stack.sandbox.azure_mai.faults.stats.received == 0


async def test_timeout_is_deadline_exceeded_and_stops_the_upstream_call(
    sandbox: SandboxServer, tmp_path: pathlib.Path
) -> None:
    async with running_stack(sandbox, tmp_path, default_deadline_s=0.5) as stack:
        sandbox.azure_mai.faults.push(FaultMode.TIMEOUT)
        details = await failure(stack)
    assert (details.code, details.reason) == (
        grpc.StatusCode.DEADLINE_EXCEEDED,
        "UPSTREAM_TIMEOUT",
    )
    await sandbox.azure_mai.faults.wait_for(lambda s: s.in_flight == 0 and s.cancelled == 1)


async def test_cancelling_the_stream_cancels_the_fanned_out_calls(stack: Stack) -> None:
    plan = stack.sandbox.azure_mai.faults
    plan.latencies = [0.05, 30, 30, 30]
    call = stack.stub.StreamGenerate(
        pb.GenerateRequest(model=MAI, prompt="slow foxes", n=4), timeout=60
    )
    first = await call.read()
    assert first.HasField("image")
    call.cancel()
    stats = await plan.wait_for(lambda s: s.cancelled == 3 and s.in_flight == 0, within_s=10)
    assert (stats.received, stats.completed) == (4, 1)


@pytest.mark.parametrize(
    ("changes", "setting"),
    [
        ({"azure_mai_endpoint": ""}, "IMAGE_SERVICE_AZURE_MAI_ENDPOINT"),
        ({"azure_mai_api_key": None}, "IMAGE_SERVICE_AZURE_MAI_API_KEY"),
    ],
)
async def test_missing_credentials_are_a_failed_precondition(
    sandbox: SandboxServer, tmp_path: pathlib.Path, changes: dict[str, Any], setting: str
) -> None:
    async with running_stack(sandbox, tmp_path, **changes) as stack:
        details = await failure(stack)
        models = await stack.stub.ListModels(pb.ListModelsRequest(), timeout=10)
    assert (details.code, details.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "BACKEND_NOT_CONFIGURED",
    )
    assert details.metadata["setting"] == setting
    assert setting in details.message
    assert {m.name: m.configured for m in models.models}[MAI] is False
    assert sandbox.azure_mai.faults.stats.received == 0


async def test_a_wrong_deployment_names_the_deployment_setting(
    sandbox: SandboxServer, tmp_path: pathlib.Path
) -> None:
    async with running_stack(sandbox, tmp_path, azure_mai_deployment="gone") as stack:
        details = await failure(stack)
    assert (details.code, details.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "BACKEND_NOT_CONFIGURED",
    )
    assert details.metadata["setting"] == "IMAGE_SERVICE_AZURE_MAI_DEPLOYMENT"


async def test_wrong_key_is_upstream_auth_failed(stack: Stack) -> None:
    stack.sandbox.azure_mai.api_key = "rotated"
    details = await failure(stack)
    assert (details.code, details.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "UPSTREAM_AUTH_FAILED",
    )
    assert "rotated" not in details.message and "sandbox-azure-mai-key" not in details.message


async def test_max_concurrency_setting_queues_the_fan_out(
    sandbox: SandboxServer, tmp_path: pathlib.Path
) -> None:
    sandbox.azure_mai.faults.default_latency = 0.1
    async with running_stack(sandbox, tmp_path, azure_mai_max_concurrency=1) as stack:
        generation = await stack.stub.Generate(
            pb.GenerateRequest(model=MAI, prompt="one at a time", n=4), timeout=30
        )
    assert len(generation.images) == 4
    assert sandbox.azure_mai.faults.stats.max_in_flight == 1


async def test_requests_per_minute_setting_fails_what_cannot_start_in_time(
    sandbox: SandboxServer, tmp_path: pathlib.Path
) -> None:
    async with running_stack(sandbox, tmp_path, azure_mai_requests_per_minute=2) as stack:
        generation = await stack.stub.Generate(
            pb.GenerateRequest(model=MAI, prompt="a quota", n=3), timeout=5
        )
        details = await failure(stack)
    # Two calls fit the minute; the third would start a minute later, past
    # the 5 s deadline, so it fails at once instead of waiting for nothing.
    assert len(generation.images) == 2
    assert [(f.image_count, f.reason) for f in generation.failures] == [
        (1, "UPSTREAM_RATE_LIMITED")
    ]
    assert (details.code, details.reason) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "UPSTREAM_RATE_LIMITED",
    )
    assert details.metadata["limit"] == "requests_per_minute"
    assert details.retry_delay_s is not None and 50 < details.retry_delay_s <= 60
    assert sandbox.azure_mai.faults.stats.received == 2


async def test_mai_2_6_edits_with_references_end_to_end(stack: Stack) -> None:
    photo, reference = png(1024, 768), png(300, 300, (0, 0, 200))
    generation = await stack.stub.Edit(
        pb.EditRequest(
            model="azure/mai-image-2.6-flash",
            prompt="put the hat from image 2 on the fox",
            images=[photo, reference],
            response_format=pb.RESPONSE_FORMAT_INLINE,
        ),
        timeout=30,
    )
    (image,) = generation.images
    assert (image.width, image.height) == size_of(image.data)
    assert abs(image.width / image.height - 4 / 3) < 0.02
    assert generation.upstream_model == "MAI-Image-2.6-Flash"
    (received,) = stack.sandbox.azure_mai.received
    assert (received.body["edit"], received.body["images"]) == (True, 2)
    # The retired seed name routes to MAI-Image-2.6, so it edits too, and says so.
    routed = await stack.stub.Edit(
        pb.EditRequest(model="azure/mai-image-2", prompt="x", images=[photo]), timeout=30
    )
    assert routed.served_by == "azure/mai-image-2.6" and routed.warnings
    # An edit with a size is refused naming it: the route takes none.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.stub.Edit(
            pb.EditRequest(
                model="azure/mai-image-2.6", prompt="x", images=[photo], size="1024x1024"
            ),
            timeout=30,
        )
    assert details_of(caught.value).violations[0][0] == "size"
    assert stack.sandbox.azure_mai.faults.stats.received == 2
