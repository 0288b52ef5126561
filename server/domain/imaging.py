"""Reading image bytes: format, real dimensions, mask conversion.

Pillow reads only the header to get the size, so measuring every produced
image is cheap and the size reported is always the size actually produced.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

_MIME_BY_FORMAT = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
EXTENSION_BY_MIME = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}


@dataclass(frozen=True)
class ImageInfo:
    mime_type: str
    width: int
    height: int


def sniff_mime_type(data: bytes) -> str:
    """The MIME type from the first bytes alone (no decode).

    Backends label what an upstream returned with this; the orchestrator
    later measures the real format and size with `inspect`.
    """
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"


def inspect(data: bytes) -> ImageInfo:
    """Format and size of `data`; ValueError if it is not a PNG/JPEG/WebP."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            mime = _MIME_BY_FORMAT.get(image.format or "")
            if mime is None:
                raise ValueError(f"unsupported image format {image.format}")
            return ImageInfo(mime, image.width, image.height)
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError("not a readable image") from error


def mask_to_grayscale(mask: bytes) -> tuple[bytes, int, int]:
    """Normalise a mask to a grayscale PNG where white marks the edit region.

    Accepts both conventions callers use: the OpenAI one (a PNG with an
    alpha channel whose fully transparent pixels mark the region) and the
    Stability one (grayscale, white marks the region). Returns the PNG bytes
    and its size. ValueError if the bytes are not an image.
    """
    try:
        with Image.open(io.BytesIO(mask)) as image:
            image.load()
            if image.mode in ("RGBA", "LA") or "transparency" in image.info:
                alpha = image.convert("RGBA").getchannel("A")
                gray = alpha.point(lambda a: 255 if a == 0 else 0)
            else:
                gray = image.convert("L")
            out = io.BytesIO()
            gray.save(out, format="PNG")
            return out.getvalue(), gray.width, gray.height
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError("not a readable image") from error
