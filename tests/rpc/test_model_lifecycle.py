"""Model lifecycle over gRPC: ListModels shows it, a retired name is routed,
pinned or refused as the deployment says, and the record says what served it."""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc
import pytest
from chuizi.image.v1 import image_service_pb2 as pb
from chuizi.image.v1 import image_service_pb2_grpc as pb_grpc

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


async def test_a_pinned_model_records_its_own_upstream_id_and_warns(stack: Stack) -> None:
    generation = await stack.stub.Generate(
        pb.GenerateRequest(model="google/imagen-4.0-fast", prompt="a fox", n=4), timeout=30
    )
    assert len(generation.images) == 4
    assert (generation.model, generation.served_by) == ("google/imagen-4.0-fast",) * 2
    assert generation.upstream_model == "imagen-4.0-fast-generate-001"
    assert "retired upstream on 2026-08-17" in generation.warnings[0]
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
    async with service_with(sandbox, tmp_path, {"azure/mai-image-2": RetiredPolicy.PIN}) as stub:
        generation = await stub.Generate(
            pb.GenerateRequest(model="azure/mai-image-2", prompt="x"), timeout=30
        )
    assert generation.upstream_model == "MAI-Image-2"
    assert generation.cost == "0.03500000"
    assert [r.body["model"] for r in sandbox.azure_mai.received] == ["MAI-Image-2"]
