"""Placeholder images for the sandbox emulators.

`render_image` draws a picture of exactly the produced size that shows the
prompt, so a demo (or a person looking at a stored object) can tell which
request made which image. `noise_png` makes incompressible images for
benchmarks, where a flat placeholder would compress to almost nothing and
hide transfer and storage costs. An emulator answers a prompt carrying
`[sandbox:noise=3mb]` with `noise_png_of_size` instead of the rendered
picture (`noise_size` reads the directive's value).
"""

from __future__ import annotations

import hashlib
import io
import math
import random
import re
from functools import lru_cache
from typing import Literal

from PIL import Image, ImageDraw, ImageFont

ImageFormat = Literal["png", "jpeg"]
Font = ImageFont.FreeTypeFont | ImageFont.ImageFont

# Encoding speed matters more than size here: a 2048x2048 placeholder must
# not hold up a test, and the flat background compresses well anyway.
_PNG_COMPRESS_LEVEL = 1
_JPEG_QUALITY = 85


@lru_cache(maxsize=32)
def _font(size: int) -> Font:
    return ImageFont.load_default(size=size)


def _colours(text: str) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """A background derived from the text, and a readable ink for it."""
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    # Mid-range channels keep every background far from both inks.
    background = (48 + digest[0] % 160, 48 + digest[1] % 160, 48 + digest[2] % 160)
    luminance = 0.299 * background[0] + 0.587 * background[1] + 0.114 * background[2]
    ink = (0, 0, 0) if luminance > 140 else (255, 255, 255)
    return background, ink


class _Widths:
    """Rendered widths of single characters, each measured once per font.

    A line's width is the sum of its characters' advances (kerning is
    ignored: the placeholder only needs to fit its frame), which keeps the
    wrap linear in the text length. Measuring each candidate line, and each
    shorter prefix of an over-long word, made it quadratic: a 4,000-character
    prompt without spaces held the render threads for minutes.
    """

    def __init__(self, font: Font) -> None:
        self._font = font
        self._cache: dict[str, float] = {}

    def of(self, char: str) -> float:
        width = self._cache.get(char)
        if width is None:
            width = self._cache[char] = float(self._font.getlength(char))
        return width

    def text(self, text: str) -> float:
        return sum(self.of(char) for char in text)


def _wrap(text: str, font: Font, max_width: float, max_lines: int | None = None) -> list[str]:
    """Greedy word wrap by rendered width; words wider than a line are split.

    Linear in `len(text)`; stops after `max_lines + 1` lines (enough for
    `_fit` to see that the text overflows).
    """
    widths = _Widths(font)
    space = widths.of(" ")
    limit = None if max_lines is None else max_lines + 1
    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        line, line_width = "", 0.0
        for word in paragraph.split():
            word_width = widths.text(word)
            if line and line_width + space + word_width <= max_width:
                line, line_width = f"{line} {word}", line_width + space + word_width
                continue
            if line:
                lines.append(line)
            if word_width > max_width:
                pieces = _split_word(word, widths, max_width)
                lines.extend(pieces[:-1])
                word = pieces[-1]
                word_width = widths.text(word)
            line, line_width = word, word_width
            if limit is not None and len(lines) >= limit:
                return lines[:limit]
        lines.append(line)
        if limit is not None and len(lines) >= limit:
            return lines[:limit]
    return lines


def _split_word(word: str, widths: _Widths, max_width: float) -> list[str]:
    """`word` cut into pieces that fit `max_width` (at least one character each)."""
    pieces: list[str] = []
    start, width = 0, 0.0
    for i, char in enumerate(word):
        advance = widths.of(char)
        if i > start and width + advance > max_width:
            pieces.append(word[start:i])
            start, width = i, 0.0
        width += advance
    pieces.append(word[start:])
    return pieces


def _fit(lines: list[str], max_lines: int) -> list[str]:
    if len(lines) <= max_lines:
        return lines
    kept = lines[: max(1, max_lines)]
    kept[-1] = kept[-1].rstrip() + " …"
    return kept


def render_image(
    width: int,
    height: int,
    text: str,
    *,
    label: str = "",
    image_format: ImageFormat = "png",
) -> bytes:
    """Encode a `width` x `height` image showing `text` wrapped to fit.

    The background colour is a hash of `text`; `label` (for example the
    model and size) is drawn smaller along the bottom edge.
    """
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    background, ink = _colours(text)
    image = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(image)

    short_side = min(width, height)
    margin = max(4, short_side // 24)
    # A frame one margin in makes the image's real extent visible.
    draw.rectangle(
        (margin // 2, margin // 2, width - 1 - margin // 2, height - 1 - margin // 2),
        outline=ink,
        width=max(1, short_side // 256),
    )

    label_size = max(8, short_side // 40)
    label_height = int(label_size * 1.6) if label else 0
    if label:
        draw.text(
            (margin * 1.5, height - margin * 1.5 - label_height),
            label,
            fill=ink,
            font=_font(label_size),
        )

    text_size = max(10, short_side // 16)
    text_font = _font(text_size)
    line_height = int(text_size * 1.25)
    usable_height = height - 3 * margin - label_height
    max_lines = max(1, usable_height // line_height)
    lines = _fit(_wrap(text, text_font, width - 3 * margin, max_lines), max_lines)
    y = margin * 1.5
    for line in lines:
        draw.text((margin * 1.5, y), line, fill=ink, font=text_font)
        y += line_height

    out = io.BytesIO()
    if image_format == "jpeg":
        image.save(out, format="JPEG", quality=_JPEG_QUALITY)
    else:
        image.save(out, format="PNG", compress_level=_PNG_COMPRESS_LEVEL)
    return out.getvalue()


def render_png(width: int, height: int, text: str, *, label: str = "") -> bytes:
    """`render_image` as PNG."""
    return render_image(width, height, text, label=label, image_format="png")


def noise_png(width: int, height: int, seed: int) -> bytes:
    """An RGB PNG of random noise, the same for the same `seed`.

    Noise does not compress, so the PNG is about `width * height * 3` bytes:
    the worst case for transfer and storage benchmarks.
    """
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    pixels = random.Random(seed).randbytes(width * height * 3)
    image = Image.frombytes("RGB", (width, height), pixels)
    out = io.BytesIO()
    # Deflate cannot shrink noise, so do not spend time trying.
    image.save(out, format="PNG", compress_level=0)
    return out.getvalue()


# Large enough for any benchmark, small enough that a typo cannot exhaust memory.
MAX_NOISE_BYTES = 64 * 1024 * 1024
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)(b|kb|kib|mb|mib)?$", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 1024, "kib": 1024, "mb": 1024 * 1024, "mib": 1024 * 1024}


def noise_size(text: str) -> int | None:
    """Bytes named by a `noise` directive value ("3mb", "512kb", "4096");
    kb and mb are binary units (KiB, MiB). None if unreadable or out of range."""
    match = _SIZE.match(text.strip())
    if match is None:
        return None
    size = int(float(match.group(1)) * _UNITS[(match.group(2) or "b").lower()])
    return size if 0 < size <= MAX_NOISE_BYTES else None


@lru_cache(maxsize=8)
def noise_png_of_size(nbytes: int) -> bytes:
    """A square noise PNG of about `nbytes` bytes (never less), cached.

    Cached so that an emulator serving it under load spends its CPU on
    serving, not encoding: the benchmarks measure the service beside it.
    """
    side = max(1, math.ceil(math.sqrt(nbytes / 3)))
    return noise_png(side, side, seed=nbytes)
