"""Saving a generation's images: from inline bytes, or downloaded from their URLs."""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import httpx
from chuizi.image.v1 import image_service_pb2 as pb

from server.cli.output import sorted_images

EXTENSION_BY_MIME = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}

_UNSAFE_FILENAME = re.compile(r"[^A-Za-z0-9_-]")


def images_to_save(generation: pb.Generation, streamed: Mapping[int, pb.Image]) -> list[pb.Image]:
    """Each image of a finished stream in the form that has the most to save.

    The final record carries URLs but never inline bytes; the images streamed
    earlier carry the bytes when the request asked for them or storage
    failed. Prefer the streamed copy when it has bytes.
    """
    by_index = {image.index: image for image in generation.images}
    for index, image in streamed.items():
        if image.data or index not in by_index:
            by_index[index] = image
    return sorted_images(by_index.values())


def image_filename(generation_id: str, image: pb.Image) -> str:
    """`{generation_id}-{index}.{ext}`, with the extension from the MIME type.

    Falls back to the URL's extension, then `bin`. The id comes from the
    server, so anything but `[A-Za-z0-9_-]` is replaced to keep the name
    inside the output directory.
    """
    extension = EXTENSION_BY_MIME.get(image.mime_type)
    if extension is None and image.url:
        suffix = PurePosixPath(urlsplit(image.url).path).suffix.lstrip(".").lower()
        extension = suffix if suffix in EXTENSION_BY_MIME.values() else None
    safe_id = _UNSAFE_FILENAME.sub("_", generation_id) or "generation"
    return f"{safe_id}-{image.index}.{extension or 'bin'}"


async def save_image(
    out_dir: Path, generation_id: str, image: pb.Image, http: httpx.AsyncClient
) -> Path:
    """Write `image` into `out_dir` (created if missing) and return its path.

    Uses the inline bytes when present, otherwise downloads `image.url`.
    Raises ValueError if the image has neither, `httpx.HTTPError` if the
    download fails and OSError if the file cannot be written.
    """
    if image.data:
        data = image.data
    elif image.url:
        response = await http.get(image.url)
        response.raise_for_status()
        data = response.content
    else:
        raise ValueError(f"image {image.index} has neither inline data nor a URL")
    path = out_dir / image_filename(generation_id, image)
    await asyncio.to_thread(out_dir.mkdir, parents=True, exist_ok=True)
    await asyncio.to_thread(path.write_bytes, data)
    return path


async def save_images(
    out_dir: Path,
    generation_id: str,
    images: Iterable[pb.Image],
    *,
    http_timeout: float,
    quiet: bool,
) -> bool:
    """Save every image, reporting each on stdout (stderr when `quiet`).

    Returns False if any image could not be saved; the others are saved
    regardless.
    """
    report = sys.stderr if quiet else sys.stdout
    ok = True
    async with httpx.AsyncClient(timeout=http_timeout, follow_redirects=True) as http:
        for image in images:
            try:
                path = await save_image(out_dir, generation_id, image, http)
            except (ValueError, httpx.HTTPError, OSError) as exc:
                print(f"error: could not save image {image.index}: {exc}", file=sys.stderr)
                ok = False
            else:
                print(f"saved {path}", file=report)
    return ok
