"""Hostile inputs shared by the reliability suite and its fast tests.

Decompression bombs are built by hand, header first: a PNG whose IHDR
declares any size, with a tiny IDAT. Pillow reads only the header to learn
the size, which is exactly what the service must check before any decode.
"""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# IHDR colour types.
_RGBA, _GRAY = 6, 0


def _chunk(kind: bytes, body: bytes) -> bytes:
    crc = zlib.crc32(kind + body) & 0xFFFFFFFF
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)


def png_declaring(width: int, height: int, *, alpha: bool = True) -> bytes:
    """A small PNG whose header declares `width` x `height` pixels.

    Its data is a few empty rows: decoding it fails or yields a mostly
    empty image, but only after allocating the full declared size.
    """
    colour_type = _RGBA if alpha else _GRAY
    ihdr = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    row = b"\x00" + b"\x00" * (width * (4 if alpha else 1))
    idat = zlib.compress(row * 4, 9)
    return _PNG_SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def compressed_mask(width: int, height: int) -> bytes:
    """A real, fully decodable RGBA mask of `width` x `height` that compresses
    to almost nothing: the worst allowed case for the mask decode's memory."""
    image = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=1)
    return out.getvalue()
