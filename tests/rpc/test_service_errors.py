"""Bad input and upstream failures reach the caller as the right gRPC code
with google.rpc details, over a real socket. (Each backend's fault table is
in test_models_fault_modes.py.)"""

from __future__ import annotations

import pathlib

import grpc
import pytest
from chuizi.image.v1 import image_service_pb2 as pb

from server.sandbox.faults import FaultMode
from server.sandbox.server import SandboxServer
from tests.rpc.conftest import Stack, details_of
from tests.rpc.stacks import running_stack
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


async def test_unconfigured_backend_names_the_missing_setting(
    sandbox: SandboxServer, tmp_path: pathlib.Path
) -> None:
    unconfigured = {"azure_flux_api_key": None, "azure_flux_endpoint": ""}
    async with running_stack(sandbox, tmp_path, **unconfigured) as stack:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stack.stub.Generate(pb.GenerateRequest(model=KONTEXT, prompt="x"), timeout=10)
        models = await stack.stub.ListModels(pb.ListModelsRequest(), timeout=10)
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
