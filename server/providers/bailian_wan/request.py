"""A call → the body of a Wan task submission: size, seed and input images.

Sizes: the seed caps Wan at 1024x1024, so a requested size becomes `W*H`
scaled into [768*768, 1024*1024] pixels with its proportions kept and sides
in multiples of 16: 1024x1024 -> 1024*1024, 1792x1024 -> 1344*768. An edit
with no size sends "1K", which keeps the input's proportions at about a
megapixel. Up to 4 images per task (`n`); prompt edits send 1 to 9 input
images as data URIs.
"""

from __future__ import annotations

import math
from typing import Any

from server.domain.errors import (
    CapabilityNotSupported,
    FieldViolation,
    ImageServiceError,
    InvalidArgument,
)
from server.domain.imaging import measure
from server.domain.ports import UpstreamCall
from server.domain.requests import Operation, Size
from server.providers._shared.base64_json import b64encode_text

MAX_IMAGES_PER_TASK = 4
MAX_INPUT_IMAGES = 9
MAX_SEED = 2**31 - 1
# The seed's cap for Wan, and the upstream's minimum (UNCERTAIN, from resellers).
MAX_PIXELS = 1024 * 1024
MIN_PIXELS = 768 * 768
PIXEL_STEP = 16
# An edit without a size: about a megapixel, in the input's proportions
# (without any size DashScope defaults to "2K", four times the seed's cap).
EDIT_DEFAULT_SIZE = "1K"


def wan_size(size: Size) -> Size:
    """`size` scaled into [MIN_PIXELS, MAX_PIXELS], keeping its proportions,
    with sides in multiples of `PIXEL_STEP` (rounded towards the range)."""
    scale = min(1.0, math.sqrt(MAX_PIXELS / size.pixels))
    scale = max(scale, math.sqrt(MIN_PIXELS / size.pixels))

    def snap(side: int) -> int:
        steps = side * scale / PIXEL_STEP
        # Down when shrinking and up when growing, so the result stays in range.
        whole = math.ceil(steps - 1e-9) if scale > 1 else math.floor(steps + 1e-9)
        return max(PIXEL_STEP, whole * PIXEL_STEP)

    return Size(snap(size.width), snap(size.height))


def upstream_size(size: Size | None) -> str:
    """The `parameters.size` for a requested size (None: an edit keeping the input's shape)."""
    if size is None:
        return EDIT_DEFAULT_SIZE
    fitted = wan_size(size)
    return f"{fitted.width}*{fitted.height}"


def _data_uri(index: int, image: bytes) -> str:
    try:
        mime = measure(image).mime_type
    except ValueError:
        raise InvalidArgument(
            [FieldViolation(f"images[{index}]", "is not a PNG, JPEG or WebP image")]
        ) from None
    return f"data:{mime};base64,{b64encode_text(image)}"


def _input_images(call: UpstreamCall) -> list[dict[str, str]]:
    if call.operation is Operation.GENERATE:
        return []
    if call.operation is not Operation.PROMPT_EDIT or call.mask is not None:
        raise CapabilityNotSupported(
            [FieldViolation("operation", "Wan models only edit from a prompt, without a mask")]
        )
    if not 1 <= len(call.images) <= MAX_INPUT_IMAGES:
        raise InvalidArgument(
            [
                FieldViolation(
                    "images", f"{call.model.name} takes 1 to {MAX_INPUT_IMAGES} input images"
                )
            ]
        )
    return [{"image": _data_uri(i, image)} for i, image in enumerate(call.images)]


def request_body(call: UpstreamCall) -> dict[str, Any]:
    """The JSON body of the task submission for `call` (without credentials)."""
    if not 1 <= call.count <= MAX_IMAGES_PER_TASK:
        raise ImageServiceError(f"A Wan task produces 1 to {MAX_IMAGES_PER_TASK} images.")
    content: list[dict[str, str]] = [{"text": call.prompt}, *_input_images(call)]
    parameters: dict[str, Any] = {
        "n": call.count,
        "size": upstream_size(call.size),
        "watermark": False,
    }
    if call.seed is not None:
        # The upstream takes 0..2^31-1; the API allows any uint32. Wrapping
        # keeps a given seed reproducible.
        parameters["seed"] = call.seed % (MAX_SEED + 1)
    return {
        "model": call.model.upstream_id,
        "input": {"messages": [{"role": "user", "content": content}]},
        "parameters": parameters,
    }
