"""The google/imagen-4.0* models end to end: the gRPC service, the real
Vertex backend (aiplatform_v1 client) and the PredictionService emulator.

Imagen 4 is retired and routes to Gemini by default; these tests run a
deployment that pins the Imagen upstream ids (IMAGE_SERVICE_RETIRED_MODELS)."""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import AsyncIterator
from decimal import Decimal

import grpc
import pytest
from chuizi.image.v1 import image_service_pb2 as pb

from server.domain.catalogue import Catalogue
from server.sandbox.faults import FaultMode, FaultPlan
from server.sandbox.server import SandboxServer
from server.sandbox.vertex_imagen import (
    CONTENT_FILTER_PARTIAL,
)
from tests.rpc.conftest import Stack, details_of
from tests.rpc.stacks import running_stack
from tests.support.images import size_of

CATALOGUE = Catalogue.load()
IMAGEN = ("google/imagen-4.0", "google/imagen-4.0-fast", "google/imagen-4.0-ultra")
PRODUCED = {
    "1024x1024": (1024, 1024),
    "1792x1024": (1408, 768),
    "1024x1792": (768, 1408),
    "2048x2048": (2048, 2048),
}


PINNED = ",".join(f"{model}=pin" for model in IMAGEN)


@pytest.fixture
async def stack(sandbox: SandboxServer, tmp_path: pathlib.Path) -> AsyncIterator[Stack]:
    async with running_stack(sandbox, tmp_path, retired_models=PINNED) as running:
        yield running


def price(model: str, images: int) -> str:
    return f"{CATALOGUE.get(model).price_per_image * images:.8f}"


@pytest.fixture
def faults(stack: Stack) -> FaultPlan:
    return stack.sandbox.vertex_imagen.faults


@pytest.mark.parametrize(
    ("model", "size"),
    [(m, str(s)) for m in IMAGEN for s in CATALOGUE.get(m).sizes],
)
async def test_every_model_and_size_generates(stack: Stack, model: str, size: str) -> None:
    generation = await stack.stub.Generate(
        pb.GenerateRequest(
            model=model,
            prompt="a lighthouse at dusk",
            size=size,
            response_format=pb.RESPONSE_FORMAT_INLINE,
        ),
        timeout=30,
    )
    [image] = generation.images
    # The size reported is the size produced, measured from the bytes.
    assert (image.width, image.height) == PRODUCED[size] == size_of(image.data)
    assert image.stored and image.mime_type == "image/png"
    assert generation.size == size
    assert generation.cost == price(model, 1)


@pytest.mark.parametrize("model", IMAGEN)
async def test_n4_is_one_batched_upstream_call(stack: Stack, faults: FaultPlan, model: str) -> None:
    generation = await stack.stub.Generate(
        pb.GenerateRequest(model=model, prompt="four foxes", n=4, seed=11), timeout=30
    )
    assert sorted(i.index for i in generation.images) == [0, 1, 2, 3]
    assert len({i.url for i in generation.images}) == 4
    assert generation.cost == price(model, 4)
    assert faults.stats.received == 1
    sent = stack.sandbox.vertex_imagen.received[-1].parameters
    assert (sent["sampleCount"], sent["seed"], sent["addWatermark"]) == (4, 11, False)


async def test_fast_refuses_2048_up_front(stack: Stack, faults: FaultPlan) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.stub.Generate(
            pb.GenerateRequest(model="google/imagen-4.0-fast", prompt="x", size="2048x2048"),
            timeout=30,
        )
    details = details_of(caught.value)
    assert details.code is grpc.StatusCode.INVALID_ARGUMENT
    assert details.reason == "INVALID_ARGUMENT"
    assert [field for field, _ in details.violations] == ["size"]
    assert faults.stats.received == 0


async def test_partial_rai_filter_returns_what_passed(stack: Stack, faults: FaultPlan) -> None:
    faults.push(FaultMode.CONTENT_FILTER, variant=CONTENT_FILTER_PARTIAL)
    generation = await stack.stub.Generate(
        pb.GenerateRequest(model="google/imagen-4.0", prompt="a crowd", n=4), timeout=30
    )
    assert len(generation.images) == 2
    assert generation.filtered_count == 2
    assert [(f.image_count, f.reason) for f in generation.failures] == [
        (2, "CONTENT_POLICY_VIOLATION")
    ]
    # Only what was produced is charged.
    assert Decimal(generation.cost) == CATALOGUE.get("google/imagen-4.0").price_per_image * 2
    assert faults.stats.received == 1


async def test_upstream_timeout_is_deadline_exceeded(
    sandbox: SandboxServer, tmp_path: pathlib.Path
) -> None:
    sandbox.vertex_imagen.faults.push(FaultMode.TIMEOUT)
    # The attempt timeout must outlast a fresh SDK client's first request on
    # a loaded machine (0.3 s did not: the call timed out before it was sent),
    # and still end far inside the 30 s deadline.
    async with running_stack(
        sandbox, tmp_path, vertex_timeout_s=1.5, retired_models=PINNED
    ) as stack:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stack.stub.Generate(
                pb.GenerateRequest(model="google/imagen-4.0", prompt="x"), timeout=30
            )
    details = details_of(caught.value)
    assert (details.code, details.reason) == (grpc.StatusCode.DEADLINE_EXCEEDED, "UPSTREAM_TIMEOUT")
    await sandbox.vertex_imagen.faults.wait_for(lambda s: s.in_flight == 0 and s.cancelled == 1)


async def test_refused_credentials_are_failed_precondition(stack: Stack) -> None:
    stack.sandbox.vertex_imagen.require_auth = True
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.stub.Generate(
            pb.GenerateRequest(model="google/imagen-4.0-ultra", prompt="x"), timeout=30
        )
    details = details_of(caught.value)
    assert (details.code, details.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "UPSTREAM_AUTH_FAILED",
    )
    assert "IMAGE_SERVICE_VERTEX_CREDENTIALS_FILE" in details.message


async def test_missing_project_is_backend_not_configured(
    sandbox: SandboxServer, tmp_path: pathlib.Path
) -> None:
    async with running_stack(sandbox, tmp_path, vertex_project="", retired_models=PINNED) as stack:
        models = await stack.stub.ListModels(pb.ListModelsRequest(), timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stack.stub.Generate(
                pb.GenerateRequest(model="google/imagen-4.0", prompt="x"), timeout=10
            )
    configured = {m.name: m.configured for m in models.models}
    assert [configured[name] for name in IMAGEN] == [False, False, False]
    assert configured["azure/flux-2-pro"] is True
    details = details_of(caught.value)
    assert (details.code, details.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "BACKEND_NOT_CONFIGURED",
    )
    assert details.metadata["setting"] == "IMAGE_SERVICE_VERTEX_PROJECT"
    assert "IMAGE_SERVICE_VERTEX_PROJECT" in details.message
    assert sandbox.vertex_imagen.faults.stats.received == 0


async def test_list_models_shows_imagen_configured(stack: Stack) -> None:
    models = await stack.stub.ListModels(pb.ListModelsRequest(), timeout=10)
    listed = {m.name: m for m in models.models}
    for name in IMAGEN:
        assert listed[name].configured
        assert listed[name].images_per_call == 4
    assert "2048x2048" not in listed["google/imagen-4.0-fast"].sizes
    assert "2048x2048" in listed["google/imagen-4.0-ultra"].sizes


async def test_cancelling_the_rpc_cancels_the_upstream_call(
    stack: Stack, faults: FaultPlan
) -> None:
    faults.latencies = [30.0]
    call = stack.stub.Generate(
        pb.GenerateRequest(model="google/imagen-4.0", prompt="slow", n=4), timeout=60
    )
    await faults.wait_for(lambda s: s.in_flight == 1)

    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call

    stats = await faults.wait_for(lambda s: s.in_flight == 0, within_s=5)
    assert (stats.received, stats.cancelled, stats.completed) == (1, 1, 0)
