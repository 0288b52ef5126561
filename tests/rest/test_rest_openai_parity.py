"""OpenAI Images parameters through the real openai SDK, the sidecar, the gRPC
service and the sandbox: honoured where the model can, reported (the
default) or refused (IMAGE_SERVICE_UNSUPPORTED_PARAMETERS=refuse) where not."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import openai
import pytest

from server.app import create_grpc_service
from server.sandbox.server import SandboxServer
from tests.rest.conftest import RealStack, sidecar_for
from tests.support.images import size_of

MODEL = "azure/flux-2-pro"


def _client(base_url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key="ck-your-key-here", base_url=f"{base_url}/v1", max_retries=0)


async def test_format_and_compression_are_honoured_and_reported(stack: RealStack) -> None:
    async with _client(stack.base_url) as client:
        result = await client.images.generate(
            model=MODEL,
            prompt="a fox",
            size="1792x1024",
            response_format="b64_json",
            output_format="webp",
            output_compression=60,
            quality="high",
            background="transparent",
            moderation="low",
            user="end-user-7",
        )
    assert result.data is not None
    data = base64.b64decode(result.data[0].b64_json or "")
    assert data[:4] == b"RIFF" and data[8:12] == b"WEBP"
    # OpenAI's own response fields, typed by the SDK.
    assert (result.output_format, result.quality, result.background) == ("webp", "auto", "opaque")
    assert result.size == "1440x816"  # what FLUX.2 made of 1792x1024
    extra = result.model_extra or {}
    (image,) = extra["x_chuizi"]["images"]
    assert (image["width"], image["height"]) == size_of(data) == (1440, 816)
    warnings = extra["x_chuizi"]["warnings"]
    for name in ("quality=high", "background=transparent", "moderation=low"):
        assert any(w.startswith(name) and "not honoured" in w for w in warnings), name


async def test_partial_images_are_reported_not_dropped(stack: RealStack) -> None:
    async with _client(stack.base_url) as client:
        stream = await client.images.generate(
            model=MODEL, prompt="a fox", stream=True, partial_images=2
        )
        events = [event async for event in stream]
    # No partial renders exist: the SDK sees only the completed image ...
    assert [e.type for e in events] == ["image_generation.completed"]
    # ... and the record (after [DONE], for raw readers) says so.
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=60) as http:
        raw = await http.post(
            "/v1/images/generations",
            json={"model": MODEL, "prompt": "a fox", "stream": True, "partial_images": 2},
        )
    record = json.loads(raw.text.split("data: [DONE]\n\n")[1].split("data: ", 1)[1])
    (warning,) = record["x_chuizi"]["warnings"]
    assert warning.startswith("partial_images=2 was not honoured")


@pytest.fixture
async def refusing(sandbox: SandboxServer, stack: RealStack, tmp_path: Path) -> AsyncIterator[str]:
    settings = stack.settings.model_copy(
        update={"unsupported_parameters": "refuse", "local_storage_dir": tmp_path / "refuse"}
    )
    service = await create_grpc_service(settings)
    port = await service.start()
    try:
        async with sidecar_for(f"127.0.0.1:{port}", settings) as sidecar:
            yield sidecar.base_url
    finally:
        await service.stop(0)


async def test_a_refusing_deployment_names_the_parameter(
    refusing: str, sandbox: SandboxServer
) -> None:
    before = sandbox.azure_flux.faults.stats.received
    async with _client(refusing) as client:
        with pytest.raises(openai.BadRequestError) as caught:
            await client.images.generate(model=MODEL, prompt="a fox", quality="high")
        assert caught.value.param == "quality"
        # What the model can honour still passes.
        ok = await client.images.generate(model=MODEL, prompt="a fox", output_format="jpeg")
    assert ok.output_format == "jpeg"
    assert sandbox.azure_flux.faults.stats.received == before + 1


async def test_a_bad_value_is_a_400_naming_it(stack: RealStack) -> None:
    async with _client(stack.base_url) as client:
        with pytest.raises(openai.BadRequestError) as caught:
            await client.images.generate(
                model=MODEL,
                prompt="a fox",
                output_format="gif",  # type: ignore[arg-type]
            )
    assert caught.value.param == "output_format"
