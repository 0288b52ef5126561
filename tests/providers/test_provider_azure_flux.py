"""AzureFluxBackend against the Azure FLUX emulator, over real sockets: what
only FLUX does. The failure behaviour every backend shares is in
test_backend_contract.py."""

from __future__ import annotations

import asyncio
import base64
import io

import pytest
from PIL import Image

from server.domain.catalogue import Catalogue, ModelSpec
from server.domain.deadline import Deadline
from server.domain.errors import CapabilityNotSupported, InvalidArgument
from server.domain.ports import UpstreamCall
from server.domain.requests import Operation, Size
from server.providers.azure_flux.backend import AzureFluxBackend
from server.providers.azure_flux.request import nearest_aspect_ratio, pixel_size
from server.sandbox.faults import FaultPlan
from server.sandbox.render import render_png
from server.sandbox.server import SandboxServer
from tests.providers.backends import azure_flux as make_backend
from tests.providers.conftest import backend_fixture

CATALOGUE = Catalogue.load()
KONTEXT = CATALOGUE.get("azure/flux-kontext-pro")
FLUX2 = CATALOGUE.get("azure/flux-2-pro")
SQUARE = Size(1024, 1024)


@pytest.fixture
def faults(sandbox: SandboxServer) -> FaultPlan:
    return sandbox.azure_flux.faults


backend = backend_fixture(make_backend)


def generate(
    model: ModelSpec = FLUX2,
    size: Size | None = SQUARE,
    *,
    operation: Operation = Operation.GENERATE,
    images: tuple[bytes, ...] = (),
    mask: bytes | None = None,
    seed: int | None = None,
) -> UpstreamCall:
    return UpstreamCall(
        model=model,
        prompt="a red fox in an autumn forest",
        size=size,
        count=1,
        operation=operation,
        images=images,
        mask=mask,
        seed=seed,
    )


def decoded_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        return image.size


@pytest.mark.parametrize(
    ("model", "size", "expected"),
    [
        (KONTEXT, Size(1024, 1024), (1024, 1024)),
        (KONTEXT, Size(1792, 1024), (1376, 768)),
        (KONTEXT, Size(1024, 1792), (768, 1376)),
        (FLUX2, Size(1024, 1024), (1024, 1024)),
        (FLUX2, Size(1792, 1024), (1440, 816)),
        (FLUX2, Size(1024, 1792), (816, 1440)),
    ],
    ids=lambda v: str(v) if isinstance(v, Size) else getattr(v, "name", None),
)
async def test_generate_every_catalogue_size(
    backend: AzureFluxBackend,
    sandbox: SandboxServer,
    model: ModelSpec,
    size: Size,
    expected: tuple[int, int],
) -> None:
    assert size in model.sizes
    result = await backend.run(generate(model, size, seed=7), Deadline.after(10))

    assert len(result.images) == 1
    assert result.filtered == 0
    assert result.images[0].mime_type == "image/png"
    assert decoded_size(result.images[0].data) == expected
    sent = sandbox.azure_flux.received[-1]
    assert sent.model_path == model.upstream_id
    assert sent.body["model"] == model.options["upstream_model"]
    assert sent.body["seed"] == 7
    assert sent.body["output_format"] == "png"
    if model is KONTEXT:
        assert sent.body["aspect_ratio"] == nearest_aspect_ratio(size)
        assert "width" not in sent.body
    else:
        assert (sent.body["width"], sent.body["height"]) == expected


def test_size_mapping() -> None:
    assert nearest_aspect_ratio(Size(1792, 1024)) == "16:9"
    assert nearest_aspect_ratio(Size(1024, 1792)) == "9:16"
    assert nearest_aspect_ratio(Size(4000, 1000)) == "21:9"
    assert nearest_aspect_ratio(Size(1000, 1000)) == "1:1"
    assert pixel_size(Size(2048, 2048)) == Size(1440, 1440)
    assert pixel_size(Size(100, 100)) == Size(256, 256)
    assert pixel_size(Size(1000, 1000)) == Size(1008, 1008)


async def test_prompt_edit_sends_raw_base64_and_keeps_input_shape(
    backend: AzureFluxBackend, sandbox: SandboxServer
) -> None:
    source = render_png(640, 480, "source image")
    call = generate(KONTEXT, None, operation=Operation.PROMPT_EDIT, images=(source,))

    result = await backend.run(call, Deadline.after(10))

    width, height = decoded_size(result.images[0].data)
    assert abs(width / height - 640 / 480) < 0.05
    body = sandbox.azure_flux.received[-1].body
    assert base64.b64decode(body["input_image"]) == source
    assert "aspect_ratio" not in body


async def test_flux2_edit_with_several_images(
    backend: AzureFluxBackend, sandbox: SandboxServer
) -> None:
    images = (render_png(512, 512, "one"), render_png(512, 256, "two"))
    call = generate(FLUX2, Size(1024, 1024), operation=Operation.PROMPT_EDIT, images=images)

    result = await backend.run(call, Deadline.after(10))

    assert decoded_size(result.images[0].data) == (1024, 1024)
    body = sandbox.azure_flux.received[-1].body
    assert base64.b64decode(body["input_image_2"]) == images[1]


async def test_kontext_refuses_two_input_images_and_masks(backend: AzureFluxBackend) -> None:
    two = (render_png(64, 64, "a"), render_png(64, 64, "b"))
    with pytest.raises(InvalidArgument):
        await backend.run(
            generate(KONTEXT, None, operation=Operation.PROMPT_EDIT, images=two), Deadline.after(5)
        )
    with pytest.raises(CapabilityNotSupported):
        await backend.run(
            generate(KONTEXT, None, operation=Operation.INPAINT, images=two[:1], mask=b"m"),
            Deadline.after(5),
        )


async def test_concurrent_calls_finish_in_latency_order(
    backend: AzureFluxBackend, faults: FaultPlan
) -> None:
    # The upstream answers in the order latencies of 0.6, 0.1, 0.45 and
    # 0.25 s would give, released by the test rather than timed, so the
    # order cannot depend on how busy the machine is.
    gates = [faults.hold() for _ in range(4)]
    done: asyncio.Queue[int] = asyncio.Queue()
    finished: list[int] = []

    async def one(index: int) -> None:
        await backend.run(generate(seed=index), Deadline.after(10))
        done.put_nowait(index)

    async with asyncio.TaskGroup() as group:
        for index in range(4):
            group.create_task(one(index))
            # Let each request reach the emulator's plan before the next is
            # sent, so request i is held by gate i.
            await faults.wait_for(lambda s, n=index + 1: s.faults.total() == n)
        for index in (1, 3, 2, 0):
            gates[index].set()
            # Each call finishes as its answer arrives, the others still held.
            finished.append(await asyncio.wait_for(done.get(), 10))

    assert finished == [1, 3, 2, 0]
