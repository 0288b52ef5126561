"""A call → the InvokeModel JSON body, per operation.

- generate (SD3.5 Large, Stable Image Core, Stable Image Ultra): `prompt`,
  `aspect_ratio`, `seed`, `output_format`, and for SD3.5 `mode:
  "text-to-image"`. The upstream takes no pixel sizes, only a ratio enum, so
  the requested size becomes the nearest of `ASPECT_RATIOS`.
- remove_background: `image`, `output_format` (PNG, to keep the alpha).
- inpaint: `image`, `mask` (the domain's grayscale PNG, white = repaint),
  `prompt`, `grow_mask`, `seed`, `output_format`.
- upscale: the Image Services tool the model id names. Fast upscale takes
  `image` only (4x); conservative upscale also needs `prompt`, so an
  upscale without one is refused here rather than by the upstream.
"""

from __future__ import annotations

import json
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

# Text-to-image ratios of SD3.5 Large, Stable Image Core and Ultra.
ASPECT_RATIOS = ("21:9", "16:9", "3:2", "5:4", "1:1", "4:5", "2:3", "9:16", "9:21")
MAX_SEED = 4_294_967_294
DEFAULT_GROW_MASK = 5


def aspect_ratio_for(size: Size) -> str:
    """The entry of `ASPECT_RATIOS` closest to `size`'s proportions."""
    return size.nearest_ratio(ASPECT_RATIOS)


def upstream_seed(seed: int | None) -> int:
    """`seed` in the upstream's range; 0 (the upstream's "random") when unset."""
    return 0 if seed is None else seed % (MAX_SEED + 1)


def _b64(data: bytes) -> str:
    return b64encode_text(data)


def _one_input_image(call: UpstreamCall) -> str:
    if len(call.images) != 1:
        raise InvalidArgument(
            [FieldViolation("images", f"{call.model.name} takes exactly one input image")]
        )
    return _b64(call.images[0])


def _upscaler(model_id: str) -> str:
    for kind in ("conservative", "creative", "fast"):
        if f"{kind}-upscale" in model_id:
            return kind
    raise ImageServiceError(f"Catalogue entry {model_id!r} names no known Stability upscaler.")


def _upscale_body(call: UpstreamCall) -> dict[str, Any]:
    body: dict[str, Any] = {"image": _one_input_image(call), "output_format": "png"}
    kind = _upscaler(call.model.upstream_id)
    if kind == "fast":
        return body
    if not call.prompt.strip():
        raise InvalidArgument(
            [FieldViolation("prompt", f"is required by {call.model.name} (it guides the upscale)")]
        )
    body["prompt"] = call.prompt
    body["seed"] = upstream_seed(call.seed)
    return body


def request_body(call: UpstreamCall) -> dict[str, Any]:
    """The InvokeModel JSON body for `call`; raises for what the model cannot do."""
    if call.count != 1:
        raise ImageServiceError("Stability models on Bedrock produce one image per call.")
    operation = call.operation
    if operation is Operation.GENERATE:
        body: dict[str, Any] = {
            "prompt": call.prompt,
            "aspect_ratio": aspect_ratio_for(call.size or Size(1024, 1024)),
            "seed": upstream_seed(call.seed),
            "output_format": "png",
        }
        if "sd3" in call.model.upstream_id:
            body["mode"] = "text-to-image"
        return body
    if operation is Operation.REMOVE_BACKGROUND:
        return {"image": _one_input_image(call), "output_format": "png"}
    if operation is Operation.INPAINT:
        if call.mask is None:
            raise InvalidArgument([FieldViolation("mask", "is required for inpaint")])
        return {
            "image": _one_input_image(call),
            "mask": _b64(call.mask),
            "prompt": call.prompt,
            "grow_mask": DEFAULT_GROW_MASK,
            "seed": upstream_seed(call.seed),
            "output_format": "png",
        }
    if operation is Operation.UPSCALE:
        return _upscale_body(call)
    raise CapabilityNotSupported(
        [FieldViolation("operation", f"{call.model.name} cannot {operation.value} on Bedrock")]
    )


def encoded_body(call: UpstreamCall) -> bytes:
    """`request_body(call)` as compact JSON bytes."""
    return json.dumps(request_body(call), separators=(",", ":")).encode()
