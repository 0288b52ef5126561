"""A call → Imagen's `parameters`: sizes onto the aspect-ratio/tier table.

Imagen renders a fixed pixel table (`PIXELS`): five aspect ratios at a
`1K` or `2K` tier. The requested size snaps to the nearest ratio (by
log-distance), then to the smallest tier that covers it, unless that tier
would exceed `MAX_SIDE` a side (the seed's 2048 cap), in which case the
largest tier within it:

    1024x1024 → 1:1  1K  1024x1024        1792x1024 → 16:9 1K  1408x768
    1024x1792 → 9:16 1K  768x1408         2048x2048 → 1:1  2K  2048x2048

A model's catalogue `options.sample_image_sizes` lists the tiers it has
(Fast: "1K"); `options.enhance_prompt` ("true"/"false") is sent as
`enhancePrompt` when set, else the upstream's default applies.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from server.domain.errors import CapabilityNotSupported, FieldViolation, ImageServiceError
from server.domain.ports import UpstreamCall
from server.domain.requests import DEFAULT_SIZE, Operation, Size
from server.providers.vertex_imagen import TIERS, VertexImagenOptions

MAX_IMAGES_PER_CALL = 4
MAX_SIDE = 2048
ASPECT_RATIOS = {"1:1": 1.0, "3:4": 3 / 4, "4:3": 4 / 3, "9:16": 9 / 16, "16:9": 16 / 9}
# Imagen 4's output sizes (Google's Imagen 4 model pages).
PIXELS: dict[tuple[str, str], Size] = {
    ("1:1", "1K"): Size(1024, 1024),
    ("3:4", "1K"): Size(896, 1280),
    ("4:3", "1K"): Size(1280, 896),
    ("9:16", "1K"): Size(768, 1408),
    ("16:9", "1K"): Size(1408, 768),
    ("1:1", "2K"): Size(2048, 2048),
    ("3:4", "2K"): Size(1792, 2560),
    ("4:3", "2K"): Size(2560, 1792),
    ("9:16", "2K"): Size(1536, 2816),
    ("16:9", "2K"): Size(2816, 1536),
}


@dataclass(frozen=True)
class ImagenOutput:
    """What a requested size becomes upstream, and the pixels it produces."""

    aspect_ratio: str
    sample_image_size: str
    pixels: Size


def nearest_aspect_ratio(size: Size) -> str:
    """The Imagen aspect ratio closest to `size`'s proportions."""
    return size.nearest_ratio(ASPECT_RATIOS)


def output_for(size: Size, tiers: Sequence[str] = TIERS) -> ImagenOutput:
    """The ratio and tier for `size` (see the module docstring) among `tiers`."""
    ratio = nearest_aspect_ratio(size)
    fitting = [
        tier
        for tier in TIERS
        if tier in tiers
        and max(PIXELS[(ratio, tier)].width, PIXELS[(ratio, tier)].height) <= MAX_SIDE
    ] or ["1K"]
    for tier in fitting:
        produced = PIXELS[(ratio, tier)]
        if produced.width >= size.width and produced.height >= size.height:
            return ImagenOutput(ratio, tier, produced)
    return ImagenOutput(ratio, fitting[-1], PIXELS[(ratio, fitting[-1])])


def model_path(project: str, location: str, upstream_id: str) -> str:
    """The resource name of a Google publisher model in one project and location."""
    return f"projects/{project}/locations/{location}/publishers/google/models/{upstream_id}"


def request_parameters(call: UpstreamCall) -> dict[str, Any]:
    """The `parameters` struct for `call`, as plain JSON values."""
    if call.operation is not Operation.GENERATE:
        raise CapabilityNotSupported(
            [FieldViolation("operation", f"{call.model.name} only generates images")]
        )
    if not 1 <= call.count <= MAX_IMAGES_PER_CALL:
        raise ImageServiceError(f"Imagen takes 1 to {MAX_IMAGES_PER_CALL} images per call.")
    # Validated at start-up (registry.check_catalogue).
    options = VertexImagenOptions.model_validate(call.model.options)
    output = output_for(call.size or DEFAULT_SIZE, options.sample_image_sizes)
    parameters: dict[str, Any] = {
        "sampleCount": call.count,
        "aspectRatio": output.aspect_ratio,
        "sampleImageSize": output.sample_image_size,
        "includeRaiReason": True,
        "outputOptions": {"mimeType": "image/png"},
    }
    if call.seed is not None:
        # Imagen refuses a seed while its (default-on) SynthID watermark is.
        parameters["seed"] = call.seed % 2**32
        parameters["addWatermark"] = False
    if options.enhance_prompt is not None:
        parameters["enhancePrompt"] = options.enhance_prompt
    return parameters
