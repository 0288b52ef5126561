"""A call → MAI's JSON body, and the sizes MAI can produce."""

from __future__ import annotations

import math
from typing import Any

import httpx

from server.domain.errors import (
    CapabilityNotSupported,
    FieldViolation,
    ImageServiceError,
    InvalidArgument,
)
from server.domain.imaging import EXTENSION_BY_MIME, sniff_mime_type
from server.domain.ports import UpstreamCall
from server.domain.requests import DEFAULT_SIZE, Operation, Size

ROUTE = "/mai/v1/images/generations"
EDIT_ROUTE = "/mai/v1/images/edits"
# Reference images an edit takes (MAI-Image-2.5/2.6; see docs/models-mai.md).
MAX_EDIT_IMAGES = 5

MIN_SIDE = 768
MAX_PIXELS = 1024 * 1024
PIXEL_STEP = 16
# The most elongated shape with both sides >= MIN_SIDE inside MAX_PIXELS: 16:9.
MAX_RATIO = MAX_PIXELS / MIN_SIDE**2


def produced_size(size: Size) -> Size:
    """The width and height MAI is asked for (and produces) for `size`.

    Raises `InvalidArgument` on `size` when its proportions cannot fit MAI's
    limits (more elongated than 16:9).
    """
    long_side, short_side = max(size.width, size.height), min(size.width, size.height)
    ratio = long_side / short_side
    if ratio > MAX_RATIO + 1e-9:
        raise InvalidArgument(
            [
                FieldViolation(
                    "size",
                    f"{size} is more elongated than MAI-Image-2 can produce: it needs each "
                    f"side at least {MIN_SIDE} pixels and at most {MAX_PIXELS:,} pixels in all",
                )
            ]
        )
    if size.pixels <= MAX_PIXELS and short_side >= MIN_SIDE:
        return size
    # Too small: the least that is allowed; too large: the most that fits.
    short = MIN_SIDE if short_side < MIN_SIDE else math.sqrt(MAX_PIXELS / ratio)
    # Floor to the step, so the product stays inside the budget; MIN_SIDE
    # is itself a multiple of the step.
    short_px = max(MIN_SIDE, int(short) // PIXEL_STEP * PIXEL_STEP)
    long_px = int(short_px * ratio) // PIXEL_STEP * PIXEL_STEP
    long_px = min(long_px, MAX_PIXELS // short_px // PIXEL_STEP * PIXEL_STEP)
    if size.width >= size.height:
        return Size(long_px, short_px)
    return Size(short_px, long_px)


def request_body(call: UpstreamCall, deployment: str = "") -> dict[str, Any]:
    """The JSON body for `call` (without credentials)."""
    if call.operation is not Operation.GENERATE:
        raise CapabilityNotSupported(
            [FieldViolation("operation", f"{call.model.name} only generates images from a prompt")]
        )
    if call.count != 1:
        raise ImageServiceError("MAI produces one image per call.")
    size = produced_size(call.size or DEFAULT_SIZE)
    return {
        "model": deployment or call.model.upstream_id,
        "prompt": call.prompt,
        "width": size.width,
        "height": size.height,
    }


def edit_form(call: UpstreamCall, deployment: str = "") -> tuple[bytes, str]:
    """The multipart edit form for `call`: its bytes and Content-Type.

    `model`, `prompt` and one `image[]` part per input image (the first is
    edited, the others are references). The route takes no size: MAI keeps
    the first image's proportions, so a request that names one is refused
    rather than silently ignored.
    """
    if call.operation is not Operation.PROMPT_EDIT or not call.model.offers(call.operation):
        raise CapabilityNotSupported(
            [FieldViolation("operation", f"{call.model.name} cannot {call.operation.value}")]
        )
    if call.size is not None:
        raise InvalidArgument(
            [FieldViolation("size", "MAI edits keep the input's proportions; leave size empty")]
        )
    if not 1 <= len(call.images) <= MAX_EDIT_IMAGES:
        raise InvalidArgument(
            [FieldViolation("images", f"MAI edits take 1 to {MAX_EDIT_IMAGES} images")]
        )
    if call.count != 1:
        raise ImageServiceError("MAI produces one image per call.")
    files = [
        ("image[]", (f"image-{i}.{_extension(data)}", data, _mime(data)))
        for i, data in enumerate(call.images)
    ]
    request = httpx.Request(
        "POST",
        "http://form.invalid/",
        data={"model": deployment or call.model.upstream_id, "prompt": call.prompt},
        files=files,
    )
    return request.read(), request.headers["Content-Type"]


def _mime(data: bytes) -> str:
    return sniff_mime_type(data)


def _extension(data: bytes) -> str:
    return EXTENSION_BY_MIME.get(sniff_mime_type(data), "bin")
