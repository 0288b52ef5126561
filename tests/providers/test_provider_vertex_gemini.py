"""The Gemini image models through VertexImagenBackend's GenerateContent path,
with the real aiplatform_v1 client against the Vertex emulator: sizes onto
Gemini's ratio/tier table, the request body, prompt edits with references,
token usage and safety blocks. Shared failure behaviour is in
test_backend_contract.py."""

from __future__ import annotations

from dataclasses import replace

import pytest
from google.cloud.aiplatform_v1.types import content as content_types

from server.domain.catalogue import Catalogue
from server.domain.deadline import Deadline
from server.domain.errors import (
    BackendNotConfigured,
    CapabilityNotSupported,
    ContentRejected,
    UpstreamRejected,
)
from server.domain.ports import UpstreamCall
from server.domain.pricing import TokenUsage
from server.domain.requests import Operation, Size
from server.providers.vertex_imagen.backend import VertexImagenBackend
from server.providers.vertex_imagen.gemini import output_for
from server.sandbox.faults import FaultMode
from server.sandbox.server import SandboxServer
from server.sandbox.vertex_imagen import CONTENT_FILTER_ALL
from tests.providers import backends
from tests.providers.conftest import backend_fixture
from tests.support.images import png, size_of

CATALOGUE = Catalogue.load()
FLASH = CATALOGUE.get("google/gemini-3.1-flash-image")
PRO = CATALOGUE.get("google/gemini-3-pro-image")
MINIMAL = content_types.GenerationConfig.ThinkingConfig.ThinkingLevel.MINIMAL

backend = backend_fixture(backends.vertex_imagen)


def call(**changes: object) -> UpstreamCall:
    base = UpstreamCall(model=FLASH, prompt="a fox", size=Size(1024, 1024), count=1)
    return replace(base, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("size", "ratio", "tier", "produced"),
    [
        ("1024x1024", "1:1", "1K", (1024, 1024)),
        ("1792x1024", "16:9", "1K", (1376, 768)),
        ("1024x1792", "9:16", "1K", (768, 1376)),
        ("1536x1024", "3:2", "1K", (1264, 848)),
        ("1024x1536", "2:3", "1K", (848, 1264)),
        ("2048x2048", "1:1", "2K", (2048, 2048)),
        ("4096x4096", "1:1", "4K", (4096, 4096)),
    ],
)
def test_each_offered_size_maps_to_a_ratio_and_the_nearest_tier(
    size: str, ratio: str, tier: str, produced: tuple[int, int]
) -> None:
    assert Size.parse(size) in FLASH.sizes
    output = output_for(Size.parse(size))
    assert (output.aspect_ratio, output.image_size) == (ratio, tier)
    assert (output.pixels.width, output.pixels.height) == produced


@pytest.mark.parametrize(
    ("size", "produced"), [("1792x1024", (1376, 768)), ("2048x2048", (2048, 2048))]
)
async def test_generate_sends_image_config_and_reports_tokens(
    backend: VertexImagenBackend, sandbox: SandboxServer, size: str, produced: tuple[int, int]
) -> None:
    result = await backend.run(call(size=Size.parse(size), seed=7), Deadline.after(30))
    (image,) = result.images
    assert size_of(image.data) == produced and image.mime_type == "image/png"
    (received,) = sandbox.vertex_imagen.gemini_received
    assert received.endpoint.endswith("/publishers/google/models/gemini-3.1-flash-image")
    config = received.request.generation_config
    assert list(config.response_modalities) == [content_types.GenerationConfig.Modality.IMAGE]
    assert (config.candidate_count, config.seed) == (1, 7)
    assert not config.HasField("thinking_config")
    tier = "2K" if produced[0] == 2048 else "1K"
    assert config.image_config.image_size == tier
    # Flash's image token counts per tier (Google's model page): 1K 1120, 2K 1680.
    expected = {"1K": 1120, "2K": 1680}[tier]
    assert result.usage == TokenUsage(len("a fox") // 4 + 1, expected, 0)


async def test_a_routed_imagen_tier_sends_its_thinking_level(
    backend: VertexImagenBackend, sandbox: SandboxServer
) -> None:
    fast = CATALOGUE.resolve("google/imagen-4.0-fast").serving
    await backend.run(call(model=fast), Deadline.after(30))
    (received,) = sandbox.vertex_imagen.gemini_received
    assert received.request.generation_config.thinking_config.thinking_level == MINIMAL


async def test_a_prompt_edit_sends_the_references_as_inline_parts(
    backend: VertexImagenBackend, sandbox: SandboxServer
) -> None:
    references = (png(300, 200), png(64, 64, (0, 0, 200)))
    result = await backend.run(
        call(model=PRO, operation=Operation.PROMPT_EDIT, size=None, images=references),
        Deadline.after(30),
    )
    (received,) = sandbox.vertex_imagen.gemini_received
    parts = received.request.contents[0].parts
    assert parts[0].text == "a fox"
    assert [p.inline_data.data for p in parts[1:]] == list(references)
    assert [p.inline_data.mime_type for p in parts[1:]] == ["image/png", "image/png"]
    # No size: no imageConfig, and Gemini keeps the first input's proportions.
    assert not received.request.generation_config.HasField("image_config")
    assert size_of(result.images[0].data) == (1264, 848)
    assert result.usage is not None and result.usage.input_tokens > 2 * 1120


async def test_more_references_than_gemini_takes_are_refused_before_any_call(
    backend: VertexImagenBackend, sandbox: SandboxServer
) -> None:
    with pytest.raises(CapabilityNotSupported):
        await backend.run(
            call(operation=Operation.PROMPT_EDIT, images=(png(),) * 15), Deadline.after(30)
        )
    assert sandbox.vertex_imagen.faults.stats.received == 0


@pytest.mark.parametrize("variant", ["", CONTENT_FILTER_ALL])
async def test_a_safety_block_is_content_rejected_and_not_retried(
    backend: VertexImagenBackend, sandbox: SandboxServer, variant: str
) -> None:
    sandbox.vertex_imagen.faults.push(FaultMode.CONTENT_FILTER, variant=variant, times=3)
    with pytest.raises(ContentRejected):
        await backend.run(call(), Deadline.after(30))
    assert sandbox.vertex_imagen.faults.stats.received == 1


async def test_the_emulator_refuses_what_vertex_refuses(
    backend: VertexImagenBackend, sandbox: SandboxServer
) -> None:
    # An Imagen id on GenerateContent is not a Gemini image model.
    imagen = replace(FLASH, upstream_id="imagen-4.0-generate-001")
    with pytest.raises(BackendNotConfigured):
        await backend.run(call(model=imagen), Deadline.after(30))
    # A model row limited to 1K asks for 1K, whatever the size.
    only_1k = replace(FLASH, options={**FLASH.options, "image_sizes": "1K"})
    result = await backend.run(call(model=only_1k, size=Size(2048, 2048)), Deadline.after(30))
    assert size_of(result.images[0].data) == (1024, 1024)
    with pytest.raises(UpstreamRejected):
        await backend.run(call(prompt="   "), Deadline.after(30))
