"""Reading image bytes: format, real dimensions, mask conversion.

Every produced image is measured (`measure`) from its first bytes alone,
so the size reported is always the size actually produced, and measuring
costs microseconds on the event loop: nothing is decompressed.

Caller inputs are checked against a pixel budget (`MAX_INPUT_PIXELS`) on
that header alone, before anything is decoded: a 300 KB PNG may declare
9000x9000 pixels and decode to 324 MB. The only input ever decoded is an
inpaint mask (`mask_to_grayscale`), and within the budget its peak memory is
`MASK_DECODE_BYTES_PER_PIXEL` bytes per pixel (RELIABILITY.md has the
measured figure).
"""

from __future__ import annotations

import io
import threading
import warnings
from dataclasses import dataclass

import imagesize
from PIL import Image, UnidentifiedImageError

_MIME_BY_FORMAT = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
EXTENSION_BY_MIME = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}
# Only these decoders ever see caller or upstream bytes.
_FORMATS = tuple(_MIME_BY_FORMAT)

# The largest edit input (image or mask) in pixels: 4096x4096, above every
# backend's own input limit (Bedrock's 9.4 MP inpaint/upscale, DashScope's
# 2048x2048; docs/models-*.md), so nothing a backend accepts is refused.
MAX_INPUT_PIXELS = 4096 * 4096
# A decoded mask: the source (at most 4 bytes a pixel: RGBA, CMYK, 32-bit
# gray), then its alpha or gray channel and the 0/255 result (1 byte each).
MASK_DECODE_BYTES_PER_PIXEL = 4 + 1 + 1


class ImageTooLarge(ValueError):
    """An image whose header declares more pixels than the budget allows."""


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


def measure(data: bytes) -> ImageInfo:
    """Format and size of a produced image, from its header alone.

    ValueError if it is not a PNG, JPEG or WebP with a readable header. For
    an upstream's own output, where no pixel budget applies (`inspect` is
    for caller inputs). Unlike Pillow's open, which inflates every PNG text
    and ICC chunk ahead of the pixels (up to 64 MB), nothing here is
    decompressed, so it runs on the event loop: a worker thread's hop costs
    more than the measuring (BENCHMARKS.md, fix 27).
    """
    mime = sniff_mime_type(data)
    if mime not in EXTENSION_BY_MIME:
        raise ValueError("not a PNG, JPEG or WebP image")
    # Stored dimensions, as Pillow reports them: no EXIF rotation.
    width, height = imagesize.get(io.BytesIO(data), exif_rotation=False)
    if width <= 0 or height <= 0:
        raise ValueError("not a readable image")
    return ImageInfo(mime, width, height)


_WARNINGS_LOCK = threading.Lock()


def _open(data: bytes, max_pixels: int | None) -> Image.Image:
    """Open `data` reading only its header, and check the pixel budget.

    Raises `ImageTooLarge` over `max_pixels` (or over Pillow's own
    decompression-bomb limit, whatever `max_pixels`), ValueError if it is
    not a PNG, JPEG or WebP.
    """
    try:
        # catch_warnings swaps process-wide state, and images are opened in
        # worker threads: two overlapping blocks could restore each other's
        # filters and leave "error" installed for good. Opening reads only the
        # header, so holding a lock for it costs microseconds.
        with _WARNINGS_LOCK, warnings.catch_warnings():
            # Pillow warns past MAX_IMAGE_PIXELS and raises past twice that;
            # both mean the same here: too many pixels to decode.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=_FORMATS)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as error:
        raise ImageTooLarge(
            f"declares more than {Image.MAX_IMAGE_PIXELS} pixels"
            if max_pixels is None
            else f"declares more pixels than the limit of {max_pixels}"
        ) from error
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError("not a readable image") from error
    width, height = image.size
    if max_pixels is not None and width * height > max_pixels:
        image.close()
        raise ImageTooLarge(
            f"declares {width}x{height} pixels, more than the limit of {max_pixels}"
        )
    return image


def inspect(data: bytes, *, max_pixels: int | None = None) -> ImageInfo:
    """Format and size of `data`, from its header alone.

    ValueError if it is not a PNG/JPEG/WebP; `ImageTooLarge` (a ValueError)
    if it declares more than `max_pixels` pixels (`MAX_INPUT_PIXELS` for a
    caller's input; produced images are measured without a budget).
    """
    with _open(data, max_pixels) as image:
        return ImageInfo(_MIME_BY_FORMAT[image.format or ""], image.width, image.height)


def mask_to_grayscale(mask: bytes, *, max_pixels: int = MAX_INPUT_PIXELS) -> tuple[bytes, int, int]:
    """Normalise a mask to a grayscale PNG where white marks the edit region.

    Accepts both conventions callers use: the OpenAI one (a PNG with an
    alpha channel whose fully transparent pixels mark the region) and the
    Stability one (grayscale, white marks the region). Returns the PNG bytes
    and its size. The header is checked against `max_pixels` before the
    decode (`ImageTooLarge`); ValueError if the bytes are not an image.
    """
    with _open(mask, max_pixels) as image:
        try:
            gray = _edit_region(image)
        except Exception as error:
            # A header that parsed can still hide a corrupt body: zlib,
            # truncation and struct errors all mean "not a readable image".
            raise ValueError("not a readable image") from error
    out = io.BytesIO()
    gray.save(out, format="PNG")
    return out.getvalue(), gray.width, gray.height


def _edit_region(image: Image.Image) -> Image.Image:
    """White where the mask marks the region to edit, black elsewhere."""
    image.load()
    if image.mode in ("RGBA", "LA"):
        alpha = image.getchannel("A")  # no full-size RGBA copy
    elif "transparency" in image.info:
        alpha = image.convert("RGBA").getchannel("A")
    else:
        return image.convert("L")
    image.close()  # the source's pixels are no longer needed
    return alpha.point(lambda a: 255 if a == 0 else 0)


_PIL_FORMAT_BY_MIME = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WEBP"}


def convert(data: bytes, mime_type: str, *, compression: int | None = None) -> bytes:
    """`data` re-encoded as `mime_type` (PNG, JPEG or WebP).

    `compression` (0-100, OpenAI's `output_compression`) sets JPEG and
    WebP quality: 100 keeps the most. JPEG has no alpha, so a transparent
    image is flattened onto white. ValueError if `data` is unreadable.
    """
    target = _PIL_FORMAT_BY_MIME[mime_type]
    with _open(data, None) as image:
        image.load()
        converted: Image.Image = image
        if target == "JPEG" and image.mode not in ("RGB", "L"):
            rgba = image.convert("RGBA")
            converted = Image.new("RGB", rgba.size, (255, 255, 255))
            converted.paste(rgba, mask=rgba.getchannel("A"))
        out = io.BytesIO()
        options: dict[str, object] = {}
        if target in ("JPEG", "WEBP"):
            options["quality"] = 90 if compression is None else max(1, compression)
        converted.save(out, format=target, **options)
    return out.getvalue()
