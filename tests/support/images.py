"""Small real images for tests."""

from __future__ import annotations

import io

from PIL import Image


def png(width: int = 64, height: int = 64, color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, format="PNG")
    return out.getvalue()


def alpha_mask(width: int, height: int) -> bytes:
    """An OpenAI-style mask: transparent (edit here) left half, opaque right half."""
    image = Image.new("RGBA", (width, height), (0, 0, 0, 255))
    for x in range(width // 2):
        for y in range(height):
            image.putpixel((x, y), (0, 0, 0, 0))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def size_of(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        return image.size
