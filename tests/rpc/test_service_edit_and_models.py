"""Edit, StreamEdit and ListModels over a real socket."""

from __future__ import annotations

import grpc
from chuizi.image.v1 import image_service_pb2 as pb

from server.domain.catalogue import Catalogue
from server.sandbox.render import noise_png
from tests.rpc.conftest import Stack
from tests.support.images import png, size_of

KONTEXT = "azure/flux-kontext-pro"


async def test_prompt_edit_on_kontext_sends_the_image_upstream(stack: Stack) -> None:
    source = png(640, 480)
    generation = await stack.stub.Edit(
        pb.EditRequest(model=KONTEXT, prompt="make the car red", images=[source]), timeout=30
    )
    assert generation.operation == pb.OPERATION_PROMPT_EDIT
    assert len(generation.images) == 1
    received = stack.sandbox.azure_flux.received[-1]
    assert received.body["input_image"]
    image = generation.images[0]
    # No size asked: the emulator keeps the input's 4:3 ratio at ~1 MP.
    assert abs(image.width / image.height - 4 / 3) < 0.05


async def test_stream_edit_yields_images_then_the_record(stack: Stack) -> None:
    messages = [
        m
        async for m in stack.stub.StreamEdit(
            pb.EditRequest(model=KONTEXT, prompt="add a hat", images=[png()], n=2), timeout=30
        )
    ]
    assert [m.WhichOneof("event") for m in messages] == ["image", "image", "generation"]
    assert messages[-1].generation.cost == "0.10000000"


async def test_large_edit_inputs_fit_the_message_limit(stack: Stack) -> None:
    # ~6.9 MB of incompressible PNG: over gRPC's 4 MiB default receive limit.
    big = noise_png(1520, 1520, seed=1)
    assert len(big) > 6_000_000
    generation = await stack.stub.Edit(
        pb.EditRequest(
            model=KONTEXT,
            prompt="tidy it",
            images=[big],
            response_format=pb.RESPONSE_FORMAT_INLINE,
        ),
        timeout=60,
    )
    assert size_of(generation.images[0].data) == (
        generation.images[0].width,
        generation.images[0].height,
    )


async def test_list_models_is_the_catalogue(stack: Stack) -> None:
    response = await stack.stub.ListModels(pb.ListModelsRequest(), timeout=10)
    listed = {m.name: m for m in response.models}
    assert set(listed) == {m.name for m in Catalogue.load()}
    kontext = listed[KONTEXT]
    assert kontext.configured
    assert (kontext.provider, kontext.max_size, kontext.price_per_image) == (
        "Azure (FLUX)",
        "1440x1440",
        "0.05000000",
    )
    assert list(kontext.sizes) == ["1024x1024", "1792x1024", "1024x1792"]
    assert (kontext.images_per_call, kontext.max_images_per_request) == (1, 4)
    assert set(kontext.operations) == {pb.OPERATION_GENERATE, pb.OPERATION_PROMPT_EDIT}
    assert listed["google/imagen-4.0"].images_per_call == 4


async def test_server_accepts_large_messages_but_the_default_client_does_not(
    stack: Stack,
) -> None:
    """The limit is the server's option, not luck: a default-configured client
    cannot even send the same edit."""
    channel = grpc.aio.insecure_channel(stack.target)
    try:
        from chuizi.image.v1 import image_service_pb2_grpc as pb_grpc

        stub = pb_grpc.ImageServiceStub(channel)
        response = await stub.ListModels(pb.ListModelsRequest(), timeout=10)
        assert response.models
    finally:
        await channel.close()
