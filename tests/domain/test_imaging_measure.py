"""`imaging.measure`: a produced image's format and size from its header alone.

It must agree with Pillow (`inspect`) on every format a backend returns, and
never inflate anything, since it runs on the event loop.
"""

from __future__ import annotations

import io
import zlib
from typing import Any

import pytest
from PIL import Image, PngImagePlugin

from server.domain import imaging
from server.domain.imaging import ImageInfo, inspect, measure


def encoded(image: Image.Image, fmt: str, **options: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


def with_orientation(image: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation  # rotated 90°: viewers swap width and height
    return encoded(image, "JPEG", exif=exif)


CASES = {
    "png rgb": encoded(Image.new("RGB", (640, 360), (1, 2, 3)), "PNG"),
    "png rgba": encoded(Image.new("RGBA", (17, 1023)), "PNG"),
    "png palette": encoded(Image.new("P", (300, 200)), "PNG"),
    "png 16-bit gray": encoded(Image.new("I;16", (33, 44)), "PNG"),
    "jpeg": encoded(Image.new("RGB", (1024, 768), (9, 9, 9)), "JPEG"),
    "jpeg progressive": encoded(Image.new("RGB", (801, 599)), "JPEG", progressive=True),
    "jpeg grayscale": encoded(Image.new("L", (64, 96)), "JPEG"),
    "jpeg with exif orientation": with_orientation(Image.new("RGB", (320, 200)), 6),
    "webp lossy": encoded(Image.new("RGB", (512, 288)), "WEBP", quality=80),
    "webp lossless": encoded(Image.new("RGB", (129, 257)), "WEBP", lossless=True),
    "webp with alpha": encoded(Image.new("RGBA", (200, 100), (0, 0, 0, 0)), "WEBP"),
}


@pytest.mark.parametrize("data", CASES.values(), ids=CASES.keys())
def test_measure_agrees_with_pillow(data: bytes) -> None:
    assert measure(data) == inspect(data)


def test_measure_reports_what_it_read() -> None:
    assert measure(CASES["png rgba"]) == ImageInfo("image/png", 17, 1023)
    # Stored dimensions: the EXIF rotation is a viewer's business.
    assert measure(CASES["jpeg with exif orientation"]) == ImageInfo("image/jpeg", 320, 200)
    assert measure(CASES["webp with alpha"]) == ImageInfo("image/webp", 200, 100)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"GIF89a" + bytes(64),  # a format the service does not deliver
        b"not an image at all",
        CASES["png rgb"][:20],  # the signature, then the header cut short
        CASES["webp lossy"][:16],
        b"\x89PNG\r\n\x1a\n" + bytes(32),  # a signature and no IHDR
    ],
    ids=["empty", "gif", "text", "truncated png", "truncated webp", "png without ihdr"],
)
def test_measure_refuses_what_is_not_a_readable_image(data: bytes) -> None:
    with pytest.raises(ValueError):
        measure(data)


def test_measure_inflates_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    # Text and an ICC profile ahead of the pixels: Pillow inflates both on open.
    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "x" * 500_000, zip=True)
    data = encoded(Image.new("RGB", (40, 30)), "PNG", pnginfo=info, icc_profile=bytes(100_000))
    inflated: list[int] = []
    real = zlib.decompressobj

    def counting(*args: Any, **kwargs: Any) -> Any:
        inflated.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(zlib, "decompressobj", counting)

    assert measure(data) == ImageInfo("image/png", 40, 30)
    assert inflated == []
    # The same image through Pillow does inflate, so the spy would see it.
    assert imaging.inspect(data) == ImageInfo("image/png", 40, 30)
    assert inflated != []
