"""Bad input and upstream failures reach the caller as the right gRPC code
with google.rpc details, over a real socket."""

from __future__ import annotations

import grpc
import pytest
from chuizi.image.v1 import image_service_pb2 as pb

from server.app import create_grpc_service
from server.sandbox.azure_flux import CONTENT_FILTER_FINISH_REASON, CONTENT_FILTER_HTTP
from server.sandbox.faults import FaultMode
from tests.rpc.conftest import Stack, details_of, settings_for
from tests.support.images import png

KONTEXT = "azure/flux-kontext-pro"


async def _error(stack: Stack, **fields: object) -> grpc.aio.AioRpcError:
    base: dict[str, object] = {"model": KONTEXT, "prompt": "a fox"}
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.stub.Generate(pb.GenerateRequest(**{**base, **fields}), timeout=30)
    return caught.value


@pytest.mark.parametrize(
    ("fields", "violation"),
    [
        ({"model": ""}, "model"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": "x" * 4001}, "prompt"),
        ({"n": 5}, "n"),
        ({"n": -2}, "n"),
        ({"size": "2048x2048"}, "size"),
        ({"size": "wide"}, "size"),
        ({"request_id": "r" * 200}, "request_id"),
        ({"response_format": 7}, "response_format"),
    ],
)
async def test_each_validation_error_names_its_field(
    stack: Stack, fields: dict[str, object], violation: str
) -> None:
    details = details_of(await _error(stack, **fields))
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.reason == "INVALID_ARGUMENT"
    assert [field for field, _ in details.violations] == [violation]
    assert stack.sandbox.azure_flux.faults.stats.received == 0


async def test_unknown_model_is_not_found(stack: Stack) -> None:
    details = details_of(await _error(stack, model="acme/imaginary"))
    assert (details.code, details.reason) == (grpc.StatusCode.NOT_FOUND, "MODEL_NOT_FOUND")
    assert details.metadata["model"] == "acme/imaginary"


async def test_generate_on_an_edit_only_model_is_capability_not_supported(stack: Stack) -> None:
    details = details_of(await _error(stack, model="bedrock/stability-fast-upscale"))
    assert (details.code, details.reason) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "CAPABILITY_NOT_SUPPORTED",
    )
    assert details.violations[0][0] == "operation"


@pytest.mark.parametrize(
    ("mode", "variant", "code", "reason"),
    [
        (FaultMode.BAD_REQUEST, "", "INVALID_ARGUMENT", "UPSTREAM_INVALID_REQUEST"),
        (
            FaultMode.CONTENT_FILTER,
            CONTENT_FILTER_HTTP,
            "INVALID_ARGUMENT",
            "CONTENT_POLICY_VIOLATION",
        ),
        (
            FaultMode.CONTENT_FILTER,
            CONTENT_FILTER_FINISH_REASON,
            "INVALID_ARGUMENT",
            "CONTENT_POLICY_VIOLATION",
        ),
        (FaultMode.RATE_LIMIT, "", "RESOURCE_EXHAUSTED", "UPSTREAM_RATE_LIMITED"),
        (FaultMode.SERVER_ERROR, "", "UNAVAILABLE", "UPSTREAM_UNAVAILABLE"),
        (FaultMode.DROP_CONNECTION, "", "UNAVAILABLE", "UPSTREAM_UNAVAILABLE"),
    ],
)
async def test_each_upstream_fault_maps_to_its_code_and_reason(
    stack: Stack, mode: FaultMode, variant: str, code: str, reason: str
) -> None:
    plan = stack.sandbox.azure_flux.faults
    plan.push(mode, variant=variant, retry_after=0.05, times=10)
    details = details_of(await _error(stack))
    assert (details.code, details.reason) == (getattr(grpc.StatusCode, code), reason)
    # No upstream body, key or URL leaks into what the caller sees.
    assert "sandbox" not in details.message.lower()
    assert "://" not in details.message and "127.0.0.1" not in details.message
    if mode in (FaultMode.BAD_REQUEST, FaultMode.CONTENT_FILTER):
        assert plan.stats.received == 1, "refusals must not be retried"
    else:
        assert plan.stats.received == 4, "transient failures are retried (4 attempts)"
    if mode is FaultMode.RATE_LIMIT:
        assert details.retry_delay_s is not None and details.retry_delay_s > 0


async def test_a_transient_fault_is_retried_transparently(stack: Stack) -> None:
    plan = stack.sandbox.azure_flux.faults
    plan.push(FaultMode.RATE_LIMIT, retry_after=0.1)
    plan.push(FaultMode.SERVER_ERROR)
    generation = await stack.stub.Generate(
        pb.GenerateRequest(model=KONTEXT, prompt="x"), timeout=30
    )
    assert len(generation.images) == 1
    assert plan.stats.received == 3


async def test_a_partial_failure_returns_the_images_that_succeeded(stack: Stack) -> None:
    plan = stack.sandbox.azure_flux.faults
    # One of the four fan-out calls is refused by the safety system.
    plan.push(FaultMode.NONE)
    plan.push(FaultMode.CONTENT_FILTER)
    generation = await stack.stub.Generate(
        pb.GenerateRequest(model=KONTEXT, prompt="x", n=4), timeout=30
    )
    assert len(generation.images) == 3
    assert generation.cost == "0.15000000"
    assert [(f.image_count, f.reason) for f in generation.failures] == [
        (1, "CONTENT_POLICY_VIOLATION")
    ]


async def test_wrong_credentials_are_a_precondition_failure(stack: Stack) -> None:
    stack.sandbox.azure_flux.api_key = "rotated"
    details = details_of(await _error(stack))
    assert (details.code, details.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "UPSTREAM_AUTH_FAILED",
    )
    assert "rotated" not in details.message and "sandbox-azure-flux-key" not in details.message


async def test_unconfigured_backend_names_the_missing_setting(stack: Stack, tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = settings_for(
        stack.sandbox, tmp_path, "http://unused", azure_flux_api_key=None, azure_flux_endpoint=""
    )
    service = await create_grpc_service(settings)
    await service.start()
    try:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{service.port}")
        from chuizi.image.v1 import image_service_pb2_grpc as pb_grpc

        stub = pb_grpc.ImageServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Generate(pb.GenerateRequest(model=KONTEXT, prompt="x"), timeout=10)
        models = await stub.ListModels(pb.ListModelsRequest(), timeout=10)
        await channel.close()
    finally:
        await service.stop(0)
    details = details_of(caught.value)
    assert (details.code, details.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "BACKEND_NOT_CONFIGURED",
    )
    assert details.metadata["setting"].startswith("IMAGE_SERVICE_AZURE_FLUX_")
    assert details.metadata["setting"] in details.message
    configured = {m.name: m.configured for m in models.models}
    assert configured[KONTEXT] is False


async def test_edit_with_an_operation_the_model_cannot_do(stack: Stack) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.stub.Edit(
            pb.EditRequest(
                model=KONTEXT, prompt="x", images=[png()], operation=pb.OPERATION_UPSCALE
            ),
            timeout=30,
        )
    details = details_of(caught.value)
    assert (details.code, details.reason) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "CAPABILITY_NOT_SUPPORTED",
    )
    assert details.metadata == {"model": KONTEXT, "operation": "upscale"}
    assert caught.value.code() != grpc.StatusCode.UNIMPLEMENTED


@pytest.mark.parametrize(
    ("fields", "violation"),
    [
        ({"images": []}, "images"),
        ({"images": [b"GIF89a not really"]}, "images[0]"),
        ({"operation": pb.OPERATION_GENERATE}, "operation"),
        ({"mask": png()}, "mask"),
        ({"prompt": ""}, "prompt"),
    ],
)
async def test_edit_validation_names_the_field(
    stack: Stack, fields: dict[str, object], violation: str
) -> None:
    base: dict[str, object] = {"model": KONTEXT, "prompt": "make it red", "images": [png()]}
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.stub.Edit(pb.EditRequest(**{**base, **fields}), timeout=30)
    details = details_of(caught.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [field for field, _ in details.violations] == [violation]
