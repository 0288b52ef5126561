"""azure/flux-* end to end when the BFL route answers with a URL or a polling
link: gRPC service -> AzureFluxBackend -> the Azure FLUX emulator, over real
sockets. The image is fetched (or polled for) and stored like any other;
the generation is submitted exactly once, whatever happens after."""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator

import grpc
import pytest
from chuizi.image.v1 import image_service_pb2 as pb

from server.sandbox.azure_flux import AzureFluxEmulator
from server.sandbox.server import SandboxServer
from tests.rpc.conftest import Stack
from tests.rpc.stacks import running_stack
from tests.support.images import size_of

FAST_POLLING = {"azure_flux_poll_initial_s": 0.01, "azure_flux_poll_max_s": 0.05}


@pytest.fixture
async def flux_stack(sandbox: SandboxServer, tmp_path: pathlib.Path) -> AsyncIterator[Stack]:
    sandbox.azure_flux.delivery_host = "localhost"
    async with running_stack(sandbox, tmp_path, **FAST_POLLING) as stack:
        yield stack


def emulator_of(stack: Stack) -> AzureFluxEmulator:
    return stack.sandbox.azure_flux


@pytest.mark.parametrize(
    "answer", ["[sandbox:answer=url]", "[sandbox:answer=polling] [sandbox:pending_polls=2]"]
)
async def test_linked_images_are_fetched_and_stored(flux_stack: Stack, answer: str) -> None:
    generation = await flux_stack.stub.Generate(
        pb.GenerateRequest(
            model="azure/flux-2-pro", prompt=f"a red fox {answer}", n=2, size="1792x1024"
        ),
        timeout=30,
    )

    assert len(generation.images) == 2
    for image in generation.images:
        assert (image.width, image.height) == (1440, 816)
        stored = flux_stack.media_dir / image.url.split("/media/", 1)[1]
        assert size_of(stored.read_bytes()) == (1440, 816)
    emulator = emulator_of(flux_stack)
    assert emulator.faults.stats.received == 2
    assert emulator.tasks.stats.deliveries_with_credentials == 0


async def test_deadline_during_polling_is_deadline_exceeded_with_one_submission(
    flux_stack: Stack,
) -> None:
    request = pb.GenerateRequest(
        model="azure/flux-kontext-pro",
        prompt="a red fox [sandbox:answer=polling] [sandbox:pending_polls=forever]",
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await flux_stack.stub.Generate(request, timeout=1.0)

    assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    emulator = emulator_of(flux_stack)
    assert emulator.faults.stats.received == 1
    assert emulator.tasks.stats.polls >= 1
    assert emulator.tasks.stats.deliveries == 0
