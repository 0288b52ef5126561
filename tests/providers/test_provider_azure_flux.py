"""AzureFluxBackend against the Azure FLUX emulator, over real sockets."""

from __future__ import annotations

import asyncio
import base64
import io
import time
from collections.abc import AsyncIterator

import pytest
from PIL import Image
from pydantic import SecretStr

from server.domain.catalogue import Catalogue, ModelSpec
from server.domain.deadline import Deadline
from server.domain.errors import (
    CapabilityNotSupported,
    ContentRejected,
    InvalidArgument,
    RateLimited,
    UpstreamAuthFailed,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from server.domain.ports import UpstreamCall
from server.domain.requests import Operation, Size
from server.domain.retry import RetryPolicy
from server.providers.azure_flux import AzureFluxBackend, nearest_aspect_ratio, pixel_size
from server.sandbox.azure_flux import (
    CONTENT_FILTER_FINISH_REASON,
    CONTENT_FILTER_HTTP,
    SANDBOX_AZURE_FLUX_KEY,
)
from server.sandbox.faults import FaultMode, FaultPlan
from server.sandbox.render import render_png
from server.sandbox.server import SandboxServer

FAST_RETRY = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.05)
CATALOGUE = Catalogue.load()
KONTEXT = CATALOGUE.get("azure/flux-kontext-pro")
FLUX2 = CATALOGUE.get("azure/flux-2-pro")
SQUARE = Size(1024, 1024)


@pytest.fixture
async def sandbox() -> AsyncIterator[SandboxServer]:
    async with SandboxServer("127.0.0.1", 0) as server:
        yield server


@pytest.fixture
def faults(sandbox: SandboxServer) -> FaultPlan:
    return sandbox.azure_flux.faults


def make_backend(sandbox: SandboxServer, key: str = SANDBOX_AZURE_FLUX_KEY) -> AzureFluxBackend:
    return AzureFluxBackend(
        endpoint=sandbox.base_url,
        api_key=SecretStr(key),
        api_version="preview",
        timeout_s=10.0,
        retry=FAST_RETRY,
    )


@pytest.fixture
async def backend(sandbox: SandboxServer) -> AsyncIterator[AzureFluxBackend]:
    backend = make_backend(sandbox)
    yield backend
    await backend.aclose()


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


async def test_wrong_key_is_auth_failure(sandbox: SandboxServer, faults: FaultPlan) -> None:
    backend = make_backend(sandbox, key="not-the-key")
    try:
        with pytest.raises(UpstreamAuthFailed) as caught:
            await backend.run(generate(), Deadline.after(5))
    finally:
        await backend.aclose()
    assert "not-the-key" not in caught.value.message
    assert "IMAGE_SERVICE_AZURE_FLUX_API_KEY" in caught.value.message
    assert faults.stats.received == 1


async def test_bad_request_is_rejected_without_retry(
    backend: AzureFluxBackend, faults: FaultPlan
) -> None:
    faults.push(FaultMode.BAD_REQUEST)
    with pytest.raises(UpstreamRejected) as caught:
        await backend.run(generate(), Deadline.after(5))
    assert caught.value.metadata["upstream_status"] == "400"
    assert "sandbox fault" not in caught.value.message  # the upstream body stays out
    assert faults.stats.received == 1


@pytest.mark.parametrize("variant", [CONTENT_FILTER_HTTP, CONTENT_FILTER_FINISH_REASON])
async def test_content_filter_is_content_rejected_and_not_retried(
    backend: AzureFluxBackend, faults: FaultPlan, variant: str
) -> None:
    faults.push(FaultMode.CONTENT_FILTER, variant=variant, times=3)
    with pytest.raises(ContentRejected):
        await backend.run(generate(), Deadline.after(5))
    assert faults.stats.received == 1


async def test_rate_limit_honours_retry_after_then_succeeds(
    backend: AzureFluxBackend, faults: FaultPlan
) -> None:
    faults.push(FaultMode.RATE_LIMIT, retry_after=0.4)
    started = time.monotonic()

    result = await backend.run(generate(), Deadline.after(10))

    assert time.monotonic() - started >= 0.4
    assert len(result.images) == 1
    assert faults.stats.received == 2


async def test_persistent_rate_limit_surfaces_retry_after(
    backend: AzureFluxBackend, faults: FaultPlan
) -> None:
    faults.push(FaultMode.RATE_LIMIT, retry_after=0.05, times=10)
    with pytest.raises(RateLimited) as caught:
        await backend.run(generate(), Deadline.after(10))
    assert caught.value.retry_after == pytest.approx(0.05)
    assert faults.stats.received == FAST_RETRY.attempts


async def test_retry_after_beyond_deadline_fails_fast(
    backend: AzureFluxBackend, faults: FaultPlan
) -> None:
    faults.push(FaultMode.RATE_LIMIT, retry_after=5, times=10)
    started = time.monotonic()
    with pytest.raises(RateLimited) as caught:
        await backend.run(generate(), Deadline.after(2))
    assert time.monotonic() - started < 1.0
    assert caught.value.retry_after == 5
    assert faults.stats.received == 1


async def test_server_error_is_retried(backend: AzureFluxBackend, faults: FaultPlan) -> None:
    faults.push(FaultMode.SERVER_ERROR)
    result = await backend.run(generate(), Deadline.after(10))
    assert len(result.images) == 1
    assert faults.stats.received == 2


async def test_persistent_server_error_is_unavailable(
    backend: AzureFluxBackend, faults: FaultPlan
) -> None:
    faults.push(FaultMode.SERVER_ERROR, times=10)
    with pytest.raises(UpstreamUnavailable):
        await backend.run(generate(), Deadline.after(10))
    assert faults.stats.received == FAST_RETRY.attempts


async def test_timeout_stops_at_the_deadline(backend: AzureFluxBackend, faults: FaultPlan) -> None:
    faults.push(FaultMode.TIMEOUT, times=10)
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout):
        await backend.run(generate(), Deadline.after(0.5))
    assert 0.4 <= time.monotonic() - started < 1.5
    # The abandoned request is not left hanging in the emulator.
    await faults.wait_for(lambda s: s.in_flight == 0 and s.cancelled == 1)


async def test_dropped_connection_is_retried(backend: AzureFluxBackend, faults: FaultPlan) -> None:
    faults.push(FaultMode.DROP_CONNECTION)
    result = await backend.run(generate(), Deadline.after(10))
    assert len(result.images) == 1
    assert (faults.stats.received, faults.stats.dropped) == (2, 1)


async def test_persistent_dropped_connection_is_unavailable(
    backend: AzureFluxBackend, faults: FaultPlan
) -> None:
    faults.push(FaultMode.DROP_CONNECTION, times=10)
    with pytest.raises(UpstreamUnavailable):
        await backend.run(generate(), Deadline.after(10))
    assert faults.stats.dropped == FAST_RETRY.attempts


async def test_cancelling_the_call_cancels_the_upstream_request(
    backend: AzureFluxBackend, faults: FaultPlan
) -> None:
    faults.latencies = [30.0]
    task = asyncio.create_task(backend.run(generate(), Deadline.after(60)))
    await faults.wait_for(lambda s: s.in_flight == 1)

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    stats = await faults.wait_for(lambda s: s.in_flight == 0, within_s=2)
    assert (stats.received, stats.cancelled, stats.completed) == (1, 1, 0)


async def test_concurrent_calls_finish_in_latency_order(
    backend: AzureFluxBackend, faults: FaultPlan
) -> None:
    faults.latencies = [0.6, 0.1, 0.45, 0.25]
    finished: list[int] = []

    async def one(index: int) -> None:
        await backend.run(generate(seed=index), Deadline.after(10))
        finished.append(index)

    async with asyncio.TaskGroup() as group:
        for index in range(4):
            group.create_task(one(index))
            # Let each request reach the emulator before the next is sent,
            # so request i takes latency i.
            await faults.wait_for(lambda s, n=index + 1: s.received == n)

    assert finished == [1, 3, 2, 0]


async def test_prompt_directive_injects_a_fault(
    backend: AzureFluxBackend, faults: FaultPlan
) -> None:
    call = UpstreamCall(
        model=FLUX2, prompt="fox [sandbox:fault=bad_request]", size=Size(1024, 1024), count=1
    )
    with pytest.raises(UpstreamRejected):
        await backend.run(call, Deadline.after(5))
    assert faults.stats.faults[FaultMode.BAD_REQUEST] == 1
