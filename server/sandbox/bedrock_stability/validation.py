"""Request bodies checked per model, as Bedrock's JSON schema does.

A little more strictly where the upstream is undocumented (extraneous keys
are refused, as Bedrock does for most models): prompt 1..10,000 characters,
`aspect_ratio` from the enum, `seed` 0..4294967294, `output_format`
jpeg/png/webp (png/webp for background removal), SD3.5's `mode`, and images
as raw base64 with each tool's pixel limits; an inpaint mask must have the
image's size. `validate` returns the `Job` a valid body asks for, with the
size it produces; an invalid one raises `Invalid` with Bedrock's message.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import random
from dataclasses import dataclass
from typing import Any

from PIL import Image

from server.sandbox.bedrock_stability.models import NO_SIDE_LIMIT, ImageLimits, StabilityModel

ASPECT_RATIOS = ("16:9", "1:1", "21:9", "2:3", "3:2", "4:5", "5:4", "9:16", "9:21")
# About one megapixel at each ratio, sides multiples of 64.
OUTPUT_SIZES: dict[str, tuple[int, int]] = {
    "1:1": (1024, 1024),
    "16:9": (1344, 768),
    "9:16": (768, 1344),
    "21:9": (1536, 640),
    "9:21": (640, 1536),
    "3:2": (1216, 832),
    "2:3": (832, 1216),
    "5:4": (1088, 896),
    "4:5": (896, 1088),
}
MAX_SEED = 4_294_967_294
MAX_PROMPT = 10_000
UPSCALE_FACTOR = 4
CONSERVATIVE_MAX_SIDE = 4096
STYLE_PRESETS = frozenset(
    {
        "3d-model",
        "analog-film",
        "anime",
        "cinematic",
        "comic-book",
        "digital-art",
        "enhance",
        "fantasy-art",
        "isometric",
        "line-art",
        "low-poly",
        "modeling-compound",
        "neon-punk",
        "origami",
        "photographic",
        "pixel-art",
        "tile-texture",
    }
)
_FORMATS = frozenset({"jpeg", "png", "webp"})


@dataclass(frozen=True)
class Job:
    """What a valid body asks for: the model, the size it produces and the inputs."""

    model: StabilityModel
    prompt: str
    width: int
    height: int
    output_format: str
    seed: int
    image: bytes | None = None
    mask: bytes | None = None
    # Image Services extras (services.py): where the input sits in an
    # outpainted canvas, the style image, and what to write on the result.
    offset: tuple[int, int] = (0, 0)
    style: bytes | None = None
    detail: str = ""


class Invalid(Exception):
    """The body breaks the model's schema; the message is the 400's."""


def malformed(detail: str) -> Invalid:
    return Invalid(f"Malformed input request: {detail}, please reformat your input and try again.")


def string_field(body: dict[str, Any], key: str, *, required: bool) -> str | None:
    value = body.get(key)
    if value is None:
        if required:
            raise malformed(f"#: required key [{key}] not found")
        return None
    if not isinstance(value, str):
        raise malformed(f"#/{key}: expected type: String, found: {type(value).__name__}")
    if required and not value.strip():
        raise malformed(f"#/{key}: expected minLength: 1, actual: 0")
    if len(value) > MAX_PROMPT:
        raise malformed(f"#/{key}: expected maxLength: {MAX_PROMPT}, actual: {len(value)}")
    return value


def number_field(body: dict[str, Any], key: str, low: float, high: float, *, integer: bool) -> Any:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise malformed(f"#/{key}: expected type: Number, found: {type(value).__name__}")
    if integer and not float(value).is_integer():
        raise malformed(f"#/{key}: expected type: Integer, found: Number")
    if not low <= value <= high:
        raise malformed(f"#/{key}: {value} is not between {low:g} and {high:g}")
    return int(value) if integer else float(value)


def decode_image(key: str, value: Any, limits: ImageLimits) -> tuple[bytes, int, int, str]:
    if not isinstance(value, str) or value.startswith(("data:", "http://", "https://")):
        raise malformed(f"#/{key}: expected a base64-encoded image string")
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise malformed(f"#/{key}: is not valid base64") from None
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
            width, height, image_format = image.width, image.height, image.format or ""
    except Exception:  # Pillow raises many types for undecodable input.
        raise Invalid(f"The {key} could not be decoded as an image.") from None
    if image_format not in ("PNG", "JPEG", "WEBP"):
        raise Invalid(f"The {key} must be a PNG, JPEG or WebP image.")
    if min(width, height) < limits.min_side or max(width, height) > limits.max_side:
        bounds = (
            f"between {limits.min_side} and {limits.max_side}"
            if limits.max_side < NO_SIDE_LIMIT
            else f"at least {limits.min_side}"
        )
        raise Invalid(f"The {key} is {width}x{height}; each side must be {bounds} pixels.")
    if not limits.min_pixels <= width * height <= limits.max_pixels:
        raise Invalid(
            f"The {key} has {width * height} pixels; it must have between "
            f"{limits.min_pixels} and {limits.max_pixels}."
        )
    ratio = max(width, height) / min(width, height)
    if limits.max_ratio and ratio > limits.max_ratio + 1e-9:
        raise Invalid(f"The {key}'s aspect ratio must be between 1:2.5 and 2.5:1.")
    return data, width, height, image_format


def _output_format(model: StabilityModel, body: dict[str, Any]) -> str:
    value = body.get("output_format", "png")
    allowed = {"png", "webp"} if model.kind == "remove_background" else _FORMATS
    if value not in allowed:
        raise malformed(f"#/output_format: {value} is not a valid enum value")
    return str(value)


def text_to_image_size(body: dict[str, Any]) -> tuple[int, int]:
    ratio = body.get("aspect_ratio", "1:1")
    if ratio not in ASPECT_RATIOS:
        raise malformed(f"#/aspect_ratio: {ratio} is not a valid enum value")
    return OUTPUT_SIZES[ratio]


def _nearest_output(width: int, height: int) -> tuple[int, int]:
    def distance(ratio: str) -> float:
        w, h = OUTPUT_SIZES[ratio]
        return abs(math.log(w / h) - math.log(width / height))

    return OUTPUT_SIZES[min(OUTPUT_SIZES, key=distance)]


def _sd3_job(model: StabilityModel, body: dict[str, Any], common: dict[str, Any]) -> Job:
    mode = body.get("mode", "text-to-image")
    if mode not in ("text-to-image", "image-to-image"):
        raise malformed(f"#/mode: {mode} is not a valid enum value")
    if mode == "text-to-image":
        for key in ("image", "strength"):
            if key in body:
                raise malformed(f"#: {key} is only allowed with mode image-to-image")
        width, height = text_to_image_size(body)
        return Job(model, width=width, height=height, **common)
    if "aspect_ratio" in body:
        raise malformed("#: aspect_ratio is not allowed with mode image-to-image")
    if number_field(body, "strength", 0, 1, integer=False) is None:
        raise malformed("#: required key [strength] not found")
    if "image" not in body or model.image_limits is None:
        raise malformed("#: required key [image] not found")
    data, width, height, _ = decode_image("image", body["image"], model.image_limits)
    out_w, out_h = _nearest_output(width, height)
    return Job(model, width=out_w, height=out_h, image=data, **common)


def _edit_job(model: StabilityModel, body: dict[str, Any], common: dict[str, Any]) -> Job:
    assert model.image_limits is not None
    data, width, height, _ = decode_image("image", body["image"], model.image_limits)
    mask: bytes | None = None
    if model.kind == "inpaint":
        number_field(body, "grow_mask", 0, 20, integer=True)
        mask, mask_w, mask_h, _ = decode_image("mask", body["mask"], model.image_limits)
        if (mask_w, mask_h) != (width, height):
            raise Invalid(
                f"The mask is {mask_w}x{mask_h} but the image is {width}x{height}; "
                "they must have the same dimensions."
            )
    if model.kind == "fast_upscale":
        width, height = width * UPSCALE_FACTOR, height * UPSCALE_FACTOR
    elif model.kind == "conservative_upscale":
        number_field(body, "creativity", 0.2, 0.5, integer=False)
        scale = max(1.0, min(UPSCALE_FACTOR, CONSERVATIVE_MAX_SIDE / max(width, height)))
        width, height = round(width * scale), round(height * scale)
    return Job(model, width=width, height=height, image=data, mask=mask, **common)


def check_common(model: StabilityModel, body: Any) -> dict[str, Any]:
    """What every model checks alike (keys, required keys, prompt, style
    preset, seed, output format); the `Job` fields they give."""
    if not isinstance(body, dict):
        raise malformed("#: expected type: JSONObject")
    for key in body:
        if key not in model.keys:
            raise malformed(f"#: extraneous key [{key}] is not permitted")
    for key in sorted(model.required):
        if body.get(key) is None:
            raise malformed(f"#: required key [{key}] not found")
    prompt = string_field(body, "prompt", required="prompt" in model.required) or ""
    string_field(body, "negative_prompt", required=False)
    style = body.get("style_preset")
    if style is not None and style not in STYLE_PRESETS:
        raise malformed(f"#/style_preset: {style} is not a valid enum value")
    seed = number_field(body, "seed", 0, MAX_SEED, integer=True)
    return {
        "prompt": prompt,
        "output_format": _output_format(model, body),
        "seed": seed or random.randint(1, MAX_SEED),
    }


def validate(model: StabilityModel, body: Any) -> Job:
    """The job `body` asks `model` for; `Invalid` with Bedrock's message if malformed."""
    common = check_common(model, body)
    if model.kind == "sd3":
        return _sd3_job(model, body, common)
    if model.kind in ("core", "ultra"):
        width, height = text_to_image_size(body)
        return Job(model, width=width, height=height, **common)
    return _edit_job(model, body, common)
