"""The bedrock/stability-* models through the whole service: gRPC → orchestrator →
boto3 → the Bedrock emulator → storage."""

from __future__ import annotations

import asyncio
import base64
import io
import pathlib
import time
from typing import Any

import grpc
import pytest
from chuizi.image.v1 import image_service_pb2 as pb
from PIL import Image

from server.domain.catalogue import Catalogue
from server.sandbox.faults import FaultMode, FaultPlan
from server.sandbox.server import SandboxServer
from tests.rpc.conftest import Stack, details_of
from tests.rpc.stacks import running_stack
from tests.support.images import alpha_mask, png, size_of

CATALOGUE = Catalogue.load()
BEDROCK_MODELS = [m for m in CATALOGUE if m.backend == "bedrock_stability"]
TEXT_TO_IMAGE = [
    "bedrock/stability-sd3-5-large",
    "bedrock/stability-stable-image-core",
    "bedrock/stability-stable-image-ultra",
]
PRODUCED = {"1024x1024": (1024, 1024), "1792x1024": (1344, 768), "1024x1792": (768, 1344)}
CORE = "bedrock/stability-stable-image-core"


def plan(stack: Stack) -> FaultPlan:
    return stack.sandbox.bedrock_stability.faults


def bodies(stack: Stack) -> list[dict[str, Any]]:
    return [r.body for r in stack.sandbox.bedrock_stability.received]


async def rpc_error(awaitable: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await awaitable
    return caught.value


@pytest.mark.parametrize("n", [1, 4])
@pytest.mark.parametrize("size", list(PRODUCED))
@pytest.mark.parametrize("model", TEXT_TO_IMAGE)
async def test_generate_each_model_size_and_n(stack: Stack, model: str, size: str, n: int) -> None:
    spec = CATALOGUE.get(model)
    generation = await stack.stub.Generate(
        pb.GenerateRequest(model=model, prompt="a lighthouse at dusk", size=size, n=n, seed=100),
        timeout=60,
    )

    assert len(generation.images) == n
    assert [(i.width, i.height) for i in generation.images] == [PRODUCED[size]] * n
    assert all(i.mime_type == "image/png" and i.stored and i.url for i in generation.images)
    assert generation.cost == f"{spec.price_per_image * n:.8f}"
    assert generation.size == size
    # One image per InvokeModel: n fans out into n calls with distinct seeds.
    assert plan(stack).stats.received == n
    sent = bodies(stack)
    assert sorted(b["seed"] for b in sent) == [100 + i for i in range(n)]
    assert {b["aspect_ratio"] for b in sent} == {
        {"1024x1024": "1:1", "1792x1024": "16:9", "1024x1792": "9:16"}[size]
    }
    stored = stack.media_dir / generation.images[0].url.rsplit("/media/", 1)[1]
    assert size_of(stored.read_bytes()) == PRODUCED[size]


async def test_remove_background_edit(stack: Stack) -> None:
    generation = await stack.stub.Edit(
        pb.EditRequest(
            model="bedrock/stability-remove-background",
            images=[png(320, 200)],
            operation=pb.OPERATION_REMOVE_BACKGROUND,
            response_format=pb.RESPONSE_FORMAT_INLINE,
        ),
        timeout=30,
    )
    assert generation.operation == pb.OPERATION_REMOVE_BACKGROUND
    (image,) = generation.images
    assert (image.width, image.height, image.mime_type) == (320, 200, "image/png")
    with Image.open(io.BytesIO(image.data)) as decoded:
        assert decoded.mode == "RGBA"
        assert decoded.getchannel("A").getpixel((0, 0)) == 0
    assert set(bodies(stack)[-1]) == {"image", "output_format"}


async def test_inpaint_edit_with_an_openai_alpha_mask(stack: Stack) -> None:
    source = png(256, 192, color=(10, 200, 10))
    generation = await stack.stub.Edit(
        pb.EditRequest(
            model="bedrock/stability-inpaint",
            prompt="a field of red poppies",
            images=[source],
            mask=alpha_mask(256, 192),
            operation=pb.OPERATION_INPAINT,
            response_format=pb.RESPONSE_FORMAT_INLINE,
        ),
        timeout=30,
    )
    (image,) = generation.images
    assert (image.width, image.height) == (256, 192)
    body = bodies(stack)[-1]
    # The alpha mask reached Bedrock as grayscale, white (repaint) where it was transparent.
    with Image.open(io.BytesIO(base64.b64decode(body["mask"]))) as mask:
        assert mask.mode == "L"
        assert mask.size == (256, 192)
        assert (mask.getpixel((10, 10)), mask.getpixel((250, 10))) == (255, 0)
    assert body["prompt"] == "a field of red poppies"
    with Image.open(io.BytesIO(image.data)) as result:
        rgb = result.convert("RGB")
        assert rgb.getpixel((250, 180)) == (10, 200, 10)  # kept
        assert rgb.getpixel((60, 100)) != (10, 200, 10)  # repainted


@pytest.mark.parametrize(
    ("model", "prompt", "source", "expected"),
    [
        ("bedrock/stability-fast-upscale", "", (160, 90), (640, 360)),
        ("bedrock/stability-conservative-upscale", "a crisp photo", (200, 100), (800, 400)),
    ],
)
async def test_upscale_edits(
    stack: Stack,
    model: str,
    prompt: str,
    source: tuple[int, int],
    expected: tuple[int, int],
) -> None:
    generation = await stack.stub.Edit(
        pb.EditRequest(
            model=model, prompt=prompt, images=[png(*source)], operation=pb.OPERATION_UPSCALE
        ),
        timeout=30,
    )
    (image,) = generation.images
    assert (image.width, image.height) == expected
    assert generation.cost == f"{CATALOGUE.get(model).price_per_image:.8f}"


async def test_conservative_upscale_without_a_prompt_is_invalid(stack: Stack) -> None:
    error = await rpc_error(
        stack.stub.Edit(
            pb.EditRequest(
                model="bedrock/stability-conservative-upscale",
                images=[png(200, 100)],
                operation=pb.OPERATION_UPSCALE,
            ),
            timeout=30,
        )
    )
    details = details_of(error)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [field for field, _ in details.violations] == ["prompt"]
    assert plan(stack).stats.received == 0


async def test_edit_n4_fans_out(stack: Stack) -> None:
    generation = await stack.stub.Edit(
        pb.EditRequest(
            model="bedrock/stability-fast-upscale",
            images=[png(64, 64)],
            operation=pb.OPERATION_UPSCALE,
            n=4,
        ),
        timeout=30,
    )
    assert [(i.width, i.height) for i in generation.images] == [(256, 256)] * 4
    assert plan(stack).stats.received == 4


async def test_a_hung_model_ends_at_the_callers_deadline(stack: Stack) -> None:
    plan(stack).push(FaultMode.TIMEOUT)
    started = time.monotonic()
    error = await rpc_error(
        stack.stub.Generate(pb.GenerateRequest(model=CORE, prompt="a fox"), timeout=1.0)
    )
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 3


async def test_one_filtered_call_of_four_keeps_the_other_images(stack: Stack) -> None:
    plan(stack).push(FaultMode.CONTENT_FILTER)
    generation = await stack.stub.Generate(
        pb.GenerateRequest(model=CORE, prompt="a fox", n=4), timeout=30
    )
    assert len(generation.images) == 3
    assert [(f.image_count, f.reason) for f in generation.failures] == [
        (1, "CONTENT_POLICY_VIOLATION")
    ]
    assert generation.cost == f"{CATALOGUE.get(CORE).price_per_image * 3:.8f}"


async def test_cancelling_the_stream_stops_the_generation(stack: Stack) -> None:
    faults = plan(stack)
    faults.latencies = [0.05, 30, 30, 30]
    call = stack.stub.StreamGenerate(
        pb.GenerateRequest(model=CORE, prompt="slow foxes", n=4), timeout=60
    )
    first = await call.read()
    assert first.HasField("image")
    started = time.monotonic()
    call.cancel()
    assert await call.code() == grpc.StatusCode.CANCELLED
    assert time.monotonic() - started < 10  # not the slow calls' 30 s
    # boto3 cannot abort a request on the wire (see the backend's docstring):
    # the three slow calls stay open upstream, but nothing new is sent.
    await asyncio.sleep(0.3)
    assert (faults.stats.received, faults.stats.completed) == (4, 1)


async def test_without_a_region_the_models_are_not_configured(
    sandbox: SandboxServer, tmp_path: pathlib.Path
) -> None:
    async with running_stack(sandbox, tmp_path, bedrock_region="") as stack:
        listed = {
            m.name: m.configured
            for m in (await stack.stub.ListModels(pb.ListModelsRequest(), timeout=10)).models
        }
        assert {name: listed[name] for name in (m.name for m in BEDROCK_MODELS)} == {
            m.name: False for m in BEDROCK_MODELS
        }
        for request in (
            stack.stub.Generate(pb.GenerateRequest(model=CORE, prompt="a fox"), timeout=10),
            stack.stub.Edit(
                pb.EditRequest(
                    model="bedrock/stability-remove-background",
                    images=[png()],
                    operation=pb.OPERATION_REMOVE_BACKGROUND,
                ),
                timeout=10,
            ),
        ):
            details = details_of(await rpc_error(request))
            assert details.code == grpc.StatusCode.FAILED_PRECONDITION
            assert details.reason == "BACKEND_NOT_CONFIGURED"
            assert details.metadata["setting"] == "IMAGE_SERVICE_BEDROCK_REGION"
            assert details.metadata["backend"] == "bedrock_stability"
            assert "IMAGE_SERVICE_BEDROCK_REGION" in details.message
    assert sandbox.bedrock_stability.faults.stats.received == 0


async def test_configured_models_are_listed_as_configured(stack: Stack) -> None:
    response = await stack.stub.ListModels(pb.ListModelsRequest(), timeout=10)
    listed = {m.name: m for m in response.models}
    for spec in BEDROCK_MODELS:
        assert listed[spec.name].configured
        assert listed[spec.name].images_per_call == 1
    assert set(listed["bedrock/stability-inpaint"].operations) == {pb.OPERATION_INPAINT}


async def test_wrong_credentials_fail_without_leaking_them(
    sandbox: SandboxServer, tmp_path: pathlib.Path
) -> None:
    async with running_stack(
        sandbox, tmp_path, bedrock_secret_access_key="wrong-secret-value"
    ) as stack:
        error = await rpc_error(
            stack.stub.Generate(pb.GenerateRequest(model=CORE, prompt="a fox"), timeout=10)
        )
    details = details_of(error)
    assert (details.code, details.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "UPSTREAM_AUTH_FAILED",
    )
    assert "wrong-secret-value" not in details.message
    assert "wrong-secret-value" not in str(details.metadata)
    # Auth failures are not retried.
    assert sandbox.bedrock_stability.faults.stats.received == 1
