"""The Image Services beside inpaint, background removal and the first two
upscalers: their bodies checked as Bedrock's schema does, and a picture of
what each would make.

- creative_upscale: creativity 0.1..0.5; input at least 64 px a side and
  at most 1 MP; produces 4x, the long side at most 4096.
- erase_object: grow_mask 0..20; a mask (optional) of the image's size;
  produces the input's size with the masked area filled.
- outpaint: left/right/up/down integers 0..2000, at least one above 0;
  creativity 0..1; produces the input plus the margins.
- search_replace / search_recolor: search_prompt / select_prompt of
  1..10,000 characters; grow_mask 0..20; produces the input's size.
- control_sketch / control_structure: control_strength 0..1; produces the
  input's size.
- style_guide: fidelity 0..1; the aspect_ratio enum; produces about 1 MP at
  the ratio (1:1 by default).
- style_transfer: init_image and style_image; style_strength and
  composition_fidelity 0..1, change_strength 0.1..1; produces the init
  image's size.

The ranges are Stability's platform API's, which the Bedrock services
mirror; where Bedrock's own page was not readable they are UNCERTAIN (see
docs/models-bedrock.md). `validate` and `render` take every model: the
others go to validation.py and rendering.py.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from typing import Any

from PIL import Image, ImageChops, ImageFilter, ImageOps, ImageStat

from server.sandbox.bedrock_stability import rendering, validation
from server.sandbox.bedrock_stability.models import SERVICE_KINDS, StabilityModel
from server.sandbox.bedrock_stability.validation import (
    CONSERVATIVE_MAX_SIDE,
    UPSCALE_FACTOR,
    Invalid,
    Job,
    decode_image,
    malformed,
    number_field,
    string_field,
    text_to_image_size,
)
from server.sandbox.faults import strip_directives
from server.sandbox.render import render_image

MAX_OUTPAINT = 2000
_SIDES = ("left", "right", "up", "down")

Checker = Callable[[StabilityModel, dict[str, Any], dict[str, Any]], Job]


def _input(
    model: StabilityModel, body: dict[str, Any], key: str = "image"
) -> tuple[bytes, int, int]:
    assert model.image_limits is not None
    data, width, height, _ = decode_image(key, body[key], model.image_limits)
    return data, width, height


def _creative_upscale(model: StabilityModel, body: dict[str, Any], common: dict[str, Any]) -> Job:
    number_field(body, "creativity", 0.1, 0.5, integer=False)
    data, width, height = _input(model, body)
    scale = max(1.0, min(UPSCALE_FACTOR, CONSERVATIVE_MAX_SIDE / max(width, height)))
    return Job(
        model, width=round(width * scale), height=round(height * scale), image=data, **common
    )


def _erase_object(model: StabilityModel, body: dict[str, Any], common: dict[str, Any]) -> Job:
    number_field(body, "grow_mask", 0, 20, integer=True)
    data, width, height = _input(model, body)
    mask: bytes | None = None
    if body.get("mask") is not None:
        mask, mask_w, mask_h = _input(model, body, "mask")
        if (mask_w, mask_h) != (width, height):
            raise Invalid(
                f"The mask is {mask_w}x{mask_h} but the image is {width}x{height}; "
                "they must have the same dimensions."
            )
    return Job(model, width=width, height=height, image=data, mask=mask, **common)


def _outpaint(model: StabilityModel, body: dict[str, Any], common: dict[str, Any]) -> Job:
    sides = {side: number_field(body, side, 0, MAX_OUTPAINT, integer=True) or 0 for side in _SIDES}
    if not any(sides.values()):
        raise malformed("#: at least one of [left, right, up, down] must be greater than 0")
    number_field(body, "creativity", 0, 1, integer=False)
    data, width, height = _input(model, body)
    return Job(
        model,
        width=width + sides["left"] + sides["right"],
        height=height + sides["up"] + sides["down"],
        image=data,
        offset=(sides["left"], sides["up"]),
        **common,
    )


def _search(key: str) -> Checker:
    def check(model: StabilityModel, body: dict[str, Any], common: dict[str, Any]) -> Job:
        found = string_field(body, key, required=True) or ""
        number_field(body, "grow_mask", 0, 20, integer=True)
        data, width, height = _input(model, body)
        return Job(model, width=width, height=height, image=data, detail=found, **common)

    return check


def _control(model: StabilityModel, body: dict[str, Any], common: dict[str, Any]) -> Job:
    number_field(body, "control_strength", 0, 1, integer=False)
    data, width, height = _input(model, body)
    return Job(model, width=width, height=height, image=data, **common)


def _style_guide(model: StabilityModel, body: dict[str, Any], common: dict[str, Any]) -> Job:
    number_field(body, "fidelity", 0, 1, integer=False)
    width, height = text_to_image_size(body)
    data, _, _ = _input(model, body)
    return Job(model, width=width, height=height, image=data, **common)


def _style_transfer(model: StabilityModel, body: dict[str, Any], common: dict[str, Any]) -> Job:
    number_field(body, "style_strength", 0, 1, integer=False)
    number_field(body, "composition_fidelity", 0, 1, integer=False)
    number_field(body, "change_strength", 0.1, 1, integer=False)
    data, width, height = _input(model, body, "init_image")
    style, _, _ = _input(model, body, "style_image")
    return Job(model, width=width, height=height, image=data, style=style, **common)


_CHECKS: dict[str, Checker] = {
    "creative_upscale": _creative_upscale,
    "erase_object": _erase_object,
    "outpaint": _outpaint,
    "search_replace": _search("search_prompt"),
    "search_recolor": _search("select_prompt"),
    "control_sketch": _control,
    "control_structure": _control,
    "style_guide": _style_guide,
    "style_transfer": _style_transfer,
}


def validate(model: StabilityModel, body: Any) -> Job:
    """The job `body` asks `model` for (any model); `Invalid` if malformed."""
    if model.kind not in SERVICE_KINDS:
        return validation.validate(model, body)
    common = validation.check_common(model, body)
    return _CHECKS[model.kind](model, body, common)


# --- pictures -----------------------------------------------------------------


def _open(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.convert("RGB")


def _prompt_picture(job: Job, width: int, height: int, label: str) -> Image.Image:
    return _open(render_image(width, height, strip_directives(job.prompt) or label, label=label))


def _centre_box(width: int, height: int) -> tuple[int, int, int, int]:
    return (width // 4, height // 4, width - width // 4, height - height // 4)


def _picture(job: Job) -> Image.Image:
    assert job.image is not None
    source = _open(job.image)
    kind = job.model.kind
    size = (job.width, job.height)
    if kind == "creative_upscale":
        picture = source.resize(size, Image.Resampling.BICUBIC).filter(ImageFilter.DETAIL)
        label = f"sandbox creative upscale {job.width}x{job.height}"
    elif kind == "erase_object":
        fill = Image.new("RGB", size, tuple(int(c) for c in ImageStat.Stat(source).mean))
        mask = _open(job.mask).convert("L") if job.mask else Image.new("L", size, 0)
        picture = Image.composite(fill, source, mask)
        label = "sandbox erase object"
    elif kind == "outpaint":
        picture = _prompt_picture(job, *size, label="sandbox outpaint")
        picture.paste(source, job.offset)
        label = f"sandbox outpaint {source.width}x{source.height} -> {job.width}x{job.height}"
    elif kind in ("search_replace", "search_recolor"):
        picture = source.copy()
        box = _centre_box(*size)
        region = picture.crop(box)
        if kind == "search_replace":
            region = _prompt_picture(job, region.width, region.height, "replaced")
        else:
            region = ImageOps.colorize(ImageOps.grayscale(region), "black", "#d0402f")
        picture.paste(region, box[:2])
        verb = "replaced" if kind == "search_replace" else "recolored"
        label = f"sandbox {verb} '{job.detail[:40]}'"
    elif kind in ("control_sketch", "control_structure"):
        edges = ImageOps.invert(source.convert("L").filter(ImageFilter.FIND_EDGES)).convert("RGB")
        picture = ImageChops.multiply(_prompt_picture(job, *size, label=kind), edges)
        label = f"sandbox {kind.replace('_', ' ')}"
    elif kind == "style_guide":
        tint = Image.new("RGB", size, tuple(int(c) for c in ImageStat.Stat(source).mean))
        picture = Image.blend(_prompt_picture(job, *size, label="style guide"), tint, 0.3)
        label = f"sandbox style guide {job.width}x{job.height}"
    else:  # style_transfer
        assert job.style is not None
        style = _open(job.style).resize(size, Image.Resampling.BICUBIC)
        picture = Image.blend(source, style, 0.5)
        label = "sandbox style transfer"
    rendering.label(picture, label)
    return picture


def render(job: Job) -> dict[str, Any]:
    """The 200 body for `job` (any model): an image of the produced size."""
    if job.model.kind not in SERVICE_KINDS:
        return rendering.render(job)
    data = rendering.encode(_picture(job), job.output_format)
    return {
        "seeds": [job.seed],
        "finish_reasons": [None],
        "images": [base64.b64encode(data).decode("ascii")],
    }
