"""Azure FLUX's 2xx answers → images."""

from __future__ import annotations

import httpx

from server.domain.imaging import sniff_mime_type
from server.domain.ports import ProducedImage, UpstreamResult
from server.providers._shared.azure_images import parse_images
from server.providers._shared.base64_json import b64decode, loads_with_base64
from server.providers._shared.upstream import unavailable
from server.providers.azure_flux.errors import UPSTREAM, content_rejected


def _decode_image(b64: object) -> ProducedImage | None:
    # `loads_with_base64` hands the strings over as bytes, undecoded.
    if not isinstance(b64, bytes | memoryview) or not b64:
        return None
    data = b64decode(b64)
    return ProducedImage(data=data, mime_type=sniff_mime_type(data))


def parse_response(response: httpx.Response) -> UpstreamResult:
    """Images from a 2xx body; all filtered → `ContentRejected`."""
    try:
        payload = loads_with_base64(response.content, "b64_json")
    except (ValueError, UnicodeDecodeError):
        raise unavailable(UPSTREAM, "Azure FLUX returned an unreadable response.") from None
    return parse_images(
        payload, upstream=UPSTREAM, decode=_decode_image, content_rejected=content_rejected
    )
