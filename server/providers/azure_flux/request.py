"""A call → Azure FLUX's JSON body: sizes, seed and input images."""

from __future__ import annotations

from typing import Any

from server.domain.errors import (
    CapabilityNotSupported,
    FieldViolation,
    ImageServiceError,
    InvalidArgument,
)
from server.domain.ports import UpstreamCall
from server.domain.requests import Operation, Size
from server.providers._shared.base64_json import b64encode_text
from server.providers.azure_flux import AzureFluxOptions

ASPECT_RATIOS = ("21:9", "16:9", "3:2", "4:3", "5:4", "1:1", "4:5", "3:4", "2:3", "9:16", "9:21")
PIXEL_STEP, MIN_SIDE, MAX_SIDE = 16, 256, 1440
# Kontext on Azure takes one input image; FLUX.2 pro up to eight.
_MAX_INPUT_IMAGES = {"aspect_ratio": 1, "pixels": 8}


def nearest_aspect_ratio(size: Size) -> str:
    """The entry of `ASPECT_RATIOS` closest to `size`'s proportions."""
    return size.nearest_ratio(ASPECT_RATIOS)


def pixel_size(size: Size) -> Size:
    """`size` fitted to FLUX.2's limits, keeping its proportions."""
    scale = min(1.0, MAX_SIDE / max(size.width, size.height))
    scale = max(scale, MIN_SIDE / min(size.width, size.height))

    def snap(side: float) -> int:
        # Half-up rather than round()'s half-to-even, so 1000 → 1008.
        return min(MAX_SIDE, max(MIN_SIDE, int(side / PIXEL_STEP + 0.5) * PIXEL_STEP))

    return Size(snap(size.width * scale), snap(size.height * scale))


def _input_images(call: UpstreamCall, size_mode: str) -> dict[str, str]:
    if call.operation is Operation.GENERATE:
        return {}
    if call.operation is not Operation.PROMPT_EDIT or call.mask is not None:
        raise CapabilityNotSupported(
            [FieldViolation("operation", "FLUX models only edit from a prompt, without a mask")]
        )
    limit = _MAX_INPUT_IMAGES[size_mode]
    if not call.images or len(call.images) > limit:
        raise InvalidArgument(
            [FieldViolation("images", f"{call.model.name} takes 1 to {limit} input image(s)")]
        )
    encoded = [b64encode_text(image) for image in call.images]
    return {
        ("input_image" if index == 0 else f"input_image_{index + 1}"): data
        for index, data in enumerate(encoded)
    }


def request_body(call: UpstreamCall) -> dict[str, Any]:
    """The JSON body for `call` (without credentials)."""
    # Validated at start-up (registry.check_catalogue), so this cannot fail
    # for a catalogue model.
    options = AzureFluxOptions.model_validate(call.model.options)
    if call.count != 1:
        raise ImageServiceError("FLUX produces one image per call.")
    body: dict[str, Any] = {
        "model": options.upstream_model or call.model.upstream_id,
        "prompt": call.prompt,
        "output_format": "png",
    }
    if call.size is not None:
        if options.size_mode == "aspect_ratio":
            body["aspect_ratio"] = nearest_aspect_ratio(call.size)
        else:
            fitted = pixel_size(call.size)
            body["width"], body["height"] = fitted.width, fitted.height
    if options.size_mode == "pixels":
        # As in Microsoft's FLUX.2 example; Kontext's documented body has none.
        body["num_images"] = 1
    if call.seed is not None:
        body["seed"] = call.seed
    if options.safety_tolerance is not None:
        body["safety_tolerance"] = options.safety_tolerance
    body.update(_input_images(call, options.size_mode))
    return body
