"""A valid job → the 200 body, with an image of the size the model would produce.

Text-to-image renders about one megapixel at the ratio; background removal
and inpaint keep the input's size (background removal returns RGBA with the
border made transparent); the upscalers resize and label the input.
"""

from __future__ import annotations

import base64
import io
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from server.sandbox.bedrock_stability.validation import Job
from server.sandbox.faults import strip_directives
from server.sandbox.render import render_image


def encode(image: Image.Image, output_format: str) -> bytes:
    out = io.BytesIO()
    if output_format == "jpeg":
        image.convert("RGB").save(out, format="JPEG", quality=85)
    elif output_format == "webp":
        image.save(out, format="WEBP", quality=80)
    else:
        image.save(out, format="PNG", compress_level=1)
    return out.getvalue()


def label(image: Image.Image, text: str) -> None:
    draw = ImageDraw.Draw(image)
    size = max(8, min(image.size) // 40)
    font = ImageFont.load_default(size=size)
    margin = max(4, min(image.size) // 48)
    box = draw.textbbox((margin, image.height - margin - size), text, font=font)
    draw.rectangle(box, fill=(0, 0, 0))
    draw.text((margin, image.height - margin - size), text, fill=(255, 255, 255), font=font)


def _open(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.copy()


def _remove_background(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    alpha = Image.new("L", rgba.size, 0)
    inset_x, inset_y = rgba.width // 8, rgba.height // 8
    ImageDraw.Draw(alpha).ellipse(
        (inset_x, inset_y, rgba.width - 1 - inset_x, rgba.height - 1 - inset_y), fill=255
    )
    rgba.putalpha(alpha)
    return rgba


def _inpaint(job: Job, image: Image.Image) -> Image.Image:
    assert job.mask is not None
    base = image.convert("RGB")
    painted = _open(
        render_image(job.width, job.height, strip_directives(job.prompt), label="sandbox inpaint")
    ).convert("RGB")
    mask = _open(job.mask).convert("L")
    return Image.composite(painted, base, mask)


def _upscale(job: Job, image: Image.Image) -> Image.Image:
    mode = "RGBA" if image.mode in ("RGBA", "LA", "P") else "RGB"
    scaled = image.convert(mode).resize((job.width, job.height), Image.Resampling.BICUBIC)
    kind = "fast 4x" if job.model.kind == "fast_upscale" else "conservative"
    text = f"sandbox {kind} upscale {job.width}x{job.height}"
    if job.prompt:
        text += f": {strip_directives(job.prompt)[:80]}"
    label(scaled, text)
    return scaled


def render(job: Job) -> dict[str, Any]:
    """The 200 body for `job`: an image of the produced size."""
    kind = job.model.kind
    if job.image is None:
        label = f"sandbox {job.model.model_id} {job.width}x{job.height} seed {job.seed}"
        picture = _open(
            render_image(job.width, job.height, strip_directives(job.prompt), label=label)
        )
    else:
        source = _open(job.image)
        if kind == "remove_background":
            picture = _remove_background(source)
        elif kind == "inpaint":
            picture = _inpaint(job, source)
        elif kind in ("fast_upscale", "conservative_upscale"):
            picture = _upscale(job, source)
        else:  # SD3.5 image-to-image: a new picture at the input's ratio.
            label = f"sandbox {job.model.model_id} image-to-image {job.width}x{job.height}"
            picture = _open(
                render_image(job.width, job.height, strip_directives(job.prompt), label=label)
            )
    data = encode(picture, job.output_format)
    return {
        "seeds": [job.seed],
        "finish_reasons": [None],
        "images": [base64.b64encode(data).decode("ascii")],
    }
