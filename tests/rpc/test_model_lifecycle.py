"""Model lifecycle over gRPC: ListModels shows it, a retired name is routed,
pinned or refused as the deployment says, and the record says what served it."""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal

import grpc
import pytest
from chuizi.image.v1 import image_service_pb2 as pb
from chuizi.image.v1 import image_service_pb2_grpc as pb_grpc
from google.cloud.aiplatform_v1.types import content as content_types

from server.app import create_grpc_service
from server.domain.catalogue import Catalogue, RetiredPolicy
from server.sandbox.server import SandboxServer
from tests.rpc.conftest import Stack, details_of
from tests.rpc.stacks import settings_for


@asynccontextmanager
async def service_with(
    sandbox: SandboxServer, tmp_path: pathlib.Path, policies: dict[str, RetiredPolicy]
) -> AsyncIterator[pb_grpc.ImageServiceStub]:
    service = await create_grpc_service(
        settings_for(sandbox, tmp_path / "media", "http://media.invalid/media"),
        catalogue=Catalogue.load(policies=policies),
    )
    await service.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
        try:
            yield pb_grpc.ImageServiceStub(channel)
        finally:
            await service.stop(0)


async def test_list_models_shows_status_date_successor_and_routing(stack: Stack) -> None:
    models = {m.name: m for m in (await stack.stub.ListModels(pb.ListModelsRequest())).models}
    mai = models["azure/mai-image-2"]
    assert (mai.status, mai.retirement_date, mai.successor, mai.routes_to) == (
        pb.MODEL_STATUS_RETIRED,
        "2026-08-15",
        "azure/mai-image-2.6",
        "azure/mai-image-2.6",
    )
    imagen = models["google/imagen-4.0-ultra"]
    assert (imagen.status, imagen.retirement_date, imagen.successor) == (
        pb.MODEL_STATUS_RETIRED,
        "2026-08-17",
        "google/gemini-3-pro-image",
    )
    flux = models["azure/flux-2-pro"]
    assert (flux.status, flux.retirement_date, flux.successor, flux.routes_to) == (
        pb.MODEL_STATUS_ACTIVE,
        "",
        "",
        "",
    )
    # Unknown price: empty, never "0.00000000".
    assert models["azure/mai-image-2.6"].price_per_image == ""


async def test_the_seed_imagen_call_is_served_by_gemini_and_says_so(stack: Stack) -> None:
    """The seed's example (imagen-4.0-fast, n=4) runs on its Gemini successor."""
    generation = await stack.stub.Generate(
        pb.GenerateRequest(model="google/imagen-4.0-fast", prompt="a fox", n=4), timeout=30
    )
    assert sorted(image.index for image in generation.images) == [0, 1, 2, 3]
    assert (generation.model, generation.served_by) == (
        "google/imagen-4.0-fast",
        "google/gemini-3.1-flash-image",
    )
    assert generation.upstream_model == "gemini-3.1-flash-image"
    assert "retired on 2026-08-17" in generation.warnings[0]
    # Four GenerateContent calls with distinct seeds and Imagen Fast's stand-in
    # thinking level; the cost is what the reported tokens cost.
    calls = list(stack.sandbox.vertex_imagen.gemini_received)
    assert len(calls) == 4
    configs = [call.request.generation_config for call in calls]
    assert len({config.seed for config in configs}) == 4
    assert {config.thinking_config.thinking_level for config in configs} == {
        content_types.GenerationConfig.ThinkingConfig.ThinkingLevel.MINIMAL
    }
    assert sorted(image.seed for image in generation.images) == sorted(c.seed for c in configs)
    prompt_tokens = len("a fox") // 4 + 1
    per_image = (Decimal(prompt_tokens) * Decimal("0.50") + 1120 * Decimal(60)) / 1_000_000
    assert Decimal(generation.cost) == (per_image * 4).quantize(Decimal("0.00000001"))
    # The record keeps all of it.
    again = await stack.stub.GetGeneration(
        pb.GetGenerationRequest(generation_id=generation.generation_id)
    )
    assert (again.served_by, again.upstream_model, list(again.warnings)) == (
        generation.served_by,
        generation.upstream_model,
        list(generation.warnings),
    )


async def test_a_deployment_can_refuse_a_retired_model(
    sandbox: SandboxServer, tmp_path: pathlib.Path
) -> None:
    async with service_with(sandbox, tmp_path, {"azure/mai-image-2": RetiredPolicy.REFUSE}) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Generate(pb.GenerateRequest(model="azure/mai-image-2", prompt="x"))
        listed = {m.name: m for m in (await stub.ListModels(pb.ListModelsRequest())).models}
    details = details_of(caught.value)
    assert (details.code, details.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "MODEL_RETIRED")
    assert details.metadata["successor"] == "azure/mai-image-2.6"
    assert "azure/mai-image-2.6" in caught.value.details()
    assert listed["azure/mai-image-2"].routes_to == ""
    assert sandbox.azure_mai.faults.stats.received == 0


async def test_a_deployment_can_pin_a_retired_model(
    sandbox: SandboxServer, tmp_path: pathlib.Path
) -> None:
    async with service_with(
        sandbox,
        tmp_path,
        {"azure/mai-image-2": RetiredPolicy.PIN, "google/imagen-4.0": RetiredPolicy.PIN},
    ) as stub:
        imagen = await stub.Generate(
            pb.GenerateRequest(model="google/imagen-4.0", prompt="x", n=2), timeout=30
        )
        generation = await stub.Generate(
            pb.GenerateRequest(model="azure/mai-image-2", prompt="x"), timeout=30
        )
    assert generation.upstream_model == "MAI-Image-2"
    assert generation.cost == "0.03500000"
    assert "pins the original upstream id" in generation.warnings[0]
    # A pinned Imagen is served by Imagen's own Predict, two images in one call.
    assert (imagen.served_by, imagen.upstream_model) == (
        "google/imagen-4.0",
        "imagen-4.0-generate-001",
    )
    assert len(imagen.images) == 2 and imagen.cost == "0.08000000"
    assert len(sandbox.vertex_imagen.received) == 1
    assert [r.body["model"] for r in sandbox.azure_mai.received] == ["MAI-Image-2"]
