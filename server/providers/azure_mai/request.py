"""A call → MAI's JSON body, and the sizes MAI can produce."""

from __future__ import annotations

import math
from typing import Any

from server.domain.errors import (
    CapabilityNotSupported,
    FieldViolation,
    ImageServiceError,
    InvalidArgument,
)
from server.domain.ports import UpstreamCall
from server.domain.requests import DEFAULT_SIZE, Operation, Size

ROUTE = "/mai/v1/images/generations"

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
            [FieldViolation("operation", "MAI-Image-2 only generates images from a prompt")]
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
