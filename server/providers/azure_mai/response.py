"""MAI's 2xx answers → images."""

from __future__ import annotations

import httpx

from server.domain.imaging import measure
from server.domain.ports import ProducedImage, UpstreamResult
from server.providers._shared.azure_images import parse_images
from server.providers._shared.base64_json import b64decode, loads_with_base64
from server.providers.azure_mai.errors import UPSTREAM, content_rejected


def _decode_image(b64: object) -> ProducedImage | None:
    # `loads_with_base64` hands the strings over as bytes, undecoded.
    if not isinstance(b64, bytes | memoryview) or not b64:
        return None
    data = b64decode(b64)
    # Raises ValueError unless the bytes are an image.
    return ProducedImage(data=data, mime_type=measure(data).mime_type)


def parse_response(response: httpx.Response) -> UpstreamResult:
    """The image of a 2xx body; a filtered item → `ContentRejected`.

    Filtered items are undocumented for MAI; the Azure OpenAI shape is read
    in case it is used.
    """
    try:
        # The body is almost all base64: parse it without copying the image
        # string (see base64_json), as the FLUX backend does.
        payload = loads_with_base64(response.content, "b64_json")
    except (ValueError, UnicodeDecodeError):
        payload = None  # unreadable reads as "no image": UpstreamUnavailable
    return parse_images(
        payload,
        upstream=UPSTREAM,
        decode=_decode_image,
        content_rejected=content_rejected,
    )
